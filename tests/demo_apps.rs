//! The demo apps under `/demo/`: the pages are served only while `server.demo_page` is on,
//! a job started with `POST /demo/tasks` reports its progress on its channel (on one node
//! and across two nodes on Redis), the job cap answers 429, the drain cancels jobs (seen
//! from another node on the same Redis), and the broker's figures on `demo:broker` follow
//! what the test does.

mod common;
mod support;

use std::time::Duration;

use common::sse_parser::Event;
use common::*;
use herald::demo::{broker, tasks};
use serde_json::{json, Value};
use support::redis::{RedisOptions, RedisServer};

const WAIT: Duration = Duration::from_secs(5);
/// A job takes 2 to 6 s; a debug build on a busy machine gets some slack.
const JOB_WAIT: Duration = Duration::from_secs(20);

const PAGES: [(&str, &str); 6] = [
    ("/demo/chat", "text/html; charset=utf-8"),
    ("/demo/tasks", "text/html; charset=utf-8"),
    ("/demo/feed", "text/html; charset=utf-8"),
    ("/demo/broker", "text/html; charset=utf-8"),
    ("/demo/style.css", "text/css; charset=utf-8"),
    ("/demo/page.js", "text/javascript; charset=utf-8"),
];

/// A node without the demo: `server.demo_page` off and no `--demo`.
async fn demo_off() -> TestServer {
    let mut config = quick_config();
    config.server.demo_page = false;
    TestServer::start_with_options(config, herald::server::RunOptions::default()).await
}

/// `POST /demo/tasks`: status, the `Retry-After` header, the JSON answer.
async fn start_job(url: &str) -> (u16, Option<String>, Value) {
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, reqwest::Client::new().post(url).send())
        .await
        .expect("answer within the deadline")
        .expect("request");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (
        status,
        retry_after,
        resp.json().await.expect("a JSON answer"),
    )
}

/// Start a job that must be accepted and subscribe to it as the page does: from the
/// first event's ID.
async fn job_stream(start_url: &str, events_base: &str) -> (Value, SseClient) {
    let (status, _, job) = start_job(start_url).await;
    assert_eq!(status, 202, "{job}");
    let channel = job["channel"].as_str().expect("a channel").to_string();
    assert!(channel.starts_with(tasks::CHANNEL_PREFIX), "{job}");
    let first = job["last_event_id"].as_str().expect("an ID");
    let mut stream =
        SseClient::resume(&format!("{events_base}/events?channel={channel}"), first).await;
    assert_eq!(stream.status, 200);
    stream.expect_preamble().await;
    (job, stream)
}

/// The job's events up to and including `done` or `cancelled`.
async fn events_until_over(stream: &mut SseClient) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        let e = stream.next_event(JOB_WAIT).await;
        let over = e.event_type != "progress";
        events.push(e);
        if over {
            return events;
        }
    }
}

fn data(e: &Event) -> Value {
    serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("{err}: {e:?}"))
}

