//! The broker's own figures for `/demo/broker`: once a second, one `stats` event on
//! [`CHANNEL`] with the node's open streams and channels and its events in and out per
//! second, read from the same counters as `/metrics` and `/stats`.
//!
//! It publishes only while the demo page is on and [`CHANNEL`] has subscribers on this
//! node, so an idle demo node fills no history. Each node publishes its own figures
//! (named by `node`): with the Redis backend, a viewer may hear from several nodes.
//! The figures count these events too: one in per second, one out per viewer.
//!
//! `{"node", "streams", "channels", "events_in", "events_out", "at"}`, `at` in Unix
//! milliseconds, the rates per second since the previous event.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::http::AppState;
use crate::hub::NewEvent;
use crate::metrics::Metrics;

/// The reserved channel of the figures (other publishers should keep off it).
pub const CHANNEL: &str = "demo:broker";
/// Event type of the figures.
pub const EVENT: &str = "stats";
/// Fixed, not configuration: the page charts per-second rates, and one small event a
/// second while someone watches costs nothing worth tuning.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The counters the rates are taken from, at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    published: u64,
    delivered: u64,
}

impl Sample {
    fn read(metrics: &Metrics) -> Self {
        Self {
            at: Instant::now(),
            published: metrics.events_published.get(),
            delivered: metrics.events_delivered.get(),
        }
    }
}

/// Publish the figures every [`INTERVAL`] until `stop`.
pub async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + INTERVAL, INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Sampled every tick, watched or not, so the first rates a new viewer sees cover
    // one interval, not the time since the last viewer left.
    let mut last = Sample::read(state.hub.metrics());
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = Sample::read(state.hub.metrics());
        let previous = std::mem::replace(&mut last, now);
        if !state.settings().demo_page || state.hub.subscriber_count(CHANNEL) == 0 {
            continue;
        }
        let data = figures(
            &previous,
            &now,
            state.hub.metrics().connections_open.get(),
            state.hub.channel_count(),
            &state.demo.node,
        );
        let event = NewEvent {
            channel: CHANNEL.to_string(),
            event: Some(EVENT.to_string()),
            data: data.to_string(),
            retry: None,
        };
        // At most one interval: a slow backend skips figures rather than piling them up.
        let publish = state
            .backend
            .publish(&state.hub, std::slice::from_ref(&event));
        tokio::select! {
            outcome = tokio::time::timeout(INTERVAL, publish) => match outcome {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "demo broker figures not published"),
                Err(_) => tracing::debug!("demo broker figures not published in time"),
            },
            _ = stop.cancelled() => return,
        }
    }
}

/// The event's data, from two samples and the gauges read now.
fn figures(previous: &Sample, now: &Sample, streams: i64, channels: usize, node: &str) -> Value {
    let seconds = now.at.saturating_duration_since(previous.at).as_secs_f64();
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    json!({
        "node": node,
        "streams": streams,
        "channels": channels,
        "events_in": per_second(now.published.saturating_sub(previous.published), seconds),
        "events_out": per_second(now.delivered.saturating_sub(previous.delivered), seconds),
        "at": at,
    })
}

/// `count` over `seconds`, to one decimal; 0 over no time at all.
fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds < 1e-3 {
        return 0.0;
    }
    (count as f64 / seconds * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_since_the_previous_sample() {
        let start = Instant::now();
        let previous = Sample {
            at: start,
            published: 10,
            delivered: 100,
        };
        let now = Sample {
            at: start + Duration::from_millis(500),
            published: 35,
            delivered: 400,
        };
        let f = figures(&previous, &now, 7, 3, "abc123");
        assert_eq!(f["events_in"], 50.0);
        assert_eq!(f["events_out"], 600.0);
        assert_eq!(
            (f["streams"].as_i64(), f["channels"].as_u64()),
            (Some(7), Some(3))
        );
        assert_eq!(f["node"], "abc123");
    }

    #[test]
    fn rates_round_to_a_tenth_and_survive_no_time() {
        assert_eq!(per_second(10, 3.0), 3.3);
        assert_eq!(per_second(5, 0.0), 0.0);
        assert_eq!(per_second(0, 1.0), 0.0);
    }
}
