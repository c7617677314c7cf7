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

/// One batch over 1,000 channels (the script reads and writes the channels' newest IDs
/// and tallies in chunks of 500): every event on its own channel with consecutive IDs,
/// streams on channels in different chunks get theirs, and a later event's resume on
/// another node chains onto the batch's (no reset, nothing missing).
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

/// The events a stream's entries hold, by the entries' `n` field (absent: one).
fn events_in_stream(redis: &RedisServer, channel: &str) -> usize {
    let key = format!("herald:s:{channel}");
    let out = redis
        .cli(&["--no-raw", "XRANGE", &key, "-", "+"])
        .expect("XRANGE");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    let entries = redis
        .cli(&["XLEN", &key])
        .expect("XLEN")
        .trim()
        .parse::<usize>()
        .unwrap();
    let counted: usize = lines
        .windows(2)
        .filter(|w| w[0].ends_with("\"n\""))
        .map(|w| w[1].rsplit('"').nth(1).unwrap().parse::<usize>().unwrap())
        .sum();
    let batched = lines.iter().filter(|l| l.ends_with("\"n\"")).count();
    counted + entries - batched
}

/// A batch is one stream entry per channel (the Redis side of batches: one `XADD`, not
/// one per event); resuming from an ID inside it, on a node that loads the channel from
/// Redis, gets exactly the events after that ID, and from before it all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_entry_and_a_resume_from_inside_it_gets_exactly_the_rest() {
    let redis = RedisServer::start(RedisOptions::default());
    let a = node(&redis);
    let client = reqwest::Client::new();
    let single = publish_data(&client, &a.url("/publish"), "batch", "single").await;
    let batch: Vec<_> = (0..10)
        .map(|i| json!({"channel": "batch", "data": format!("b{i}")}))
        .collect();
    let ids = batch_ids(&publish(&client, &a.url("/publish"), &json!(batch)).await);
    assert_eq!(
        redis
            .cli(&["XLEN", "herald:s:batch"])
            .map(|s| s.trim().to_string()),
        Some("2".to_string()),
        "one entry for the single event, one for the batch"
    );
    assert_eq!(events_in_stream(&redis, "batch"), 11);

    // Each resume on a fresh node, so the channel is loaded from Redis (not from a ring);
    // then a live event, which must come next: nothing more was replayed.
    let mut history: Vec<(u64, String)> = std::iter::once(single)
        .chain(ids.iter().copied())
        .zip(std::iter::once("single".to_string()).chain((0..10).map(|i| format!("b{i}"))))
        .collect();
    for (round, from) in [ids[4], ids[9], single - 1].into_iter().enumerate() {
        let want: Vec<(u64, String)> = history
            .iter()
            .filter(|(id, _)| *id > from)
            .cloned()
            .collect();
        let b = node(&redis);
        let mut resumed =
            SseClient::resume(&b.url("/events?channel=batch"), &from.to_string()).await;
        resumed.expect_preamble().await;
        let replayed = id_and_data(&resumed.events(want.len(), WAIT).await);
        assert_eq!(replayed, want, "resume from {from}");
        let data = format!("live-{round}");
        let live = publish_data(&client, &a.url("/publish"), "batch", &data).await;
        let next = resumed.next_event(WAIT).await;
        assert_eq!(
            (next.last_event_id, next.data),
            (live.to_string(), data.clone())
        );
        history.push((live, data));
    }
}

/// With batches, trimming still counts events, not entries: after 1,500 events in
/// batches of 5 and `history.max_events = 8`, Redis holds at least 8 of the channel's
/// events and not many more (the marks every 2 events, one batch, and the node of
/// entries `XTRIM ~` keeps whole), and a node loading the channel serves exactly the
/// newest 8: a resume from just below them gets them all, one from further back a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_history_is_trimmed_by_events_not_entries() {
    let redis = RedisServer::start(RedisOptions::default());
    let toml = format!("{}[history]\nmax_events = 8\n", redis.backend_toml());
    let a = HeraldProcess::spawn(&toml, &["--demo"]);
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for round in 0..300 {
        let batch: Vec<_> = (0..5)
            .map(|i| json!({"channel": "kept", "data": format!("{round}.{i}")}))
            .collect();
        ids.extend(batch_ids(
            &publish(&client, &a.url("/publish"), &json!(batch)).await,
        ));
    }
    let held = events_in_stream(&redis, "kept");
    assert!((8..=200).contains(&held), "Redis holds {held} events");

    let b = HeraldProcess::spawn(&toml, &["--demo"]);
    let newest = &ids[ids.len() - 8..];
    let mut resumed = SseClient::resume(
        &b.url("/events?channel=kept"),
        &ids[ids.len() - 9].to_string(),
    )
    .await;
    resumed.expect_preamble().await;
    let got: Vec<u64> = id_and_data(&resumed.events(8, WAIT).await)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(got, newest);

    let mut too_old = SseClient::resume(
        &b.url("/events?channel=kept"),
        &ids[ids.len() - 10].to_string(),
    )
    .await;
    too_old.expect_preamble().await;
    assert_eq!(too_old.next_event(WAIT).await.event_type, "reset");
}

/// A node proposes its own IDs (Redis then only stores and sends the bytes the node
/// built); when Redis's sequence is past what the node knows (another node took IDs in
/// the meantime: here set by hand, ten seconds ahead), Redis refuses the proposal
/// untouched and the node publishes through the script that assigns IDs: the event
/// gets the next ID after Redis's, reaches its subscriber once with it, the refusal is
/// counted, and the node's next proposal starts from there and is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_id_proposal_falls_back_to_redis_ids_and_loses_nothing() {
    let redis = RedisServer::start(RedisOptions::default());
    let a = node(&redis);
    let client = reqwest::Client::new();
    let metrics = a.admin_url("/metrics");
    let fallbacks = || metric(&metrics, "herald_backend_publish_fallbacks_total");
    let mut stream = SseClient::connect(&a.url("/events?channel=seq")).await;
    stream.expect_preamble().await;
    let before = publish_data(&client, &a.url("/publish"), "seq", "before").await;
    assert_eq!(fallbacks().await, 0.0);

    let ahead = before + 10_000_000;
    assert!(redis
        .cli(&["SET", "herald:seq", &ahead.to_string()])
        .is_some());
    let after = publish_data(&client, &a.url("/publish"), "seq", "after").await;
    assert_eq!(after, ahead + 1);
    assert_eq!(fallbacks().await, 1.0);
    let next = publish_data(&client, &a.url("/publish"), "seq", "next").await;
    assert_eq!(next, ahead + 2);
    assert_eq!(fallbacks().await, 1.0, "the next proposal was refused too");

    let got = id_and_data(&stream.events(3, WAIT).await);
    assert_eq!(
        got,
        [
            (before, "before".to_string()),
            (after, "after".to_string()),
            (next, "next".to_string())
        ]
    );
    assert_eq!(
        redis
            .cli(&["GET", "herald:seq"])
            .map(|s| s.trim().to_string()),
        Some(next.to_string())
    );
}
