//! One run: start the worker processes, wait for their streams, settle, publish, drain,
//! stop the workers and build the report. Every phase ends by a deadline.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::aggregate::{pump, Aggregate, Msg};
use crate::procfs::{self, CoreSample, Sample};
use crate::publisher::{self, Plan, Totals};
use crate::report::{self, CoreCpu, Report, Settings, Target};
use crate::stats::{Frame, Percentiles};
use crate::wire::Endpoint;
use crate::worker::WorkerSpec;
use crate::RunArgs;

/// Descriptors a worker keeps for itself (stdio, runtime, listener-less sockets).
const FD_RESERVE: u64 = 256;
/// How often workers report.
const REPORT_MS: u64 = 200;
/// How long workers get to send their last frame and exit after `stop`.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Time publishers get to finish the request in flight when the window ends (a
/// saturated broker may answer publishes seconds late).
const PUBLISH_FINISH: Duration = Duration::from_secs(30);
/// Longest drain, however long deliveries keep trickling in.
const DRAIN_CAP: Duration = Duration::from_secs(60);
/// Before any stream is opened, how long the cores are watched for what else runs there.
const REST_WINDOW: Duration = Duration::from_secs(1);

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&runtime, execute(&args))?;
    println!("{}", report::table(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn spawn_workers(
    args: &RunArgs,
    count: usize,
    tx: &mpsc::Sender<Msg>,
) -> anyhow::Result<Vec<Worker>> {
    let exe = std::env::current_exe()?;
    let mut workers = Vec::with_capacity(count);
    for index in 0..count {
        let spec = WorkerSpec {
            index,
            count,
            subscribers: args.subscribers,
            channels: args.channels,
            channel_prefix: args.channel_prefix.clone(),
            subscribe_url: args.subscribe_url.clone(),
            connect_rate: args.connect_rate / count as f64,
            connect_timeout_ms: (args.connect_timeout * 1000.0) as u64,
            report_ms: REPORT_MS,
        };
        let mut child = Command::new(&exe)
            .arg("worker")
            .arg("--spec")
            .arg(serde_json::to_string(&spec)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Frame>(&line) {
                    Ok(frame) => {
                        if tx.blocking_send(Msg::Frame(index, frame)).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("worker {index}: {line}"),
                }
            }
            let _ = tx.blocking_send(Msg::Gone(index));
        });
        workers.push(Worker {
            stdin: child.stdin.take(),
            child,
        });
    }
    Ok(workers)
}

/// A sample of `pids` (or the error that stopped it); none when no pid is watched.
type Watched = Option<Result<Sample, String>>;

/// The broker's (`--target-pid`) and its backend's (`--backend-pid`) samples, taken
/// together so that both cover the same moments.
fn sample_watched(args: &RunArgs) -> [Watched; 2] {
    [&args.target_pids, &args.backend_pids]
        .map(|pids| (!pids.is_empty()).then(|| procfs::sample(pids).map_err(|e| e.to_string())))
}

/// A sample of the broker's and the load's cores (--broker-core, --load-core).
type Cores = [Option<Result<CoreSample, String>>; 2];

fn sample_cores(args: &RunArgs) -> Cores {
    [args.broker_core, args.load_core]
        .map(|core| core.map(|c| procfs::sample_core(c).map_err(|e| e.to_string())))
}

/// One core's figures between two samples, over `window_s` seconds.
fn build_core(
    core: usize,
    start: Result<CoreSample, String>,
    end: Result<CoreSample, String>,
    rest_busy_percent: Option<f64>,
    delivered: u64,
    published: u64,
    window_s: f64,
) -> CoreCpu {
    let (start, end) = match (start, end) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => {
            return CoreCpu {
                core,
                error: Some(e),
                ..CoreCpu::default()
            }
        }
    };
    let d = end.since(&start);
    let percent = |us: u64| us as f64 / 1e6 / window_s.max(1e-9) * 100.0;
    let busy = d.busy_us() as f64;
    let awake = (window_s * 1e6 - d.idle_us as f64).max(0.0);
    CoreCpu {
        core,
        cpu_s: busy / 1e6,
        busy_percent: percent(d.busy_us()),
        user_percent: percent(d.user_us),
        system_percent: percent(d.system_us),
        softirq_percent: percent(d.softirq_us),
        irq_percent: percent(d.irq_us),
        cpu_us_per_delivery: (delivered > 0).then(|| busy / delivered as f64),
        cpu_us_per_published: (published > 0).then(|| busy / published as f64),
        awake_s: awake / 1e6,
        awake_percent: awake / 1e6 / window_s.max(1e-9) * 100.0,
        awake_us_per_delivery: (delivered > 0).then(|| awake / delivered as f64),
        awake_us_per_published: (published > 0).then(|| awake / published as f64),
        rps_ipis: d.rps_ipis,
        backlog_drops: d.backlog_drops,
        rest_busy_percent,
        error: None,
    }
}

