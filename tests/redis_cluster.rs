//! `backend.kind = "redis"`: several herald processes and one real `redis-server`, all on
//! loopback ports started by the test, act as one broker.

mod common;
mod support;

use std::time::Duration;

use common::*;
use serde_json::json;
use support::redis::{RedisOptions, RedisServer};

const WAIT: Duration = Duration::from_secs(5);

fn node(redis: &RedisServer) -> HeraldProcess {
    HeraldProcess::spawn(&redis.backend_toml(), &["--demo"])
}

/// An event published on node A reaches a stream on node B, with the ID A answered; a
/// multi-channel stream resumed on B with an ID A handed out gets exactly what followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_are_one_broker() {
    let redis = RedisServer::start(RedisOptions::default());
    let (a, b) = (node(&redis), node(&redis));
    let client = reqwest::Client::new();

    let mut on_b = SseClient::connect(&b.url("/events?channel=news&channel=sport")).await;
    assert_eq!(on_b.status, 200);
    on_b.expect_preamble().await;
    let first = publish_data(&client, &a.url("/publish"), "news", "from a").await;
    let e = on_b.next_event(WAIT).await;
    assert_eq!(
        (e.data.as_str(), e.last_event_id.as_str()),
        ("from a", first.to_string().as_str())
    );

    let batch = json!([
        {"channel": "sport", "data": "s1"},
        {"channel": "news", "data": "n2"},
        {"channel": "other", "data": "o1"},
        {"channel": "sport", "data": "s2", "event": "goal"},
    ]);
    let answer = publish(&client, &a.url("/publish"), &batch).await;
    let ids: Vec<u64> = answer["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert!(first < ids[0], "{first} then {ids:?}");
    assert!(ids.windows(2).all(|w| w[0] + 1 == w[1]), "{ids:?}");
    let got = on_b.events(3, WAIT).await;
    let got: Vec<(String, String)> = got.into_iter().map(|e| (e.last_event_id, e.data)).collect();
    assert_eq!(
        got,
        vec![
            (ids[0].to_string(), "s1".to_string()),
            (ids[1].to_string(), "n2".to_string()),
            (ids[3].to_string(), "s2".to_string()),
        ]
    );

    // Resume on B from the first event A published: the rest, in order, nothing else.
    let mut resumed = SseClient::resume(
        &b.url("/events?channel=sport&channel=news"),
        &first.to_string(),
    )
    .await;
    resumed.expect_preamble().await;
    let replay: Vec<String> = resumed
        .events(3, WAIT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(replay, ["s1", "n2", "s2"]);
    // And on A, which has not followed these channels yet: loaded from Redis.
    let mut on_a = SseClient::resume(&a.url("/events?channel=news"), &first.to_string()).await;
    on_a.expect_preamble().await;
    assert_eq!(on_a.next_event(WAIT).await.data, "n2");
}
