// herald.js: a small client for herald's event streams, for what EventSource does not do.
// An ES module with no dependencies: served by herald at /herald.js, usable standalone.
//
//   import { connect } from "/herald.js";
//   const stream = connect("/events?channel=news", {
//     onEvent: (e) => console.log(e.type, e.id, e.data),
//     onReset: (info) => refetchState(info),          // history could not bridge the gap
//     onOpen: (info) => {},  // {connects, lastEventId}
//     onError: (info) => {}, // down, and retried by itself: {status, retryAfter, body} for
//                            // a refusal, {error} for the network, {ended: true} when
//                            // herald ended the stream (lifetime, drain)
//   });
//   stream.close();
//
// - It reads the stream with fetch, so it sees the status of a refused connect: on 429 or
//   503 (limits, a draining node) it waits out Retry-After, then retries with backoff and
//   jitter, where EventSource gives up for good.
// - It resumes with Last-Event-ID after any break, and honours the server's `retry:`.
// - `ticket: async () => "..."` is called before every (re)connect, for private channels
//   (POST /tickets); the ticket goes in the query.
// - `heartbeatEvent` + `heartbeatTimeout`: when heartbeats are events, a stream silent for
//   longer than the timeout is taken for dead and replaced.
// - `share: true` (or a name): the tabs of one origin that open the same stream share one
//   connection. One tab, the leader, holds a Web Lock and the stream and passes every
//   event to the others over a BroadcastChannel; when it closes, the next tab takes the
//   lock and resumes from the last ID it saw, so no event is missed. A browser allows a
//   handful of HTTP/1.1 connections per origin (6 in Chromium): without sharing, the
//   seventh tab's stream waits for a free one. Where Web Locks or BroadcastChannel are
//   missing, each tab connects on its own.

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30000;

/// How long to wait after the `attempt`-th refused or failed connect in a row: doubling
/// from half a second, never below the server's Retry-After, plus up to half again at
/// random, so that clients refused together do not return together.
function backoffDelay(attempt, retryAfterSeconds, random = Math.random) {
  const exponential = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** Math.min(attempt, 16));
  const floor = retryAfterSeconds > 0 ? retryAfterSeconds * 1000 : 0;
  return Math.max(floor, exponential) * (1 + 0.5 * random());
}

/// An SSE parser per the WHATWG rules: feed text, get events and comments.
export class Parser {
  constructor() {
    this.buffer = "";
    this.data = [];
    this.type = "";
    this.lastEventId = "";
    this.retry = null;
  }

