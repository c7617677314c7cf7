//! Every way a publish or a subscribe is refused: the status, the stable error code, and
//! that a refused publish (a whole batch included) publishes nothing at all.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const JSON: Option<&str> = Some("application/json");
const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_publishes_name_the_problem_and_publish_nothing() {
    let mut config = quick_config();
    config.limits.max_body_bytes = 4096;
    config.limits.max_event_bytes = 256;
    config.limits.max_batch_events = 3;
    let server = TestServer::start(config).await;
    let client = reqwest::Client::new();
    let url = server.url("/publish");
    // A subscriber to every channel the cases name: it must see nothing but the marker.
    let mut s = SseClient::connect(&server.url("/events?channel=a&channel=b")).await;
    s.expect_preamble().await;

    let ev = |channel: Value, data: Value| json!({"channel": channel, "data": data}).to_string();
    let long_name = "n".repeat(129);
    let cases: Vec<(Option<&str>, String, u16, &str)> = vec![
        (JSON, "{".into(), 400, "invalid_json"),
        (JSON, "42".into(), 400, "invalid_json"),
        (JSON, "\"a\"".into(), 400, "invalid_json"),
        (
            JSON,
            r#"{"channel":"a","data":"x","id":"7"}"#.into(),
            400,
            "invalid_event",
        ),
        (JSON, "[1]".into(), 400, "invalid_event"),
        (FORM, "channel=a&data=x&id=7".into(), 400, "invalid_event"),
        (
            FORM,
            "channel=a&channel=b&data=x".into(),
            400,
            "invalid_event",
        ),
        (JSON, r#"{"data":"x"}"#.into(), 400, "missing_channel"),
        (FORM, "data=x".into(), 400, "missing_channel"),
        (JSON, r#"{"channel":"a"}"#.into(), 400, "missing_data"),
        (FORM, "channel=a".into(), 400, "missing_data"),
        (JSON, ev(json!("a b"), json!("x")), 400, "invalid_channel"),
        (JSON, ev(json!(""), json!("x")), 400, "invalid_channel"),
        (JSON, ev(json!(7), json!("x")), 400, "invalid_channel"),
        (JSON, ev(json!("é"), json!("x")), 400, "invalid_channel"),
        (
            JSON,
            ev(json!(long_name), json!("x")),
            400,
            "invalid_channel",
        ),
        (FORM, "channel=a%0Ab&data=x".into(), 400, "invalid_channel"),
        (
            JSON,
            r#"{"channel":"a","event":"a\nb","data":"x"}"#.into(),
            400,
            "invalid_event_type",
        ),
        (
            JSON,
            r#"{"channel":"a","event":"a\u0000","data":"x"}"#.into(),
            400,
            "invalid_event_type",
        ),
        (
            JSON,
            r#"{"channel":"a","event":5,"data":"x"}"#.into(),
            400,
            "invalid_event_type",
        ),
        (
            JSON,
            json!({"channel": "a", "event": "e".repeat(65), "data": "x"}).to_string(),
            400,
            "invalid_event_type",
        ),
        (
            JSON,
            r#"{"channel":"a","data":"x\u0000y"}"#.into(),
            400,
            "invalid_data",
        ),
        (
            JSON,
            r#"{"channel":"a","data":"x","retry":-1}"#.into(),
            400,
            "invalid_retry",
        ),
        (
            JSON,
            r#"{"channel":"a","data":"x","retry":1.5}"#.into(),
            400,
            "invalid_retry",
        ),
        (
            JSON,
            r#"{"channel":"a","data":"x","retry":"10"}"#.into(),
            400,
            "invalid_retry",
        ),
        (
            JSON,
            r#"{"channel":"a","data":"x","retry":4294967296}"#.into(),
            400,
            "invalid_retry",
        ),
        (
            FORM,
            "channel=a&data=x&retry=soon".into(),
            400,
            "invalid_retry",
        ),
        (JSON, "[]".into(), 400, "empty_batch"),
        (
            JSON,
            ev(json!("a"), json!("x".repeat(257))),
            413,
            "event_too_large",
        ),
        (
            JSON,
            json!([{"channel": "a", "data": ""}, {"channel": "a", "data": ""},
                   {"channel": "a", "data": ""}, {"channel": "a", "data": ""}])
            .to_string(),
            413,
            "batch_too_large",
        ),
        (
            JSON,
            ev(json!("a"), json!("x".repeat(5000))),
            413,
            "body_too_large",
        ),
        // A batch is all or nothing: one bad event refuses the valid ones beside it.
        (
            JSON,
            json!([{"channel": "a", "data": "ok"}, {"channel": "b c", "data": "bad"}]).to_string(),
            400,
            "invalid_channel",
        ),
        (
            JSON,
            json!([{"channel": "a", "data": "ok"}, {"channel": "b", "data": "x".repeat(300)}])
                .to_string(),
            413,
            "event_too_large",
        ),
        (
            JSON,
            json!([{"channel": "a", "data": "ok"}, {"channel": "b"}]).to_string(),
            400,
            "missing_data",
        ),
        (
            Some("text/plain"),
            ev(json!("a"), json!("x")),
            415,
            "unsupported_media_type",
        ),
        (
            Some("application/xml"),
            "<a/>".into(),
            415,
            "unsupported_media_type",
        ),
        (
            None,
            ev(json!("a"), json!("x")),
            415,
            "unsupported_media_type",
        ),
    ];
    for (content_type, body, status, code) in &cases {
        let (got, answer) = post(&client, &url, *content_type, body.clone()).await;
        assert_eq!(
            (got, answer["error"].as_str()),
            (*status, Some(*code)),
            "{content_type:?} {body}: {answer}"
        );
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // A body over the limit without Content-Length (chunked) is refused too.
    let chunks = futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 1000]))),
    );
    let (got, answer) = post(&client, &url, JSON, reqwest::Body::wrap_stream(chunks)).await;
    assert_eq!(
        (got, answer["error"].as_str()),
        (413, Some("body_too_large"))
    );

    let metrics = server.admin_url("/metrics");
    assert_eq!(metric(&metrics, "herald_events_published_total").await, 0.0);
    let (_, stats) = get_json(&server.admin_url("/stats")).await;
    for ch in stats["per_channel"].as_array().unwrap() {
        assert_eq!(ch["retained_events"], 0, "{stats}");
    }
    // The subscriber's first event is the marker published after all the refusals.
    let id = publish_data(&client, &url, "b", "marker").await;
    let e = s.next_event(Duration::from_secs(5)).await;
    assert_eq!(
        (e.data.as_str(), e.last_event_id),
        ("marker", id.to_string())
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_limit_refuses_the_whole_batch() {
    let mut config = quick_config();
    config.limits.max_channels = 2;
    let server = TestServer::start(config).await;
    let client = reqwest::Client::new();
    let url = server.url("/publish");
    publish_data(&client, &url, "a", "1").await;
    publish_data(&client, &url, "b", "2").await;
    let batch = json!([{"channel": "a", "data": "3"}, {"channel": "c", "data": "4"}]);
    let (status, answer) = post(&client, &url, JSON, batch.to_string()).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("max_channels"))
    );
    let (_, stats) = get_json(&server.admin_url("/stats")).await;
    let a = stats["per_channel"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "a")
        .cloned()
        .unwrap();
    assert_eq!(a["retained_events"], 1, "{stats}");
    let published = events_published(server.admin).await;
    assert_eq!(published, 2.0);
    server.stop().await;
}

