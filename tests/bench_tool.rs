//! The `herald-bench` load tool against an in-process herald (and against its own
//! reference servers): it connects, publishes, counts every delivery exactly once, and
//! writes a complete JSON report.

mod common;

use std::process::Command;

use common::{test_config, TestServer};
use serde_json::Value;

/// Run the tool against herald's `server` (its subscribe and publish URLs) with `args`.
async fn bench_on(server: &TestServer, args: &[&str]) -> Value {
    let (subscribe, publish) = (
        server.url("/events?channel={channel}"),
        server.url("/publish"),
    );
    let mut all = vec!["--subscribe-url", &subscribe, "--publish-url", &publish];
    all.extend_from_slice(args);
    bench(&all).await
}

/// Run the tool with `args` and return its JSON report.
async fn bench(args: &[&str]) -> Value {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let json_arg = json.to_str().unwrap().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_herald-bench"))
            .args(&args)
            .args(["--json", &json_arg])
            .output()
            .expect("run herald-bench")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "herald-bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("latency p50 / p90 / p99 / max"), "{stdout}");
    let report = std::fs::read_to_string(&json).expect("report written");
    serde_json::from_str(&report).expect("report is JSON")
}

fn n(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} missing in {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_event_once() {
    let server = TestServer::start(test_config()).await;
    let args = [
        "--subscribers",
        "50",
        "--rate",
        "20",
        "--duration",
        "2",
        "--settle",
        "0.2",
        "--label",
        "fanout",
        "--broker",
        "herald",
        "--target-pid",
        &std::process::id().to_string(),
        // Measured apart, like the Redis behind herald-redis in bench/run.sh.
        "--backend-pid",
        &std::process::id().to_string(),
        // Core 0 exists everywhere: both sides' core figures from /proc/stat.
        "--broker-core",
        "0",
        "--load-core",
        "0",
        "--net",
        "loopback",
    ];
    let report = bench_on(&server, &args).await;

    assert_eq!(n(&report, "/connected"), 50);
    assert_eq!(n(&report, "/failed"), 0);
    let published = n(&report, "/published");
    assert!(
        published >= 35,
        "published only {published} at 20/s for 2 s"
    );
    assert_eq!(n(&report, "/publish_errors"), 0);
    assert_eq!(n(&report, "/delivered"), published * 50);
    assert_eq!(n(&report, "/expected"), published * 50);
    assert_eq!(n(&report, "/missing"), 0);
    assert_eq!(n(&report, "/duplicates"), 0);
    assert_eq!(n(&report, "/gaps"), 0);
    assert_eq!(n(&report, "/latency_ms/count"), published * 50);
    assert_eq!(report["label"], "fanout");
    assert_eq!(report["broker"], "herald");
    for key in [
        "/latency_ms/p50",
        "/latency_ms/p90",
        "/latency_ms/p99",
        "/latency_ms/max",
        "/delivered_per_sec",
        "/publish_per_sec",
        "/connect_ms/p99",
        "/target/rss_before_kib",
        "/target/rss_growth_kib",
        "/target/rss_per_subscriber_kib",
        "/target/cpu_s",
        "/target/cpu_us_per_delivery",
        "/target/sys_percent_of_cpu",
        "/backend/cpu_s",
        "/backend/cpu_us_per_delivery",
        "/open_s",
        "/load_cpu_percent",
        "/others_cpu_percent",
        "/broker_core/cpu_s",
        "/broker_core/busy_percent",
        "/broker_core/softirq_percent",
        "/broker_core/cpu_us_per_delivery",
        "/broker_core/rest_busy_percent",
        "/load_core/busy_percent",
    ] {
        assert!(
            report.pointer(key).is_some_and(Value::is_number),
            "{key} in {report:#}"
        );
    }
    assert!(report["target"]["error"].is_null(), "{report:#}");
    assert!(report["backend"]["error"].is_null(), "{report:#}");
    assert!(report["broker_core"]["error"].is_null(), "{report:#}");
    assert_eq!(report["net"], "loopback");
    let limit = report["limit"].as_str().unwrap_or_default();
    assert!(
        ["broker", "load", "both", "neither"].contains(&limit),
        "{limit}"
    );
    server.stop().await;
}

/// Batches over several channels, with the streams split over three worker processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_over_channels_and_workers() {
    let server = TestServer::start(test_config()).await;
    let args = [
        "--subscribers",
        "40",
        "--channels",
        "4",
        "--per-worker",
        "15",
        "--batch",
        "5",
        "--rate",
        "100",
        "--publish-connections",
        "3",
        "--duration",
        "1",
        "--settle",
        "0.2",
    ];
    let report = bench_on(&server, &args).await;

    assert_eq!(n(&report, "/workers"), 3);
    assert_eq!(n(&report, "/connected"), 40);
    let published = n(&report, "/published");
    assert!(published >= 50 && published % 5 == 0, "{published}");
    assert_eq!(n(&report, "/publish_requests") * 5, published);
    // Every channel has ten of the streams.
    assert_eq!(n(&report, "/expected"), published * 10);
    assert_eq!(n(&report, "/delivered"), published * 10);
    assert_eq!(n(&report, "/missing"), 0);
    assert_eq!(n(&report, "/duplicates"), 0);
    server.stop().await;
}