/// Every page (and the stylesheet) is served in demo mode, imports herald.js, links back
/// to the console, which links to each; with `server.demo_page` off, all of it and the
/// job endpoint are 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_served_only_with_the_demo_page_on() {
    let on = TestServer::start(quick_config()).await;
    let (_, console) = get_text(&on.url("/")).await;
    for (path, content_type) in PAGES {
        let resp = reqwest::get(on.url(path)).await.expect("request");
        assert_eq!(resp.status(), 200, "{path}");
        let header = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(header, content_type, "{path}");
        let body = resp.text().await.unwrap();
        if path.ends_with(".css") {
            assert!(body.contains("--accent"), "the console's variables");
            continue;
        }
        if path.ends_with(".js") {
            assert!(
                body.contains("export function setState"),
                "the pages' module"
            );
            continue;
        }
        assert!(
            body.contains(r#"import { connect } from "/herald.js";"#),
            "{path} uses herald.js"
        );
        assert!(!body.contains("EventSource("), "{path} uses connect()");
        assert!(
            body.contains(r#"<a href="/">console</a>"#),
            "{path} links back"
        );
        assert!(
            console.contains(&format!(r#"href="{}""#, &path[1..])),
            "the console links to {path}"
        );
        let head = reqwest::Client::new().head(on.url(path)).send().await;
        assert_eq!(head.unwrap().status(), 200, "HEAD {path}");
    }
    let (status, body) = send_json(reqwest::Client::new().delete(on.url("/demo/tasks"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, _) = post(&reqwest::Client::new(), &on.url("/demo/chat"), None, "").await;
    assert_eq!(status, 405);
    assert_eq!(get_json(&on.url("/demo/nothing")).await.0, 404);
    on.stop().await;

    let off = demo_off().await;
    for path in ["/"].into_iter().chain(PAGES.map(|(p, _)| p)) {
        let (status, body) = get_json(&off.url(path)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
    }
    let (status, _, body) = start_job(&off.url("/demo/tasks")).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    off.stop().await;
}

/// A job's channel, read from the first event's ID: progress rising step by step to 100,
/// then `done`, IDs increasing, nothing before the ID the answer gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reports_progress_to_100_then_done() {
    let server = TestServer::start(quick_config()).await;
    let (job, mut stream) = job_stream(&server.url("/demo/tasks"), &server.url("")).await;
    assert_eq!(job["steps"], tasks::STEPS);
    let events = events_until_over(&mut stream).await;
    let (done, progress) = events.split_last().unwrap();
    assert_eq!(done.event_type, "done", "{events:?}");
    assert_eq!(data(done)["percent"], 100);
    assert_eq!(data(done)["task"], job["task"]);
    let percents: Vec<u64> = progress
        .iter()
        .map(|e| data(e)["percent"].as_u64().expect("a percent"))
        .collect();
    let expected: Vec<u64> = (1..=tasks::STEPS as u64)
        .map(|s| s * 100 / tasks::STEPS as u64)
        .collect();
    assert_eq!(percents, expected, "{events:?}");
    let mut ids = vec![job["last_event_id"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap()];
    ids.extend(
        events
            .iter()
            .map(|e| e.last_event_id.parse::<u64>().unwrap()),
    );
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    server.stop().await;
}

/// Past [`tasks::MAX_RUNNING`] jobs, a start is refused like herald's other refusals (429,
/// `Retry-After`, a JSON error); once a job has ended, a start is accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_past_the_cap_get_429() {
    let mut config = quick_config();
    config.limits.retry_after = Duration::from_secs(2);
    let server = TestServer::start(config).await;
    let url = server.url("/demo/tasks");
    for _ in 0..tasks::MAX_RUNNING {
        let (status, _, job) = start_job(&url).await;
        assert_eq!(status, 202, "{job}");
    }
    let (status, retry_after, body) = start_job(&url).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(retry_after.as_deref(), Some("2"));
    assert_eq!(body["error"], "too_many_tasks");
    assert!(
        body["message"].as_str().unwrap().contains("8 demo jobs"),
        "{body}"
    );
    let freed = wait_for(JOB_WAIT, || async { start_job(&url).await.0 == 202 }).await;
    assert!(freed, "a start accepted once a job has ended");
    server.stop().await;
}

/// The next figure on `demo:broker` for which `check` holds, within `deadline`.
async fn figure_where(
    stream: &mut SseClient,
    deadline: Duration,
    mut check: impl FnMut(&Value) -> bool,
) -> Value {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let e = stream.next_event(left).await;
        assert_eq!(e.event_type, broker::EVENT, "{e:?}");
        let figure = data(&e);
        if check(&figure) {
            return figure;
        }
    }
}

/// The figures count the streams the test opens and the events it publishes and has
/// delivered; an idle node's figures cannot reach those values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_figures_follow_what_the_test_does() {
    let server = TestServer::start(quick_config()).await;
    let url = server.url(&format!("/events?channel={}", broker::CHANNEL));
    let mut figures = SseClient::connect(&url).await;
    figures.expect_preamble().await;
    let first = figure_where(&mut figures, WAIT, |_| true).await;
    let before = first["streams"].as_i64().expect("streams");
    assert!(before >= 1, "this stream is counted: {first}");
    for key in ["events_in", "events_out", "channels", "at"] {
        assert!(first[key].is_number(), "{key} in {first}");
    }

    let mut extra = Vec::new();
    for _ in 0..3 {
        let mut s = SseClient::connect(&server.url("/events?channel=load")).await;
        s.expect_preamble().await;
        extra.push(s);
    }
    let seen = figure_where(&mut figures, WAIT, |f| {
        f["streams"].as_i64() >= Some(before + 3)
    })
    .await;
    assert_eq!(seen["node"], first["node"]);

    // 60 events in one batch, 180 deliveries: they fall in one or two intervals, so one
    // figure shows at least half of each (an idle node shows about 1 a second).
    let batch: Vec<Value> = (0..60)
        .map(|i| json!({"channel": "load", "data": i.to_string()}))
        .collect();
    publish(
        &reqwest::Client::new(),
        &server.url("/publish"),
        &Value::from(batch),
    )
    .await;
    for s in &mut extra {
        s.events(60, WAIT).await;
    }
    let rate = |f: &Value, key: &str| f[key].as_f64().unwrap_or(0.0);
    let (mut most_in, mut most_out) = (0.0_f64, 0.0_f64);
    figure_where(&mut figures, WAIT, |f| {
        most_in = most_in.max(rate(f, "events_in"));
        most_out = most_out.max(rate(f, "events_out"));
        most_in >= 30.0 && most_out >= 90.0
    })
    .await;
    server.stop().await;
}

/// With the demo page off, nothing is published on `demo:broker`, even to a subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_broker_figures_with_the_demo_page_off() {
    let server = demo_off().await;
    let mut figures =
        SseClient::connect(&server.url(&format!("/events?channel={}", broker::CHANNEL))).await;
    figures.expect_preamble().await;
    // An absence can only be waited out: three intervals.
    match figures.next(broker::INTERVAL * 3).await {
        Next::Timeout => {}
        other => panic!("expected no figures, got {other:?}"),
    }
    server.stop().await;
}

/// On two nodes sharing one Redis, a job started on one is followed on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_one_redis_node_is_followed_on_another() {
    let redis = RedisServer::start(RedisOptions::default());
    let a = HeraldProcess::spawn(&redis.backend_toml(), &["--demo"]);
    let b = HeraldProcess::spawn(&redis.backend_toml(), &["--demo"]);
    let (job, mut stream) = job_stream(&a.url("/demo/tasks"), &b.url("")).await;
    let events = events_until_over(&mut stream).await;
    assert_eq!(events.last().unwrap().event_type, "done", "{events:?}");
    assert_eq!(events.len(), tasks::STEPS as usize + 1, "{events:?}");
    assert!(events.iter().all(|e| data(e)["task"] == job["task"]));
}

/// The drain stops a running job: on two nodes sharing one Redis, a job started on the
/// node that drains says `cancelled` on its channel, which a stream on the other node
/// receives; the draining node exits cleanly, its jobs stopped in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_cancels_running_jobs() {
    let redis = RedisServer::start(RedisOptions::default());
    let mut a = HeraldProcess::spawn(&redis.backend_toml(), &["--demo"]);
    let b = HeraldProcess::spawn(&redis.backend_toml(), &["--demo"]);
    let (job, mut stream) = job_stream(&a.url("/demo/tasks"), &b.url("")).await;
    let first = stream.next_event(WAIT).await;
    assert_eq!(first.event_type, "progress");
    a.terminate();
    let events = events_until_over(&mut stream).await;
    let last = events.last().unwrap();
    assert_eq!(last.event_type, "cancelled", "{events:?}");
    assert_eq!(data(last)["task"], job["task"]);
    assert!(data(last)["percent"].as_u64().unwrap() < 100, "{last:?}");
    let status = a.wait_exit_async(Duration::from_secs(15)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(a.wait_stderr_closed(WAIT).await);
    let log = a.stderr_text();
    assert!(!log.contains("did not stop in time"), "{log}");
}