/// Busy share (%) of each watched core over [`REST_WINDOW`], now.
async fn rest_busy(args: &RunArgs) -> [Option<f64>; 2] {
    if args.broker_core.is_none() && args.load_core.is_none() {
        return [None, None];
    }
    let before = sample_cores(args);
    tokio::time::sleep(REST_WINDOW).await;
    let after = sample_cores(args);
    [0, 1].map(|i| match (&before[i], &after[i]) {
        (Some(Ok(b)), Some(Ok(a))) => {
            let d = a.since(b);
            let all = d.busy_us() + d.idle_us;
            (all > 0).then(|| d.busy_us() as f64 / all as f64 * 100.0)
        }
        _ => None,
    })
}

/// What the rest of the machine ran over the window, % of one core: its userland and
/// system time (not softirq or irq, which may be this run's network work) less the
/// broker's, its backend's and this tool's process CPU. About, not exact: the softirq
/// work ticks charge to those processes are subtracted although the machine's share
/// leaves softirq out, so this reads a little low.
fn others_percent(
    machine: Option<CoreSample>,
    ours: [&Option<Target>; 2],
    tool_us: u64,
    window_s: f64,
) -> f64 {
    let Some(m) = machine else { return 0.0 };
    let ours_us: f64 = ours
        .iter()
        .filter_map(|t| t.as_ref())
        .map(|t| t.cpu_s * 1e6)
        .sum::<f64>()
        + tool_us as f64;
    ((m.user_us + m.system_us) as f64 - ours_us).max(0.0) / 1e6 / window_s.max(1e-9) * 100.0
}

/// CPU time of this process and its workers.
fn tool_cpu_us(workers: &[Worker]) -> u64 {
    let me = procfs::sample_self().map(|s| s.cpu_us).unwrap_or(0);
    let pids: Vec<u32> = workers.iter().map(|w| w.child.id()).collect();
    me + pids
        .iter()
        .filter_map(|&p| procfs::sample(&[p]).ok())
        .map(|s| s.cpu_us)
        .sum::<u64>()
}

