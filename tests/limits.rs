//! Admission limits, for real over loopback: each cap answers 429/503 (or 400/413) at once
//! with `Retry-After` where it applies and a short `{"error","message"}` body, never a hang
//! or a reset; slots come back when streams close; every refusal is counted by reason.
//! Also which address a stream is accounted to: the peer, or what a trusted proxy says.

mod common;
#[path = "common/hardening.rs"]
mod hardening;

use std::time::{Duration, Instant};

use common::*;
use hardening::*;
use serde_json::json;

const OPEN: &str = "herald_connections_open";

fn rejected(reason: &str) -> String {
    format!("herald_requests_rejected_total{{reason=\"{reason}\"}}")
}

/// Open a stream that must be admitted, and read its preamble.
async fn open_stream(request: reqwest::RequestBuilder) -> SseClient {
    let mut s = SseClient::connect_with(request).await;
    assert_eq!(
        s.status,
        200,
        "stream refused: {:?}",
        String::from_utf8_lossy(&s.raw)
    );
    s.expect_preamble().await;
    s
}

/// Wait until the node reports `n` open streams (a closed stream gives its slot back).
async fn wait_open(server: &TestServer, n: f64) {
    let m = reqwest::Client::new();
    let seen = wait_metric(&m, server.admin, OPEN, Duration::from_secs(5), |v| v == n).await;
    assert_eq!(seen, n, "open streams did not reach {n} within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_full_answers_503_with_retry_after_and_frees_a_slot_when_a_stream_closes() {
    let mut config = quick_config();
    config.limits.max_connections = 20;
    config.limits.max_connections_per_ip = 100;
    config.limits.retry_after = Duration::from_secs(7);
    let server = TestServer::start(config).await;
    let client = reqwest::Client::new();
    let url = server.url("/events?channel=full");

    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(open_stream(client.get(&url)).await);
    }
    let asked = Instant::now();
    let refused = answer(client.get(&url)).await;
    let took = asked.elapsed();
    assert_refusal(&refused, 503, "max_connections", Some("7"));
    // The cap is node-wide: another client address is refused too.
    let refused = answer(client_from(other_loopback()).get(&url)).await;
    assert_refusal(&refused, 503, "max_connections", Some("7"));
    let m = reqwest::Client::new();
    let text = metrics_text(&m, server.admin).await;
    assert_eq!(sample(&text, &rejected("max_connections")), 2.0);
    assert_eq!(sample(&text, OPEN), 20.0);
    eprintln!(
        "max_connections: held {} streams at limits.max_connections = 20; \
         the 21st was refused (503, Retry-After 7) in {took:?}",
        held.len()
    );

    // The same answer on a kept-alive connection that already served a publish.
    let kept = reqwest::Client::new();
    publish_data(&kept, &server.url("/publish"), "full", "hello").await;
    let refused = answer(kept.get(&url)).await;
    assert_refusal(&refused, 503, "max_connections", Some("7"));
    assert_eq!(
        metric_now(&m, server.admin, &rejected("max_connections")).await,
        3.0
    );

    // Closing one stream gives its slot back: the next stream is admitted.
    drop(held.pop());
    wait_open(&server, 19.0).await;
    held.push(open_stream(client.get(&url)).await);
    let refused = answer(client.get(&url)).await;
    assert_refusal(&refused, 503, "max_connections", Some("7"));
    assert_eq!(
        metric_now(&m, server.admin, &rejected("max_connections")).await,
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_cap_answers_429_for_that_address_only_and_frees_on_close() {
    let mut config = quick_config();
    config.limits.max_connections_per_ip = 3;
    config.limits.retry_after = Duration::from_secs(7);
    let server = TestServer::start(config).await;
    let url = server.url("/events?channel=ip");
    let first = reqwest::Client::new();
    let second = client_from(other_loopback());

    let mut from_first = Vec::new();
    for _ in 0..3 {
        from_first.push(open_stream(first.get(&url)).await);
    }
    let refused = answer(first.get(&url)).await;
    assert_refusal(&refused, 429, "max_connections_per_ip", Some("7"));
    // 127.0.0.2 is another client with its own quota of 3.
    let mut from_second = Vec::new();
    for _ in 0..3 {
        from_second.push(open_stream(second.get(&url)).await);
    }
    let refused = answer(second.get(&url)).await;
    assert_refusal(&refused, 429, "max_connections_per_ip", Some("7"));
    let m = reqwest::Client::new();
    assert_eq!(
        metric_now(&m, server.admin, &rejected("max_connections_per_ip")).await,
        2.0
    );
    eprintln!(
        "max_connections_per_ip: {} streams from 127.0.0.1 and {} from 127.0.0.2 held at \
         limits.max_connections_per_ip = 3; the 4th from each got 429",
        from_first.len(),
        from_second.len()
    );

    drop(from_first.pop());
    wait_open(&server, 5.0).await;
    from_first.push(open_stream(first.get(&url)).await);
    let refused = answer(first.get(&url)).await;
    assert_refusal(&refused, 429, "max_connections_per_ip", Some("7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_channel_answers_503_and_the_refusal_keeps_no_slot() {
    let mut config = quick_config();
    config.limits.max_subscribers_per_channel = 2;
    config.limits.max_connections = 3;
    config.limits.retry_after = Duration::from_secs(7);
    let server = TestServer::start(config).await;
    let client = reqwest::Client::new();
    let room = server.url("/events?channel=room");

    let a = open_stream(client.get(&room)).await;
    let _b = open_stream(client.get(&room)).await;
    let refused = answer(client.get(&room)).await;
    assert_refusal(&refused, 503, "max_subscribers_per_channel", Some("7"));
    // A subscription naming the full channel among others is refused as a whole.
    let refused = answer(client.get(server.url("/events?channel=other&channel=room"))).await;
    assert_refusal(&refused, 503, "max_subscribers_per_channel", Some("7"));
    // Those refusals gave back the connection slot they were admitted with: the third
    // (last) slot of limits.max_connections is free for another channel...
    let _c = open_stream(client.get(server.url("/events?channel=other"))).await;
    // ...and then the node is exactly full.
    let refused = answer(client.get(server.url("/events?channel=third"))).await;
    assert_refusal(&refused, 503, "max_connections", Some("7"));
    let m = reqwest::Client::new();
    let text = metrics_text(&m, server.admin).await;
    assert_eq!(sample(&text, &rejected("max_subscribers_per_channel")), 2.0);
    assert_eq!(sample(&text, &rejected("max_connections")), 1.0);
    assert_eq!(sample(&text, OPEN), 3.0);

    // A subscriber leaving the channel lets the next one in.
    drop(a);
    wait_open(&server, 2.0).await;
    let _d = open_stream(client.get(&room)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_channels_in_one_subscription_is_400() {
    let mut config = quick_config();
    config.limits.max_channels_per_subscription = 2;
    let server = TestServer::start(config).await;
    let client = reqwest::Client::new();
    let refused = answer(client.get(server.url("/events?channel=a&channel=b&channel=c"))).await;
    assert_refusal(&refused, 400, "too_many_channels", None);
    // Repeats of one name count once; two names are within the cap.
    let _s = open_stream(client.get(server.url("/events?channel=a&channel=b&channel=a"))).await;
    let m = reqwest::Client::new();
    let text = metrics_text(&m, server.admin).await;
    assert_eq!(sample(&text, &rejected("too_many_channels")), 1.0);
    assert_eq!(sample(&text, OPEN), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_stream_rate_per_ip_answers_429_with_retry_after_then_admits_after_it() {
    let mut config = quick_config();
    config.limits.new_streams_per_ip_per_second = 1.0;
    config.limits.new_streams_burst_per_ip = 3;
    let server = TestServer::start(config).await;
    let url = server.url("/events?channel=storm");
    let client = reqwest::Client::new();

    // The burst: three streams at once, opened and closed (a reconnect storm).
    for _ in 0..3 {
        drop(open_stream(client.get(&url)).await);
    }
    let refused = answer(client.get(&url)).await;
    assert_refusal(&refused, 429, "rate_limited", Some("1"));
    // Another address has its own bucket.
    let _other = open_stream(client_from(other_loopback()).get(&url)).await;
    let m = reqwest::Client::new();
    assert_eq!(
        metric_now(&m, server.admin, &rejected("rate_limited")).await,
        1.0
    );

    // Waiting as long as Retry-After says is enough.
    let wait: u64 = refused.retry_after.as_deref().unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let _again = open_stream(client.get(&url)).await;
    // And the token it used is gone again.
    let refused = answer(client.get(&url)).await;
    assert_refusal(&refused, 429, "rate_limited", Some("1"));
    eprintln!("rate limit: burst of 3 admitted, 4th refused; admitted again after {wait} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_publishes_get_413_and_publish_nothing() {
    let mut config = quick_config();
    config.limits.max_body_bytes = 4096;
    config.limits.max_event_bytes = 1024;
    config.limits.max_batch_events = 3;
    let server = TestServer::start(config).await;
    let client = reqwest::Client::new();
    let url = server.url("/publish");
    let mut watcher = SseClient::connect(&server.url("/events?channel=big")).await;
    watcher.expect_preamble().await;
    let publish = |body: reqwest::Body| {
        client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
    };
    let ev = |data: String| json!({"channel": "big", "data": data}).to_string();

    // A body over limits.max_body_bytes, declared by Content-Length...
    let a = answer(publish(ev("x".repeat(5000)).into())).await;
    assert_refusal(&a, 413, "body_too_large", None);
    // ...and one that does not declare its length (chunked).
    let chunks: Vec<Result<String, std::io::Error>> =
        vec![Ok(ev("y".repeat(3000))), Ok(" ".repeat(3000))];
    let a = answer(publish(reqwest::Body::wrap_stream(
        futures_util::stream::iter(chunks),
    )))
    .await;
    assert_refusal(&a, 413, "body_too_large", None);
    // One event over limits.max_event_bytes in a body within limits.
    let a = answer(publish(ev("z".repeat(2000)).into())).await;
    assert_refusal(&a, 413, "event_too_large", None);
    // A batch over limits.max_batch_events.
    let batch = json!([
        {"channel": "big", "data": "1"},
        {"channel": "big", "data": "2"},
        {"channel": "big", "data": "3"},
        {"channel": "big", "data": "4"}
    ]);
    let a = answer(publish(batch.to_string().into())).await;
    assert_refusal(&a, 413, "batch_too_large", None);

    let m = reqwest::Client::new();
    let text = metrics_text(&m, server.admin).await;
    let counted = |r: &str| {
        sample(
            &text,
            &format!("herald_publish_rejected_total{{reason=\"{r}\"}}"),
        )
    };
    assert_eq!(counted("body_too_large"), 2.0);
    assert_eq!(counted("event_too_large"), 1.0);
    assert_eq!(counted("batch_too_large"), 1.0);
    assert_eq!(sample(&text, "herald_events_published_total"), 0.0);

    // Nothing got through; the next valid publish is the first event the watcher sees.
    let a = answer(publish(ev("ok".into()).into())).await;
    assert_eq!(a.status, 200, "{a:?}");
    let e = watcher.next_event(Duration::from_secs(5)).await;
    assert_eq!(e.data, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_forwarded_addresses_get_their_own_quota() {
    let mut config = quick_config();
    config.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    config.limits.max_connections_per_ip = 1;
    let server = TestServer::start(config).await;
    let url = server.url("/events?channel=proxied");
    let proxy = reqwest::Client::new();
    let xff = |ip: &str| proxy.get(&url).header("x-forwarded-for", ip.to_string());

    let _one = open_stream(xff("203.0.113.1")).await;
    let refused = answer(xff("203.0.113.1")).await;
    assert_refusal(&refused, 429, "max_connections_per_ip", Some("5"));
    // Another forwarded client, through the same proxy connection address.
    let _two = open_stream(xff("203.0.113.2")).await;
    // The client is the rightmost untrusted hop; what it put on the left is ignored.
    let refused = answer(xff("198.51.100.66, 203.0.113.2")).await;
    assert_refusal(&refused, 429, "max_connections_per_ip", Some("5"));
    // X-Real-IP names the client when there is no X-Forwarded-For.
    let _three = open_stream(proxy.get(&url).header("x-real-ip", "198.51.100.7")).await;
    let refused = answer(proxy.get(&url).header("x-real-ip", "198.51.100.7")).await;
    assert_refusal(&refused, 429, "max_connections_per_ip", Some("5"));
    // The proxy's own requests (no header) are accounted to the proxy address.
    let _four = open_stream(proxy.get(&url)).await;

    // 127.0.0.2 is not a trusted proxy: its forwarded header is ignored, so its second
    // stream hits its own per-IP cap whatever address it claims.
    let untrusted = client_from(other_loopback());
    let _five = open_stream(
        untrusted
            .get(&url)
            .header("x-forwarded-for", "203.0.113.50"),
    )
    .await;
    let refused = answer(
        untrusted
            .get(&url)
            .header("x-forwarded-for", "203.0.113.51"),
    )
    .await;
    assert_refusal(&refused, 429, "max_connections_per_ip", Some("5"));

    let m = reqwest::Client::new();
    let text = metrics_text(&m, server.admin).await;
    assert_eq!(sample(&text, OPEN), 5.0);
    assert_eq!(sample(&text, &rejected("max_connections_per_ip")), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trusted_proxies_a_spoofed_forwarded_for_changes_nothing() {
    let mut config = quick_config();
    assert!(config.server.trusted_proxies.is_empty());
    config.limits.max_connections_per_ip = 1;
    let server = TestServer::start(config).await;
    let url = server.url("/events?channel=spoof");
    let client = reqwest::Client::new();

    let _mine = open_stream(client.get(&url)).await;
    for (name, value) in [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-for", "203.0.113.9, 10.0.0.1"),
        ("x-real-ip", "198.51.100.9"),
    ] {
        let refused = answer(client.get(&url).header(name, value)).await;
        assert_refusal(&refused, 429, "max_connections_per_ip", Some("5"));
    }
    // A genuinely different address (another loopback source) is a different client.
    let _other = open_stream(client_from(other_loopback()).get(&url)).await;
    let m = reqwest::Client::new();
    assert_eq!(
        metric_now(&m, server.admin, &rejected("max_connections_per_ip")).await,
        3.0
    );
}
