// A headless Chromium (Debian's, through playwright-core) that a Rust test drives, one
// JSON line per command on stdin, one JSON line per answer on stdout, in order:
//
//   {"op":"open","url":U}                      -> {"ok":true,"value":PAGE}   (a new tab)
//   {"op":"eval","page":P,"expr":E}             -> {"ok":true,"value":JSON of E}
//   {"op":"wait","page":P,"expr":E,"ms":N}      -> the first truthy value of E within N ms
//   {"op":"fill","page":P,"selector":S,"value":V} -> {"ok":true}   (types V into S, as a user)
//   {"op":"click","page":P,"selector":S}        -> {"ok":true}
//   {"op":"screenshot","page":P,"path":F}       -> {"ok":true}
//   {"op":"close","page":P}                     -> {"ok":true}
//   anything that fails                         -> {"ok":false,"error":"..."}
//
// The first line out is {"ok":true,"value":"ready"}. Every tab lives in one browser
// profile (HERALD_BROWSER_PROFILE, a directory the caller owns), so they share an origin's
// BroadcastChannel and Web Locks like a user's tabs. Each page's console and script errors
// go to stderr with its number; `eval` fails if the page has had a script error, so none
// goes unnoticed. stdin closing, SIGTERM or SIGINT close the browser and end the script.

import { createInterface } from "node:readline";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run",
  // Tabs the test opens are all "in the background" but one: keep their timers honest.
  "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
  "--disable-backgrounding-occluded-windows",
];
const log = (...args) => console.error("[driver]", ...args);
const answer = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const profile = process.env.HERALD_BROWSER_PROFILE;
if (!profile) {
  log("HERALD_BROWSER_PROFILE must name a directory for the browser profile");
  process.exit(2);
}
let chromium;
try {
  ({ chromium } = await import("playwright-core"));
} catch (err) {
  log(`playwright-core is not installed (${err.message}): run 'npm ci' in tests/browser (make test does)`);
  process.exit(2);
}

const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  args: FLAGS,
  timeout: 30_000,
  viewport: { width: 1100, height: 820 },
});
let closing = null;
function shutdown(code) {
  closing ??= Promise.race([context.close(), new Promise((r) => setTimeout(r, 5_000))]).finally(() =>
    process.exit(code),
  );
  return closing;
}
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => shutdown(1));

const pages = [];
const errors = new Map();
// The profile opens with one blank tab: the first `open` uses it.
let blank = context.pages()[0] ?? null;

async function run(command) {
  const page = () => {
    const p = pages[command.page];
    if (!p) throw new Error(`no page ${command.page}`);
    return p;
  };
  switch (command.op) {
    case "open": {
      const p = blank ?? (await context.newPage());
      blank = null;
      const n = pages.length;
      pages.push(p);
      errors.set(p, []);
      p.on("console", (m) => log(`page ${n} console.${m.type()}: ${m.text()}`));
      p.on("pageerror", (e) => {
        log(`page ${n} error: ${e.message}`);
        errors.get(p).push(e.message);
      });
      await p.goto(command.url, { timeout: 15_000 });
      return n;
    }
    case "eval": {
      const p = page();
      const value = await p.evaluate(command.expr);
      const seen = errors.get(p);
      if (seen.length) throw new Error(`script errors on page ${command.page}: ${seen.join("; ")}`);
      return value ?? null;
    }
    case "wait": {
      const handle = await page().waitForFunction(command.expr, null, {
        timeout: command.ms,
        polling: 50,
      });
      return (await handle.jsonValue()) ?? null;
    }
    case "fill":
      await page().fill(command.selector, command.value, { timeout: 15_000 });
      return null;
    case "click":
      await page().click(command.selector, { timeout: 15_000 });
      return null;
    case "screenshot":
      await page().screenshot({ path: command.path, fullPage: true, timeout: 15_000 });
      return null;
    case "close":
      await page().close();
      return null;
    default:
      throw new Error(`unknown op ${command.op}`);
  }
}

answer({ ok: true, value: "ready" });
for await (const line of createInterface({ input: process.stdin })) {
  let command;
  try {
    command = JSON.parse(line);
    answer({ ok: true, value: await run(command) });
  } catch (err) {
    answer({ ok: false, error: `${command?.op ?? "parse"}: ${err.message}` });
  }
}
await shutdown(0);
