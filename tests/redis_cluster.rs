//! `backend.kind = "redis"`: several herald processes and one real `redis-server`, all on
//! loopback ports started by the test, act as one broker.

mod common;
mod support;

use std::collections::HashMap;
use std::time::Duration;

use common::sse_parser::Event;
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
    let ids = batch_ids(&answer);
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

const COLOURS: [&str; 3] = ["red", "green", "blue"];

/// One publishing task: `rounds` publishes to `url`, every third one a batch of four
/// events over all of `COLOURS`, the others single events; the `(id, data)` of every
/// event accepted, in the order the answers came.
async fn publisher(url: String, tag: String, rounds: usize) -> Vec<(u64, String)> {
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    for round in 0..rounds {
        if round % 3 == 2 {
            let data: Vec<String> = (0..4).map(|k| format!("{tag}-{round}-{k}")).collect();
            let batch: Vec<_> = data
                .iter()
                .enumerate()
                .map(|(k, d)| json!({"channel": COLOURS[(round + k) % 3], "data": d}))
                .collect();
            let answer = publish(&client, &url, &json!(batch)).await;
            let ids = answer["events"].as_array().expect("a batch answer").iter();
            accepted.extend(ids.map(id_of).zip(data));
        } else {
            let data = format!("{tag}-{round}");
            let id = publish_data(&client, &url, COLOURS[round % 3], &data).await;
            accepted.push((id, data));
        }
    }
    accepted
}

/// One subscriber of all `COLOURS`: reads `stream` (opened on `urls[at]`) until the event
/// whose data is `"end"`, and every `switch_every` events goes on reading on the other
/// node, resuming from the last ID received. Every event before `"end"`.
async fn hopping_subscriber(
    urls: [String; 2],
    mut at: usize,
    mut stream: SseClient,
    switch_every: usize,
) -> Vec<Event> {
    let mut got: Vec<Event> = Vec::new();
    loop {
        let e = stream.next_event(Duration::from_secs(15)).await;
        if e.data == "end" {
            return got;
        }
        got.push(e);
        if got.len() % switch_every == 0 {
            at = 1 - at;
            let last = &got.last().expect("an event").last_event_id;
            stream = SseClient::resume(&urls[at], last).await;
            assert_eq!(stream.status, 200, "resume on node {at} from {last}");
            stream.expect_preamble().await;
        }
    }
}

/// Six publishers (three per node, singles and batches, 2016 events over three channels)
/// and two subscribers that hop between the nodes every 250 events with `Last-Event-ID`:
/// no ID is handed out twice, each publisher's IDs rise, and each subscriber receives
/// every accepted event exactly once, in strictly rising ID order, with its own data.
/// `history.sweep_interval` is short, so a node left without subscribers may drop the
/// channels and load them from Redis again when a subscriber comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_on_both_nodes_reach_hopping_subscribers_once_in_order() {
    let redis = RedisServer::start(RedisOptions::default());
    let toml = format!(
        "{}[history]\nsweep_interval = \"100ms\"\n",
        redis.backend_toml()
    );
    let nodes = [
        HeraldProcess::spawn(&toml, &["--demo"]),
        HeraldProcess::spawn(&toml, &["--demo"]),
    ];
    let query = "/events?channel=red&channel=green&channel=blue";
    let urls = [nodes[0].url(query), nodes[1].url(query)];

    let mut subscribers = Vec::new();
    for at in 0..2 {
        let mut stream = SseClient::connect(&urls[at]).await;
        assert_eq!(stream.status, 200);
        stream.expect_preamble().await;
        subscribers.push(tokio::spawn(hopping_subscriber(
            urls.clone(),
            at,
            stream,
            250,
        )));
    }
    let mut publishers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for task in 0..3 {
            let tag = format!("node{n}-task{task}");
            publishers.push(tokio::spawn(publisher(node.url("/publish"), tag, 168)));
        }
    }
    let mut accepted: HashMap<u64, String> = HashMap::new();
    for p in publishers {
        let events = p.await.expect("publisher task");
        let ids: Vec<u64> = events.iter().map(|(id, _)| *id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "one publisher's IDs go back: {ids:?}"
        );
        for (id, data) in events {
            if let Some(other) = accepted.insert(id, data.clone()) {
                panic!("ID {id} handed out twice: {other} and {data}");
            }
        }
    }
    assert_eq!(accepted.len(), 2016);
    let end = publish_data(
        &reqwest::Client::new(),
        &nodes[0].url("/publish"),
        "red",
        "end",
    )
    .await;
    assert!(accepted.keys().all(|id| *id < end));

    for (n, s) in subscribers.into_iter().enumerate() {
        let got = s.await.expect("subscriber task");
        let ids: Vec<u64> = got
            .iter()
            .map(|e| e.last_event_id.parse().expect("a numeric ID"))
            .collect();
        if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
            panic!("subscriber {n}: {} then {}", w[0], w[1]);
        }
        for (e, id) in got.iter().zip(&ids) {
            assert_eq!(e.event_type, "message", "subscriber {n}: {e:?}");
            assert_eq!(
                accepted.get(id),
                Some(&e.data),
                "subscriber {n}: event {id} is not what was published"
            );
        }
        // Rising IDs, each an accepted one, as many as were accepted: each exactly once.
        assert_eq!(got.len(), accepted.len(), "subscriber {n}");
    }
}

/// One batch over 1,000 channels (the script reads and writes the channels' newest IDs in
/// chunks of 1,000 and 500): every event on its own channel with consecutive IDs, streams
/// on channels in different chunks get theirs, and a later event's resume on another node
/// chains onto the batch's (no reset, nothing missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_a_thousand_channels_is_one_atomic_step() {
    let redis = RedisServer::start(RedisOptions::default());
    let (a, b) = (node(&redis), node(&redis));
    let client = reqwest::Client::new();
    let watched = ["c-0", "c-499", "c-500", "c-999"];
    let mut streams = Vec::new();
    for channel in watched {
        let mut s = SseClient::connect(&b.url(&format!("/events?channel={channel}"))).await;
        s.expect_preamble().await;
        streams.push(s);
    }
    let batch: Vec<_> = (0..1000)
        .map(|i| json!({"channel": format!("c-{i}"), "data": format!("d{i}")}))
        .collect();
    let answer = publish(&client, &a.url("/publish"), &json!(batch)).await;
    let ids = batch_ids(&answer);
    assert_eq!(ids.len(), 1000);
    assert!(ids.windows(2).all(|w| w[0] + 1 == w[1]), "not consecutive");
    for (channel, stream) in watched.iter().zip(&mut streams) {
        let i: usize = channel[2..].parse().unwrap();
        let e = stream.next_event(WAIT).await;
        assert_eq!(
            (e.data, e.last_event_id),
            (format!("d{i}"), ids[i].to_string()),
            "{channel}"
        );
    }
    let later = publish_data(&client, &b.url("/publish"), "c-750", "later").await;
    let mut resumed =
        SseClient::resume(&a.url("/events?channel=c-750"), &(ids[0] - 1).to_string()).await;
    resumed.expect_preamble().await;
    let got: Vec<(String, String)> = resumed
        .events(2, WAIT)
        .await
        .into_iter()
        .map(|e| (e.event_type, e.data))
        .collect();
    assert_eq!(
        got,
        [
            ("message".to_string(), "d750".to_string()),
            ("message".to_string(), "later".to_string())
        ],
        "then {later}"
    );
}
