//! `herald-bench`: a load tool for any Server-Sent Events endpoint on this machine.
//!
//! It holds N subscriptions (spread over source addresses 127.0.0.2-254 and, past the
//! file-descriptor limit, over worker processes it starts from its own binary), publishes
//! numbered, timestamped events at a rate or as fast as it can, and reports connections,
//! deliveries, latency, loss and duplicates, and the broker's memory and CPU from /proc.
//!
//! # Layout
//! - [`coordinator`] — one run: workers, phases, publishers, /proc samples, the report
//! - [`aggregate`] — worker frames merged, progress lines
//! - [`worker`] — a worker process holding subscriptions and reporting frames
//! - [`publisher`] — keep-alive publishing connections
//! - [`wire`] — loopback URLs, response heads, chunked / length / close-delimited bodies
//! - [`sse`] — the bench payload and the `data:` line scanner
//! - [`stats`] — counters, histograms and the worker frames
//! - [`procfs`] — RSS and CPU time of a process
//! - [`report`] — the final table and JSON
//! - [`compare`] — side-by-side tables of several runs (what `make bench` prints)
//! - [`figures`] — the workloads and figures of that summary
//! - [`baseline`] — the naive hyper + broadcast SSE broker, for reference
//! - [`floor`] — one `write()` per subscriber in a loop: the least any broker can do here

mod aggregate;
mod baseline;
mod compare;
mod coordinator;
mod figures;
mod floor;
mod procfs;
mod publisher;
mod report;
mod sse;
mod stats;
mod wire;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use publisher::PublishFormat;

#[derive(Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Load tool for Server-Sent Events brokers on this machine (herald, Nchan, ...)",
    long_about = "Load tool for Server-Sent Events brokers on this machine (herald, Nchan, ...).

A run: open --subscribers streams (paced by --connect-rate), wait --settle seconds, publish
for --duration seconds at --rate events/s (or --flood), wait for the last deliveries (until
none arrives for --grace seconds), then print a table (and --json FILE). Progress goes to
stderr every second.

Every payload carries its publisher, a sequence number and the send time, so each
subscriber counts deliveries, duplicates and gaps and records publish-to-receive latency.
Only loopback targets (127.0.0.0/8) are accepted.

Examples:
  herald-bench --subscribers 10000 --rate 2 --duration 15 --target-pid $(pidof herald)
  herald-bench --subscribers 0 --flood --batch 100 --duration 5
  herald-bench --subscribers 10000 --rate 2 --target-pid $(pidof herald) \\
      --backend-pid $(pidof redis-server)
  herald-bench --subscribe-url 'http://127.0.0.1:8081/sub?id={channel}' \\
      --publish-url 'http://127.0.0.1:8081/pub?id={channel}' --publish-format raw \\
      --subscribers 10000 --rate 50
  herald-bench compare bench/results/runs
  herald-bench baseline --listen 127.0.0.1:18082
  herald-bench floor --listen 127.0.0.1:18083",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print side-by-side tables (and write Markdown/JSON) from the --json reports of
    /// several runs, grouped by --label, with --broker columns and ratios.
    Compare(compare::CompareArgs),
    /// Serve the naive reference broker (hyper http1, one tokio broadcast channel per
    /// channel, one body frame per event): POST /pub?id=CH, GET /sub?id=CH.
    Baseline {
        #[arg(long, default_value = "127.0.0.1:18082")]
        listen: std::net::SocketAddr,
    },
    /// Serve the floor: no broker, one `write()` per subscriber per event in a plain
    /// loop, on one thread (what any broker pays at least here): POST /pub?id=CH,
    /// GET /sub?id=CH.
    Floor {
        #[arg(long, default_value = "127.0.0.1:18083")]
        listen: std::net::SocketAddr,
    },
    /// Internal: a worker process started by a run.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        spec: String,
    },
}

