//! Resuming with `Last-Event-ID`: exact replay with no gap and no duplicate at the seam
//! while publishers keep publishing, ID order across channels, and the reset event when
//! the ID is unknown or history no longer covers the gap.

mod common;

use std::time::{Duration, Instant};

use common::sse_parser::Event;
use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

const CHANNELS: [&str; 3] = ["r0", "r1", "r2"];
const PUBLISHERS: u64 = 4;
const PER_PUBLISHER: u64 = 500;

/// Publish `PER_PUBLISHER` numbered events in batches of 1 to 3 over random channels;
/// returns (id, channel, data) of each, as the broker answered.
async fn publisher(url: String, p: u64) -> Vec<(u64, String, String)> {
    let client = reqwest::Client::new();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (p + 1));
    let mut sent = Vec::new();
    let mut k = 0;
    while k < PER_PUBLISHER {
        let n = (1 + rng.below(3)).min(PER_PUBLISHER - k);
        let events: Vec<Value> = (k..k + n)
            .map(|i| {
                let ch = CHANNELS[rng.below(3) as usize];
                json!({"channel": ch, "event": ch, "data": format!("p{p}-{i}")})
            })
            .collect();
        let body = if n == 1 {
            events[0].clone()
        } else {
            Value::Array(events.clone())
        };
        let answer = publish(&client, &url, &body).await;
        let ids: Vec<u64> = if n == 1 {
            vec![id_of(&answer)]
        } else {
            answer["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(id_of)
                .collect()
        };
        for (id, e) in ids.into_iter().zip(events) {
            let ch = e["channel"].as_str().unwrap().to_string();
            sent.push((id, ch, e["data"].as_str().unwrap().to_string()));
        }
        k += n;
    }
    sent
}

