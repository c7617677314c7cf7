//! Heartbeats on idle streams: spacing, the named-event form, silence while events flow,
//! and the counter that reports them.

mod common;

use std::time::{Duration, Instant};

use common::sse_parser::Item;
use common::*;

const WAIT: Duration = Duration::from_secs(5);
/// Timers may fire a little early on a busy machine, never by much.
const EARLY: Duration = Duration::from_millis(30);

/// The next `n` items with their arrival times; panics on end or timeout.
async fn timed_items(s: &mut SseClient, n: usize) -> Vec<(Item, Instant)> {
    let mut out = Vec::new();
    for _ in 0..n {
        match s.next_timed(WAIT).await {
            Some(Ok(x)) => out.push(x),
            other => panic!("after {out:?}: {other:?}"),
        }
    }
    out
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_gets_ping_comments_at_the_interval() {
    let interval = Duration::from_millis(200);
    let mut config = quick_config();
    config.sse.heartbeat_interval = interval;
    let server = TestServer::start(config).await;
    let mut s = SseClient::connect(&server.url("/events?channel=idle")).await;
    let items = timed_items(&mut s, 6).await;
    assert_eq!(items[0].0, Item::Comment("herald".into()));
    for (item, _) in &items[1..] {
        assert_eq!(*item, Item::Comment("ping".into()));
    }
    let want = format!("retry: 3000\n: herald\n\n{}", ": ping\n\n".repeat(5));
    assert_eq!(String::from_utf8_lossy(&s.raw), want);

    let times: Vec<Instant> = items.iter().map(|(_, t)| *t).collect();
    let gaps = gaps(&times);
    for g in &gaps {
        assert!(*g >= interval - EARLY, "heartbeat too early: {gaps:?}");
        assert!(*g < interval * 3, "heartbeat late: {gaps:?}");
    }
    let mean = gaps.iter().sum::<Duration>() / gaps.len() as u32;
    assert!(mean < interval * 3 / 2, "heartbeats drift: {gaps:?}");

    let sent = metric(
        &server.admin_url("/metrics"),
        "herald_heartbeats_sent_total",
    )
    .await;
    assert!(
        (5.0..=6.0).contains(&sent),
        "{sent} heartbeats counted, 5 received"
    );
    drop(s);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_heartbeat_while_events_flow() {
    let interval = Duration::from_millis(400);
    let mut config = quick_config();
    config.sse.heartbeat_interval = interval;
    let server = TestServer::start(config).await;
    let client = reqwest::Client::new();
    let mut s = SseClient::connect(&server.url("/events?channel=busy")).await;
    s.expect_preamble().await;
    // 20 events 50 ms apart: the stream is never idle for a whole interval.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for i in 0..20 {
        tick.tick().await;
        publish_data(&client, &server.url("/publish"), "busy", &i.to_string()).await;
    }
    let mut last_event_at = None;
    for i in 0..20 {
        match s.next_timed(WAIT).await {
            Some(Ok((Item::Event(e), at))) => {
                assert_eq!(e.data, i.to_string());
                last_event_at = Some(at);
            }
            other => panic!("expected event {i}, got {other:?}"),
        }
    }
    // The first heartbeat comes one interval after the last write, not earlier.
    let (item, at) = timed_items(&mut s, 1).await.remove(0);
    assert_eq!(item, Item::Comment("ping".into()));
    let quiet = at - last_event_at.unwrap();
    assert!(
        quiet >= interval - EARLY,
        "ping {quiet:?} after the last event"
    );
    assert!(quiet < interval * 3, "ping {quiet:?} after the last event");
    let sent = metric(
        &server.admin_url("/metrics"),
        "herald_heartbeats_sent_total",
    )
    .await;
    assert!((1.0..=2.0).contains(&sent), "{sent}");
    drop(s);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_heartbeat_event() {
    let interval = Duration::from_millis(150);
    let mut config = quick_config();
    config.sse.heartbeat_interval = interval;
    config.sse.heartbeat_event = "hb".into();
    let server = TestServer::start(config).await;
    let mut s = SseClient::connect(&server.url("/events?channel=named")).await;
    let items = timed_items(&mut s, 4).await;
    assert_eq!(items[0].0, Item::Comment("herald".into()));
    for (item, _) in &items[1..] {
        match item {
            Item::Event(e) => {
                assert_eq!((e.event_type.as_str(), e.data.as_str()), ("hb", ""));
                assert_eq!(e.last_event_id, "", "a heartbeat carries no ID");
            }
            other => panic!("expected an hb event, got {other:?}"),
        }
    }
    let want = format!(
        "retry: 3000\n: herald\n\n{}",
        "event: hb\ndata: \n\n".repeat(3)
    );
    assert_eq!(String::from_utf8_lossy(&s.raw), want);
    let times: Vec<Instant> = items.iter().map(|(_, t)| *t).collect();
    for g in gaps(&times) {
        assert!(g >= interval - EARLY && g < interval * 3, "{g:?}");
    }
    let sent = metric(
        &server.admin_url("/metrics"),
        "herald_heartbeats_sent_total",
    )
    .await;
    assert!((3.0..=4.0).contains(&sent), "{sent}");
    drop(s);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_of_every_stream_are_counted() {
    let mut config = quick_config();
    config.sse.heartbeat_interval = Duration::from_millis(150);
    let server = TestServer::start(config).await;
    let metrics = server.admin_url("/metrics");
    assert_eq!(metric(&metrics, "herald_heartbeats_sent_total").await, 0.0);
    let mut a = SseClient::connect(&server.url("/events?channel=a")).await;
    let mut b = SseClient::connect(&server.url("/events?channel=b&channel=c")).await;
    let (ia, ib) = tokio::join!(timed_items(&mut a, 4), timed_items(&mut b, 4));
    for (item, _) in ia[1..].iter().chain(&ib[1..]) {
        assert_eq!(*item, Item::Comment("ping".into()));
    }
    let sent = metric(&metrics, "herald_heartbeats_sent_total").await;
    assert!((6.0..=8.0).contains(&sent), "{sent} counted, 6 received");
    drop((a, b));
    server.stop().await;
}
