#!/usr/bin/env python3
"""Redis CPU per event of herald's publish script (bench/lua_cost.py).

Starts its own redis-server (127.0.0.1, --port, default 28479, in a temporary directory;
stopped by pid at the end), loads PRELUDE + PUBLISH as found in a scripts.rs (default:
src/backend/redis/scripts.rs), subscribes one connection to the pub/sub channel and
drains it, then sends pre-encoded EVALSHA calls pipelined over one connection with the
KEYS/ARGV layout of `run_publish_script` and reports the server's CPU (INFO cpu, user +
sys) per event and the per-command split inside the scripts (INFO commandstats).

    bench/lua_cost.py [--scripts PATH] [--layout v1|v2] [--events 100] [--channels 1]
                      [--calls 5000] [--max-events 16] [--max-age-us 60000000]
"""
import argparse, os, re, shutil, socket, subprocess, sys, tempfile, threading, time

def enc(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)

class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.pos = 0
    def fill(self):
        data = self.s.recv(1 << 20)
        if not data:
            raise EOFError
        self.buf = self.buf[self.pos:] + data
        self.pos = 0
    def line(self):
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                l = self.buf[self.pos:i]
                self.pos = i + 2
                return l
            self.fill()
    def reply(self):
        l = self.line()
        t, rest = l[:1], l[1:]
        if t in (b"+", b":"):
            return rest.decode()
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) - self.pos < n + 2:
                self.fill()
            v = self.buf[self.pos:self.pos + n]
            self.pos += n + 2
            return v
        if t == b"*":
            n = int(rest)
            return [self.reply() for _ in range(n)]
        raise RuntimeError("bad reply %r" % l)
    def cmd(self, *args):
        self.s.sendall(enc(*args))
        return self.reply()

def scripts(path):
    text = open(path).read()
    def const(name):
        m = re.search(r'const %s: &str = r#"(.*?)"#;' % name, text, re.S)
        return m.group(1)
    def maybe(name):
        m = re.search(r'const %s: &str = r#"(.*?)"#;' % name, text, re.S)
        return m.group(1) if m else ""
    return {
        "publish": const("PRELUDE") + maybe("APPEND") + const("PUBLISH"),
        "prepared": const("PRELUDE") + maybe("APPEND") + maybe("PUBLISH_PREPARED"),
    }

def info(conn, section):
    text = conn.cmd("INFO", section).decode()
    out = {}
    for l in text.splitlines():
        if ":" in l and not l.startswith("#"):
            k, v = l.split(":", 1)
            out[k] = v
    return out

def cpu(conn):
    i = info(conn, "cpu")
    return float(i["used_cpu_user"]) + float(i["used_cpu_sys"])

def commandstats(conn):
    out = {}
    for k, v in info(conn, "commandstats").items():
        f = dict(x.split("=") for x in v.split(","))
        out[k.replace("cmdstat_", "")] = (int(f["calls"]), float(f["usec"]))
    return out

