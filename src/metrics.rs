//! Every Prometheus metric herald exports, named in one place.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// Open SSE streams.
    pub connections_open: IntGauge,
    /// `limits.max_connections`, so dashboards and alerts can relate the two.
    pub connections_limit: IntGauge,
    /// SSE streams ever opened.
    pub connections_total: IntCounter,
    /// Streams ended, by reason: `client` (went away), `lagged` (fell behind its queue),
    /// `write_timeout` (stopped reading), `lifetime` (max_connection_lifetime), `shutdown`.
    pub disconnects: IntCounterVec,
    /// Channels currently held.
    pub channels: IntGauge,
    pub events_published: IntCounter,
    /// Event copies written to subscribers (one event to 100 subscribers counts 100).
    pub events_delivered: IntCounter,
    pub heartbeats_sent: IntCounter,
    /// Resumes answered with a reset event, by reason.
    pub resume_resets: IntCounterVec,
    /// Publish requests refused, by reason (the JSON error code).
    pub publish_rejected: IntCounterVec,
    /// Requests refused before reaching a handler, by reason.
    pub requests_rejected: IntCounterVec,
    /// Connections ended because a write made no progress within `limits.write_timeout`.
    pub write_timeouts: IntCounter,
    /// Failed `accept()` calls (e.g. EMFILE: out of file descriptors).
    pub accept_errors: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        }
        let gauge = |name: &str, help: &str| {
            reg(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let counter = |name: &str, help: &str| {
            reg(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
            )
        };
        Self {
            connections_open: gauge("herald_connections_open", "Open SSE streams."),
            connections_limit: gauge(
                "herald_connections_limit",
                "Configured limits.max_connections.",
            ),
            connections_total: counter("herald_connections_total", "SSE streams opened."),
            disconnects: counter_vec(
                "herald_disconnects_total",
                "SSE streams ended, by reason.",
                "reason",
            ),
            channels: gauge(
                "herald_channels",
                "Channels held (with subscribers or history).",
            ),
            events_published: counter(
                "herald_events_published_total",
                "Events accepted by POST /publish.",
            ),
            events_delivered: counter(
                "herald_events_delivered_total",
                "Event copies written to subscribers.",
            ),
            heartbeats_sent: counter(
                "herald_heartbeats_sent_total",
                "Heartbeats written to idle streams.",
            ),
            resume_resets: counter_vec(
                "herald_resume_resets_total",
                "Resumes that could not be served from history, by reason.",
                "reason",
            ),
            publish_rejected: counter_vec(
                "herald_publish_rejected_total",
                "Publish requests refused, by reason.",
                "reason",
            ),
            requests_rejected: counter_vec(
                "herald_requests_rejected_total",
                "Requests refused, by reason.",
                "reason",
            ),
            write_timeouts: counter(
                "herald_write_timeouts_total",
                "Connections ended because a write stalled past limits.write_timeout.",
            ),
            accept_errors: counter(
                "herald_accept_errors_total",
                "Failed accept() calls, such as running out of file descriptors.",
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics cannot fail");
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
