//! The demo apps and herald.js end to end: a real headless Chromium
//! ([`support::browser`]) opens the pages through a real nginx (the kit, rendered with
//! test ports) in front of real herald processes, with a real Redis where the test needs
//! one, and the test publishes through nginx as a backend would.
//!
//! - the live feed shows the events the test publishes, with their types and IDs;
//! - herald restarted under the open page: the page reconnects by itself with
//!   Last-Event-ID and, on Redis, ends with every event exactly once; on the memory
//!   backend it shows the reset;
//! - a 429 from the connection limit: herald.js waits it out and connects once a slot
//!   frees;
//! - eight chat tabs over HTTP/1.1 share one stream and all show every message, also after
//!   the tab holding the stream closes;
//! - the task demo runs to 100 % and closes its stream;
//! - the broker's live view follows what the test does to the node.
//!
//! Every page is saved as a screenshot (in `HERALD_SCREENSHOTS` when set).

mod common;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{metric, wait_for, wait_ready, HeraldProcess};
use serde_json::{json, Value};
use support::browser::{screenshot_path, Browser, Tab};
use support::nginx::Nginx;
use support::redis::{RedisOptions, RedisServer};
use support::EventStream;

/// Any one step in the page.
const STEP: Duration = Duration::from_secs(15);
/// `sse.retry` of the nodes: a page whose stream ended waits this long before it
/// reconnects, so what the test publishes right after a restart lands in between.
const RETRY: Duration = Duration::from_secs(4);

/// herald nodes behind nginx; publishes go through nginx like a backend's would.
struct Site {
    nodes: Vec<HeraldProcess>,
    nginx: Nginx,
    http: reqwest::Client,
    /// Screenshots, unless `HERALD_SCREENSHOTS` names a directory to keep them in.
    scratch: tempfile::TempDir,
}

impl Site {
    fn start(nodes: Vec<HeraldProcess>) -> Self {
        let upstreams: Vec<SocketAddr> = nodes.iter().map(|n| n.public).collect();
        let nginx = Nginx::start_with_upstreams(&upstreams, "5s", |text| text);
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let scratch = tempfile::tempdir().expect("temp dir");
        Self {
            nodes,
            nginx,
            http,
            scratch,
        }
    }

    /// Where the screenshot `name` goes.
    fn shot(&self, name: &str) -> std::path::PathBuf {
        screenshot_path(self.scratch.path(), name)
    }

    fn url(&self, path: &str) -> String {
        self.nginx.url(path)
    }

    /// Publish through nginx; the event's ID.
    async fn publish(&self, channel: &str, event: &str, data: Value) -> String {
        let body = json!({ "channel": channel, "event": event, "data": data.to_string() });
        let resp = self
            .http
            .post(self.url("/publish"))
            .json(&body)
            .timeout(STEP)
            .send()
            .await
            .expect("publish through nginx");
        let status = resp.status();
        let answer: Value = resp.json().await.expect("a JSON answer");
        assert_eq!(status, 200, "publish {body}: {answer}");
        answer["id"].as_str().expect("an id").to_string()
    }

    async fn open_streams(&self, node: usize) -> f64 {
        let url = self.nodes[node].admin_url("/metrics");
        metric(&url, "herald_connections_open").await
    }

    async fn connections_total(&self, node: usize) -> f64 {
        let url = self.nodes[node].admin_url("/metrics");
        metric(&url, "herald_connections_total").await
    }
}

/// A node's config, behind nginx (whose X-Forwarded-For names the browser).
fn node_toml(listen: SocketAddr, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"127.0.0.1:0\"\n\
         trusted_proxies = [\"127.0.0.1/32\"]\n\
         [sse]\nheartbeat_interval = \"1s\"\nretry = \"{}ms\"\n\
         [shutdown]\ndrain_timeout = \"1s\"\n{extra}",
        RETRY.as_millis()
    )
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn start_node(extra: &str) -> HeraldProcess {
    let node = HeraldProcess::spawn(&node_toml(any_port(), extra), &["--demo"]);
    wait_ready(node.admin);
    node
}

/// SIGTERM (a deploy), wait for the exit, then a new process on the same public address
/// so nginx's upstream stays as it is.
async fn restart(site: &mut Site, node: usize, extra: &str) {
    let old = &mut site.nodes[node];
    let public = old.public;
    old.terminate();
    assert!(
        old.wait_exit_async(Duration::from_secs(10)).await.is_some(),
        "herald drained and exited"
    );
    let fresh = HeraldProcess::respawn_on(node_toml(public, extra), &["--demo"], public).await;
    let admin = fresh.admin;
    tokio::task::spawn_blocking(move || wait_ready(admin))
        .await
        .unwrap();
    site.nodes[node] = fresh;
}

