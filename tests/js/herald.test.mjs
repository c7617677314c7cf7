// herald.js against real herald nodes (started by tests/herald_js.rs, URLs in the
// environment), with node's own test runner: no browser needed for what is tested here.
import { afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";

const lib = process.env.HERALD_JS;
const { connect: connectStream, Parser, backoffDelay } = await import(lib);

// Every stream a test opens is closed after it, also when it fails: an open stream would
// keep node running until the file's timeout, hiding which test failed.
const opened = new Set();
const connect = (url, options) => {
  const stream = connectStream(url, options);
  opened.add(stream);
  return stream;
};
afterEach(() => {
  for (const stream of opened) stream.close();
  opened.clear();
});
const PLAIN = process.env.HERALD_PLAIN; // defaults, demo publishing
const CAPPED = process.env.HERALD_CAPPED; // one stream per IP, Retry-After 1 s
const SHORT = process.env.HERALD_SHORT; // streams end after 1 s, retry 100 ms
const PRIVATE = process.env.HERALD_PRIVATE; // JWT (HS256), private:*, streams end after 1 s
const QUIET = process.env.HERALD_QUIET; // heartbeat events "hb" every 2 s
const BEATING = process.env.HERALD_BEATING; // heartbeat events "hb" every 200 ms

/// An HS256 JWT granting `herald` claims, valid for 10 minutes.
function jwt(herald) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({
    exp: Math.floor(Date.now() / 1000) + 600,
    herald,
  })}`;
  const mac = createHmac("sha256", process.env.HERALD_JWT_SECRET).update(body).digest("base64url");
  return `${body}.${mac}`;
}

/// Resolve when `check()` is true, polling; reject after `ms`.
function until(check, ms, what) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      if (check()) return resolve();
      if (Date.now() - started > ms) return reject(new Error(`timed out: ${what}`));
      setTimeout(tick, 10);
    };
    tick();
  });
}

async function publish(base, channel, data, event, token) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${base}/publish`, {
    method: "POST",
    headers,
    body: JSON.stringify(event ? { channel, data, event } : { channel, data }),
  });
  assert.equal(response.status, 200, await response.clone().text());
  return (await response.json()).id;
}

test("the parser follows the SSE rules", () => {
  const p = new Parser();
  const items = p.feed("retry: 250\n: ping\r\nid: 7\nevent: score\ndata: a\ndata:b\n\ndata: c\r");
  assert.deepEqual(items, [{ comment: "ping" }, { type: "score", data: "a\nb", id: "7" }]);
  assert.equal(p.retry, 250);
  assert.deepEqual(p.feed("\n\n"), [{ type: "message", data: "c", id: "7" }]);
});

test("backoff doubles, waits at least Retry-After, and spreads clients", () => {
  assert.equal(backoffDelay(0, 0, () => 0), 500);
  assert.equal(backoffDelay(2, 0, () => 0), 2000);
  assert.equal(backoffDelay(0, 3, () => 0), 3000, "Retry-After is the floor");
  assert.equal(backoffDelay(0, 3, () => 1), 4500, "up to half again at random");
  assert.equal(backoffDelay(50, 0, () => 0), 30000, "capped");
});

test("events arrive with their types and IDs", async () => {
  const seen = [];
  const stream = connect(`${PLAIN}/events?channel=js-types`, { onEvent: (e) => seen.push(e) });
  await until(() => stream.connects === 1, 5000, "connected");
  const id = await publish(PLAIN, "js-types", "hello", "greeting");
  await until(() => seen.length === 1, 5000, "the event");
  stream.close();
  assert.deepEqual(seen[0], { type: "greeting", data: "hello", id: String(id) });
});

test("a resume herald cannot serve calls onReset", async () => {
  let reset = null;
  const stream = connect(`${PLAIN}/events?channel=js-reset`, {
    lastEventId: "1",
    onReset: (info) => (reset = info),
  });
  await until(() => reset !== null, 5000, "the reset");
  stream.close();
  assert.equal(reset.reason, "unknown_id");
  assert.equal(reset.last_event_id, "1");
});

