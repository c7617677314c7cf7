//! The `herald-bench` load tool against an in-process herald (and against its own
//! reference servers): it connects, publishes, counts every delivery exactly once, and
//! writes a complete JSON report.

mod common;

use std::process::Command;

use common::{test_config, TestServer};
use serde_json::Value;

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
        "--subscribe-url",
        &server.url("/events?channel={channel}"),
        "--publish-url",
        &server.url("/publish"),
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
    ];
    let report = bench(&args).await;

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
    ] {
        assert!(
            report.pointer(key).is_some_and(Value::is_number),
            "{key} in {report:#}"
        );
    }
    assert!(report["target"]["error"].is_null(), "{report:#}");
    assert!(report["backend"]["error"].is_null(), "{report:#}");
    server.stop().await;
}

/// Batches over several channels, with the streams split over three worker processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_over_channels_and_workers() {
    let server = TestServer::start(test_config()).await;
    let args = [
        "--subscribe-url",
        &server.url("/events?channel={channel}"),
        "--publish-url",
        &server.url("/publish"),
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
    let report = bench(&args).await;

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
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
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