  /// Feed a chunk of text; returns the complete items it finished.
  feed(text) {
    this.buffer += text;
    const items = [];
    let newline;
    while ((newline = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      const width = this.buffer.startsWith("\r\n", newline) ? 2 : 1;
      // A lone \r at the end of the buffer may be half of \r\n: wait for more.
      if (width === 1 && this.buffer[newline] === "\r" && newline === this.buffer.length - 1) {
        break;
      }
      const line = this.buffer.slice(0, newline);
      this.buffer = this.buffer.slice(newline + width);
      const item = this.line(line);
      if (item) items.push(item);
    }
    return items;
  }

  line(line) {
    if (line === "") {
      if (this.data.length === 0) {
        this.type = "";
        return null;
      }
      const event = {
        type: this.type || "message",
        data: this.data.join("\n"),
        id: this.lastEventId,
      };
      this.data = [];
      this.type = "";
      return event;
    }
    if (line.startsWith(":")) return { comment: line.slice(1).trimStart() };
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
    return null;
  }
}

/// Open a stream on `url` and keep it open until `close()`; with `share`, one per origin.
export function connect(url, options = {}) {
  if (options.share) {
    const locks = options.locks ?? globalThis.navigator?.locks;
    const Channel = options.BroadcastChannel ?? globalThis.BroadcastChannel;
    if (locks && Channel) return shared(url, options, locks, Channel);
  }
  return direct(url, options);
}

/// One tab's own connection.
function direct(url, options) {
  const {
    onEvent = () => {},
    onReset = () => {},
    onOpen = () => {},
    onError = () => {},
    resetEvent = "reset",
    ticket = null,
    heartbeatEvent = "",
    heartbeatTimeout = 0,
    lastEventId = "",
    fetch: fetchFn = globalThis.fetch,
  } = options;
  let closed = false;
  let controller = null;
  let state = { lastEventId, retryMs: 3000, attempt: 0, connects: 0 };

  async function once() {
    controller = new AbortController();
    const target = new URL(url, globalThis.location?.href);
    if (ticket) target.searchParams.set("ticket", await ticket());
    const headers = { accept: "text/event-stream" };
    if (state.lastEventId) headers["last-event-id"] = state.lastEventId;
    const response = await fetchFn(target, {
      headers,
      signal: controller.signal,
      credentials: "include",
      cache: "no-store",
    });
    if (response.status !== 200) {
      const retryAfter = Number(response.headers.get("retry-after")) || 0;
      const body = await response.text().catch(() => "");
      return { refused: response.status, retryAfter, body };
    }
    state.connects += 1;
    state.attempt = 0;
    onOpen({ connects: state.connects, lastEventId: state.lastEventId });
    const parser = new Parser();
    const decoder = new TextDecoder();
    const reader = response.body.getReader();
    let watchdog = null;
    const arm = () => {
      if (heartbeatTimeout > 0) {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => controller.abort(new Error("heartbeat timeout")), heartbeatTimeout);
      }
    };
    arm();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        arm();
        for (const item of parser.feed(decoder.decode(value, { stream: true }))) {
          if (item.comment !== undefined) continue;
          if (item.id) state.lastEventId = item.id;
          if (item.type === resetEvent) {
            let info = item.data;
            try {
              info = JSON.parse(item.data);
            } catch {}
            onReset(info);
          } else if (item.type !== heartbeatEvent || !heartbeatEvent) {
            onEvent(item);
          }
        }
        if (parser.retry !== null) state.retryMs = parser.retry;
      }
    } finally {
      clearTimeout(watchdog);
    }
    return { ended: true };
  }

  (async () => {
    while (!closed) {
      let outcome;
      try {
        outcome = await once();
      } catch (error) {
        if (closed) return;
        outcome = { error };
      }
      if (closed) return;
      let delay;
      if (outcome.refused) {
        onError({ status: outcome.refused, retryAfter: outcome.retryAfter, body: outcome.body });
        delay = backoffDelay(state.attempt, outcome.retryAfter);
        state.attempt += 1;
      } else if (outcome.error) {
        onError({ error: outcome.error });
        delay = backoffDelay(state.attempt, 0);
        state.attempt += 1;
      } else {
        // The stream ended (lifetime, drain): herald's retry hint is the wait.
        onError({ ended: true });
        delay = state.retryMs;
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  })();

  return {
    close() {
      closed = true;
      controller?.abort();
    },
    get lastEventId() {
      return state.lastEventId;
    },
    get connects() {
      return state.connects;
    },
  };
}

/// A stream shared by the tabs that open it under one name: the tab holding the lock
/// (named after the stream) connects, the others listen on the broadcast channel.
function shared(url, options, locks, Channel) {
  const { onEvent = () => {}, onReset = () => {}, onOpen = () => {}, onError = () => {} } = options;
  const onRole = options.onRole ?? (() => {});
  const name =
    "herald.js " +
    (typeof options.share === "string" ? options.share : new URL(url, globalThis.location?.href).href);
  const bus = new Channel(name);
  const quit = new AbortController();
  let role = "follower";
  let lastEventId = options.lastEventId ?? "";
  let opened = null; // the leader's last onOpen, for tabs that join later
  let stream = null;
  let release = null;

  bus.onmessage = ({ data: message }) => {
    if (role === "leader") {
      // A tab that just opened asks where the stream is.
      if (message.kind === "hello" && opened) {
        bus.postMessage({ kind: "open", info: { ...opened, lastEventId: stream.lastEventId } });
      }
      return;
    }
    if (message.kind === "event") {
      if (message.item.id) lastEventId = message.item.id;
      onEvent(message.item);
    } else if (message.kind === "reset") {
      onReset(message.info);
    } else if (message.kind === "open") {
      if (message.info.lastEventId && !lastEventId) lastEventId = message.info.lastEventId;
      onOpen({ ...message.info, shared: true });
    } else if (message.kind === "error") {
      onError(message.info);
    }
  };
  bus.postMessage({ kind: "hello" });
  onRole(role);

  locks
    .request(name, { signal: quit.signal }, () => {
      if (quit.signal.aborted) return; // closed as the lock came
      role = "leader";
      onRole(role);
      stream = direct(url, {
        ...options,
        lastEventId,
        onEvent(item) {
          bus.postMessage({ kind: "event", item });
          onEvent(item);
        },
        onReset(info) {
          bus.postMessage({ kind: "reset", info });
          onReset(info);
        },
        onOpen(info) {
          opened = info;
          bus.postMessage({ kind: "open", info });
          onOpen(info);
        },
        onError(info) {
          // An Error does not survive every structured clone: send its message.
          const plain = info.error ? { error: String(info.error?.message ?? info.error) } : info;
          bus.postMessage({ kind: "error", info: plain });
          onError(info);
        },
      });
      // The lock is held until close() (or the tab goes away).
      return new Promise((resolve) => (release = resolve));
    })
    .catch(() => {}); // closed while waiting for the lock

  return {
    close() {
      quit.abort();
      stream?.close();
      release?.();
      bus.close();
    },
    get lastEventId() {
      return stream ? stream.lastEventId : lastEventId;
    },
    get connects() {
      return stream ? stream.connects : 0;
    },
    /// "leader" (this tab holds the connection) or "follower".
    get role() {
      return role;
    },
  };
}

export { backoffDelay };
