//! `herald-bench compare`: the side-by-side table of the standard workloads (the labels
//! bench/run.sh uses), one column per broker, ratios against a baseline broker.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Report files (--json of runs) or directories holding them.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Broker the others are divided by in the ratio columns.
    #[arg(long, default_value = "nchan")]
    baseline: String,
    /// Also write the tables as Markdown to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Also write every report, the summary and the machine as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A line printed under the tables and kept in the JSON (versions, command);
    /// repeat for several.
    #[arg(long)]
    note: Vec<String>,
}

/// The workloads of bench/run.sh, in the order they are shown.
const WORKLOADS: &[&str] = &[
    "idle",
    "fanout-2",
    "fanout-50",
    "publish",
    "publish-batch",
    "storm",
    "channels-10k",
];

/// One row of the summary: a figure of one workload.
struct Figure {
    title: &'static str,
    label: &'static str,
    /// JSON pointer into a report.
    pointer: &'static str,
    digits: usize,
    goal: &'static str,
}

const FIGURES: &[Figure] = &[
    Figure {
        title: "memory per idle stream (RSS growth / streams), KiB",
        label: "idle",
        pointer: "/target/rss_per_subscriber_kib",
        digits: 2,
        goal: "<= 4",
    },
    Figure {
        title: "CPU per delivery at 2 events/s, us",
        label: "fanout-2",
        pointer: "/target/cpu_us_per_delivery",
        digits: 2,
        goal: "<= 8",
    },
    Figure {
        title: "of that CPU, share in the kernel (system time), %",
        label: "fanout-2",
        pointer: "/target/sys_percent_of_cpu",
        digits: 0,
        goal: "",
    },
    Figure {
        title: "latency p50 at 2 events/s, ms",
        label: "fanout-2",
        pointer: "/latency_ms/p50",
        digits: 2,
        goal: "",
    },
    Figure {
        title: "latency p99 at 2 events/s, ms",
        label: "fanout-2",
        pointer: "/latency_ms/p99",
        digits: 2,
        goal: "<= 0.2x Nchan",
    },
    Figure {
        title: "CPU per delivery at 50 events/s, us",
        label: "fanout-50",
        pointer: "/target/cpu_us_per_delivery",
        digits: 2,
        goal: "<= 1",
    },
    Figure {
        title: "events published/s when asked for 50/s",
        label: "fanout-50",
        pointer: "/publish_per_sec",
        digits: 1,
        goal: "50",
    },
    Figure {
        title: "deliveries owed (published x streams) /s at 50 events/s",
        label: "fanout-50",
        pointer: "/expected_per_sec",
        digits: 0,
        goal: "",
    },
    Figure {
        title: "delivered events/s at 50 events/s",
        label: "fanout-50",
        pointer: "/delivered_per_sec",
        digits: 0,
        goal: "all of them",
    },
    Figure {
        title: "latency p99 at 50 events/s, ms",
        label: "fanout-50",
        pointer: "/latency_ms/p99",
        digits: 2,
        goal: "",
    },
    Figure {
        title: "CPU per delivery at 50 events/s, sse.coalesce_window = 250ms, us",
        label: "fanout-50-coalesced",
        pointer: "/target/cpu_us_per_delivery",
        digits: 2,
        goal: "<= 1",
    },
    Figure {
        title: "latency p99 at 50 events/s, sse.coalesce_window = 250ms, ms",
        label: "fanout-50-coalesced",
        pointer: "/latency_ms/p99",
        digits: 2,
        goal: "",
    },
    Figure {
        title: "publishes/s, 8 keep-alive connections",
        label: "publish",
        pointer: "/publish_per_sec",
        digits: 0,
        goal: ">= 1.5x Nchan",
    },
    Figure {
        title: "CPU per publish, us",
        label: "publish",
        pointer: "/target/cpu_us_per_published",
        digits: 2,
        goal: "",
    },
    Figure {
        title: "of that CPU, share in the kernel (system time), %",
        label: "publish",
        pointer: "/target/sys_percent_of_cpu",
        digits: 0,
        goal: "",
    },
    Figure {
        title: "batched publish, events/s",
        label: "publish-batch",
        pointer: "/publish_per_sec",
        digits: 0,
        goal: ">= 1M",
    },
    Figure {
        title: "connect storm: failed streams",
        label: "storm",
        pointer: "/failed",
        digits: 0,
        goal: "0",
    },
    Figure {
        title: "connect storm: connect p99, ms",
        label: "storm",
        pointer: "/connect_ms/p99",
        digits: 1,
        goal: "",
    },
    Figure {
        title: "10k channels x 1 stream: CPU per delivery, us",
        label: "channels-10k",
        pointer: "/target/cpu_us_per_delivery",
        digits: 2,
        goal: "",
    },
    Figure {
        title: "10k channels x 1 stream: latency p99, ms",
        label: "channels-10k",
        pointer: "/latency_ms/p99",
        digits: 2,
        goal: "",
    },
];

