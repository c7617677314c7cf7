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
    /// What the rest of the machine ran over the same window (user + system time of every
    /// core less the broker's, its backend's and this tool's), % of one core: other work
    /// that the cores' figures (`broker_core`, `load_core`) include.
    #[serde(default)]
    pub others_cpu_percent: f64,
    pub workers: usize,
    /// The network of the run (`veth`, `loopback`; empty when not said).
    #[serde(default)]
    pub net: String,
    /// All the work done on the broker's core (--broker-core) over the publishing window.
    #[serde(default)]
    pub broker_core: Option<CoreCpu>,
    /// All the work done on the load tool's core (--load-core) over the same window.
    #[serde(default)]
    pub load_core: Option<CoreCpu>,
    /// Which side was the limit: `broker`, `load`, `both` or `neither` (see [`limit`]).
    #[serde(default)]
    pub limit: String,
}

/// One core's busy time over the publishing window, from /proc/stat: every process and
/// interrupt on it, not only the broker (other work on the machine shows here too; see
/// `rest_busy_percent`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct CoreCpu {
    pub core: usize,
    /// user + nice + system + irq + softirq, seconds.
    pub cpu_s: f64,
    /// Of the window, %: all of it, then each kind.
    pub busy_percent: f64,
    pub user_percent: f64,
    pub system_percent: f64,
    pub softirq_percent: f64,
    pub irq_percent: f64,
    pub cpu_us_per_delivery: Option<f64>,
    pub cpu_us_per_published: Option<f64>,
    /// The core's awake time: the window less its idle time, which the kernel accounts
    /// exactly on a tickless kernel (the kinds above are tick samples). Seconds, % of the
    /// window, per delivery / publish.
    #[serde(default)]
    pub awake_s: f64,
    #[serde(default)]
    pub awake_percent: f64,
    #[serde(default)]
    pub awake_us_per_delivery: Option<f64>,
    #[serde(default)]
    pub awake_us_per_published: Option<f64>,
    /// RPS IPIs the core took (wake-ups to process packets the other core queued for it)
    /// and packets its backlog dropped, over the window (/proc/net/softnet_stat).
    #[serde(default)]
    pub rps_ipis: u64,
    #[serde(default)]
    pub backlog_drops: u64,
    /// Busy share of the core over one second before any stream was opened (the broker
    /// idle): what the rest of the machine ran there. Subtract nothing; read it as noise.
    pub rest_busy_percent: Option<f64>,
    /// Set when /proc/stat could not be read.
    pub error: Option<String>,
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
    /// The same window from the scheduler's exact on-CPU time (schedstat) rather than
    /// tick samples: seconds, and per delivery / publish.
    #[serde(default)]
    pub oncpu_s: f64,
    #[serde(default)]
    pub oncpu_us_per_delivery: Option<f64>,
    #[serde(default)]
    pub oncpu_us_per_published: Option<f64>,
    /// Set when /proc could not be read (process gone?).
    pub error: Option<String>,
}

/// Busy share of a core (%) from which that side counts as the limit of the run.
pub const SATURATED_PERCENT: f64 = 90.0;
/// Other work on the machine (% of one core) from which a run's core figures are flagged.
const BUSY_MACHINE_PERCENT: f64 = 10.0;
/// Load-tool process CPU (% of one core) past which the tool may be the limit when its
/// core's own busy time is not known (no --load-core).
const TOOL_SATURATED_PERCENT: f64 = 85.0;

/// Which side limited a run, from how busy each was over the publishing window (% of a
/// core): the broker's core (or, without --broker-core, the broker's process), the load
/// core (or the tool's own process, with the lower bar that leaves room for the kernel
/// work it is not charged for). A side at [`SATURATED_PERCENT`] or more is a limit.
pub fn limit(
    broker_busy: Option<f64>,
    load_core_busy: Option<f64>,
    tool_percent: f64,
) -> &'static str {
    let broker = broker_busy.is_some_and(|b| b >= SATURATED_PERCENT);
    let load = match load_core_busy {
        Some(busy) => busy >= SATURATED_PERCENT,
        None => tool_percent > TOOL_SATURATED_PERCENT,
    };
    match (broker, load) {
        (true, true) => "both",
        (true, false) => "broker",
        (false, true) => "load",
        (false, false) => "neither",
    }
}

