//! Every Prometheus metric herald exports, named in one place.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

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
    /// 1 while the backend is reachable end to end (always 1 for `memory`).
    pub backend_up: IntGauge,
    /// Redis round trips, by command (`publish`, `load`, `barrier`, `sweep`).
    pub redis_command_seconds: HistogramVec,
    /// Backend failures, by kind (`connect`, `timeout`, `command`, `readonly`, `probe`,
    /// `sentinel`).
    pub backend_errors: IntCounterVec,
    /// Pub/sub connections re-established after a loss.
    pub backend_reconnects: IntCounter,
    /// Events a node fetched from Redis after a reconnect (missed on pub/sub meanwhile).
    pub backend_caught_up_events: IntCounter,
    /// Moves of the Redis primary this node followed (Sentinel failovers).
    pub backend_failovers: IntCounter,
    /// 1, labelled with the `address` of the Redis primary followed now.
    pub backend_primary: IntGaugeVec,
    /// Unix time the node last followed a (new) primary: how long ago the last failover was.
    pub backend_primary_changed: Gauge,
    /// Publishes answered 503 because fewer than `replica_acks` replicas had them in time.
    pub replica_ack_failures: IntCounter,
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
            backend_up: gauge(
                "herald_backend_up",
                "1 while the backend is reachable end to end.",
            ),
            redis_command_seconds: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "herald_redis_command_duration_seconds",
                        "Redis round trips, by command.",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0,
                    ]),
                    &["command"],
                )
                .expect("valid metric"),
            ),
            backend_errors: counter_vec(
                "herald_backend_errors_total",
                "Backend failures, by kind.",
                "kind",
            ),
            backend_reconnects: counter(
                "herald_backend_reconnects_total",
                "Backend pub/sub connections re-established after a loss.",
            ),
            backend_caught_up_events: counter(
                "herald_backend_caught_up_events_total",
                "Events fetched from the backend after a reconnect.",
            ),
            backend_failovers: counter(
                "herald_backend_failovers_total",
                "Moves of the Redis primary followed (Sentinel failovers).",
            ),
            backend_primary: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "herald_backend_primary",
                        "1 for the Redis primary followed now, by address.",
                    ),
                    &["address"],
                )
                .expect("valid metric"),
            ),
            backend_primary_changed: reg(
                &registry,
                Gauge::new(
                    "herald_backend_primary_changed_timestamp_seconds",
                    "Unix time the node last followed a new Redis primary.",
                )
                .expect("valid metric"),
            ),
            replica_ack_failures: counter(
                "herald_backend_replica_ack_failures_total",
                "Publishes refused because too few replicas acknowledged them in time.",
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