pub fn run(args: &CompareArgs) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for input in &args.inputs {
        collect(input, &mut reports)?;
    }
    if reports.is_empty() {
        anyhow::bail!("no reports found in {:?}", args.inputs);
    }
    // Workloads in the order of the summary, unknown ones last.
    let rank = |r: &Value| {
        let label = text(r, "/label");
        WORKLOADS
            .iter()
            .position(|w| *w == label)
            .unwrap_or(WORKLOADS.len())
    };
    reports.sort_by_key(rank);
    let mut brokers: Vec<String> = Vec::new();
    for r in &reports {
        let b = text(r, "/broker");
        if !brokers.contains(&b) {
            brokers.push(b);
        }
    }
    // The baseline first, so ratios read "other / baseline".
    brokers.sort_by_key(|b| *b != args.baseline);
    let has_baseline = brokers.first() == Some(&args.baseline);
    // A figure of repeated runs (BENCH_REPEAT) is their median.
    let figure = |label: &str, broker: &str, pointer: &str| {
        let values: Vec<f64> = reports
            .iter()
            .filter(|r| text(r, "/label") == label && text(r, "/broker") == broker)
            .filter_map(|r| r.pointer(pointer).and_then(Value::as_f64))
            .collect();
        median(values)
    };
    let most_runs = reports
        .iter()
        .map(|r| {
            let key = (text(r, "/label"), text(r, "/broker"));
            reports
                .iter()
                .filter(|o| (text(o, "/label"), text(o, "/broker")) == key)
                .count()
        })
        .max()
        .unwrap_or(1);

    let mut md = String::new();
    let _ = write!(md, "| figure |");
    for b in &brokers {
        let _ = write!(md, " {b} |");
    }
    let others: &[String] = if has_baseline { &brokers[1..] } else { &[] };
    for b in others {
        let _ = write!(md, " {b}/{} |", args.baseline);
    }
    let _ = writeln!(md, " goal |");
    let columns = 2 + brokers.len() + others.len();
    let _ = writeln!(md, "|{}", "---|".repeat(columns));
    let mut summary = Vec::new();
    let mut row =
        |title: &str, values: Vec<Option<f64>>, digits: usize, goal: &str, md: &mut String| {
            if values.iter().all(Option::is_none) {
                return;
            }
            let _ = write!(md, "| {title} |");
            for v in &values {
                let _ = write!(md, " {} |", fmt(*v, digits));
            }
            let mut ratios = BTreeMap::new();
            for (i, b) in others.iter().enumerate() {
                let ratio = match (values[0], values[i + 1]) {
                    (Some(base), Some(v)) if base != 0.0 => Some(v / base),
                    _ => None,
                };
                let _ = write!(md, " {} |", fmt(ratio, 2));
                ratios.insert(b.clone(), ratio);
            }
            let _ = writeln!(md, " {goal} |");
            let by_broker: BTreeMap<_, _> = brokers.iter().cloned().zip(values).collect();
            summary.push(
                json!({"figure": title, "values": by_broker, "ratios": ratios, "goal": goal}),
            );
        };
    for f in FIGURES {
        let values = brokers
            .iter()
            .map(|b| figure(f.label, b, f.pointer))
            .collect();
        row(f.title, values, f.digits, f.goal, &mut md);
    }
    for (title, field) in [
        ("events lost, all runs", "/missing"),
        ("events duplicated, all runs", "/duplicates"),
    ] {
        let values = brokers
            .iter()
            .map(|b| {
                let runs = reports.iter().filter(|r| text(r, "/broker") == *b);
                Some(
                    runs.filter_map(|r| r.pointer(field).and_then(Value::as_f64))
                        .sum(),
                )
            })
            .collect();
        row(title, values, 0, "0", &mut md);
    }

    if most_runs > 1 {
        let _ = writeln!(
            md,
            "\nEach figure is the median of the runs of its workload and broker (up to {most_runs}); the \"all runs\" rows are sums."
        );
    }
    let _ = writeln!(md, "\nEvery run:\n");
    let _ = writeln!(
        md,
        "| workload | broker | streams ok / failed | published | delivered / expected | delivered/s | p50 / p99 ms | lost / dup | RSS/stream KiB | CPU us/delivery | load CPU % |"
    );
    let _ = writeln!(md, "|{}", "---|".repeat(11));
    for r in &reports {
        let n = |p: &str| r.pointer(p).and_then(Value::as_f64);
        let _ = writeln!(
            md,
            "| {} | {} | {} / {} | {} | {} / {} | {} | {} / {} | {} / {} | {} | {} | {} |",
            text(r, "/label"),
            text(r, "/broker"),
            fmt(n("/connected"), 0),
            fmt(n("/failed"), 0),
            fmt(n("/published"), 0),
            fmt(n("/delivered"), 0),
            fmt(n("/expected"), 0),
            fmt(n("/delivered_per_sec"), 0),
            fmt(n("/latency_ms/p50"), 2),
            fmt(n("/latency_ms/p99"), 2),
            fmt(n("/missing"), 0),
            fmt(n("/duplicates"), 0),
            fmt(n("/target/rss_per_subscriber_kib"), 2),
            fmt(n("/target/cpu_us_per_delivery"), 2),
            fmt(n("/load_cpu_percent"), 0),
        );
    }
    let machine = machine();
    let _ = writeln!(
        md,
        "\nMachine: {} ({} cores), Linux {}, {}.",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["kernel"].as_str().unwrap_or("?"),
        machine["date"].as_str().unwrap_or("?"),
    );
    if !args.note.is_empty() {
        let _ = writeln!(md);
    }
    for note in &args.note {
        let _ = writeln!(md, "- {note}");
    }
    print!("{md}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let all =
            json!({"machine": machine, "notes": args.note, "summary": summary, "runs": reports});
        std::fs::write(path, serde_json::to_string_pretty(&all)? + "\n")
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn collect(path: &Path, out: &mut Vec<Value>) -> anyhow::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        entries.sort();
        for p in entries {
            collect(&p, out)?;
        }
        return Ok(());
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if v.get("label").is_some() && v.get("broker").is_some() {
        out.push(v);
    }
    Ok(())
}

fn text(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// The middle value (the mean of the two middle ones for an even count); `None` for none.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    match v {
        None => "-".into(),
        Some(v) if digits == 0 && v.abs() >= 10_000.0 => group(v.round() as i64),
        Some(v) => format!("{v:.digits$}"),
    }
}

/// 1234567 -> "1,234,567".
fn group(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": kernel.trim(),
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt(Some(1234567.4), 0), "1,234,567");
        assert_eq!(fmt(Some(999.0), 0), "999");
        assert_eq!(fmt(Some(1.234), 2), "1.23");
        assert_eq!(fmt(None, 2), "-");
        assert_eq!(group(-12345), "-12,345");
    }

    #[test]
    fn repeated_runs_give_their_median() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0]), Some(3.0));
        assert_eq!(median(vec![9.0, 1.0, 5.0]), Some(5.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 10.0]), Some(3.0));
    }
}