/// What a `limit` of `load` or `both` means for the figures of the run.
fn limit_warning(limit: &str) -> Option<&'static str> {
    match limit {
        "load" => Some(
            "the load core was saturated, the broker's was not: latency, delivered/s and \
             publishes/s are the load's limit, not the broker's; CPU per delivery is the \
             broker's, at the rate the load could take",
        ),
        "both" => Some(
            "both cores were saturated: rates and latency are bounded by the broker and the \
             load at once; the broker's CPU per delivery is still its own",
        ),
        _ => None,
    }
}

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
    for (who, c) in [("broker", &r.broker_core), ("load", &r.load_core)] {
        if let Some(c) = c {
            core_rows(who, c, &mut rows);
        }
    }
    rows.push((
        "load tool CPU".into(),
        format!(
            "{:.0}% of a core, {} worker(s)",
            r.load_cpu_percent, r.workers
        ),
    ));
    rows.push((
        "other processes' CPU".into(),
        format!(
            "{:.0}% of a core (the machine's other work, in the core figures above)",
            r.others_cpu_percent
        ),
    ));
    if !r.net.is_empty() {
        rows.push(("network".into(), r.net.clone()));
    }
    rows.push(("limit".into(), r.limit.clone()));
    if r.others_cpu_percent >= BUSY_MACHINE_PERCENT {
        rows.push((
            "warning".into(),
            format!(
                "the rest of the machine used {:.0}% of a core meanwhile: the core figures and \
                 the limit include it",
                r.others_cpu_percent
            ),
        ));
    }
    if let Some(w) = limit_warning(&r.limit) {
        rows.push(("warning".into(), w.into()));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<width$}  {v}");
    }
    out
}

/// The rows of one core (`who`: broker or load).
fn core_rows(who: &str, c: &CoreCpu, rows: &mut Vec<(String, String)>) {
    if let Some(e) = &c.error {
        rows.push((format!("{who} core {} error", c.core), e.clone()));
        return;
    }
    rows.push((
        format!("{who} core {} busy while publishing", c.core),
        format!(
            "{:.2} s ({:.0}% of it: user {:.0}, system {:.0}, softirq {:.0}, irq {:.0}; {} at rest)",
            c.cpu_s,
            c.busy_percent,
            c.user_percent,
            c.system_percent,
            c.softirq_percent,
            c.irq_percent,
            c.rest_busy_percent
                .map_or_else(|| "-".into(), |p| format!("{p:.0}%")),
        ),
    ));
    rows.push((
        format!("{who} core {} RPS IPIs / backlog drops", c.core),
        format!("{} / {}", c.rps_ipis, c.backlog_drops),
    ));
    rows.push((
        format!("{who} core {} CPU per delivery / per publish", c.core),
        format!(
            "{} / {} us (awake: {} / {} us)",
            opt(c.cpu_us_per_delivery, 2),
            opt(c.cpu_us_per_published, 2),
            opt(c.awake_us_per_delivery, 2),
            opt(c.awake_us_per_published, 2)
        ),
    ));
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
            "{} / {} us (on CPU, schedstat: {} / {} us)",
            opt(t.cpu_us_per_delivery, 2),
            opt(t.cpu_us_per_published, 2),
            opt(t.oncpu_us_per_delivery, 2),
            opt(t.oncpu_us_per_published, 2)
        ),
    ));
    if let Some(e) = &t.error {
        rows.push((format!("{who} error"), e.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_the_saturated_side() {
        // Cores known: 90 % busy or more is a limit.
        assert_eq!(limit(Some(99.0), Some(40.0), 30.0), "broker");
        assert_eq!(limit(Some(60.0), Some(97.0), 60.0), "load");
        assert_eq!(limit(Some(95.0), Some(92.0), 80.0), "both");
        assert_eq!(limit(Some(89.9), Some(89.9), 80.0), "neither");
        // The load core's busy time decides, not the tool's own share of it.
        assert_eq!(limit(Some(50.0), Some(50.0), 88.0), "neither");
        // No load core: the tool's process CPU, with a lower bar.
        assert_eq!(limit(None, None, 86.0), "load");
        assert_eq!(limit(Some(100.0), None, 10.0), "broker");
        assert!(limit_warning("load").unwrap().contains("latency"));
        assert!(limit_warning("both").is_some());
        assert_eq!(limit_warning("broker"), None);
    }
}
