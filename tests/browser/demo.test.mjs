// Drives Debian's Chromium (headless, through playwright-core) against herald's demo page.
//
//   node tests/browser/demo.test.mjs BASE_URL
//
// Run by tests/browser_demo.rs, which starts herald and speaks a line protocol with this
// script: it writes JSON lines on stdout ({"step": ...}); on {"step":"await-server-event"}
// the Rust side publishes an event over HTTP and answers on stdin with one JSON line
// {"id","event","data"}. Logs go to stderr. Exit 0 only when every check passed.
//
// Environment (all optional): HERALD_BROWSER_PROFILE, a fresh --user-data-dir (default:
// a new temp dir); HERALD_DEMO_SCREENSHOT, where the PNG of the page goes (default: in a
// temp dir); CHROMIUM, the browser binary (default /usr/bin/chromium).

import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run",
];
const STEP_TIMEOUT_MS = 15_000; // every wait in the page
const OVERALL_TIMEOUT_MS = 100_000; // the whole run, browser start included

const log = (...args) => console.error("[demo.test]", ...args);
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
function check(condition, message) {
  if (!condition) throw new Error("check failed: " + message);
}

const base = process.argv[2];
if (!base) {
  log("usage: node tests/browser/demo.test.mjs BASE_URL");
  process.exit(2);
}
if (!existsSync(CHROMIUM)) {
  log(`${CHROMIUM} is missing: run scripts/install-test-deps.sh (as root)`);
  process.exit(2);
}
let chromium;
try {
  ({ chromium } = await import("playwright-core"));
} catch (err) {
  log(`playwright-core is not installed (${err.message}): run 'npm ci' in tests/browser (make test does)`);
  process.exit(2);
}

const scratch = mkdtempSync(join(tmpdir(), "herald-demo-test-"));
const profile = process.env.HERALD_BROWSER_PROFILE || join(scratch, "profile");
const screenshot = process.env.HERALD_DEMO_SCREENSHOT || join(scratch, "demo.png");

// Lines from the Rust side, read on demand with a deadline.
const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function nextLine(timeoutMs) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer on stdin within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    const { value, done } = await Promise.race([stdinLines.next(), timeout]);
    check(!done, "stdin closed before the server event was announced");
    return JSON.parse(value);
  } finally {
    clearTimeout(timer);
  }
}

let context = null;
async function closeBrowser() {
  const c = context;
  context = null;
  if (c) await Promise.race([c.close(), new Promise((r) => setTimeout(r, 5_000))]);
}
async function fail(err) {
  log(err && err.stack ? err.stack : String(err));
  await closeBrowser().catch(() => {});
  rmSync(scratch, { recursive: true, force: true });
  process.exit(1);
}
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => fail(new Error(`stopped by ${signal}`)));
}
const overall = setTimeout(() => fail(new Error(`the run took longer than ${OVERALL_TIMEOUT_MS} ms`)),
  OVERALL_TIMEOUT_MS);

/** The row for event `id`, as the page shows it. */
async function rowFor(page, id) {
  const row = page.locator(`#events tr[data-id="${id}"]`);
  await row.waitFor({ state: "visible", timeout: STEP_TIMEOUT_MS });
  return row.evaluate((tr) => ({
    id: tr.querySelector("td.id").textContent,
    type: tr.querySelector("td.type").textContent,
    data: tr.querySelector("td.data").textContent,
    elementsInData: tr.querySelector("td.data").children.length,
    isNewest: tr.parentElement.firstElementChild === tr,
  }));
}

/** The number of the page's current connect(), from #state. */
async function connectionNumber(page) {
  return Number((await page.getAttribute("#state", "data-connection")) ?? "0");
}

/** Wait until stream number `n` (not an earlier one) is connected. */
async function waitConnected(page, n) {
  await page.locator(`#state[data-state="connected"][data-connection="${n}"]`)
    .waitFor({ timeout: STEP_TIMEOUT_MS });
}

/** Reconnect through the form and wait for the new stream, never the old one. */
async function reconnect(page) {
  const next = (await connectionNumber(page)) + 1;
  await page.click("#connect");
  await waitConnected(page, next);
}

/** Publish through the form and return the answer to *this* publish: the page numbers
 * publishes, and the result element names the one whose answer it shows. */
async function publishWithForm(page, fields) {
  for (const [id, value] of Object.entries(fields)) await page.fill(id, value);
  const sent = Number((await page.getAttribute("#publish-result", "data-sent")) ?? "0") + 1;
  await page.click("#publish");
  const result = page.locator(`#publish-result[data-answered="${sent}"]`);
  await result.waitFor({ timeout: STEP_TIMEOUT_MS });
  return { ok: await result.evaluate((el) => el.classList.contains("ok")), text: await result.textContent() };
}

try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    timeout: 30_000,
    viewport: { width: 1100, height: 820 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const pageErrors = [];
  page.on("pageerror", (err) => pageErrors.push(err.message));

  await page.goto(base, { timeout: STEP_TIMEOUT_MS });
  check((await page.title()) === "herald demo", "page title");
  await waitConnected(page, 1);
  check((await page.inputValue("#channels")) === "demo", "default channel is demo");
  emit({ step: "connected" });

  // Reconnect, also listening for the type the Rust side will publish.
  await page.fill("#types", "server-note");
  await reconnect(page);

  // A refused publish shows herald's JSON error.
  const refused = await publishWithForm(page, { "#pub-channel": "no spaces allowed", "#pub-event": "" });
  check(!refused.ok && refused.text.startsWith("400") && refused.text.includes('"invalid_channel"'),
    `refused publish shows the error: ${refused.text}`);

  // Publish through the form; the answer carries the ID and the event shows up under it.
  const data = "hello <b>browser</b> & \"friends\"";
  const sent = await publishWithForm(page, { "#pub-channel": "demo", "#pub-event": "greeting", "#pub-data": data });
  check(sent.ok && sent.text.startsWith("200"), `publish answer: ${sent.text}`);
  const answer = JSON.parse(sent.text.slice(sent.text.indexOf("\n") + 1));
  check(answer.channel === "demo" && /^\d+$/.test(answer.id), `answer names channel and id: ${sent.text}`);
  const mine = await rowFor(page, answer.id);
  check(mine.id === answer.id && mine.type === "greeting", `form event row: ${JSON.stringify(mine)}`);
  check(mine.data === data && mine.elementsInData === 0, `data shown as text: ${JSON.stringify(mine)}`);
  emit({ step: "form-event-shown", id: answer.id });

  // An event published by the server side shows up too, newest first.
  emit({ step: "await-server-event" });
  const expected = await nextLine(STEP_TIMEOUT_MS);
  const theirs = await rowFor(page, expected.id);
  check(theirs.type === expected.event && theirs.data === expected.data,
    `server event row: ${JSON.stringify(theirs)} vs ${JSON.stringify(expected)}`);
  check(theirs.isNewest, "the newest event is on top");
  check((await page.textContent("#event-count")).startsWith("2 received"), "event count");
  emit({ step: "server-event-shown", id: expected.id });

  check(pageErrors.length === 0, `no script errors on the page: ${pageErrors.join("; ")}`);
  await page.screenshot({ path: screenshot, fullPage: true, timeout: STEP_TIMEOUT_MS });
  emit({ step: "done", screenshot });
  await closeBrowser();
  clearTimeout(overall);
  rmSync(scratch, { recursive: true, force: true });
  process.exit(0);
} catch (err) {
  await fail(err);
}