/// `#state[data-state=...]` of the page, with `data-connects` at least `connects`: the
/// page's own count of streams opened, so a wait for connect N is never satisfied by an
/// earlier one.
async fn wait_state(browser: &mut Browser, tab: Tab, state: &str, connects: u32) {
    let expr = format!(
        "(() => {{ const s = document.querySelector('#state'); \
         return s.dataset.state === '{state}' && Number(s.dataset.connects ?? 0) >= {connects}; }})()"
    );
    let what = format!("state {state} after {connects} connect(s)");
    browser.wait(tab, &expr, STEP, &what).await;
}

/// The feed's items, oldest first (`[id, type]` each), once `ready` (a JavaScript
/// condition on `items`, the page's rows newest first) holds.
async fn feed_when(
    browser: &mut Browser,
    tab: Tab,
    ready: &str,
    what: &str,
) -> Vec<(String, String)> {
    let expr = format!(
        "(() => {{ const items = [...document.querySelectorAll('#feed li[data-id]')]; \
         return ({ready}) && items.reverse().map(li => [li.dataset.id, li.dataset.type]); }})()"
    );
    let value = browser.wait(tab, &expr, STEP, what).await;
    serde_json::from_value(value).expect("[id, type] pairs")
}

async fn feed_items(browser: &mut Browser, tab: Tab, at_least: usize) -> Vec<(String, String)> {
    let ready = format!("items.length >= {at_least}");
    feed_when(
        browser,
        tab,
        &ready,
        &format!("{at_least} events in the feed"),
    )
    .await
}

/// The feed's items, oldest first, once the one with `id` has arrived.
async fn wait_for_item(browser: &mut Browser, tab: Tab, id: &str) -> Vec<(String, String)> {
    let ready = format!("items.some(li => li.dataset.id === '{id}')");
    feed_when(browser, tab, &ready, &format!("event {id} in the feed")).await
}

/// Publish `n` feed events, cycling through the feed's types; `(id, type)` each.
async fn publish_feed(site: &Site, n: usize, tag: &str) -> Vec<(String, String)> {
    let mut sent = Vec::new();
    for i in 0..n {
        let kind = ["score", "news", "alert"][i % 3];
        let data = json!({ "text": format!("{tag} {i}") });
        sent.push((
            site.publish("demo:feed", kind, data).await,
            kind.to_string(),
        ));
    }
    sent
}

async fn reset_shown(browser: &mut Browser, tab: Tab) -> bool {
    let expr = "(() => { const n = document.querySelector('#notice'); \
                return !n.hidden && n.dataset.kind === 'reset'; })()";
    browser.eval(tab, expr).await == json!(true)
}