async fn execute(args: &RunArgs) -> anyhow::Result<Report> {
    let fd_limit = crate::raise_fd_limit();
    let per_worker = (args.per_worker as u64)
        .min(fd_limit.saturating_sub(FD_RESERVE))
        .max(1) as usize;
    let worker_count = args.subscribers.div_ceil(per_worker);
    let rest = rest_busy(args).await;
    let before = sample_watched(args);
    let started = Instant::now();

    let (tx, mut rx) = mpsc::channel::<Msg>(1024);
    let mut workers = spawn_workers(args, worker_count, &tx)?;
    drop(tx);
    let totals = Rc::new(Totals::new(args.channels));
    let mut agg = Aggregate::new(worker_count, args.channels);
    eprintln!(
        "herald-bench: {} streams over {} channel(s) in {} worker(s), connect rate {}/s",
        args.subscribers, args.channels, worker_count, args.connect_rate
    );

    // Open the streams.
    let open_secs = if args.connect_rate > 0.0 {
        args.subscribers as f64 / args.connect_rate
    } else {
        0.0
    };
    let deadline = Instant::now() + Duration::from_secs_f64(open_secs + args.connect_timeout + 5.0);
    pump(&mut agg, &mut rx, &totals, deadline, |a| a.all(&a.ready)).await;
    if !agg.all(&agg.ready) {
        eprintln!("herald-bench: not every worker finished opening its streams in time");
    }
    let open_s = started.elapsed().as_secs_f64();
    agg.phase = "settle";
    let deadline = Instant::now() + Duration::from_secs_f64(args.settle);
    pump(&mut agg, &mut rx, &totals, deadline, |_| false).await;
    let connected_sample = sample_watched(args);

    // Publish (or hold the streams).
    agg.phase = if args.publishes() { "publish" } else { "hold" };
    let window_start = Instant::now();
    let tool_start = tool_cpu_us(&workers);
    let target_start = sample_watched(args);
    let cores_start_at = Instant::now();
    let cores_start = sample_cores(args);
    let machine_start = procfs::sample_machine().ok();
    let unique_at_start = agg.totals().unique;
    let window_end = window_start + Duration::from_secs_f64(args.duration);
    if args.publishes() {
        let plan = Rc::new(Plan {
            endpoint: Endpoint::parse(&args.publish_url).map_err(anyhow::Error::msg)?,
            format: args.publish_format,
            channels: args.channels,
            channel_prefix: args.channel_prefix.clone(),
            rate: (!args.flood).then_some(args.rate),
            batch: args.batch,
            connections: args.publish_connections,
            pipeline: args.pipeline,
            payload_bytes: args.payload_bytes,
            start: window_start,
            end: window_end,
        });
        let handles: Vec<_> = (0..args.publish_connections)
            .map(|p| {
                tokio::task::spawn_local(publisher::publisher(p, plan.clone(), totals.clone()))
            })
            .collect();
        pump(&mut agg, &mut rx, &totals, window_end, |_| false).await;
        agg.phase = "finish";
        let all_done = || totals.finished.get() == args.publish_connections;
        pump(
            &mut agg,
            &mut rx,
            &totals,
            window_end + PUBLISH_FINISH,
            |_| all_done(),
        )
        .await;
        for h in handles {
            h.abort();
        }
    } else {
        pump(&mut agg, &mut rx, &totals, window_end, |_| false).await;
    }

    // Drain: wait for every owed delivery, or the grace period.
    let expected: u64 = totals
        .per_channel
        .borrow()
        .iter()
        .zip(&agg.per_channel)
        .map(|(published, streams)| published * streams)
        .sum();
    if args.publishes() && args.subscribers > 0 {
        agg.phase = "drain";
        let goal = unique_at_start + expected;
        let grace = Duration::from_secs_f64(args.grace);
        let drain_start = Instant::now();
        let cap = drain_start + DRAIN_CAP;
        // Late events are not lost events: wait while deliveries keep arriving.
        loop {
            let seen = agg.last_unique_change;
            let deadline = (seen.max(drain_start) + grace).min(cap);
            pump(&mut agg, &mut rx, &totals, deadline, |a| {
                a.totals().unique >= goal || a.last_unique_change != seen
            })
            .await;
            if agg.totals().unique >= goal || Instant::now() >= deadline {
                break;
            }
        }
    }
    let window = Instant::now().duration_since(window_start).as_secs_f64();
    let tool_end = tool_cpu_us(&workers);
    let target_end = sample_watched(args);
    let cores_end = sample_cores(args);
    let cores_window = Instant::now().duration_since(cores_start_at).as_secs_f64();
    let machine = machine_start
        .zip(procfs::sample_machine().ok())
        .map(|(start, end)| end.since(&start));

    // Stop the workers and collect their last frames.
    agg.phase = "stop";
    for w in &mut workers {
        if let Some(mut stdin) = w.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
    }
    let deadline = Instant::now() + STOP_DEADLINE;
    pump(&mut agg, &mut rx, &totals, deadline, |a| a.all(&a.finals)).await;
    for (w, finished) in workers.iter_mut().zip(&agg.finals) {
        if !finished {
            let _ = w.child.kill();
        }
        let _ = w.child.wait();
    }
    if agg.finals.iter().any(|f| !f) {
        eprintln!("herald-bench: some workers ended without a final report; counts may be short");
    }

    let t = agg.totals();
    let delivered = t.unique.saturating_sub(unique_at_start);
    let delivery_window = if args.publishes() {
        agg.last_unique_change
            .duration_since(window_start)
            .as_secs_f64()
            .max(args.duration)
    } else {
        args.duration
    };
    let [target, backend] = [(0, &args.target_pids), (1, &args.backend_pids)].map(|(i, pids)| {
        before[i].clone().map(|before| {
            build_target(
                pids,
                before,
                connected_sample[i].clone(),
                target_start[i].clone(),
                target_end[i].clone(),
                t.connected,
                delivered,
                totals.events.get(),
                window,
            )
        })
    });
    let [broker_core, load_core] = [(0, args.broker_core), (1, args.load_core)].map(|(i, core)| {
        let (start, end) = (cores_start[i].clone()?, cores_end[i].clone()?);
        Some(build_core(
            core?,
            start,
            end,
            rest[i],
            delivered,
            totals.events.get(),
            cores_window,
        ))
    });
    let load_cpu_percent = tool_end.saturating_sub(tool_start) as f64 / 1e6 / window * 100.0;
    let broker_busy = match (&broker_core, &target) {
        (Some(c), _) if c.error.is_none() => Some(c.awake_percent),
        (_, Some(t)) if t.error.is_none() => Some(t.cpu_percent),
        _ => None,
    };
    let load_busy = load_core
        .as_ref()
        .filter(|c| c.error.is_none())
        .map(|c| c.awake_percent);
    let limit = report::limit(broker_busy, load_busy, load_cpu_percent).to_string();
    let others_cpu_percent =
        others_percent(machine, [&target, &backend], tool_end - tool_start, window);
    let publish_failures = totals.failures.borrow().clone();
    Ok(Report {
        label: args.label.clone(),
        broker: args.broker.clone(),
        settings: Settings {
            subscribe_url: args.subscribe_url.clone(),
            publish_url: args.publish_url.clone(),
            publish_format: format!("{:?}", args.publish_format).to_lowercase(),
            channels: args.channels,
            subscribers: args.subscribers,
            rate: args.rate,
            flood: args.flood,
            duration_s: args.duration,
            payload_bytes: args.payload_bytes,
            batch: args.batch,
            publish_connections: args.publish_connections,
            connect_rate: args.connect_rate,
        },
        connected: t.connected,
        failed: t.failed,
        dropped: t.dropped,
        failures: agg.failures.clone(),
        connect_ms: Percentiles::of(&agg.connect),
        open_s,
        published: totals.events.get(),
        publish_requests: totals.requests.get(),
        publish_errors: totals.errors.get(),
        publish_failures,
        publish_per_sec: totals.events.get() as f64 / args.duration,
        expected,
        delivered,
        missing: expected.saturating_sub(delivered),
        duplicates: t.duplicates,
        gaps: t.gaps,
        foreign: t.foreign,
        delivered_per_sec: delivered as f64 / delivery_window,
        expected_per_sec: expected as f64 / args.duration,
        delivery_window_s: delivery_window,
        latency_ms: Percentiles::of(&agg.latency),
        target,
        backend,
        load_cpu_percent,
        others_cpu_percent,
        workers: worker_count,
        net: args.net.clone(),
        broker_core,
        load_core,
        limit,
    })
}