test("a 429 is waited out (Retry-After) and the stream opens once a slot frees", async () => {
  // The node allows one stream per IP: hold it, so herald.js is refused.
  const holder = new AbortController();
  const held = await fetch(`${CAPPED}/events?channel=js-cap`, { signal: holder.signal });
  assert.equal(held.status, 200);
  const errors = [];
  const stream = connect(`${CAPPED}/events?channel=js-cap`, { onError: (e) => errors.push(e) });
  await until(() => errors.length >= 1, 5000, "a refusal");
  assert.equal(errors[0].status, 429);
  assert.equal(errors[0].retryAfter, 1);
  const freed = Date.now();
  holder.abort();
  await until(() => stream.connects === 1, 10000, "connected after the slot freed");
  const waited = Date.now() - freed;
  stream.close();
  assert.ok(errors.every((e) => e.status === 429), JSON.stringify(errors));
  assert.ok(waited < 5000, `connected ${waited} ms after the slot freed`);
});

test("streams herald ends are resumed with Last-Event-ID: every event once", async () => {
  const seen = [];
  let ends = 0;
  const stream = connect(`${SHORT}/events?channel=js-resume`, {
    onEvent: (e) => seen.push(e.data),
    onError: (e) => (ends += e.ended ? 1 : 0),
  });
  await until(() => stream.connects === 1, 5000, "connected");
  const sent = [];
  // Publish across at least two of herald's stream ends (lifetime 1 s).
  const started = Date.now();
  while (Date.now() - started < 2500 || stream.connects < 3) {
    const data = `e${sent.length}`;
    await publish(SHORT, "js-resume", data);
    sent.push(data);
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(Date.now() - started < 15000, "herald kept ending the streams");
  }
  await until(() => seen.length >= sent.length, 5000, "every event");
  stream.close();
  assert.deepEqual(seen, sent, "each event exactly once, in order");
  assert.ok(stream.connects >= 3, `reconnected ${stream.connects - 1} times`);
  assert.ok(ends >= stream.connects - 1, `onError told of ${ends} ends`);
});

