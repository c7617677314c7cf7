//! The result of one run: a table for people, JSON for scripts and `compare`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats::Percentiles;

/// Everything a run measured. Field names are the JSON keys.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    pub broker: String,
    pub settings: Settings,
    /// Streams that got a 2xx response head.
    pub connected: u64,
    /// Subscriptions refused, timed out or not answered.
    pub failed: u64,
    /// Streams that ended before the run did.
    pub dropped: u64,
    pub failures: BTreeMap<String, u64>,
    /// Time from starting a connection to its 2xx head.
    pub connect_ms: Percentiles,
    /// From starting the workers to every stream open (or failed), seconds; at least
    /// streams / --connect-rate.
    pub open_s: f64,
    /// Events published (in requests answered 2xx).
    pub published: u64,
    pub publish_requests: u64,
    pub publish_errors: u64,
    pub publish_failures: BTreeMap<String, u64>,
    /// Published events per second of the publishing window.
    pub publish_per_sec: f64,
    /// Deliveries owed: events published on each channel times its open streams.
    pub expected: u64,
    /// Events received for the first time on a stream.
    pub delivered: u64,
    /// Owed deliveries that never arrived (gaps and tail).
    pub missing: u64,
    pub duplicates: u64,
    /// Sequence gaps seen inside streams (part of `missing`, unless filled later).
    pub gaps: u64,
    /// `data:` lines that were not bench payloads.
    pub foreign: u64,
    pub delivered_per_sec: f64,
    /// Owed deliveries per second of publishing (what was asked of the broker).
    pub expected_per_sec: f64,
    /// From the start of publishing to the last delivery (at least --duration).
    pub delivery_window_s: f64,
    /// Publish-to-receive latency of first deliveries.
    pub latency_ms: Percentiles,
    pub target: Option<Target>,
    /// The processes of --backend-pid (Redis behind herald), measured like `target`.
    pub backend: Option<Target>,
    /// CPU used by this tool (coordinator and workers) while publishing, % of one core.
    pub load_cpu_percent: f64,
    pub workers: usize,
}

/// How the run was asked for.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub subscribe_url: String,
    pub publish_url: String,
    pub publish_format: String,
    pub channels: usize,
    pub subscribers: usize,
    pub rate: f64,
    pub flood: bool,
    pub duration_s: f64,
    pub payload_bytes: usize,
    pub batch: usize,
    pub publish_connections: usize,
    pub connect_rate: f64,
}

/// The broker's (or its backend's) processes, from /proc.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Target {
    pub pids: Vec<u32>,
    /// Before any stream was opened.
    pub rss_before_kib: u64,
    /// After the streams were open and settled, before publishing.
    pub rss_connected_kib: u64,
    pub rss_end_kib: u64,
    pub rss_growth_kib: i64,
    /// RSS growth per open stream (none without streams).
    pub rss_per_subscriber_kib: Option<f64>,
    /// CPU time from the start of publishing to the end of the drain.
    pub cpu_s: f64,
    pub cpu_percent: f64,
    pub cpu_us_per_delivery: Option<f64>,
    pub cpu_us_per_published: Option<f64>,
    /// The kernel (system time) part of `cpu_s`.
    pub sys_percent_of_cpu: f64,
    /// Set when /proc could not be read (process gone?).
    pub error: Option<String>,
}

/// Load-tool CPU (% of one core) past which the tool, not the broker, may be the limit.
const SATURATED_PERCENT: f64 = 85.0;

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

fn map(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(" ({})", parts.join(", "))
}

/// The table printed at the end of a run.
pub fn table(r: &Report) -> String {
    let rows: Vec<(&str, String)> = vec![
        ("run", format!("{} / {}", r.label, r.broker)),
        (
            "streams connected / failed",
            format!("{} / {}{}", r.connected, r.failed, map(&r.failures)),
        ),
        ("streams dropped early", r.dropped.to_string()),
        (
            "connect time p50 / p99 / max",
            format!(
                "{:.1} / {:.1} / {:.1} ms (all open after {:.2} s)",
                r.connect_ms.p50, r.connect_ms.p99, r.connect_ms.max, r.open_s
            ),
        ),
        (
            "published (errors)",
            format!(
                "{} in {} requests ({}){}",
                r.published,
                r.publish_requests,
                r.publish_errors,
                map(&r.publish_failures)
            ),
        ),
        ("publish rate", format!("{:.0} events/s", r.publish_per_sec)),
        (
            "delivered / expected",
            format!("{} / {}", r.delivered, r.expected),
        ),
        (
            "delivered rate",
            format!(
                "{:.0} events/s over {:.1} s (asked {:.0}/s)",
                r.delivered_per_sec, r.delivery_window_s, r.expected_per_sec
            ),
        ),
        (
            "latency p50 / p90 / p99 / max",
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2} ms",
                r.latency_ms.p50, r.latency_ms.p90, r.latency_ms.p99, r.latency_ms.max
            ),
        ),
        (
            "missing / duplicates",
            format!("{} / {}", r.missing, r.duplicates),
        ),
    ];
    let mut rows: Vec<(String, String)> = rows.into_iter().map(|(k, v)| (k.into(), v)).collect();
    for (who, t) in [("target", &r.target), ("backend", &r.backend)] {
        if let Some(t) = t {
            target_rows(who, t, &mut rows);
        }
    }
    rows.push((
        "load tool CPU".into(),
        format!(
            "{:.0}% of a core, {} worker(s)",
            r.load_cpu_percent, r.workers
        ),
    ));
    if r.load_cpu_percent > SATURATED_PERCENT {
        rows.push((
            "warning".into(),
            "the load tool was near a full core: figures may be the tool's limit".into(),
        ));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<width$}  {v}");
    }
    out
}

/// The rows of one watched set of processes (`who`: target or backend).
fn target_rows(who: &str, t: &Target, rows: &mut Vec<(String, String)>) {
    rows.push((
        format!("{who} RSS before / connected / end"),
        format!(
            "{} / {} / {} KiB",
            t.rss_before_kib, t.rss_connected_kib, t.rss_end_kib
        ),
    ));
    rows.push((
        format!("{who} RSS growth / per stream"),
        format!(
            "{} KiB / {} KiB",
            t.rss_growth_kib,
            opt(t.rss_per_subscriber_kib, 2)
        ),
    ));
    rows.push((
        format!("{who} CPU while publishing"),
        format!(
            "{:.2} s ({:.0}% of a core; {:.0}% of it in the kernel)",
            t.cpu_s, t.cpu_percent, t.sys_percent_of_cpu
        ),
    ));
    rows.push((
        format!("{who} CPU per delivery / per publish"),
        format!(
            "{} / {} us",
            opt(t.cpu_us_per_delivery, 2),
            opt(t.cpu_us_per_published, 2)
        ),
    ));
    if let Some(e) = &t.error {
        rows.push((format!("{who} error"), e.clone()));
    }
}