/// A stream naming a channel the node cannot create gets the channel limit's own code,
/// not another limit's; channels that exist can still be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_limit_refuses_streams_on_new_channels() {
    let mut config = quick_config();
    config.limits.max_channels = 2;
    config.limits.retry_after = Duration::from_secs(7);
    let server = TestServer::start(config).await;
    let client = reqwest::Client::new();
    let url = server.url("/publish");
    publish_data(&client, &url, "a", "1").await;
    publish_data(&client, &url, "b", "2").await;
    let refused = client
        .get(server.url("/events?channel=a&channel=c"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "7");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "max_channels", "{body}");
    let (_, stats) = get_json(&server.admin_url("/stats")).await;
    assert_eq!(stats["channels"], 2, "{stats}");
    let mut s = SseClient::connect(&server.url("/events?channel=a&channel=b")).await;
    assert_eq!(s.status, 200);
    s.expect_preamble().await;
    server.stop().await;
}

/// An event type with a Unicode line or paragraph separator (or NEL) is refused: clients
/// that split lines on them would see a new line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_types_with_unicode_line_breaks_are_refused() {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    let url = server.url("/publish");
    for bad in ["a\u{2028}b", "a\u{2029}b", "a\u{85}b"] {
        let body = json!({"channel": "a", "event": bad, "data": "x"}).to_string();
        let (status, answer) = post(&client, &url, JSON, body).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("invalid_event_type")),
            "{bad:?}: {answer}"
        );
        let form = format!(
            "channel=a&data=x&event={}",
            form_urlencoded::byte_serialize(bad.as_bytes()).collect::<String>()
        );
        let (status, answer) = post(&client, &url, FORM, form).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("invalid_event_type")),
            "{bad:?}: {answer}"
        );
    }
    let published = events_published(server.admin).await;
    assert_eq!(published, 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_subscriptions() {
    let server = TestServer::start(quick_config()).await;
    let sixteen: String = (0..16).map(|i| format!("channel=c{i}&")).collect();
    let seventeen = format!("{sixteen}channel=c16");
    let cases = [
        ("/events".to_string(), "missing_channel"),
        ("/events?other=1".to_string(), "missing_channel"),
        ("/events?channel=".to_string(), "invalid_channel"),
        ("/events?channel=a%20b".to_string(), "invalid_channel"),
        ("/events?channel=%C3%A9".to_string(), "invalid_channel"),
        ("/events?channel=a%0Ab".to_string(), "invalid_channel"),
        (
            format!("/events?channel={}", "n".repeat(129)),
            "invalid_channel",
        ),
        (format!("/events?{seventeen}"), "too_many_channels"),
    ];
    for (path, code) in &cases {
        let resp = reqwest::get(server.url(path)).await.unwrap();
        assert_eq!(resp.status(), 400, "{path}");
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/json"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], *code, "{path}: {body}");
    }
    // At the limits: 16 channels, a 128-byte name, every allowed punctuation mark,
    // and a repeated name that counts once.
    let ok = [
        format!("/events?{sixteen}"),
        format!("/events?{sixteen}channel=c0"),
        format!("/events?channel={}", "n".repeat(128)),
        "/events?channel=Org_1-a.b%3Ac%2Fd%40e".to_string(),
    ];
    for path in &ok {
        let mut s = SseClient::connect(&server.url(path)).await;
        assert_eq!(s.status, 200, "{path}");
        s.expect_preamble().await;
    }
    let (_, stats) = get_json(&server.admin_url("/stats")).await;
    let names: Vec<&str> = stats["per_channel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"Org_1-a.b:c/d@e"), "{stats}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_and_paths() {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    let (status, answer) = send_json(client.post(server.url("/events?channel=a"))).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, answer) = send_json(client.get(server.url("/publish"))).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, answer) = send_json(client.get(server.url("/nowhere"))).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("not_found")));

    // HEAD answers the stream's headers and ends; it leaves no stream open.
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        client.head(server.url("/events?channel=a")).send(),
    )
    .await
    .expect("HEAD answered")
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let metrics = server.admin_url("/metrics");
    let closed = wait_for(Duration::from_secs(5), || async {
        metric(&metrics, "herald_connections_open").await == 0.0
    })
    .await;
    assert!(closed, "a HEAD request left a stream open");
    server.stop().await;
}
