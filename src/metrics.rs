//! Every Prometheus metric herald exports, named in one place.
//!
//! Labelled series are created at start for every label value herald can produce
//! (disconnect and reset reasons, refusal codes, backend error kinds): a series that
//! appears only when first counted shows "No data" until then, and `rate()` misses that
//! first increment.

use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Why streams end (`herald_disconnects_total{reason}`).
pub const DISCONNECT_REASONS: &[&str] =
    &["client", "lagged", "write_timeout", "lifetime", "shutdown"];
/// Why resumes get a reset (`herald_resume_resets_total{reason}`).
pub const RESET_REASONS: &[&str] = &["unknown_id", "history_exhausted"];
/// The JSON error codes of refused publishes (`herald_publish_rejected_total{reason}`).
pub const PUBLISH_REFUSALS: &[&str] = &[
    "unsupported_media_type",
    "invalid_json",
    "missing_channel",
    "invalid_channel",
    "invalid_event",
    "invalid_event_type",
    "invalid_retry",
    "missing_data",
    "invalid_data",
    "empty_batch",
    "batch_too_large",
    "event_too_large",
    "body_too_large",
    "body_timeout",
    "body_read_failed",
    "missing_key",
    "invalid_key",
    "missing_token",
    "invalid_token",
    "forbidden_channel",
    "publish_disabled",
    "max_channels",
    "draining",
    "backend_unavailable",
];
/// The JSON error codes of refused streams and tickets (`herald_requests_rejected_total`).
pub const REQUEST_REFUSALS: &[&str] = &[
    "missing_channel",
    "invalid_channel",
    "too_many_channels",
    "invalid_last_event_id",
    "invalid_ticket",
    "missing_key",
    "missing_token",
    "invalid_token",
    "forbidden_channel",
    "max_connections",
    "max_connections_per_ip",
    "rate_limited",
    "max_channels",
    "max_subscribers_per_channel",
    "draining",
    "backend_unavailable",
    "tickets_disabled",
    "too_many_tickets",
];
/// Kinds of backend failure (`herald_backend_errors_total{kind}`).
pub const BACKEND_ERROR_KINDS: &[&str] = &[
    "connect", "timeout", "command", "readonly", "probe", "sentinel",
];
/// Redis commands timed (`herald_redis_command_duration_seconds{command}`).
pub const REDIS_COMMANDS: &[&str] = &["publish", "load", "barrier", "sweep"];