#[allow(clippy::too_many_arguments)]
fn build_target(
    pids: &[u32],
    before: Result<Sample, String>,
    connected: Watched,
    start: Watched,
    end: Watched,
    streams: u64,
    delivered: u64,
    published: u64,
    window_s: f64,
) -> Target {
    let mut t = Target {
        pids: pids.to_vec(),
        ..Target::default()
    };
    let samples = (|| -> Result<[Sample; 4], String> {
        Ok([
            before?,
            connected.ok_or("no sample")??,
            start.ok_or("no sample")??,
            end.ok_or("no sample")??,
        ])
    })();
    match samples {
        Err(e) => t.error = Some(e),
        Ok([before, connected, start, end]) => {
            t.rss_before_kib = before.rss_kib;
            t.rss_connected_kib = connected.rss_kib;
            t.rss_end_kib = end.rss_kib;
            t.rss_growth_kib = connected.rss_kib as i64 - before.rss_kib as i64;
            t.rss_per_subscriber_kib =
                (streams > 0).then(|| t.rss_growth_kib as f64 / streams as f64);
            let cpu_us = end.cpu_us.saturating_sub(start.cpu_us) as f64;
            t.cpu_s = cpu_us / 1e6;
            t.cpu_percent = cpu_us / 1e6 / window_s * 100.0;
            t.cpu_us_per_delivery = (delivered > 0).then(|| cpu_us / delivered as f64);
            t.cpu_us_per_published = (published > 0).then(|| cpu_us / published as f64);
            let oncpu_us = end.oncpu_us.saturating_sub(start.oncpu_us) as f64;
            t.oncpu_s = oncpu_us / 1e6;
            t.oncpu_us_per_delivery = (delivered > 0).then(|| oncpu_us / delivered as f64);
            t.oncpu_us_per_published = (published > 0).then(|| oncpu_us / published as f64);
            let sys_us = end.sys_us.saturating_sub(start.sys_us) as f64;
            t.sys_percent_of_cpu = if cpu_us > 0.0 {
                sys_us / cpu_us * 100.0
            } else {
                0.0
            };
        }
    }
    t
}
