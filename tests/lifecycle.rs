//! The process around the broker: `check-config`, exit code 64 before binding, environment
//! overrides, the admin endpoints, and draining on SIGTERM (or `stop()` in process).

mod common;
#[path = "common/hardening.rs"]
mod hardening;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hardening::wait_metric;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);

/// Run the herald binary to completion (killed after 10 s): exit code, stdout, stderr.
fn run_herald(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut child = Command::new(herald_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("herald {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), out, err)
}

fn config_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(
        &dir,
        "[sse]\nretry = \"1s\"\n[limits]\nmax_channels_per_subscription = 8\n\
         [auth]\npublish_keys = [\"secret-key-0123456789\"]\n",
    );
    let (code, out, err) = run_herald(&["check-config", "--config", &file], &[]);
    assert_eq!(code, Some(0), "{err}");
    let shown: toml::Value = toml::from_str(&out).expect("check-config prints TOML");
    assert_eq!(shown["sse"]["retry"].as_str(), Some("1s"));
    assert_eq!(
        shown["limits"]["max_channels_per_subscription"].as_integer(),
        Some(8)
    );
    // Defaults fill in everything the file does not say.
    assert_eq!(shown["history"]["max_events"].as_integer(), Some(1000));
    assert_eq!(shown["sse"]["reset_event"].as_str(), Some("reset"));
    assert!(
        !out.contains("secret-key-0123456789"),
        "publish keys are printed:\n{out}"
    );
    assert!(out.contains("<redacted>"));
    // What it prints is itself a config that loads to the same thing (keys aside).
    let again = config_file(
        &dir,
        &out.replace("\"<redacted>\"", "\"another-key-0123456789\""),
    );
    let (code, out2, err) = run_herald(&["check-config", "--config", &again], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out2, out);
}

#[test]
fn invalid_configuration_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[sse]\nheartbeat_interval = \"soon\"\n",
            "sse.heartbeat_interval",
        ),
        (
            "[limits]\nmax_batch_events = 0\n",
            "limits.max_batch_events",
        ),
        ("[history]\nmax_evnts = 3\n", "max_evnts"),
        ("[backend]\nkind = \"etcd\"\n", "backend.kind"),
    ];
    for (text, key) in cases {
        let file = config_file(&dir, text);
        let (code, _, err) = run_herald(&["check-config", "--config", &file], &[]);
        assert_eq!(code, Some(64), "{text}: {err}");
        assert!(
            err.contains(key),
            "{text}: stderr does not name {key}: {err}"
        );
    }
    let (code, _, err) = run_herald(
        &["check-config", "--config", "/nonexistent/herald.toml"],
        &[],
    );
    assert_eq!(code, Some(64), "{err}");
}