test("a ticket is fetched before every (re)connect to a private channel", async () => {
  const token = jwt({ subscribe: ["private:*"], publish: ["private:*"] });
  let tickets = 0;
  const ticket = async () => {
    tickets += 1;
    const response = await fetch(`${PRIVATE}/tickets`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}` },
    });
    assert.equal(response.status, 200);
    return (await response.json()).ticket;
  };
  const seen = [];
  const stream = connect(`${PRIVATE}/events?channel=private:js`, {
    ticket,
    onEvent: (e) => seen.push(e.data),
  });
  // herald ends the stream every second; each reconnect needs a new single-use ticket.
  await until(() => stream.connects >= 3, 10000, "three connects");
  await publish(PRIVATE, "private:js", "secret", undefined, token);
  await until(() => seen.includes("secret"), 5000, "the private event");
  stream.close();
  assert.ok(tickets >= 3, `${tickets} tickets for ${stream.connects} connects`);
});

test("the heartbeat watchdog replaces a silent stream, and heartbeats are not events", async () => {
  const events = [];
  const silent = connect(`${QUIET}/events?channel=js-hb`, {
    heartbeatEvent: "hb",
    heartbeatTimeout: 500,
    onEvent: (e) => events.push(e),
  });
  // Heartbeats every 2 s, watchdog at 0.5 s: replaced over and over.
  await until(() => silent.connects >= 3, 5000, "replaced streams");
  silent.close();
  const kept = connect(`${BEATING}/events?channel=js-hb`, {
    heartbeatEvent: "hb",
    heartbeatTimeout: 1000,
    onEvent: (e) => events.push(e),
  });
  await until(() => kept.connects === 1, 5000, "connected");
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(kept.connects, 1, "heartbeats every 200 ms keep it");
  kept.close();
  assert.deepEqual(events, [], "heartbeat events are not passed on");
});

/// Web Locks as the browser has them, for one process: exclusive, granted in request order,
/// released when the callback's promise settles; a request whose signal aborts while it
/// waits is rejected. (Node has BroadcastChannel but no navigator.locks.)
class Locks {
  #queues = new Map();
  request(name, options, callback) {
    const queue = this.#queues.get(name) ?? [];
    this.#queues.set(name, queue);
    return new Promise((resolve, reject) => {
      const waiter = {
        async grant() {
          try {
            resolve(await callback());
          } catch (error) {
            reject(error);
          } finally {
            queue.shift();
            if (queue.length > 0) queue[0].grant();
          }
        },
      };
      options.signal?.addEventListener("abort", () => {
        const at = queue.indexOf(waiter);
        if (at > 0) {
          queue.splice(at, 1);
          reject(new DOMException("aborted", "AbortError"));
        }
      });
      queue.push(waiter);
      if (queue.length === 1) queueMicrotask(() => waiter.grant());
    });
  }
}

/// fetch, recording the Last-Event-ID of every stream request (one per connect).
function countingFetch() {
  const requests = [];
  const counted = (target, init) => {
    requests.push(init.headers["last-event-id"] ?? "");
    return fetch(target, init);
  };
  return { fetch: counted, requests };
}

test("tabs sharing a stream hold one connection and every tab sees every event", async () => {
  const locks = new Locks();
  const { fetch: counted, requests } = countingFetch();
  const tabs = [0, 1, 2].map(() => {
    const seen = [];
    const stream = connect(`${PLAIN}/events?channel=js-share`, {
      share: true,
      locks,
      fetch: counted,
      onEvent: (e) => seen.push(e.id),
    });
    return { stream, seen };
  });
  await until(() => tabs[0].stream.connects === 1, 5000, "the leader connected");
  assert.deepEqual(
    tabs.map((t) => t.stream.role),
    ["leader", "follower", "follower"],
  );
  const ids = [];
  for (const data of ["a", "b", "c"]) ids.push(String(await publish(PLAIN, "js-share", data)));
  await until(() => tabs.every((t) => t.seen.length === 3), 5000, "every tab saw every event");
  for (const tab of tabs) tab.stream.close();
  for (const tab of tabs) assert.deepEqual(tab.seen, ids);
  assert.equal(requests.length, 1, "one stream for three tabs");
});

test("when the leading tab closes, the next one takes over from the last ID it saw", async () => {
  const locks = new Locks();
  const { fetch: counted, requests } = countingFetch();
  const open = () => {
    const seen = [];
    const stream = connect(`${PLAIN}/events?channel=js-handover`, {
      share: "js-handover",
      locks,
      fetch: counted,
      onEvent: (e) => seen.push(e.id),
    });
    return { stream, seen };
  };
  const first = open();
  const second = open();
  await until(() => first.stream.connects === 1, 5000, "the leader connected");
  const before = String(await publish(PLAIN, "js-handover", "before"));
  await until(() => second.seen.length === 1, 5000, "the follower saw the first event");
  first.stream.close();
  // Published while no tab may be connected: the new leader's resume must bring it.
  const during = String(await publish(PLAIN, "js-handover", "during"));
  await until(() => second.stream.connects === 1, 5000, "the follower took over");
  const after = String(await publish(PLAIN, "js-handover", "after"));
  await until(() => second.seen.length === 3, 5000, "every event in the second tab");
  second.stream.close();
  assert.equal(second.stream.role, "leader");
  assert.deepEqual(second.seen, [before, during, after], "each event once, in order");
  assert.deepEqual(requests, ["", before], "the takeover resumed after the last ID seen");
});
