//! What the summary of `herald-bench compare` shows: the workloads of bench/run.sh in
//! their order, and one row per figure, each read from the reports by a JSON pointer.

/// The workloads of bench/run.sh, in the order they are shown.
pub const WORKLOADS: &[&str] = &[
    "idle",
    "fanout-2",
    "fanout-2-python",
    "fanout-50",
    "fanout-50-coalesced",
    "publish",
    "publish-pipelined",
    "publish-batch",
    "storm",
    "channels-10k",
];

/// The broker name of herald with `backend.kind = "redis"` (bench/run.sh), whose goals
/// the summary shows beside the others when it ran.
pub const REDIS_BROKER: &str = "herald-redis";

/// One row of the summary: a figure of one workload.
pub struct Figure {
    pub title: &'static str,
    pub label: &'static str,
    /// JSON pointer into a report.
    pub pointer: &'static str,
    /// A second pointer added to the first where a report has it: the backend's share
    /// (Redis), so that a row reads "what the whole deployment spent".
    pub plus: Option<&'static str>,
    pub digits: usize,
    pub goal: &'static str,
    /// The goal of [`REDIS_BROKER`], shown when it ran.
    pub redis_goal: &'static str,
}

const fn row(
    title: &'static str,
    label: &'static str,
    pointer: &'static str,
    digits: usize,
    goal: &'static str,
) -> Figure {
    Figure {
        title,
        label,
        pointer,
        plus: None,
        digits,
        goal,
        redis_goal: "",
    }
}

const FANOUT_2: &str = "fanout-2";
const FANOUT_50: &str = "fanout-50";
const PYTHON: &str = "fanout-2-python";
const COALESCED: &str = "fanout-50-coalesced";
const CHANNELS: &str = "channels-10k";
const DELIVERY: &str = "/target/oncpu_us_per_delivery";
const REDIS_DELIVERY: &str = "/backend/oncpu_us_per_delivery";
const PUBLISHED: &str = "/target/oncpu_us_per_published";
const CORE_DELIVERY: &str = "/broker_core/awake_us_per_delivery";
const CORE_PUBLISHED: &str = "/broker_core/awake_us_per_published";
const REDIS_PUBLISHED: &str = "/backend/oncpu_us_per_published";