/// Every event exactly once, in ID order, while the subscriber keeps dropping its
/// connection and resuming (header or query parameter) with the last ID it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_under_concurrent_publishing_is_exact() {
    let mut config = quick_config();
    config.history.max_events = 100_000;
    config.limits.subscriber_queue_events = 100_000;
    let server = TestServer::start(config).await;
    let total = (PUBLISHERS * PER_PUBLISHER) as usize;
    let sub_url = server.url("/events?channel=r0&channel=r1&channel=r2");
    let mut stream = SseClient::connect(&sub_url).await;
    stream.expect_preamble().await;

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| tokio::spawn(publisher(server.url("/publish"), p)))
        .collect();

    let started = Instant::now();
    let mut rng = Rng(42);
    let mut received: Vec<(u64, String, String)> = Vec::with_capacity(total);
    let mut reconnects = 0;
    let mut reconnects_while_publishing = 0;
    while received.len() < total {
        let budget = 1 + rng.below(150);
        for _ in 0..budget {
            let e: Event = match stream.next(WAIT).await {
                Next::Item(common::sse_parser::Item::Event(e)) => e,
                Next::Item(_) => continue,
                other => panic!(
                    "after {} of {total} events and {reconnects} reconnects: {other:?}",
                    received.len()
                ),
            };
            assert_ne!(e.event_type, "reset", "unexpected reset: {}", e.data);
            let id: u64 = e.last_event_id.parse().expect("decimal id");
            received.push((id, e.event_type, e.data));
            if received.len() == total {
                break;
            }
        }
        if received.len() == total {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "too slow");
        drop(stream);
        reconnects += 1;
        if publishers.iter().any(|p| !p.is_finished()) {
            reconnects_while_publishing += 1;
        }
        let last = received.last().map_or(String::new(), |r| r.0.to_string());
        stream = if reconnects % 2 == 0 {
            SseClient::resume(&sub_url, &last).await
        } else {
            SseClient::connect(&format!("{sub_url}&lastEventId={last}")).await
        };
        assert_eq!(stream.status, 200);
    }

    let mut published = Vec::with_capacity(total);
    for p in publishers {
        published.extend(p.await.expect("publisher"));
    }
    published.sort();
    let ids: Vec<u64> = received.iter().map(|r| r.0).collect();
    if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
        panic!("IDs not strictly increasing at {w:?} ({reconnects} reconnects)");
    }
    assert_eq!(received.len(), published.len());
    assert!(
        received == published,
        "received events differ from published ones"
    );
    assert!(
        reconnects_while_publishing >= 5,
        "only {reconnects_while_publishing} of {reconnects} resumes raced with publishers"
    );
    drop(stream);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_wins_over_query_parameter() {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    let url = server.url("/publish");
    let mut ids = Vec::new();
    for d in ["1", "2", "3"] {
        ids.push(publish_data(&client, &url, "h", d).await);
    }
    let q = server.url(&format!("/events?channel=h&lastEventId={}", ids[0]));
    let mut s = SseClient::resume(&q, &ids[1].to_string()).await;
    let e = s.next_event(WAIT).await;
    assert_eq!(
        (e.data.as_str(), e.last_event_id),
        ("3", ids[2].to_string())
    );
    let mut s = SseClient::connect(&q).await;
    let got: Vec<String> = s
        .events(2, WAIT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(got, ["2", "3"]);
    drop(s);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_across_channels_is_in_id_order_then_live() {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    let url = server.url("/publish");
    let start = publish_data(&client, &url, "a", "before").await;
    let mut want = Vec::new();
    let plan: [&[(&str, &str)]; 5] = [
        &[("a", "1"), ("b", "2"), ("c", "3")],
        &[("c", "4")],
        &[("b", "5"), ("a", "6")],
        &[("a", "7")],
        &[("c", "8"), ("c", "9"), ("b", "10")],
    ];
    for batch in plan {
        let body: Vec<Value> = batch
            .iter()
            .map(|(c, d)| json!({"channel": c, "data": d}))
            .collect();
        let answer = publish(&client, &url, &Value::Array(body)).await;
        for (e, (c, d)) in answer["events"].as_array().unwrap().iter().zip(batch) {
            if *c != "b" {
                want.push((id_of(e).to_string(), d.to_string()));
            }
        }
    }
    let mut s = SseClient::resume(
        &server.url("/events?channel=c&channel=a"),
        &start.to_string(),
    )
    .await;
    let got: Vec<(String, String)> = s
        .events(want.len(), WAIT)
        .await
        .into_iter()
        .map(|e| (e.last_event_id, e.data))
        .collect();
    assert_eq!(got, want);
    // Then live, in order, no repeat of the replay.
    let x = publish_data(&client, &url, "b", "skip").await;
    let y = publish_data(&client, &url, "c", "live").await;
    let e = s.next_event(WAIT).await;
    assert_eq!((e.data.as_str(), e.last_event_id), ("live", y.to_string()));
    assert!(y > x);
    drop(s);
    server.stop().await;
}

/// Check a stream opens with a reset carrying `reason` and the latest ID, then goes live.
async fn expect_reset_then_live(
    s: &mut SseClient,
    reason: &str,
    latest: u64,
    server: &TestServer,
    channel: &str,
    context: &str,
) -> u64 {
    let e = s.next_event(WAIT).await;
    assert_eq!(e.event_type, "reset", "{context}: {e:?}");
    let data: Value = serde_json::from_str(&e.data).expect("reset data is JSON");
    assert_eq!(data["reason"], reason, "{data}");
    assert_eq!(e.last_event_id, latest.to_string());
    let client = reqwest::Client::new();
    let live = publish_data(&client, &server.url("/publish"), channel, "live").await;
    let e = s.next_event(WAIT).await;
    assert_eq!(
        (e.data.as_str(), e.last_event_id),
        ("live", live.to_string())
    );
    live
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_get_a_reset() {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    let url = server.url("/publish");
    let mut latest = 0;
    for d in ["1", "2"] {
        latest = publish_data(&client, &url, "u", d).await;
    }
    let future = (latest + 1_000_000).to_string();
    let cases = [
        "abc",
        "-5",
        "12x",
        "1",
        &future,
        "123456789012345678901234567890",
    ];
    for (i, id) in cases.iter().enumerate() {
        let mut s = SseClient::resume(&server.url("/events?channel=u"), id).await;
        latest = expect_reset_then_live(&mut s, "unknown_id", latest, &server, "u", id).await;
        let resets = metric(
            &server.admin_url("/metrics"),
            "herald_resume_resets_total{reason=\"unknown_id\"}",
        )
        .await;
        assert_eq!(resets, (i + 1) as f64, "{id}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_history_gets_a_reset() {
    // Small history inside a larger ring, then a ring as small as the history.
    for queue in [1024, 5] {
        let mut config = quick_config();
        config.history.max_events = 5;
        config.limits.subscriber_queue_events = queue;
        let server = TestServer::start(config).await;
        let client = reqwest::Client::new();
        let mut ids = Vec::new();
        for i in 0..10 {
            ids.push(publish_data(&client, &server.url("/publish"), "e", &i.to_string()).await);
        }
        let url = server.url("/events?channel=e");
        // Five events after ids[4] are retained: replayed, no reset.
        let mut s = SseClient::resume(&url, &ids[4].to_string()).await;
        let got: Vec<String> = s
            .events(5, WAIT)
            .await
            .into_iter()
            .map(|e| e.data)
            .collect();
        assert_eq!(got, ["5", "6", "7", "8", "9"], "queue {queue}");
        drop(s);
        // Six are needed after ids[3]: the oldest is gone.
        let mut s = SseClient::resume(&url, &ids[3].to_string()).await;
        let context = format!("queue {queue}");
        expect_reset_then_live(&mut s, "history_exhausted", ids[9], &server, "e", &context).await;
        drop(s);
        server.stop().await;
    }
}

/// Publish three events on `old`, let them age past `history.max_age`, then check that
/// resuming from the newest needs no reset and resuming from the oldest gets one.
async fn aged_history_case(sweep: &str, keep_subscriber: bool) {
    let max_age = Duration::from_millis(300);
    let context = format!("sweep {sweep}, subscriber {keep_subscriber}");
    let mut config = quick_config();
    config.history.max_age = max_age;
    config.history.sweep_interval = humantime::parse_duration(sweep).unwrap();
    let server = TestServer::start(config).await;
    let client = reqwest::Client::new();
    let url = server.url("/events?channel=old");
    let keeper = if keep_subscriber {
        let mut k = SseClient::connect(&url).await;
        k.expect_preamble().await;
        Some(k)
    } else {
        None
    };
    let mut ids = Vec::new();
    for d in ["1", "2", "3"] {
        ids.push(publish_data(&client, &server.url("/publish"), "old", d).await);
    }
    let published_at = Instant::now();
    let aged = wait_until(Duration::from_secs(2), || {
        published_at.elapsed() > max_age * 3 / 2
    });
    assert!(aged.await);
    if sweep != "1h" {
        let stats = server.admin_url("/stats");
        let swept = wait_for(WAIT, || async {
            let (_, s) = get_json(&stats).await;
            let chans = s["per_channel"].as_array().cloned().unwrap_or_default();
            !chans
                .iter()
                .any(|c| c["name"] == "old" && c["retained_events"] != 0)
        })
        .await;
        assert!(swept, "{context}: the sweeper did not trim aged events");
    }
    // The newest ID needs nothing that aged out: no reset.
    let mut s = SseClient::resume(&url, &ids[2].to_string()).await;
    let live = publish_data(&client, &server.url("/publish"), "old", "4").await;
    let e = s.next_event(WAIT).await;
    assert_eq!(
        (e.data.as_str(), e.last_event_id),
        ("4", live.to_string()),
        "{context}"
    );
    drop(s);
    // From the first ID, events 2 and 3 are needed and gone. (Event 4 is fresh, so this
    // cannot pass by finding nothing at all to replay.)
    let mut s = SseClient::resume(&url, &ids[0].to_string()).await;
    expect_reset_then_live(&mut s, "history_exhausted", live, &server, "old", &context).await;
    drop((s, keeper));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aged_history_gets_a_reset() {
    // Without a sweep only the age check at resume sees the gap; with one, the sweeper
    // trims the ring of a channel that a subscriber keeps alive.
    aged_history_case("1h", false).await;
    aged_history_case("50ms", true).await;
}

/// With no subscriber, the sweeper removes the aged-out channel; the next subscribe or
/// publish creates it afresh. A resume from before the removal must still get a reset
/// once the new channel has events of its own, not a replay that skips the lost ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_across_a_swept_and_recreated_channel_gets_a_reset() {
    aged_history_case("50ms", false).await;
}

/// A subscriber cut off for lagging must be able to resume from history, as the hub's
/// design promises: here history (100 events) covers the whole gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagged_subscriber_resumes_from_history() {
    let mut config = quick_config();
    config.history.max_events = 100;
    config.limits.subscriber_queue_events = 10;
    let server = TestServer::start(config).await;
    let client = reqwest::Client::new();
    let url = server.url("/events?channel=lag");
    let mut s = SseClient::connect(&url).await;
    let first = publish_data(&client, &server.url("/publish"), "lag", "first").await;
    assert_eq!(s.next_event(WAIT).await.data, "first");
    let batch: Vec<Value> = (0..20)
        .map(|i| json!({"channel": "lag", "data": i.to_string()}))
        .collect();
    publish(&client, &server.url("/publish"), &Value::Array(batch)).await;
    assert!(
        s.wait_end(WAIT).await,
        "a subscriber 20 events behind a queue of 10 is cut off"
    );
    // The client sees the body end just before the server drops the stream, which is
    // when the disconnect is counted: wait for the count to appear (it starts absent).
    let metrics = server.admin_url("/metrics");
    const LAGGED: &str = "herald_disconnects_total{reason=\"lagged\"}";
    let counted = wait_for(WAIT, || async {
        let (_, text) = get_text(&metrics).await;
        metric_value(&text, LAGGED).is_some_and(|v| v > 0.0)
    })
    .await;
    assert!(counted, "the lagged disconnect was never counted");
    let lagged = metric(&metrics, LAGGED).await;
    assert_eq!(lagged, 1.0);

    let mut s = SseClient::resume(&url, &first.to_string()).await;
    let mut got = Vec::new();
    while got.len() < 20 {
        match s.next(WAIT).await {
            Next::Item(common::sse_parser::Item::Event(e)) => got.push(e.data),
            Next::Item(_) => {}
            other => panic!(
                "resume after lag: got {got:?} then {other:?}; the 20 missed events are in \
                 history but the resumed stream was cut off as lagged again (raw {:?})",
                String::from_utf8_lossy(&s.raw)
            ),
        }
    }
    let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
    drop(s);
    server.stop().await;
}