def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--scripts", default=os.path.join(here, "..", "src/backend/redis/scripts.rs"))
    ap.add_argument("--layout", default="v3", help="v1: a stream key per event (herald before the key-per-channel change); v2: per channel; v3: per channel its stream and marks keys, and the tally key; prepared: v3's keys for PUBLISH_PREPARED, the node's own IDs")
    ap.add_argument("--events", type=int, default=100)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--depth", type=int, default=50, help="calls in flight")
    ap.add_argument("--max-events", type=int, default=16)
    ap.add_argument("--max-age-us", type=int, default=60_000_000)
    ap.add_argument("--port", type=int, default=28479)
    ap.add_argument("--body-bytes", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--callgrind", metavar="OUT",
                    help="run redis-server under valgrind's callgrind, instrumented over the "
                         "measured calls only (one run): exact instruction counts to OUT")
    ap.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    args = ap.parse_args()

    found = scripts(args.scripts)
    publish = found["prepared" if args.layout == "prepared" else "publish"]
    tmp = tempfile.mkdtemp(prefix="lua_cost.")
    prefix = []
    if args.callgrind:
        prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                  "--callgrind-out-file=" + os.path.abspath(args.callgrind)]
        args.repeat = 1
    server = subprocess.Popen(prefix + [args.redis_server, "--port", str(args.port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", tmp],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        args.server_pid = server.pid
        for _ in range(600):
            try:
                c = Conn(args.port)
                c.cmd("PING")
                break
            except OSError:
                time.sleep(0.05)
        run(args, c, publish)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)

def build_call(args, sha, prefix="herald:", first=0):
    common = [prefix + k for k in ("seq", "epoch", "last", "removed_floor", "active")]
    chans = ["bench-%d" % (i % args.channels) for i in range(args.events)]
    data = "x" * max(0, args.body_bytes - 8)
    bodies = ["data: %s\n\n" % data for _ in range(args.events)]
    if args.layout == "prepared":
        # What the node builds: the message and each channel's entry, for IDs from first.
        distinct = list(dict.fromkeys(chans))
        keys = common + [prefix + "tally"]
        for ch in distinct:
            keys += [prefix + "s:" + ch, prefix + "marks:" + ch]
        message, entries = [], {ch: [] for ch in distinct}
        newest = {}
        for k, (ch, b) in enumerate(zip(chans, bodies)):
            encoded = "id: %d\n%s" % (first + k, b)
            message.append("%s\n%s" % (ch, encoded))
            entries[ch].append(encoded)
            newest[ch] = first + k
        argv = ["0", str(args.max_events), str(args.max_age_us), prefix + "events",
                str(first), str(args.events), "".join(message)]
        for ch in distinct:
            argv += [ch, "".join(entries[ch]), str(len(entries[ch])), str(newest[ch])]
        return enc("EVALSHA", sha, len(keys), *keys, *argv)
    if args.layout == "v1":
        keys = common + [prefix + "s:" + ch for ch in chans]
        argv = ["0", str(args.max_events), str(args.max_age_us), prefix + "events"]
        for ch, b in zip(chans, bodies):
            argv += [ch, b]
    elif args.layout == "v2":
        # Each channel's stream key once, in first-seen order; per event channel + body.
        distinct = list(dict.fromkeys(chans))
        keys = common + [prefix + "s:" + ch for ch in distinct]
        argv = ["0", str(args.max_events), str(args.max_age_us), prefix + "events"]
        for ch, b in zip(chans, bodies):
            argv += [ch, b]
    elif args.layout == "v3":
        # Six common keys (the tally last); per channel, in first-seen order, its stream
        # and marks keys; per event channel + body.
        distinct = list(dict.fromkeys(chans))
        keys = common + [prefix + "tally"]
        for ch in distinct:
            keys += [prefix + "s:" + ch, prefix + "marks:" + ch]
        argv = ["0", str(args.max_events), str(args.max_age_us), prefix + "events"]
        for ch, b in zip(chans, bodies):
            argv += [ch, b]
    else:
        raise SystemExit("unknown layout")
    return enc("EVALSHA", sha, len(keys), *keys, *argv)

def run(args, c, publish):
    sha = c.cmd("SCRIPT", "LOAD", publish).decode()
    sub = Conn(args.port)
    sub.cmd("SUBSCRIBE", "herald:events")
    received = [0]
    def drain():
        try:
            while True:
                data = sub.s.recv(1 << 20)
                if not data:
                    return
                received[0] += len(data)
        except OSError:
            return
    threading.Thread(target=drain, daemon=True).start()
    # Prepared calls propose their own IDs: each call its own, from Redis's clock on.
    base = [0]
    def calls(n):
        if args.layout != "prepared":
            return call * n
        out = b"".join(build_call(args, sha, first=base[0] + k * args.events) for k in range(n))
        base[0] += n * args.events
        return out
    if args.layout == "prepared":
        t = c.cmd("TIME")
        base[0] = int(t[0]) * 1000000 + int(t[1]) + 500000
    call = build_call(args, sha)
    # Warm up and check the answer.
    c.s.sendall(calls(1))
    r = c.reply()
    assert len(r) == (args.events + 1 if args.layout == "v1" else 2), r[:3]
    results = []
    for rep in range(args.repeat):
        c.cmd("CONFIG", "RESETSTAT")
        if args.callgrind:
            subprocess.run(["callgrind_control", "-i", "on", str(args.server_pid)],
                           stdout=subprocess.DEVNULL, check=True)
        before = cpu(c)
        t0 = time.time()
        sent = done = 0
        while done < args.calls:
            while sent < args.calls and sent - done < args.depth:
                n = min(args.depth - (sent - done), args.calls - sent)
                c.s.sendall(calls(n))
                sent += n
            r = c.reply()
            done += 1
        wall = time.time() - t0
        if args.callgrind:
            subprocess.run(["callgrind_control", "-i", "off", str(args.server_pid)],
                           stdout=subprocess.DEVNULL, check=True)
        stats = commandstats(c)
        after = cpu(c)
        events = args.calls * args.events
        us = (after - before) * 1e6 / events
        results.append(us)
        print("run %d: %.3f us CPU/event, %.1f us/call, wall %.2fs (%.0f events/s)" % (
            rep, us, us * args.events, wall, events / wall), flush=True)
    print("commandstats (last run; us per event, calls per call):")
    for name, (calls, usec) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
        if name in ("config|resetstat", "info"):
            continue
        print("  %-12s %8.3f us/event  %7.2f calls/call  %.3f us/call-of-it" % (
            name, usec / events, calls / args.calls, usec / max(calls, 1)))
    results.sort()
    print("MEDIAN %.3f us CPU/event  (events=%d channels=%d layout=%s max_events=%d)" % (
        results[len(results) // 2], args.events, args.channels, args.layout, args.max_events))
    # Sanity: the streams and keys.
    print("seq", c.cmd("GET", "herald:seq"), "xlen bench-0", c.cmd("XLEN", "herald:s:bench-0"),
          "last", c.cmd("HGETALL", "herald:last")[:4])

if __name__ == "__main__":
    main()
