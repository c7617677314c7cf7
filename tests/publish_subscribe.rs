//! Publishing and subscribing over HTTP: what a subscriber receives, what a publisher is
//! told, and every refusal (status + error code) leaving nothing published.

mod common;
#[path = "common/hardening.rs"]
mod hardening;

use std::time::Duration;

use common::*;
use hardening::wait_metric;
use herald::server::RunOptions;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_headers_and_preamble() {
    let mut config = quick_config();
    config.sse.retry = Duration::from_millis(1500);
    let server = TestServer::start(config).await;
    let mut s = SseClient::connect(&server.url("/events?channel=a&channel=b")).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("cache-control"), Some("no-cache"));
    assert_eq!(s.header("x-accel-buffering"), Some("no"));
    // The preamble arrives by itself, before anything is published.
    s.expect_preamble().await;
    assert_eq!(s.raw, b"retry: 1500\n: herald\n\n");
    assert_eq!(s.reconnection_time(), Some(1500));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_the_channel_subscribers_only() {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    let mut news = SseClient::connect(&server.url("/events?channel=news")).await;
    let mut sports = SseClient::connect(&server.url("/events?channel=sports")).await;
    news.expect_preamble().await;
    sports.expect_preamble().await;

    let answer = publish(
        &client,
        &server.url("/publish"),
        &json!({"channel": "news", "event": "headline", "data": "hello"}),
    )
    .await;
    let obj = answer.as_object().expect("an object");
    assert_eq!(obj.len(), 2, "{answer}");
    assert_eq!(answer["channel"], "news");
    let id = id_of(&answer);

    let e = news.next_event(WAIT).await;
    assert_eq!(
        (e.event_type.as_str(), e.data.as_str()),
        ("headline", "hello")
    );
    assert_eq!(e.last_event_id, id.to_string());

    // sports must not have seen the news event: its first event is its own.
    let sid = publish_data(&client, &server.url("/publish"), "sports", "goal").await;
    let e = sports.next_event(WAIT).await;
    assert_eq!(
        (e.data.as_str(), e.last_event_id),
        ("goal", sid.to_string())
    );
    assert!(sid > id);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_many_channels_in_id_order() {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    let url = server.url("/publish");
    let mut s = SseClient::connect(&server.url("/events?channel=a&channel=b&channel=c")).await;
    s.expect_preamble().await;
    let mut ids = Vec::new();
    for (ch, data) in [
        ("a", "1"),
        ("b", "2"),
        ("z", "skip"),
        ("c", "3"),
        ("a", "4"),
    ] {
        let id = publish_data(&client, &url, ch, data).await;
        if ch != "z" {
            ids.push((id.to_string(), data.to_string()));
        }
    }
    let got: Vec<(String, String)> = s
        .events(4, WAIT)
        .await
        .into_iter()
        .map(|e| (e.last_event_id, e.data))
        .collect();
    assert_eq!(got, ids);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_one_increasing_decimal_sequence_across_channels() {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    let url = server.url("/publish");
    let mut ids = Vec::new();
    for ch in ["x", "y", "x", "z", "y"] {
        ids.push(publish_data(&client, &url, ch, "d").await);
    }
    let batch = publish(
        &client,
        &url,
        &json!([{"channel": "z", "data": "1"}, {"channel": "x", "data": "2"}]),
    )
    .await;
    for e in batch["events"].as_array().unwrap() {
        ids.push(id_of(e));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_publish_answers_every_id_and_delivers_in_order() {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    let mut s = SseClient::connect(&server.url("/events?channel=a&channel=b")).await;
    s.expect_preamble().await;
    let answer = publish(
        &client,
        &server.url("/publish"),
        &json!([
            {"channel": "a", "data": "one"},
            {"channel": "b", "event": "two", "data": "2"},
            {"channel": "a", "data": {"n": 3}, "retry": 250}
        ]),
    )
    .await;
    let events = answer["events"].as_array().expect("events array");
    assert_eq!(answer.as_object().unwrap().len(), 1, "{answer}");
    let channels: Vec<&str> = events
        .iter()
        .map(|e| e["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels, ["a", "b", "a"]);
    let ids: Vec<u64> = events.iter().map(id_of).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    let got = s.events(3, WAIT).await;
    let seen: Vec<(String, String, String)> = got
        .into_iter()
        .map(|e| (e.last_event_id, e.event_type, e.data))
        .collect();
    assert_eq!(
        seen,
        [
            (ids[0].to_string(), "message".into(), "one".into()),
            (ids[1].to_string(), "two".into(), "2".into()),
            (ids[2].to_string(), "message".into(), r#"{"n":3}"#.into()),
        ]
    );
    assert_eq!(s.reconnection_time(), Some(250));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_encoded_publish() {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    let mut s = SseClient::connect(&server.url("/events?channel=news")).await;
    s.expect_preamble().await;
    let (status, answer) = post(
        &client,
        &server.url("/publish"),
        Some("application/x-www-form-urlencoded"),
        "channel=news&event=score&data=hello+world%0Aline+2&retry=10",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["channel"], "news");
    let id = id_of(&answer);
    let e = s.next_event(WAIT).await;
    assert_eq!(e.event_type, "score");
    assert_eq!(e.data, "hello world\nline 2");
    assert_eq!(e.last_event_id, id.to_string());
    assert_eq!(s.reconnection_time(), Some(10));
    server.stop().await;
}

/// Publish each `data` value and return what the subscriber receives for it.
async fn round_trip_data(values: &[Value]) -> Vec<String> {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    let mut s = SseClient::connect(&server.url("/events?channel=d")).await;
    s.expect_preamble().await;
    for v in values {
        // Sent with whitespace the broker must not keep.
        let body = serde_json::to_string_pretty(&json!({"channel": "d", "data": v})).unwrap();
        let (status, answer) = post(
            &client,
            &server.url("/publish"),
            Some("application/json"),
            body,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    let got = s.events(values.len(), WAIT).await;
    server.stop().await;
    got.into_iter().map(|e| e.data).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_data_as_is_other_json_compact() {
    let values = [
        json!("plain text"),
        json!("{\"kept\": \"as is\"}"),
        json!(""),
        json!({"a": [1, 2, {"b": null}]}),
        json!([true, false]),
        json!(42),
        json!(-1.5),
        json!(null),
    ];
    let got = round_trip_data(&values).await;
    assert_eq!(
        got,
        [
            "plain text",
            "{\"kept\": \"as is\"}",
            "",
            r#"{"a":[1,2,{"b":null}]}"#,
            "[true,false]",
            "42",
            "-1.5",
            "null"
        ]
    );
}

/// Compacting removes whitespace; it must not rewrite the publisher's JSON otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_json_data_keeps_key_order() {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    let mut s = SseClient::connect(&server.url("/events?channel=d")).await;
    s.expect_preamble().await;
    let (status, _) = post(
        &client,
        &server.url("/publish"),
        Some("application/json"),
        r#"{"channel": "d", "data": {"type": "goal", "minute": 12, "by": {"name": "x", "id": 7}}}"#,
    )
    .await;
    assert_eq!(status, 200);
    let e = s.next_event(WAIT).await;
    assert_eq!(
        e.data,
        r#"{"type":"goal","minute":12,"by":{"name":"x","id":7}}"#
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_without_keys_only_on_admin_listener() {
    let server = TestServer::start_with_options(quick_config(), RunOptions::default()).await;
    let client = reqwest::Client::new();
    let body = json!({"channel": "a", "data": "x"}).to_string();
    let (status, answer) = post(
        &client,
        &server.url("/publish"),
        Some("application/json"),
        body.clone(),
    )
    .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (403, Some("publish_disabled"))
    );
    let (status, answer) = post(
        &client,
        &server.admin_url("/publish"),
        Some("application/json"),
        body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["channel"], "a");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_keys_are_required_when_configured() {
    let key = "k-0123456789abcdef";
    let mut config = quick_config();
    config.auth.publish_keys = vec![key.to_string()];
    let server = TestServer::start(config).await;
    let client = reqwest::Client::new();
    let body = json!({"channel": "a", "data": "x"}).to_string();
    for url in [server.url("/publish"), server.admin_url("/publish")] {
        let req = |auth: Option<String>| {
            let mut r = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone());
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r
        };
        let (status, answer) = send_json(req(None)).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (401, Some("missing_key")),
            "{url}"
        );
        let (status, answer) = send_json(req(Some("Bearer not-the-key-at-all".into()))).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (401, Some("invalid_key")),
            "{url}"
        );
        let (status, answer) = send_json(req(Some(format!("Bearer {key}")))).await;
        assert_eq!(status, 200, "{url}: {answer}");
    }
    let published = events_published(server.admin).await;
    assert_eq!(published, 2.0);
    server.stop().await;
}

/// Read from `sock` until the bytes received contain `needle` (5 s deadline).
async fn read_until(sock: &mut tokio::net::TcpStream, got: &mut Vec<u8>, needle: &str) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(got).contains(needle) {
        let n = tokio::time::timeout(WAIT, sock.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(got)))
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}: {:?}",
            String::from_utf8_lossy(got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// A subscription on a keep-alive connection that already served another request (as a
/// browser may reuse one) streams just like one on a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_on_a_reused_connection() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start(quick_config()).await;
    let mut sock = tokio::net::TcpStream::connect(server.public).await.unwrap();
    let body = r#"{"channel":"reuse","data":"first"}"#;
    let publish = format!(
        "POST /publish HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(publish.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    // The whole answer (`{"id":"N","channel":"reuse"}`), so none of it is left to be
    // read as the start of the stream below.
    read_until(&mut sock, &mut got, "\"channel\":\"reuse\"}").await;
    assert!(got.starts_with(b"HTTP/1.1 200"));

    got.clear();
    sock.write_all(b"GET /events?channel=reuse HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut sock, &mut got, "retry: 3000\n: herald\n\n").await;
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("cache-control: no-cache"), "{head}");
    assert!(head.contains("x-accel-buffering: no"), "{head}");

    let client = reqwest::Client::new();
    let id = publish_data(&client, &server.url("/publish"), "reuse", "second").await;
    read_until(&mut sock, &mut got, &format!("id: {id}\ndata: second\n\n")).await;
    drop(sock);
    server.stop().await;
}

/// A stream that has read everything gets the next events from the publish's own pass,
/// written straight to its socket while its task sleeps: every event, in order, once,
/// counted as delivered and as direct. A stream on two channels goes through its task,
/// and gets the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caught_up_streams_are_written_by_the_publish_itself() {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    let mut direct = Vec::new();
    for _ in 0..20 {
        let mut s = SseClient::connect(&server.url("/events?channel=pass")).await;
        s.expect_preamble().await;
        direct.push(s);
    }
    let mut merged = SseClient::connect(&server.url("/events?channel=pass&channel=other")).await;
    merged.expect_preamble().await;
    for i in 0..10 {
        let id = publish_data(&client, &server.url("/publish"), "pass", &i.to_string()).await;
        // Each event is read before the next is published, so every stream is caught up
        // when it comes.
        for s in direct.iter_mut().chain([&mut merged]) {
            let e = s.next_event(WAIT).await;
            assert_eq!((e.data, e.last_event_id), (i.to_string(), id.to_string()));
        }
    }
    // A pass counts its deliveries just after its writes, so the clients can see the
    // last event a moment before the counter does: wait for it (only these publishes
    // raise it), then take both figures.
    const DELIVERED: &str = "herald_events_delivered_total";
    let delivered = wait_metric(&client, server.admin, DELIVERED, WAIT, |v| v >= 210.0).await;
    let metrics = server.admin_url("/metrics");
    let written_direct = metric(&metrics, "herald_events_delivered_direct_total").await;
    assert_eq!(delivered, 210.0, "21 streams, 10 events each");
    // A stream goes direct once its preamble is written; the client may see the
    // preamble and publish the first event just before that: at most one event each.
    assert!(
        (180.0..=200.0).contains(&written_direct),
        "{written_direct} of the single-channel streams' 200 events written directly"
    );
    // Nothing twice: the next event after the ten is the one published next.
    publish_data(&client, &server.url("/publish"), "pass", "last").await;
    for s in direct.iter_mut().chain([&mut merged]) {
        assert_eq!(s.next_event(WAIT).await.data, "last");
    }
    server.stop().await;
}
