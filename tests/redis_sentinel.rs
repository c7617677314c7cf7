//! `backend.redis.sentinels`: herald on a replicated Redis watched by Sentinel (three
//! `redis-server`, three `redis-sentinel`, two herald nodes, all on loopback ports started
//! by the test) while the primary is SIGKILLed under a publish flood, plainly or with its
//! replicas cut off just before. With `replica_acks = 1` no acknowledged publish is lost,
//! neither by streams open throughout nor from the history; without, the loss is
//! measured and printed.

mod common;
#[path = "redis_sentinel/scenario.rs"]
mod scenario;
mod support;
#[path = "redis_sentinel/traffic.rs"]
mod traffic;

use std::time::{Duration, Instant};

use common::*;
use scenario::{fail_over_under_load, report, Death, Sentinels};
use serde_json::json;

/// Every publish answered 200 reached every subscriber, and the history has it.
fn assert_nothing_acknowledged_lost(outcome: &scenario::Outcome) {
    assert!(
        outcome.lost.iter().all(|n| *n == 0) && outcome.lost_from_history == 0,
        "acknowledged publishes lost: {:?} per subscriber, {} from the history",
        outcome.lost,
        outcome.lost_from_history
    );
}

/// `replica_acks = 1` of two replicas: every publish answered 200 reaches every
/// subscriber exactly once after the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replica_acks_no_acknowledged_publish_is_lost_at_failover() {
    let outcome = fail_over_under_load(1, Sentinels::AllUp, Death::Kill).await;
    report("replica_acks = 1", &outcome);
    assert_nothing_acknowledged_lost(&outcome);
}

/// `replica_acks = 0`: the same failover; how many acknowledged publishes were lost is
/// measured and printed (asynchronous replication on loopback rarely lags, so it may be
/// none), while order and uniqueness still hold. The first sentinel the nodes are given
/// is down throughout: the others are enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replica_acks_the_loss_at_failover_is_measured() {
    let outcome = fail_over_under_load(0, Sentinels::OneDown, Death::Kill).await;
    report("replica_acks = 0", &outcome);
    assert_eq!(outcome.replica_ack_failures, 0.0);
}

/// The replicas lag at the death (their links cut `CUT_FOR` before it) and
/// `replica_acks = 1`: what the primary took meanwhile could not be acknowledged, so
/// it was refused, and nothing answered 200 is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replica_acks_lagging_replicas_cost_refusals_not_acknowledged_publishes() {
    let outcome = fail_over_under_load(1, Sentinels::AllUp, Death::CutThenKill).await;
    report(
        "replica_acks = 1, replicas cut off before the death",
        &outcome,
    );
    assert_nothing_acknowledged_lost(&outcome);
}

/// The replicas lag at the death and `replica_acks = 0`: the publishes the primary
/// answered 200 while cut off from its replicas are lost at the failover. How many is
/// measured and printed (none when the replicas were back before the death).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replica_acks_lagging_replicas_lose_acknowledged_publishes() {
    let outcome = fail_over_under_load(0, Sentinels::AllUp, Death::CutThenKill).await;
    report(
        "replica_acks = 0, replicas cut off before the death",
        &outcome,
    );
}

/// `replica_acks = 1` on a Redis with no replica: the publish runs (subscribers get the
/// event) but no replica acknowledges it within `replica_ack_timeout`, so it is answered
/// 503 `backend_unavailable` with `Retry-After`, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_replica_acks_answer_503_and_the_event_may_still_appear() {
    let redis = support::redis::RedisServer::start(Default::default());
    let toml = format!(
        "{}replica_acks = 1\nreplica_ack_timeout = \"100ms\"\n",
        redis.backend_toml()
    );
    let node = HeraldProcess::spawn(&toml, &["--demo"]);
    let mut stream = SseClient::connect(&node.url("/events?channel=alpha")).await;
    assert_eq!(stream.status, 200);
    stream.expect_preamble().await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let (status, body) = post(
        &client,
        &node.url("/publish"),
        Some("application/json"),
        json!({"channel": "alpha", "data": "unreplicated"}).to_string(),
    )
    .await;
    assert_eq!(
        status, 503,
        "accepted with no replica to acknowledge it: {body}"
    );
    assert_eq!(body["error"], "backend_unavailable", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("may still appear"), "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "answered before replica_ack_timeout"
    );
    let e = stream.next_event(REQUEST_TIMEOUT).await;
    assert_eq!(e.data, "unreplicated");
    let failures = metric(
        &node.admin_url("/metrics"),
        "herald_backend_replica_ack_failures_total",
    )
    .await;
    assert_eq!(failures, 1.0);
}
