#!/usr/bin/env python3
"""A second, independent SSE client for bench/crosscheck.sh: no herald-bench code.

    sse_client.py URL STREAMS

Opens STREAMS event streams to URL (http://127.x.x.x:PORT/PATH, `{channel}` replaced by
bench-0) from source addresses 127.0.0.2-254, one plain non-blocking socket each on one
epoll loop, prints `ready N` to stderr once all are open, then reads until stdin closes
(or says `stop`) and prints one JSON line: streams open, events received (the `data:`
lines), bytes, and publish-to-receive latency percentiles from the payload's stamp
(`PUBLISHER.SEQ.SENT_NS.` as herald-bench publishes it).
"""

import json
import select
import socket
import sys
import threading
import time
from urllib.parse import urlsplit


def main():
    url, streams = sys.argv[1], int(sys.argv[2])
    parts = urlsplit(url.replace("{channel}", "bench-0"))
    host, port = parts.hostname, parts.port or 80
    if not host.startswith("127."):
        sys.exit("sse_client.py: 127.0.0.0/8 targets only")
    path = parts.path + ("?" + parts.query if parts.query else "")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()

    ep = select.epoll()
    socks = {}
    tails = {}
    opened = 0
    pending = {}
    for i in range(streams):
        s = socket.socket()
        s.setblocking(False)
        s.bind((f"127.0.0.{2 + i % 253}", 0))
        try:
            s.connect((host, port))
        except BlockingIOError:
            pass
        socks[s.fileno()] = s
        pending[s.fileno()] = True
        ep.register(s.fileno(), select.EPOLLOUT)
        # Pace the connects a little, as a browser crowd would not arrive at once.
        if i % 500 == 499:
            drain(ep, socks, pending, tails, request, None)
    latencies = []
    stop = threading.Event()

    def wait_stop():
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=wait_stop, daemon=True).start()
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        drain(ep, socks, pending, tails, request, None)
    opened = streams - len(pending)
    print(f"ready {opened}", file=sys.stderr, flush=True)
    stats = {"events": 0, "bytes": 0}
    while not stop.is_set():
        drain(ep, socks, pending, tails, request, (stats, latencies), timeout=0.2)
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] / 1e6 if latencies else None

    print(
        json.dumps(
            {
                "streams": opened,
                "events": stats["events"],
                "bytes": stats["bytes"],
                "latency_ms": {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": pct(1.0)},
            }
        ),
        flush=True,
    )


def drain(ep, socks, pending, tails, request, counting, timeout=0.05):
    for fd, mask in ep.poll(timeout):
        s = socks[fd]
        if fd in pending and mask & select.EPOLLOUT:
            s.send(request)
            del pending[fd]
            ep.modify(fd, select.EPOLLIN)
            tails[fd] = b""
            continue
        try:
            data = s.recv(65536)
        except BlockingIOError:
            continue
        if not data:
            ep.unregister(fd)
            continue
        if counting is None:
            # Before counting starts: keep only an unfinished line.
            tails[fd] = (tails[fd] + data)[(tails[fd] + data).rfind(b"\n") :]
            continue
        stats, latencies = counting
        now = time.time_ns()
        stats["bytes"] += len(data)
        buf = tails[fd] + data
        # Every `data:` line at the start of a line is one event (a 100-byte event is
        # never split over two lines).
        start = 0
        while True:
            at = buf.find(b"\ndata: ", start)
            if at < 0:
                break
            end = buf.find(b"\n", at + 7)
            if end < 0:
                break
            stats["events"] += 1
            fields = buf[at + 7 : end].split(b".")
            if len(fields) > 2 and fields[2].isdigit():
                latencies.append(now - int(fields[2]))
            start = end
        tails[fd] = buf[start:]


if __name__ == "__main__":
    main()