pub const FIGURES: &[Figure] = &[
    row(
        "memory per idle stream (RSS growth / streams), KiB",
        "idle",
        "/target/rss_per_subscriber_kib",
        2,
        "<= 2.5",
    ),
    row(
        "broker core CPU per delivery at 2 events/s (all of core 0), us",
        FANOUT_2,
        CORE_DELIVERY,
        2,
        "<= 1.2x floor",
    ),
    Figure {
        redis_goal: "<= 1.2x herald",
        ..row(
            "broker process CPU per delivery at 2 events/s, us",
            FANOUT_2,
            DELIVERY,
            2,
            "",
        )
    },
    row(
        "Redis CPU per delivery at 2 events/s (its own process), us",
        FANOUT_2,
        REDIS_DELIVERY,
        3,
        "",
    ),
    Figure {
        plus: Some(REDIS_DELIVERY),
        ..row(
            "herald + Redis CPU per delivery at 2 events/s, us",
            FANOUT_2,
            DELIVERY,
            2,
            "",
        )
    },
    row(
        "of the broker's CPU, share in the kernel (system time), %",
        FANOUT_2,
        "/target/sys_percent_of_cpu",
        0,
        "",
    ),
    row(
        "of core 0's busy time, softirq (receive processing), %",
        FANOUT_2,
        "/broker_core/softirq_percent",
        1,
        "",
    ),
    row(
        "other processes' CPU during fanout-2 (noise in the core figures), % of a core",
        FANOUT_2,
        "/others_cpu_percent",
        0,
        "",
    ),
    row(
        "latency p50 at 2 events/s, ms",
        FANOUT_2,
        "/latency_ms/p50",
        2,
        "",
    ),
    Figure {
        redis_goal: "<= herald + 2 ms",
        ..row(
            "latency p99 at 2 events/s, ms",
            FANOUT_2,
            "/latency_ms/p99",
            2,
            "<= 0.2x Nchan",
        )
    },
    row(
        "independent client (bench/sse_client.py) at 2 events/s: broker core CPU per delivery, us",
        PYTHON,
        "/crosscheck/core_cpu_us_per_delivery",
        2,
        "",
    ),
    row(
        "independent client at 2 events/s: broker process CPU per delivery, us",
        PYTHON,
        "/crosscheck/process_cpu_us_per_delivery",
        2,
        "",
    ),
    row(
        "independent client at 2 events/s: latency p99, ms",
        PYTHON,
        "/crosscheck/latency_ms/p99",
        2,
        "",
    ),
    row(
        "independent client at 2 events/s: events missing",
        PYTHON,
        "/crosscheck/missing",
        0,
        "0",
    ),
    row(
        "broker core CPU per delivery at 50 events/s, us",
        FANOUT_50,
        CORE_DELIVERY,
        2,
        "<= 1",
    ),
    row(
        "broker process CPU per delivery at 50 events/s, us",
        FANOUT_50,
        DELIVERY,
        2,
        "",
    ),
    row(
        "load core busy at 50 events/s (>= 90: the load is the limit), %",
        FANOUT_50,
        "/load_core/awake_percent",
        0,
        "",
    ),
    row(
        "Redis CPU per delivery at 50 events/s, us",
        FANOUT_50,
        REDIS_DELIVERY,
        3,
        "",
    ),
    Figure {
        redis_goal: "50",
        ..row(
            "publishes accepted/s while fanning out to 10k streams (50/s asked)",
            FANOUT_50,
            "/publish_per_sec",
            1,
            "50",
        )
    },
    row(
        "deliveries owed (published x streams) /s at 50 events/s",
        FANOUT_50,
        "/expected_per_sec",
        0,
        "",
    ),
    row(
        "delivered events/s at 50 events/s",
        FANOUT_50,
        "/delivered_per_sec",
        0,
        "all of them",
    ),
    row(
        "latency p99 at 50 events/s, ms",
        FANOUT_50,
        "/latency_ms/p99",
        2,
        "",
    ),
    row(
        "broker core CPU per delivery at 50 events/s, sse.coalesce_window = 250ms, us",
        COALESCED,
        CORE_DELIVERY,
        2,
        "",
    ),
    row(
        "broker process CPU per delivery at 50 events/s, sse.coalesce_window = 250ms, us",
        COALESCED,
        DELIVERY,
        2,
        "",
    ),
    row(
        "latency p99 at 50 events/s, sse.coalesce_window = 250ms, ms",
        COALESCED,
        "/latency_ms/p99",
        2,
        "",
    ),
    row(
        "publishes/s, 8 keep-alive connections",
        "publish",
        "/publish_per_sec",
        0,
        ">= 1.5x Nchan",
    ),
    row(
        "broker core CPU per publish, us",
        "publish",
        CORE_PUBLISHED,
        2,
        "",
    ),
    row(
        "broker process CPU per publish, us",
        "publish",
        PUBLISHED,
        2,
        "",
    ),
    row(
        "load core busy while publishing (>= 90: the load is the limit), %",
        "publish",
        "/load_core/awake_percent",
        0,
        "",
    ),
    row(
        "Redis CPU per publish, us",
        "publish",
        REDIS_PUBLISHED,
        2,
        "",
    ),
    row(
        "of the broker's CPU, share in the kernel (system time), %",
        "publish",
        "/target/sys_percent_of_cpu",
        0,
        "",
    ),
    Figure {
        redis_goal: ">= 50,000",
        ..row(
            "publishes/s, 8 keep-alive connections, 16 pipelined on each",
            "publish-pipelined",
            "/publish_per_sec",
            0,
            "",
        )
    },
    row(
        "pipelined: broker core CPU per publish, us",
        "publish-pipelined",
        CORE_PUBLISHED,
        2,
        "",
    ),
    row(
        "pipelined: broker process CPU per publish, us",
        "publish-pipelined",
        PUBLISHED,
        2,
        "",
    ),
    row(
        "pipelined: Redis CPU per publish, us",
        "publish-pipelined",
        REDIS_PUBLISHED,
        2,
        "",
    ),
    row(
        "pipelined: load core busy (>= 90: the load is the limit), %",
        "publish-pipelined",
        "/load_core/awake_percent",
        0,
        "",
    ),
    Figure {
        redis_goal: ">= 500,000",
        ..row(
            "batched publish, events/s",
            "publish-batch",
            "/publish_per_sec",
            0,
            ">= 1M",
        )
    },
    row(
        "batched publish: CPU per event, us",
        "publish-batch",
        PUBLISHED,
        2,
        "",
    ),
    row(
        "batched publish: Redis CPU per event, us",
        "publish-batch",
        REDIS_PUBLISHED,
        2,
        "",
    ),
    row("connect storm: failed streams", "storm", "/failed", 0, "0"),
    row(
        "connect storm: connect p99, ms",
        "storm",
        "/connect_ms/p99",
        1,
        "",
    ),
    row(
        "10k channels x 1 stream: time to open the streams (5,000/s asked), s",
        CHANNELS,
        "/open_s",
        2,
        "",
    ),
    row(
        "10k channels x 1 stream: connect p99, ms",
        CHANNELS,
        "/connect_ms/p99",
        1,
        "",
    ),
    row(
        "10k channels x 1 stream: publishes accepted/s (10,000/s asked)",
        CHANNELS,
        "/publish_per_sec",
        0,
        "",
    ),
    row(
        "10k channels x 1 stream: CPU per delivery, us",
        CHANNELS,
        DELIVERY,
        2,
        "",
    ),
    row(
        "10k channels x 1 stream: Redis CPU per delivery, us",
        CHANNELS,
        REDIS_DELIVERY,
        2,
        "",
    ),
    row(
        "10k channels x 1 stream: latency p99, ms",
        CHANNELS,
        "/latency_ms/p99",
        2,
        "",
    ),
    row(
        "10k channels x 1 stream: Redis used_memory after the run, MiB",
        CHANNELS,
        "/redis/used_memory_mib",
        1,
        "",
    ),
];
