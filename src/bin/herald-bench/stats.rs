//! Counters and histograms shared by subscribers, and the frames a worker process sends
//! to the coordinator (one JSON object per line on its stdout).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded, in microseconds (an hour); longer values are clamped.
const MAX_MICROS: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static histogram bounds")
}

/// A histogram as `[value, count]` pairs: sparse, exact to the histogram's precision,
/// and mergeable by the coordinator.
pub type Buckets = Vec<(u64, u64)>;

pub fn to_buckets(h: &Histogram<u64>) -> Buckets {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn add_buckets(h: &mut Histogram<u64>, buckets: &[(u64, u64)]) {
    for &(value, count) in buckets {
        h.saturating_record_n(value.clamp(1, MAX_MICROS), count);
    }
}

/// Running totals of one worker's subscribers (every field only grows).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Counters {
    /// Subscriptions the worker has started to open.
    pub attempted: u64,
    /// Streams that got a 2xx response head.
    pub connected: u64,
    /// Subscriptions refused or not answered (see the failure reasons).
    pub failed: u64,
    /// Connected streams that ended before the run did.
    pub dropped: u64,
    /// Bench events read, duplicates included.
    pub delivered: u64,
    /// Bench events read for the first time.
    pub unique: u64,
    /// Events read again (sequence number already seen on that stream).
    pub duplicates: u64,
    /// Events skipped over: sequence numbers that jumped past the expected one.
    pub gaps: u64,
    /// `data:` lines that are not bench payloads (e.g. named heartbeats).
    pub foreign: u64,
    /// Body bytes read by subscribers.
    pub bytes: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.attempted += o.attempted;
        self.connected += o.connected;
        self.failed += o.failed;
        self.dropped += o.dropped;
        self.delivered += o.delivered;
        self.unique += o.unique;
        self.duplicates += o.duplicates;
        self.gaps += o.gaps;
        self.foreign += o.foreign;
        self.bytes += o.bytes;
    }
}

/// What a worker tells the coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum Frame {
    /// Every report interval: totals so far and latencies recorded since the last frame.
    Progress {
        counters: Counters,
        latency: Buckets,
    },
    /// Every subscription of the worker was opened or refused.
    Ready {
        counters: Counters,
        /// Open streams per channel index, for the expected delivery count.
        per_channel: Vec<u32>,
    },
    /// The last frame, sent on `stop`; the worker exits after it.
    Final {
        counters: Counters,
        latency: Buckets,
        /// Time from starting a connection to a 2xx head, microseconds.
        connect: Buckets,
        /// Refusals and errors by reason (`status 503`, `connect: ...`, `timeout`).
        failures: BTreeMap<String, u64>,
    },
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_merge_exactly() {
        let mut a = histogram();
        for v in [10, 20, 20, 5_000, 1_000_000] {
            a.record(v).unwrap();
        }
        let mut merged = histogram();
        add_buckets(&mut merged, &to_buckets(&a));
        add_buckets(&mut merged, &to_buckets(&a));
        assert_eq!(merged.len(), 10);
        assert_eq!(merged.max(), a.max());
        assert_eq!(merged.value_at_quantile(0.5), a.value_at_quantile(0.5));
        let p = Percentiles::of(&merged);
        assert_eq!(p.count, 10);
        assert!((p.p50 - 0.02).abs() < 0.001, "{p:?}");
    }

    #[test]
    fn frames_are_json_lines() {
        let f = Frame::Progress {
            counters: Counters {
                connected: 3,
                ..Counters::default()
            },
            latency: vec![(5, 2)],
        };
        let line = serde_json::to_string(&f).unwrap();
        assert!(line.starts_with(r#"{"frame":"progress""#), "{line}");
        let back: Frame = serde_json::from_str(&line).unwrap();
        assert!(matches!(back, Frame::Progress { counters, .. } if counters.connected == 3));
    }
}