/// Serving with a bad value exits 64 before binding: the listen port is taken, so trying
/// to bind first would fail differently (as the valid config below shows).
#[test]
fn serve_validates_before_binding() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = format!("[server]\nlisten = \"{addr}\"\nadmin_listen = \"127.0.0.1:0\"\n");
    let bad = config_file(
        &dir,
        &format!("{server}[sse]\nheartbeat_interval = \"soon\"\n"),
    );
    let (code, _, err) = run_herald(&["--config", &bad], &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("sse.heartbeat_interval"), "{err}");
    assert!(!err.contains("cannot bind"), "{err}");

    let good = config_file(&dir, &server);
    let (code, _, err) = run_herald(&["--config", &good], &[]);
    assert_ne!(code, Some(0), "{err}");
    assert_ne!(code, Some(64), "{err}");
    assert!(err.contains("cannot bind server.listen"), "{err}");
    drop(taken);
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(&dir, "[sse]\nretry = \"2s\"\n");
    let env = [
        ("HERALD_SSE__RETRY", "1s"),
        ("HERALD_LIMITS__MAX_CHANNELS_PER_SUBSCRIPTION", "4"),
    ];
    let (code, out, err) = run_herald(&["check-config", "--config", &file], &env);
    assert_eq!(code, Some(0), "{err}");
    let shown: toml::Value = toml::from_str(&out).unwrap();
    assert_eq!(shown["sse"]["retry"].as_str(), Some("1s"));
    assert_eq!(
        shown["limits"]["max_channels_per_subscription"].as_integer(),
        Some(4)
    );

    let env = [("HERALD_SSE__HEARTBEAT_INTERVAL", "soon")];
    let (code, _, err) = run_herald(&["check-config", "--config", &file], &env);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("sse.heartbeat_interval"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_override_reaches_the_wire() {
    let herald = HeraldProcess::spawn_with_env("", &["--demo"], &[("HERALD_SSE__RETRY", "1500ms")]);
    let mut s = SseClient::connect(&herald.url("/events?channel=env")).await;
    s.expect_preamble().await;
    assert_eq!(s.raw, b"retry: 1500\n: herald\n\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_the_node() {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    assert_eq!(
        get_json(&server.admin_url("/healthz")).await,
        (200, serde_json::json!({"status": "ok"}))
    );
    let (status, ready) = get_json(&server.admin_url("/readyz")).await;
    assert_eq!((status, &ready["status"]), (200, &Value::from("ready")));

    let mut s = SseClient::connect(&server.url("/events?channel=news")).await;
    s.expect_preamble().await;
    publish_data(&client, &server.url("/publish"), "news", "1").await;
    let last = publish_data(&client, &server.url("/publish"), "news", "2").await;
    s.events(2, WAIT).await;
    // A delivery is counted just after its write, so the client can see the events a
    // moment before the counter does: wait for it (it starts at 0, and only these two
    // publishes can raise it).
    const DELIVERED: &str = "herald_events_delivered_total";
    wait_metric(&client, server.admin, DELIVERED, WAIT, |v| v == 2.0).await;

    let resp = reqwest::get(server.admin_url("/metrics")).await.unwrap();
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = resp.text().await.unwrap();
    for (sample, value) in [
        ("herald_connections_open", 1.0),
        ("herald_events_published_total", 2.0),
        (DELIVERED, 2.0),
        ("herald_heartbeats_sent_total", 0.0),
    ] {
        assert_eq!(
            metric_value(&text, sample),
            Some(value),
            "{sample} in\n{text}"
        );
    }

    let (status, stats) = get_json(&server.admin_url("/stats")).await;
    assert_eq!(status, 200);
    assert_eq!(stats["connections"], 1, "{stats}");
    assert_eq!(stats["channels"], 1, "{stats}");
    assert_eq!(stats["subscribers"], 1, "{stats}");
    assert_eq!(
        stats["per_channel"],
        serde_json::json!([{
            "name": "news", "subscribers": 1, "retained_events": 2, "last_event_id": last
        }]),
        "{stats}"
    );

    drop(s);
    let stats_url = server.admin_url("/stats");
    let gone = wait_for(WAIT, || async {
        let (_, s) = get_json(&stats_url).await;
        s["connections"] == 0 && s["subscribers"] == 0
    })
    .await;
    assert!(gone, "a closed stream is still counted");
    let (status, _) = get_json(&server.admin_url("/nowhere")).await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_stop_ends_open_streams() {
    let mut config = test_config();
    config.shutdown.drain_timeout = Duration::from_secs(1);
    let server = TestServer::start(config).await;
    let mut streams = Vec::new();
    for ch in ["a", "b", "c"] {
        let mut s =
            SseClient::connect(&server.url(&format!("/events?channel={ch}&channel=z"))).await;
        s.expect_preamble().await;
        streams.push(s);
    }
    let started = Instant::now();
    server.stop().await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "stop took {took:?}");
    for mut s in streams {
        assert!(
            s.wait_end(Duration::from_millis(100)).await,
            "a stream outlived stop()"
        );
    }
}

/// True once `bytes` hold a whole response head and the body its Content-Length names.
fn is_complete_response(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    body.len() >= length
}

fn publish_request(body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /publish HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// A public connection in the middle of a publish request (head sent, body not complete),
/// so the drain has a request in flight that it must wait for. A complete publish goes
/// first in the same write and its answer is read: by then the server has accepted the
/// connection and holds the second request's head in its buffer.
async fn half_sent_publish(public: std::net::SocketAddr) -> (tokio::net::TcpStream, Vec<u8>) {
    let second = publish_request(br#"{"channel":"late","data":"x"}"#);
    let cut = second.len() - 5;
    let mut bytes = publish_request(br#"{"channel":"early","data":"x"}"#);
    bytes.extend_from_slice(&second[..cut]);
    let mut sock = tokio::net::TcpStream::connect(public).await.unwrap();
    sock.write_all(&bytes).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !is_complete_response(&answer) {
        let n = tokio::time::timeout(WAIT, sock.read(&mut buf))
            .await
            .expect("first publish answered")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    (sock, second[cut..].to_vec())
}

/// The binary with three open streams and a publish request in flight (which holds the
/// drain open until it completes), drain timeout 3 s.
async fn herald_with_open_streams() -> (
    HeraldProcess,
    Vec<SseClient>,
    tokio::net::TcpStream,
    Vec<u8>,
) {
    let herald = HeraldProcess::spawn("[shutdown]\ndrain_timeout = \"3s\"\n", &["--demo"]);
    let mut streams = Vec::new();
    for ch in ["a", "b", "c"] {
        let mut s = SseClient::connect(&herald.url(&format!("/events?channel={ch}"))).await;
        s.expect_preamble().await;
        streams.push(s);
    }
    let (sock, rest) = half_sent_publish(herald.public).await;
    (herald, streams, sock, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_streams_and_exits_zero() {
    let drain = Duration::from_secs(3);
    let (mut herald, mut streams, mut sock, rest) = herald_with_open_streams().await;
    let signalled = Instant::now();
    herald.terminate();
    // Every stream's body finishes, within the drain timeout.
    for s in &mut streams {
        assert!(
            s.wait_end(drain).await,
            "stream still open {:?} after SIGTERM",
            signalled.elapsed()
        );
    }
    // A publish that completes during the drain is refused, not lost silently.
    sock.write_all(&rest).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, sock.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"draining\""), "{answer}");

    let exit = herald.wait_exit_async(drain + Duration::from_secs(2)).await;
    let took = signalled.elapsed();
    let exit = exit.unwrap_or_else(|| panic!("no exit {took:?} after SIGTERM"));
    assert_eq!(exit.code(), Some(0), "{}", herald.stderr_text());
    assert!(
        took < drain + Duration::from_millis(500),
        "exit took {took:?}"
    );
}

/// While the node drains, `/readyz` answers 503 to every probe (a new connection each,
/// as a load balancer makes), until the drain is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_throughout_the_drain() {
    let (mut herald, _streams, _sock, _rest) = herald_with_open_streams().await;
    let readyz = herald.admin_url("/readyz");
    assert_eq!(probe(&readyz).await.0, 200);
    herald.terminate();
    let body = wait_ready_status(&readyz, 503).await;
    assert_eq!(body["status"], "draining", "{body}");
    // The drain is held open by the request in flight: every probe says 503.
    for _ in 0..10 {
        let (status, body) = probe(&readyz).await;
        assert_eq!((status, &body["status"]), (503, &Value::from("draining")));
    }
    herald.child.kill().unwrap();
}

/// A request that never completes cannot hold the process past the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_is_bounded_by_drain_timeout() {
    let drain = Duration::from_secs(1);
    let mut herald = HeraldProcess::spawn("[shutdown]\ndrain_timeout = \"1s\"\n", &["--demo"]);
    let (_sock, _rest) = half_sent_publish(herald.public).await;
    wait_ready_status(&herald.admin_url("/readyz"), 200).await;
    let signalled = Instant::now();
    herald.terminate();
    let exit = herald.wait_exit_async(drain + Duration::from_secs(3)).await;
    let took = signalled.elapsed();
    let exit = exit.unwrap_or_else(|| panic!("no exit {took:?} after SIGTERM"));
    assert_eq!(exit.code(), Some(0), "{}", herald.stderr_text());
    // It did wait for the request in flight, and no longer than allowed.
    assert!(
        took >= drain * 9 / 10,
        "exit after {took:?}: the drain did not wait"
    );
    assert!(
        took < drain + Duration::from_millis(700),
        "exit took {took:?}"
    );
}

/// Poll `/readyz` (a new connection each time, as a load balancer's probe) until it
/// answers `want`; returns the body. A probe the admin listener drops is a failure: it
/// must answer throughout the drain.
async fn wait_ready_status(url: &str, want: u16) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = probe(url).await;
        if status == want {
            return body;
        }
        assert!(
            started.elapsed() < WAIT,
            "readyz never answered {want}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn probe(url: &str) -> (u16, Value) {
    let resp = tokio::time::timeout(WAIT, reqwest::Client::new().get(url).send())
        .await
        .expect("readyz answers within the deadline")
        .unwrap_or_else(|e| panic!("the admin listener dropped {url}: {e:?}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}