/// Pipelined floods (16 requests in flight on each connection): every request answered,
/// every event delivered once to every stream of its channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_floods_are_counted_and_delivered() {
    let server = TestServer::start(test_config()).await;
    let args = [
        "--subscribers",
        "6",
        "--channels",
        "3",
        "--flood",
        "--pipeline",
        "16",
        "--publish-connections",
        "2",
        "--duration",
        "0.5",
        "--settle",
        "0.2",
    ];
    let report = bench_on(&server, &args).await;

    let published = n(&report, "/published");
    assert!(published >= 32, "{published}");
    assert_eq!(n(&report, "/publish_requests"), published);
    assert_eq!(n(&report, "/publish_errors"), 0);
    assert_eq!(n(&report, "/expected"), published * 2);
    assert_eq!(n(&report, "/delivered"), published * 2);
    assert_eq!(n(&report, "/missing"), 0);
    assert_eq!(n(&report, "/duplicates"), 0);
    server.stop().await;
}

#[test]
fn refuses_targets_off_this_machine() {
    let output = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args([
            "--subscribe-url",
            "http://10.1.2.3:8080/events?channel={channel}",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("127.0.0.0/8"));
}

/// `herald-bench baseline` / `floor` on an ephemeral loopback port, killed on drop.
struct ToolServer {
    child: std::process::Child,
    addr: String,
}

impl ToolServer {
    fn start(kind: &str) -> Self {
        Self::spawn(Command::new(env!("CARGO_BIN_EXE_herald-bench")), kind)
    }

    /// In network namespace `ns` (`ip netns exec` execs the tool: the pid is its own).
    fn start_in(ns: &str, kind: &str) -> Self {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_herald-bench")]);
        Self::spawn(command, kind)
    }

    fn spawn(mut command: Command, kind: &str) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = command
            .args([kind, "--listen", "127.0.0.1:0"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start herald-bench server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(std::time::Duration::from_secs(10)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald-bench {kind} did not start");
        };
        Self { child, addr }
    }
}

impl Drop for ToolServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reference servers `make bench` compares herald with deliver every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_and_floor_deliver_every_event_once() {
    for kind in ["baseline", "floor"] {
        let server = ToolServer::start(kind);
        let args = [
            "--subscribe-url",
            &format!("http://{}/sub?id={{channel}}", server.addr),
            "--publish-url",
            &format!("http://{}/pub?id={{channel}}", server.addr),
            "--publish-format",
            "raw",
            "--subscribers",
            "30",
            "--rate",
            "20",
            "--duration",
            "1",
            "--settle",
            "0.2",
            "--grace",
            "2",
            "--target-pid",
            &server.child.id().to_string(),
        ];
        let report = bench(&args).await;
        assert_eq!(n(&report, "/connected"), 30, "{kind}");
        let published = n(&report, "/published");
        assert!(published >= 15, "{kind}: published only {published}");
        assert_eq!(n(&report, "/delivered"), published * 30, "{kind}");
        assert_eq!(n(&report, "/missing"), 0, "{kind}");
        assert_eq!(n(&report, "/duplicates"), 0, "{kind}");
        assert!(report["target"]["error"].is_null(), "{kind}: {report:#}");
    }
}

/// The modelled network of `make bench` (bench/netns.sh), made and removed by the test:
/// the floor in the broker's namespace, the tool in the load namespace, 127.0.0.1 reached
/// over the veth pair only. Root only (network namespaces); skipped otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veth_pair_carries_the_streams_and_goes_away() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n");
    let netns = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/netns.sh");
    if !matches!(root, Ok(true))
        || !Command::new(netns)
            .arg("check")
            .status()
            .is_ok_and(|s| s.success())
    {
        eprintln!("skipped: needs root and iproute2 (bench/netns.sh check)");
        return;
    }
    let id = format!("t{}", std::process::id());
    let pair = NetnsPair::up(netns, &id);
    let broker_ns = format!("herald-bench-b-{id}");
    let load_ns = format!("herald-bench-l-{id}");

    // From the load namespace 127.0.0.1 is over the veth, and 127.0.0.2-254 are local.
    let route = Command::new("ip")
        .args([
            "-n",
            &load_ns,
            "route",
            "get",
            "127.0.0.1",
            "from",
            "127.0.0.9",
        ])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout).to_string();
    assert!(route.contains(&format!("dev hbl-{id}")), "{route}");

    let floor = ToolServer::start_in(&broker_ns, "floor");
    let args = [
        "--subscribe-url".to_string(),
        format!("http://{}/sub?id={{channel}}", floor.addr),
        "--publish-url".into(),
        format!("http://{}/pub?id={{channel}}", floor.addr),
        "--publish-format".into(),
        "raw".into(),
        "--subscribers".into(),
        "300".into(),
        "--rate".into(),
        "20".into(),
        "--duration".into(),
        "1".into(),
        "--settle".into(),
        "0.2".into(),
        "--grace".into(),
        "2".into(),
        "--target-pid".into(),
        floor.child.id().to_string(),
        "--broker-core".into(),
        "0".into(),
        "--load-core".into(),
        "0".into(),
        "--net".into(),
        "veth".into(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            &load_ns,
            env!("CARGO_BIN_EXE_herald-bench"),
        ])
        .args(&args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(n(&report, "/connected"), 300);
    let published = n(&report, "/published");
    assert!(published >= 15, "published only {published}");
    assert_eq!(n(&report, "/delivered"), published * 300);
    assert_eq!(n(&report, "/missing"), 0);
    assert_eq!(report["net"], "veth");
    assert!(report["broker_core"]["error"].is_null(), "{report:#}");
    drop(floor);

    drop(pair);
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        !list.contains(&broker_ns) && !list.contains(&load_ns),
        "{list}"
    );
}

/// Two namespaces of bench/netns.sh, removed on drop (also when the test fails).
struct NetnsPair {
    script: &'static str,
    id: String,
}

impl NetnsPair {
    fn up(script: &'static str, id: &str) -> Self {
        let pair = Self {
            script,
            id: id.to_string(),
        };
        let status = Command::new(script).args(["up", id]).status().unwrap();
        assert!(status.success(), "bench/netns.sh up {id}");
        pair
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        let _ = Command::new(self.script).args(["down", &self.id]).status();
    }
}