/// Restart the only node under an open feed page; returns the page's items at the end,
/// what was published before and after, and whether the page showed a reset.
async fn feed_across_a_restart(
    extra: &str,
    shot: &str,
) -> (Vec<(String, String)>, Vec<(String, String)>, bool) {
    let mut site = Site::start(vec![start_node(extra)]);
    let mut browser = Browser::launch().await;
    let feed = browser.open(&site.url("/demo/feed")).await;
    wait_state(&mut browser, feed, "connected", 1).await;

    let mut sent = publish_feed(&site, 6, "before").await;
    assert_eq!(
        feed_items(&mut browser, feed, 6).await,
        sent,
        "the feed shows each event with its ID and type"
    );

    restart(&mut site, 0, extra).await;
    // Published while the page waits out `retry`: only its resume can bring them.
    sent.extend(publish_feed(&site, 6, "after").await);
    let connects = browser
        .eval(
            feed,
            "Number(document.querySelector('#state').dataset.connects)",
        )
        .await;
    assert_eq!(
        connects, 1,
        "the page had not reconnected yet when the test published (sse.retry = {RETRY:?})"
    );
    wait_state(&mut browser, feed, "connected", 2).await;
    let marker = site
        .publish("demo:feed", "news", json!({ "text": "last" }))
        .await;
    let seen = wait_for_item(&mut browser, feed, &marker).await;
    let reset = reset_shown(&mut browser, feed).await;
    browser.screenshot(feed, &site.shot(shot)).await;
    sent.push((marker, "news".into()));
    (seen, sent, reset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_the_feed_survives_a_herald_restart_with_every_event_once() {
    let redis = RedisServer::start(RedisOptions::default());
    let (seen, sent, reset) =
        feed_across_a_restart(&redis.backend_toml(), "feed-redis-restart").await;
    assert!(!reset, "history in Redis bridges the restart: no reset");
    assert_eq!(
        seen, sent,
        "every event exactly once, in order, across the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_memory_backend_a_herald_restart_shows_the_reset() {
    let (seen, sent, reset) = feed_across_a_restart("", "feed-memory-reset").await;
    assert!(
        reset,
        "the new process cannot resume the old one's IDs: reset shown"
    );
    // What was shown before the restart stays; the new process's events follow.
    assert_eq!(seen[..6], sent[..6]);
    assert_eq!(seen.last(), sent.last(), "live again after the reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_from_the_connection_limit_is_waited_out_until_a_slot_frees() {
    let site = Site::start(vec![start_node(
        "[limits]\nmax_connections_per_ip = 1\nretry_after = \"1s\"\n",
    )]);
    // The address's one slot, held by the test (the browser comes from 127.0.0.1 too).
    let held = site
        .http
        .get(site.url("/events?channel=demo:feed"))
        .send()
        .await
        .expect("the holder's stream");
    assert_eq!(held.status(), 200);
    let mut held = EventStream::new(held);
    held.read_until("retry:", STEP)
        .await
        .expect("the holder is open");

    let mut browser = Browser::launch().await;
    let feed = browser.open(&site.url("/demo/feed")).await;
    let refused = "(() => { const s = document.querySelector('#state'); \
                   return s.dataset.state === 'reconnecting' && s.dataset.status; })()";
    let status = browser.wait(feed, refused, STEP, "the page refused").await;
    assert_eq!(status, "429", "the page saw the connection limit's answer");

    let freed = Instant::now();
    drop(held);
    wait_state(&mut browser, feed, "connected", 1).await;
    let waited = freed.elapsed();
    assert!(
        waited < Duration::from_secs(8),
        "connected {waited:?} after the slot freed (Retry-After 1 s, backoff with jitter)"
    );
    let id = site
        .publish("demo:feed", "alert", json!({ "text": "in" }))
        .await;
    wait_for_item(&mut browser, feed, &id).await;
    assert_eq!(site.open_streams(0).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_chat_tabs_share_one_stream_and_all_show_every_message() {
    const TABS: usize = 8;
    let site = Site::start(vec![start_node("")]);
    let mut browser = Browser::launch().await;
    let url = site.url("/demo/chat?room=shared");
    let mut tabs = Vec::new();
    for _ in 0..TABS {
        let tab = browser.open(&url).await;
        wait_state(&mut browser, tab, "connected", 1).await;
        tabs.push(tab);
    }
    assert_eq!(
        site.open_streams(0).await,
        1.0,
        "eight tabs on HTTP/1.1 hold one stream"
    );
    let roles = role_counts(&mut browser, &tabs).await;
    assert_eq!(roles, (1, TABS - 1), "one leader, seven followers");

    // One message typed in a tab, two from a backend.
    browser.fill(tabs[4], "#message", "typed in tab five").await;
    browser.click(tabs[4], "#send").await;
    let typed = browser
        .wait(
            tabs[4],
            "document.querySelector('#send-form').dataset.lastId",
            STEP,
            "the typed message sent",
        )
        .await;
    let mut ids = vec![typed.as_str().unwrap().to_string()];
    for text in ["from the backend", "and again"] {
        let data = json!({ "nick": "server", "text": text });
        ids.push(site.publish("chat:shared", "chat", data).await);
    }
    for tab in &tabs {
        assert_eq!(chat_ids(&mut browser, *tab, ids.len()).await, ids);
    }

    // The tab holding the stream goes away; another takes over, resuming from the last ID.
    let leader = leader_of(&mut browser, &tabs).await;
    let before = site.connections_total(0).await;
    browser.close(leader).await;
    tabs.retain(|t| *t != leader);
    let took_over = wait_for(STEP, || async { site.connections_total(0).await > before }).await;
    assert!(took_over, "a remaining tab opened the stream");
    let data = json!({ "nick": "server", "text": "after the handover" });
    ids.push(site.publish("chat:shared", "chat", data).await);
    for tab in &tabs {
        assert_eq!(chat_ids(&mut browser, *tab, ids.len()).await, ids);
    }
    assert_eq!(site.open_streams(0).await, 1.0, "still one stream");
    assert_eq!(role_counts(&mut browser, &tabs).await, (1, TABS - 2));
    browser.screenshot(tabs[0], &site.shot("chat")).await;
}

/// Each tab's herald.js role ("leader" or "follower"), in order.
async fn roles(browser: &mut Browser, tabs: &[Tab]) -> Vec<String> {
    let mut roles = Vec::new();
    for tab in tabs {
        let role = browser
            .eval(*tab, "document.querySelector('#state').dataset.role")
            .await;
        roles.push(role.as_str().unwrap_or_default().to_string());
    }
    roles
}

/// How many tabs lead and how many follow; any other role fails the test.
async fn role_counts(browser: &mut Browser, tabs: &[Tab]) -> (usize, usize) {
    let roles = roles(browser, tabs).await;
    assert!(
        roles.iter().all(|r| r == "leader" || r == "follower"),
        "tab roles {roles:?}"
    );
    let leaders = roles.iter().filter(|r| *r == "leader").count();
    (leaders, roles.len() - leaders)
}

async fn leader_of(browser: &mut Browser, tabs: &[Tab]) -> Tab {
    let roles = roles(browser, tabs).await;
    let at = roles.iter().position(|r| r == "leader");
    tabs[at.unwrap_or_else(|| panic!("no tab leads: {roles:?}"))]
}

/// The chat's message IDs in order, once there are `n`.
async fn chat_ids(browser: &mut Browser, tab: Tab, n: usize) -> Vec<String> {
    let expr = format!(
        "(() => {{ const ids = [...document.querySelectorAll('#messages li[data-id]')] \
         .map(li => li.dataset.id); return ids.length >= {n} && ids; }})()"
    );
    let value = browser
        .wait(tab, &expr, STEP, &format!("{n} chat messages"))
        .await;
    serde_json::from_value(value).expect("ids")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_demo_runs_to_100_percent_and_closes_its_stream() {
    let site = Site::start(vec![start_node("")]);
    let mut browser = Browser::launch().await;
    let tasks = browser.open(&site.url("/demo/tasks")).await;
    browser.click(tasks, "#start").await;
    // The job's stream is open while it runs...
    wait_state(&mut browser, tasks, "connected", 1).await;
    assert_eq!(site.open_streams(0).await, 1.0);
    let done = "(() => document.querySelector('#task-state').dataset.state === 'done' && \
                document.querySelector('#state').dataset.state === 'closed' && \
                document.querySelector('#progress').value)()";
    let percent = browser
        .wait(tasks, done, Duration::from_secs(40), "the job done")
        .await;
    assert_eq!(percent, 100, "the bar is full");
    // ...and closed by the page when the job says done.
    let closed = wait_for(STEP, || async { site.open_streams(0).await == 0.0 }).await;
    assert!(closed, "the page closed its stream");
    browser.screenshot(tasks, &site.shot("tasks")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_view_follows_the_node() {
    let site = Site::start(vec![start_node("")]);
    let mut browser = Browser::launch().await;
    let view = browser.open(&site.url("/demo/broker")).await;
    wait_state(&mut browser, view, "connected", 1).await;
    let streams = "Number(document.querySelector('#streams').textContent)";
    browser
        .wait(
            view,
            &format!("{streams} === 1"),
            STEP,
            "its own stream counted",
        )
        .await;

    // Three more streams and a burst of events: the figures follow.
    let mut held = Vec::new();
    for _ in 0..3 {
        let resp = site
            .http
            .get(site.url("/events?channel=demo:elsewhere"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        held.push(EventStream::new(resp));
    }
    browser
        .wait(
            view,
            &format!("{streams} === 4"),
            STEP,
            "four streams shown",
        )
        .await;
    // The figures count themselves (one event in per second, one out per viewer): only
    // the test's burst can lift them past 30 in and 90 out. One batch of 60 events lands
    // within one second's figure, delivered to the three held streams (180 out).
    let batch: Vec<Value> = (0..60)
        .map(|i| json!({ "channel": "demo:elsewhere", "event": "tick", "data": i.to_string() }))
        .collect();
    let resp = site
        .http
        .post(site.url("/publish"))
        .json(&batch)
        .timeout(STEP)
        .send()
        .await
        .expect("batch through nginx");
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let burst = "Number(document.querySelector('#events-in').textContent) >= 30 && \
                 Number(document.querySelector('#events-out').textContent) >= 90";
    browser
        .wait(view, burst, STEP, "the test's burst in the figures")
        .await;
    let points = "Number(document.querySelector('#chart').dataset.points) >= 3";
    browser
        .wait(view, points, STEP, "the chart has points")
        .await;
    browser.screenshot(view, &site.shot("broker")).await;
    drop(held);
}