/// Sub-millisecond to seconds: an SSE delivery on a healthy node takes tens of
/// microseconds to a few milliseconds, a coalescing window or a stalled proxy seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Streams live from seconds (a page view) to a day (a dashboard on a wall).
const LIFETIME_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
];
/// Events replayed per resume: none (a reconnect that missed nothing) to a full history.
const REPLAY_BUCKETS: &[f64] = &[0.0, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0];

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
    /// How long streams lived, observed when they end.
    pub stream_duration: Histogram,
    /// Channels currently held.
    pub channels: IntGauge,
    pub events_published: IntCounter,
    /// Event copies written to subscribers (one event to 100 subscribers counts 100).
    pub events_delivered: IntCounter,
    /// Of those, written by a publish's pass straight to a caught-up stream's socket,
    /// without waking the stream's task (`hub::fanout`).
    pub events_delivered_direct: IntCounter,
    /// Bytes of SSE written to subscribers (events, heartbeats, resets).
    pub stream_bytes: IntCounter,
    /// From an event reaching the node's hub to its bytes being handed to a subscriber's
    /// socket: one observation per write, for the oldest live event in it.
    pub delivery_latency: Histogram,
    pub heartbeats_sent: IntCounter,
    /// Resumes answered with a reset event, by reason.
    pub resume_resets: IntCounterVec,
    /// Events replayed from history per resume served without a reset.
    pub resume_replayed: Histogram,
    /// Publish requests, accepted or refused, from the head to the answer.
    pub publish_duration: HistogramVec,
    /// Publish requests refused, by reason (the JSON error code).
    pub publish_rejected: IntCounterVec,
    /// Requests refused before reaching a handler, by reason.
    pub requests_rejected: IntCounterVec,
    /// Connections ended because a write made no progress within `limits.write_timeout`.
    pub write_timeouts: IntCounter,
    /// Failed `accept()` calls (e.g. EMFILE: out of file descriptors).
    pub accept_errors: IntCounter,
    /// Subscribers and channels per `telemetry.metrics_channel_groups` pattern, set at
    /// each scrape.
    pub group_subscribers: IntGaugeVec,
    pub group_channels: IntGaugeVec,
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
    /// Reloads (SIGHUP), by result: `success` or `failure` (the old config stayed).
    pub config_reloads: IntCounterVec,
    /// 1 when the last load or reload of the config succeeded.
    pub config_last_reload_successful: IntGauge,
    /// When the config in force was loaded (start or successful reload), Unix seconds.
    pub config_last_reload_success_time: Gauge,
    /// Moves of the Redis primary this node followed (Sentinel failovers).
    pub backend_failovers: IntCounter,
    /// 1, labelled with the `address` of the Redis primary followed now.
    pub backend_primary: IntGaugeVec,
    /// Unix time the node last followed a (new) primary: how long ago the last failover was.
    pub backend_primary_changed: Gauge,
    /// Publishes answered 503 because fewer than `replica_acks` replicas had them in time.
    pub replica_ack_failures: IntCounter,
    pub backend_publish_fallbacks: IntCounter,
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
        // Every value in `values` starts at 0 (see the module docs).
        let counter_vec = |name: &str, help: &str, label: &str, values: &[&str]| {
            let vec = reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
            );
            for value in values {
                vec.with_label_values(&[value]);
            }
            vec
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            reg(
                &registry,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                    .expect("valid metric"),
            )
        };
        let histogram_vec = |name: &str, help: &str, buckets: &[f64], label: &str| {
            reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    &[label],
                )
                .expect("valid metric"),
            )
        };
        let gauge_vec = |name: &str, help: &str, label: &str| {
            reg(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
            )
        };
        let build_info = gauge_vec(
            "herald_build_info",
            "Always 1; the labels say which herald this is.",
            "version",
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // process_open_fds, process_max_fds, process_resident_memory_bytes,
        // process_cpu_seconds_total, process_start_time_seconds, ... from /proc/self.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric names are unique");
        let publish_duration = histogram_vec(
            "herald_publish_duration_seconds",
            "Publish requests from head to answer, by result (accepted or refused).",
            LATENCY_BUCKETS,
            "result",
        );
        for result in ["accepted", "refused"] {
            publish_duration.with_label_values(&[result]);
        }
        let group_subscribers = gauge_vec(
            "herald_channel_group_subscribers",
            "Subscribers of channels matching each telemetry.metrics_channel_groups pattern.",
            "group",
        );
        let group_channels = gauge_vec(
            "herald_channel_group_channels",
            "Channels matching each telemetry.metrics_channel_groups pattern.",
            "group",
        );
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
                DISCONNECT_REASONS,
            ),
            stream_duration: histogram(
                "herald_stream_duration_seconds",
                "How long SSE streams lived, observed when they end.",
                LIFETIME_BUCKETS,
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
            events_delivered_direct: counter(
                "herald_events_delivered_direct_total",
                "Event copies written by a publish straight to a caught-up stream, without waking its task.",
            ),
            stream_bytes: counter(
                "herald_stream_bytes_total",
                "Bytes of SSE written to subscribers (events, heartbeats, resets).",
            ),
            delivery_latency: histogram(
                "herald_delivery_latency_seconds",
                "From an event reaching the node to its write to a subscriber socket \
                 (per write, its oldest live event).",
                LATENCY_BUCKETS,
            ),
            heartbeats_sent: counter(
                "herald_heartbeats_sent_total",
                "Heartbeats written to idle streams.",
            ),
            resume_resets: counter_vec(
                "herald_resume_resets_total",
                "Resumes that could not be served from history, by reason.",
                "reason",
                RESET_REASONS,
            ),
            resume_replayed: histogram(
                "herald_resume_replayed_events",
                "Events replayed from history per resume served without a reset.",
                REPLAY_BUCKETS,
            ),
            publish_duration,
            publish_rejected: counter_vec(
                "herald_publish_rejected_total",
                "Publish requests refused, by reason.",
                "reason",
                PUBLISH_REFUSALS,
            ),
            requests_rejected: counter_vec(
                "herald_requests_rejected_total",
                "Requests refused, by reason.",
                "reason",
                REQUEST_REFUSALS,
            ),
            write_timeouts: counter(
                "herald_write_timeouts_total",
                "Connections ended because a write stalled past limits.write_timeout.",
            ),
            accept_errors: counter(
                "herald_accept_errors_total",
                "Failed accept() calls, such as running out of file descriptors.",
            ),
            group_subscribers,
            group_channels,
            backend_up: gauge(
                "herald_backend_up",
                "1 while the backend is reachable end to end.",
            ),
            redis_command_seconds: histogram_vec(
                "herald_redis_command_duration_seconds",
                "Redis round trips, by command.",
                LATENCY_BUCKETS,
                "command",
            ),
            backend_errors: counter_vec(
                "herald_backend_errors_total",
                "Backend failures, by kind.",
                "kind",
                BACKEND_ERROR_KINDS,
            ),
            backend_reconnects: counter(
                "herald_backend_reconnects_total",
                "Backend pub/sub connections re-established after a loss.",
            ),
            backend_caught_up_events: counter(
                "herald_backend_caught_up_events_total",
                "Events fetched from the backend after a reconnect.",
            ),
            config_reloads: counter_vec(
                "herald_config_reloads_total",
                "Config reloads (SIGHUP), by result.",
                "result",
                &["success", "failure"],
            ),
            config_last_reload_successful: gauge(
                "herald_config_last_reload_successful",
                "1 when the last config load or reload succeeded.",
            ),
            config_last_reload_success_time: reg(
                &registry,
                Gauge::new(
                    "herald_config_last_reload_success_timestamp_seconds",
                    "When the config in force was loaded, in Unix seconds.",
                )
                .expect("valid metric"),
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
            backend_publish_fallbacks: counter(
                "herald_backend_publish_fallbacks_total",
                "Publish script calls whose node-proposed IDs Redis refused (another node \
                 took IDs since, or clocks over a second apart), redone with Redis's IDs.",
            ),
            registry,
        }
    }

    /// The Redis command series, at 0 from the start (a Redis backend only: a memory
    /// node has no such commands).
    pub fn init_redis_series(&self) {
        for command in REDIS_COMMANDS {
            self.redis_command_seconds.with_label_values(&[command]);
        }
    }

    /// The channel-group gauges from `(group, subscribers, channels)`, replacing the last
    /// scrape's.
    pub fn set_channel_groups(&self, groups: &[(&str, usize, usize)]) {
        for (group, subscribers, channels) in groups {
            self.group_subscribers
                .with_label_values(&[group])
                .set(*subscribers as i64);
            self.group_channels
                .with_label_values(&[group])
                .set(*channels as i64);
        }
    }

    /// A config was put in force: at the start, or by a reload (`reloaded`).
    pub fn config_applied(&self, reloaded: bool) {
        if reloaded {
            self.config_reloads.with_label_values(&["success"]).inc();
        }
        self.config_last_reload_successful.set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.config_last_reload_success_time.set(now);
    }

    /// A reload was refused; the config of the last success stays in force.
    pub fn config_reload_failed(&self) {
        self.config_reloads.with_label_values(&["failure"]).inc();
        self.config_last_reload_successful.set(0);
    }

    /// A stream's life, observed when it ends.
    pub fn observe_stream_end(&self, reason: &str, lived: Duration) {
        debug_assert!(DISCONNECT_REASONS.contains(&reason), "unlisted {reason}");
        self.disconnects.with_label_values(&[reason]).inc();
        self.stream_duration.observe(lived.as_secs_f64());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_label_value_is_exported_from_the_start() {
        let metrics = Metrics::new();
        let text = metrics.render();
        let families = [
            ("herald_disconnects_total", "reason", DISCONNECT_REASONS),
            ("herald_resume_resets_total", "reason", RESET_REASONS),
            ("herald_publish_rejected_total", "reason", PUBLISH_REFUSALS),
            ("herald_requests_rejected_total", "reason", REQUEST_REFUSALS),
            ("herald_backend_errors_total", "kind", BACKEND_ERROR_KINDS),
        ];
        for (name, label, values) in families {
            for value in values {
                let series = format!("{name}{{{label}=\"{value}\"}} 0\n");
                assert!(text.contains(&series), "missing {series}");
            }
        }
        assert!(!text.contains("herald_redis_command_duration_seconds_count"));
        metrics.init_redis_series();
        let text = metrics.render();
        for command in REDIS_COMMANDS {
            let series =
                format!("herald_redis_command_duration_seconds_count{{command=\"{command}\"}} 0");
            assert!(text.contains(&series), "missing {series}");
        }
        for series in [
            "herald_build_info{version=",
            "herald_delivery_latency_seconds_count 0",
            "herald_publish_duration_seconds_count{result=\"accepted\"} 0",
            "process_open_fds ",
            "process_max_fds ",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(series), "missing {series}");
        }
    }
}
