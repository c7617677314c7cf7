// What the demo pages share: an element lookup, the connection-state badge and the
// notice line. An ES module, served at /demo/page.js next to the pages.

export const $ = (id) => document.getElementById(id);

// #state shows where the stream is; data-connects counts the streams opened so far and
// data-status says why the last one is down (an HTTP status such as 429, "ended" when
// herald ended it, "error" for the network): herald.js retries by itself either way.
export function setState(state, info = {}) {
  const el = $("state");
  el.dataset.state = state;
  el.textContent = state;
  if (info.connects) el.dataset.connects = String(info.connects);
  if (state === "reconnecting") el.dataset.status = String(info.status ?? (info.ended ? "ended" : "error"));
}

// #notice: data-kind is "reset" (history lost) or "error"; empty text hides it.
export function notice(kind, text) {
  const el = $("notice");
  el.hidden = !text;
  el.dataset.kind = kind;
  el.textContent = text;
}