/// One load run.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Subscribe URL; `{channel}` is replaced by the channel name.
    #[arg(long, default_value = "http://127.0.0.1:8080/events?channel={channel}")]
    pub subscribe_url: String,
    /// Publish URL; `{channel}` (if present) is replaced by the first event's channel.
    #[arg(long, default_value = "http://127.0.0.1:8080/publish")]
    pub publish_url: String,
    /// herald: JSON bodies (arrays with --batch); raw: the body is the payload (Nchan).
    #[arg(long, value_enum, default_value_t = PublishFormat::Herald)]
    pub publish_format: PublishFormat,
    /// Channels bench-0 .. bench-(N-1); subscribers and events go round-robin over them.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Channel name prefix.
    #[arg(long, default_value = "bench-")]
    pub channel_prefix: String,
    /// Streams to hold open.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Events per second over all channels and publish connections (0: publish nothing).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Publish as fast as the publish connections allow (ignores --rate).
    #[arg(long)]
    pub flood: bool,
    /// Seconds of publishing (or of holding the streams when nothing is published).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Size of each event's data, padded with `x` (at least the ~30-byte stamp).
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Events per publish request (herald format: a JSON array).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Keep-alive HTTP/1.1 publishing connections, one request in flight on each.
    #[arg(long, default_value_t = 8)]
    pub publish_connections: usize,
    /// Requests each publishing connection sends before reading their answers (HTTP/1.1
    /// pipelining; with --flood only).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// New subscriptions per second (0: all at once).
    #[arg(long, default_value_t = 5000.0)]
    pub connect_rate: f64,
    /// Seconds a subscription may take to get its response head before it counts as failed.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds to wait after the streams are open, before the memory sample and publishing.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// After publishing, wait for owed events until all arrived or none arrived for this
    /// many seconds (at most 60 s in all); what is still owed then counts as missing.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// Broker process to sample from /proc (VmRSS, utime+stime); repeat for several
    /// processes (e.g. nginx master and worker), whose figures are summed.
    #[arg(long = "target-pid")]
    pub target_pids: Vec<u32>,
    /// A process the broker depends on (the Redis behind herald), sampled like
    /// --target-pid but reported apart, as `backend`; repeat for several (summed).
    #[arg(long = "backend-pid")]
    pub backend_pids: Vec<u32>,
    /// The core the broker is pinned to: all its busy time (user + system + irq +
    /// softirq, /proc/stat, whoever spent it) over the publishing window is reported as
    /// `broker_core`, beside the broker's own process CPU.
    #[arg(long)]
    pub broker_core: Option<usize>,
    /// The core this tool runs on (bench/run.sh pins it): its busy time says whether the
    /// load, not the broker, was the limit (`load_core`, `limit`).
    #[arg(long)]
    pub load_core: Option<usize>,
    /// The network the run went over (`veth`, `loopback`), recorded in the report.
    #[arg(long, default_value = "")]
    pub net: String,
    /// Most streams per worker process (each needs a file descriptor).
    #[arg(long, default_value_t = 15_000)]
    pub per_worker: usize,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Workload name recorded in the report (used by `compare`).
    #[arg(long, default_value = "run")]
    pub label: String,
    /// Broker name recorded in the report (used by `compare`).
    #[arg(long, default_value = "target")]
    pub broker: String,
}

impl RunArgs {
    fn check(&self) -> Result<(), String> {
        wire::Endpoint::parse(&self.subscribe_url)?;
        wire::Endpoint::parse(&self.publish_url)?;
        let positive = |v: f64| v.is_finite() && v >= 0.0;
        if self.channels == 0 {
            return Err("--channels must be at least 1".into());
        }
        if self.subscribers > 1_000_000 {
            return Err("--subscribers is at most 1000000".into());
        }
        if !positive(self.rate)
            || !positive(self.connect_rate)
            || !positive(self.settle)
            || !positive(self.grace)
        {
            return Err("--rate, --connect-rate, --settle and --grace must be >= 0".into());
        }
        if !(self.duration > 0.0 && self.duration <= 3600.0) {
            return Err("--duration must be in (0, 3600] seconds".into());
        }
        if !(self.connect_timeout > 0.0 && self.connect_timeout <= 600.0) {
            return Err("--connect-timeout must be in (0, 600] seconds".into());
        }
        if self.batch == 0 || self.batch > 100_000 {
            return Err("--batch must be in 1..=100000".into());
        }
        if self.batch > 1 && self.publish_format == PublishFormat::Raw {
            return Err("--batch needs --publish-format herald".into());
        }
        if self.publish_connections == 0 || self.publish_connections > 1024 {
            return Err("--publish-connections must be in 1..=1024".into());
        }
        if self.pipeline == 0 || self.pipeline > 256 {
            return Err("--pipeline must be in 1..=256".into());
        }
        if self.pipeline > 1 && !self.flood {
            return Err("--pipeline needs --flood".into());
        }
        if self.payload_bytes > 1 << 20 {
            return Err("--payload-bytes is at most 1 MiB".into());
        }
        if self.per_worker == 0 {
            return Err("--per-worker must be at least 1".into());
        }
        Ok(())
    }

    /// Events are published in this run.
    pub fn publishes(&self) -> bool {
        self.flood || self.rate > 0.0
    }
}

/// Raise the soft file-descriptor limit to the hard one; returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Worker { spec }) => serde_json::from_str(&spec)
            .map_err(anyhow::Error::from)
            .and_then(worker::run),
        Some(Command::Compare(args)) => compare::run(&args),
        Some(Command::Baseline { listen }) => baseline::run(listen),
        Some(Command::Floor { listen }) => floor::run(listen),
        None => match cli.run.check() {
            Err(e) => {
                eprintln!("herald-bench: {e}");
                return ExitCode::from(64);
            }
            Ok(()) => coordinator::run(cli.run),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
