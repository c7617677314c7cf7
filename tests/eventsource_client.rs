//! herald through an EventSource implementation we did not write (`reqwest-eventsource`):
//! typed events with their IDs, resume with `Last-Event-ID`, and the client's own
//! reconnection when the server ends a stream.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use reqwest_eventsource::retry::Constant;
use reqwest_eventsource::{Error, Event, EventSource};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);

/// A message is (event type, data, id).
type Message = (String, String, String);

async fn next_item(es: &mut EventSource) -> Result<Event, Error> {
    tokio::time::timeout(WAIT, es.next())
        .await
        .expect("EventSource produced something within the deadline")
        .expect("EventSource stays open")
}

async fn expect_open(es: &mut EventSource) {
    match next_item(es).await {
        Ok(Event::Open) => {}
        other => panic!("expected Open, got {other:?}"),
    }
}

async fn next_message(es: &mut EventSource) -> Message {
    match next_item(es).await {
        Ok(Event::Message(m)) => (m.event, m.data, m.id),
        other => panic!("expected a message, got {other:?}"),
    }
}

fn event_source(request: reqwest::RequestBuilder) -> EventSource {
    let mut es = EventSource::new(request).expect("a cloneable request");
    es.set_retry_policy(Box::new(Constant::new(Duration::from_millis(50), None)));
    es
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_events_with_ids_then_resume_with_last_event_id() {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    let url = server.url("/events?channel=game&channel=chat");
    let publish_url = server.url("/publish");

    let mut es = event_source(client.get(&url));
    expect_open(&mut es).await;
    let bodies = [
        json!({"channel": "game", "event": "score", "data": "1-0"}),
        json!({"channel": "chat", "data": "line one\nline two\r\nline three"}),
        json!({"channel": "game", "event": "state", "data": {"minute": 12}}),
    ];
    let mut want = Vec::new();
    for b in &bodies {
        want.push(id_of(&publish(&client, &publish_url, b).await).to_string());
    }
    let got = [
        next_message(&mut es).await,
        next_message(&mut es).await,
        next_message(&mut es).await,
    ];
    assert_eq!(
        got,
        [
            ("score".into(), "1-0".into(), want[0].clone()),
            (
                "message".into(),
                "line one\nline two\nline three".into(),
                want[1].clone()
            ),
            ("state".into(), r#"{"minute":12}"#.into(), want[2].clone()),
        ]
    );
    assert_eq!(es.last_event_id(), want[2]);
    let last = es.last_event_id().to_string();
    es.close();
    drop(es);

    // Missed while away, then resumed from the last ID the client saw.
    let missed = [
        publish_data(&client, &publish_url, "chat", "missed 1").await,
        publish_data(&client, &publish_url, "game", "missed 2").await,
    ];
    let mut es = event_source(client.get(&url).header("Last-Event-ID", last));
    expect_open(&mut es).await;
    assert_eq!(
        next_message(&mut es).await,
        ("message".into(), "missed 1".into(), missed[0].to_string())
    );
    assert_eq!(
        next_message(&mut es).await,
        ("message".into(), "missed 2".into(), missed[1].to_string())
    );
    let live = publish_data(&client, &publish_url, "chat", "live").await;
    assert_eq!(
        next_message(&mut es).await,
        ("message".into(), "live".into(), live.to_string())
    );
    es.close();
    server.stop().await;
}

/// The server ends each stream when `limits.max_connection_lifetime` is up; the client
/// reconnects on its own with `Last-Event-ID` and gets what it missed, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_by_itself_and_resumes() {
    let mut config = quick_config();
    config.limits.max_connection_lifetime = Duration::from_millis(300);
    config.sse.retry = Duration::from_millis(50);
    let server = TestServer::start(config).await;
    let client = reqwest::Client::new();
    let publish_url = server.url("/publish");
    let mut es = event_source(client.get(server.url("/events?channel=life")));
    expect_open(&mut es).await;
    let mut want = Vec::new();
    let mut got = Vec::new();
    for round in 0..3 {
        let id = publish_data(&client, &publish_url, "life", &format!("live {round}")).await;
        want.push((format!("live {round}"), id.to_string()));
        let (_, data, id) = next_message(&mut es).await;
        got.push((data, id));
        // The server ends the stream; publish while the client is away.
        match next_item(&mut es).await {
            Err(Error::StreamEnded) => {}
            other => panic!("expected the server to end the stream, got {other:?}"),
        }
        let id = publish_data(&client, &publish_url, "life", &format!("away {round}")).await;
        want.push((format!("away {round}"), id.to_string()));
        expect_open(&mut es).await;
        let (_, data, id) = next_message(&mut es).await;
        got.push((data, id));
    }
    assert_eq!(got, want);
    es.close();
    // A stream's end is counted when the server drops it, just after the client saw the
    // end: wait for all three (the count starts absent, and only grows).
    let metrics = server.admin_url("/metrics");
    const LIFETIME: &str = "herald_disconnects_total{reason=\"lifetime\"}";
    wait_for(WAIT, || async {
        let (_, text) = get_text(&metrics).await;
        metric_value(&text, LIFETIME).is_some_and(|v| v >= 3.0)
    })
    .await;
    let ended = metric(&metrics, LIFETIME).await;
    assert!(ended >= 3.0, "{ended}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_event_reaches_the_client() {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    let latest = publish_data(&client, &server.url("/publish"), "r", "old").await;
    let request = client
        .get(server.url("/events?channel=r"))
        .header("Last-Event-ID", "not-an-id");
    let mut es = event_source(request);
    expect_open(&mut es).await;
    let (kind, data, id) = next_message(&mut es).await;
    assert_eq!((kind.as_str(), id), ("reset", latest.to_string()));
    let data: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(data["reason"], "unknown_id");
    es.close();
    server.stop().await;
}
