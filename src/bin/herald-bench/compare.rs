//! `herald-bench compare`: the side-by-side table of the standard workloads (the labels
//! bench/run.sh uses), one column per broker, ratios against a baseline broker.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::figures::{FIGURES, REDIS_BROKER, WORKLOADS};

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Report files (--json of runs) or directories holding them.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Broker the others are divided by in the ratio columns.
    #[arg(long, default_value = "nchan")]
    baseline: String,
    /// Also a ratio column A/B for each `A/B` given (e.g. herald-redis/herald), when
    /// both brokers ran; repeat for several.
    #[arg(long = "ratio", value_name = "A/B")]
    ratios: Vec<String>,
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
    let wanted = args
        .ratios
        .iter()
        .map(|r| {
            r.split_once('/')
                .ok_or_else(|| anyhow::anyhow!("--ratio {r:?}: expected A/B (two broker names)"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pairs = ratio_columns(&mut brokers, has_baseline, &wanted);
    let with_redis = brokers.iter().any(|b| b == REDIS_BROKER);
    // A figure of repeated runs (BENCH_REPEAT) is their median.
    // With `plus`, each run's figure is the sum of both pointers (the second where present).
    let figure = |label: &str, broker: &str, pointer: &str, plus: Option<&str>| {
        let values: Vec<f64> = reports
            .iter()
            .filter(|r| text(r, "/label") == label && text(r, "/broker") == broker)
            .filter_map(|r| {
                let extra = plus.and_then(|p| r.pointer(p)).and_then(Value::as_f64);
                Some(r.pointer(pointer).and_then(Value::as_f64)? + extra.unwrap_or(0.0))
            })
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
    let ratio_name = |&(a, b): &(usize, usize)| format!("{}/{}", brokers[a], brokers[b]);
    for pair in &pairs {
        let _ = write!(md, " {} |", ratio_name(pair));
    }
    let _ = writeln!(md, " goal |");
    let columns = 2 + brokers.len() + pairs.len();
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
            for pair @ &(a, b) in &pairs {
                let ratio = match (values[b], values[a]) {
                    (Some(base), Some(v)) if base != 0.0 => Some(v / base),
                    _ => None,
                };
                let _ = write!(md, " {} |", fmt(ratio, 2));
                ratios.insert(ratio_name(pair), ratio);
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
            .map(|b| figure(f.label, b, f.pointer, f.plus))
            .collect();
        let goal = match (with_redis, f.goal, f.redis_goal) {
            (true, "", redis) if !redis.is_empty() => format!("{REDIS_BROKER}: {redis}"),
            (true, goal, redis) if !redis.is_empty() => format!("{goal}; {REDIS_BROKER}: {redis}"),
            (_, goal, _) => goal.to_string(),
        };
        row(f.title, values, f.digits, &goal, &mut md);
    }
    for (title, field) in [
        ("events lost, all runs", "/missing"),
        ("events duplicated, all runs", "/duplicates"),
    ] {
        let values = brokers
            .iter()
            .map(|b| {
                let runs = reports.iter().filter(|r| text(r, "/broker") == *b);
                // An empty f64 sum is -0.
                Some(
                    runs.filter_map(|r| r.pointer(field).and_then(Value::as_f64))
                        .sum::<f64>()
                        + 0.0,
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
        "| workload | broker | net | streams ok / failed | published | delivered / expected | delivered/s | p50 / p99 ms | lost / dup | RSS/stream KiB | CPU us/delivery: process / core | backend CPU us/delivery | load CPU % / load core % | others % | limit |"
    );
    let _ = writeln!(md, "|{}", "---|".repeat(15));
    for r in &reports {
        let n = |p: &str| r.pointer(p).and_then(Value::as_f64);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} / {} | {} | {} / {} | {} | {} / {} | {} / {} | {} | {} / {} | {} | {} / {} | {} | {} |",
            text(r, "/label"),
            text(r, "/broker"),
            text(r, "/net"),
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
            fmt(n("/target/oncpu_us_per_delivery"), 2),
            fmt(n("/broker_core/awake_us_per_delivery"), 2),
            fmt(n("/backend/oncpu_us_per_delivery"), 3),
            fmt(n("/load_cpu_percent"), 0),
            fmt(n("/load_core/awake_percent"), 0),
            fmt(n("/others_cpu_percent"), 0),
            text(r, "/limit"),
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

/// The ratio columns as (numerator, denominator) indices into `brokers`: every broker
/// over the baseline (the first, when `has_baseline`), then each wanted `(A, B)` whose
/// brokers both ran. A wanted A moves to right after its B, so the two sit side by side.
fn ratio_columns(
    brokers: &mut Vec<String>,
    has_baseline: bool,
    wanted: &[(&str, &str)],
) -> Vec<(usize, usize)> {
    let index = |brokers: &[String], name: &str| brokers.iter().position(|x| x == name);
    for &(a, b) in wanted {
        if let (Some(ia), Some(ib)) = (index(brokers, a), index(brokers, b)) {
            // The baseline keeps the first column.
            if ia < ib && !(has_baseline && ia == 0) {
                let moved = brokers.remove(ia);
                brokers.insert(ib, moved);
            }
        }
    }
    let mut pairs: Vec<(usize, usize)> = if has_baseline {
        (1..brokers.len()).map(|i| (i, 0)).collect()
    } else {
        Vec::new()
    };
    for &(a, b) in wanted {
        if let (Some(a), Some(b)) = (index(brokers, a), index(brokers, b)) {
            if a != b && !pairs.contains(&(a, b)) {
                pairs.push((a, b));
            }
        }
    }
    pairs
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
        Some(v) if digits == 0 && v.round().abs() >= 10_000.0 => group(v.round() as i64),
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
        assert_eq!(fmt(Some(9999.6), 0), "10,000");
        assert_eq!(fmt(Some(1.234), 2), "1.23");
        assert_eq!(fmt(None, 2), "-");
        assert_eq!(group(-12345), "-12,345");
    }

    #[test]
    fn redis_beside_memory_with_ratios_and_its_share() {
        let dir = tempfile::tempdir().unwrap();
        let report = |broker: &str, herald: f64, redis: Option<f64>| {
            let mut r = json!({"label": "fanout-2", "broker": broker,
                "target": {"oncpu_us_per_delivery": herald}});
            if let Some(redis) = redis {
                r["backend"] = json!({"oncpu_us_per_delivery": redis});
            }
            std::fs::write(dir.path().join(format!("{broker}.json")), r.to_string()).unwrap();
        };
        report("herald", 2.0, None);
        report("herald-redis", 2.2, Some(0.3));
        let md = dir.path().join("out.md");
        let args = CompareArgs {
            inputs: vec![dir.path().to_path_buf()],
            baseline: "nchan".into(),
            ratios: vec!["herald-redis/herald".into(), "nchan/herald".into()],
            markdown: Some(md.clone()),
            json: None,
            note: vec![],
        };
        run(&args).unwrap();
        let md = std::fs::read_to_string(md).unwrap();
        assert!(
            md.contains("| herald | herald-redis | herald-redis/herald | goal |"),
            "{md}"
        );
        assert!(
            md.contains("| broker process CPU per delivery at 2 events/s, us | 2.00 | 2.20 | 1.10 | herald-redis: <= 1.2x herald |"),
            "{md}"
        );
        // Memory has no Redis: the whole deployment is herald alone.
        assert!(
            md.contains(
                "| herald + Redis CPU per delivery at 2 events/s, us | 2.00 | 2.50 | 1.25 |"
            ),
            "{md}"
        );
    }

    #[test]
    fn repeated_runs_give_their_median() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0]), Some(3.0));
        assert_eq!(median(vec![9.0, 1.0, 5.0]), Some(5.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 10.0]), Some(3.0));
    }
}
