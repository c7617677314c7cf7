//! `backend.kind = "redis"` with access control: an ACL user whose password herald never
//! shows (logs, `check-config`), a wrong password that keeps a node from becoming ready,
//! and TLS (`rediss://` with the test's CA). Real `redis-server` and herald processes on
//! loopback ports started by the test.

mod common;
mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use support::redis::{RedisOptions, RedisServer};
use support::Daemon;

const WAIT: Duration = Duration::from_secs(5);

fn node(redis: &RedisServer) -> HeraldProcess {
    HeraldProcess::spawn(&redis.backend_toml(), &["--demo"])
}

/// `herald check-config --config FILE` run to its end (10 s at most): stdout, stderr.
fn check_config(toml: &str) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("herald.toml");
    std::fs::write(&file, toml).expect("write herald.toml");
    let mut child = Command::new(herald_bin())
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald check-config");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for check-config") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("herald check-config did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = child.wait_with_output().expect("check-config output");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(status.success(), "check-config failed: {stderr}");
    (stdout, stderr)
}

/// With an ACL user and password (the default user disabled), publish and subscribe work
/// across two nodes, also after Redis restarts and both nodes authenticate again; the
/// password shows neither in the nodes' logs (which name the URL at start and on the
/// lost connection) nor in `herald check-config`, which shows the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_works_and_its_password_is_never_shown() {
    let password = "acl-Secret-8c41f2";
    let mut redis = RedisServer::start(RedisOptions {
        acl_user: Some(("herald-node".into(), password.into())),
        ..RedisOptions::default()
    });
    assert!(redis.backend_toml().contains(password), "the nodes get it");
    let (a, b) = (node(&redis), node(&redis));
    let client = reqwest::Client::new();
    let mut on_b = SseClient::connect(&b.url("/events?channel=news")).await;
    on_b.expect_preamble().await;
    let id = publish_data(&client, &a.url("/publish"), "news", "with acl").await;
    let e = on_b.next_event(WAIT).await;
    assert_eq!(
        (e.last_event_id, e.data),
        (id.to_string(), "with acl".into())
    );

    let reconnects = "herald_backend_reconnects_total";
    let before = [
        metric(&a.admin_url("/metrics"), reconnects).await,
        metric(&b.admin_url("/metrics"), reconnects).await,
    ];
    redis.restart(false);
    for (n, before) in [&a, &b].into_iter().zip(before) {
        let url = n.admin_url("/metrics");
        let back = wait_for(Duration::from_secs(10), || async {
            metric(&url, reconnects).await > before
                && metric(&url, "herald_backend_up").await == 1.0
        })
        .await;
        assert!(back, "no reconnect with the ACL user at {url}");
    }
    let again = publish_data(&client, &a.url("/publish"), "news", "again").await;
    let e = on_b.next_event(WAIT).await;
    assert_eq!(
        (e.last_event_id, e.data),
        (again.to_string(), "again".into())
    );

    for n in [&a, &b] {
        let logs = n.stderr_text();
        assert!(logs.contains("redis pub/sub connection lost"), "{logs}");
        assert!(
            logs.contains("herald-node"),
            "the logs name the user: {logs}"
        );
        assert!(!logs.contains(password), "the password is logged:\n{logs}");
    }
    let (out, err) = check_config(&redis.backend_toml());
    let shown: toml::Value = toml::from_str(&out).expect("check-config prints TOML");
    let url = shown["backend"]["redis"]["url"].as_str().expect("the URL");
    assert!(
        url.contains("herald-node") && url.contains("redacted"),
        "{url}"
    );
    assert!(
        !out.contains(password) && !err.contains(password),
        "{out}\n{err}"
    );
}

/// Over `rediss://`, with the CA of the test's certificate (`tls_ca_file`) and a Redis
/// that serves TLS only, two nodes are one broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_over_tls_are_one_broker() {
    let redis = RedisServer::start(RedisOptions {
        tls: true,
        ..RedisOptions::default()
    });
    assert!(redis.url().starts_with("rediss://"), "{}", redis.url());
    let (a, b) = (node(&redis), node(&redis));
    let mut on_b = SseClient::connect(&b.url("/events?channel=news")).await;
    on_b.expect_preamble().await;
    let id = publish_data(&reqwest::Client::new(), &a.url("/publish"), "news", "tls").await;
    let e = on_b.next_event(WAIT).await;
    assert_eq!((e.last_event_id, e.data), (id.to_string(), "tls".into()));
}

/// The public and admin addresses from the "herald listening" line in the JSON log at
/// `log`, once it is there.
async fn listening(log: &std::path::Path) -> (SocketAddr, SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("herald listening")) {
            let v: Value = serde_json::from_str(line).expect("a JSON log line");
            let addr = |key: &str| -> SocketAddr {
                v["fields"][key]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("no {key} address in {line}"))
            };
            return (addr("public"), addr("admin"));
        }
        assert!(Instant::now() < deadline, "herald did not listen:\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A node whose Redis password is wrong listens but never becomes ready: `/readyz`
/// answers 503 `starting` at every look while Redis refuses one connection attempt
/// after another, publishes are refused with `backend_unavailable`, and the log says
/// why without showing the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_redis_password_keeps_the_node_starting() {
    let (right, wrong) = ("right-Secret-51d0", "wrong-Secret-e7a9");
    let redis = RedisServer::start(RedisOptions {
        acl_user: Some(("herald-node".into(), right.into())),
        ..RedisOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [telemetry]\nlog_format = \"json\"\n{}",
            redis.backend_toml().replace(right, wrong)
        ),
    )
    .expect("write herald.toml");
    let log = dir.path().join("stderr.log");
    let mut command = Command::new(herald_bin());
    command
        .arg("--config")
        .arg(&config)
        .arg("--demo")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut herald = Daemon::spawn("herald", command, "TERM");
    let (public, admin) = listening(&log).await;

    // Refused attempts come every backoff (50-200 ms); wait for five of them, looking at
    // readiness all along.
    let errors = r#"herald_backend_errors_total{kind="connect"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut looks = 0;
    loop {
        let (status, body) = get_json(&format!("http://{admin}/readyz")).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["status"], "starting", "{body}");
        assert_eq!(body["backend"], "down", "{body}");
        looks += 1;
        let (_, text) = get_text(&format!("http://{admin}/metrics")).await;
        if metric_value(&text, errors).unwrap_or(0.0) >= 5.0 {
            break;
        }
        assert!(Instant::now() < deadline, "fewer than 5 refusals:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(looks > 1);
    let (status, body) = post(
        &reqwest::Client::new(),
        &format!("http://{public}/publish"),
        Some("application/json"),
        json!({"channel": "news", "data": "x"}).to_string(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("backend_unavailable"))
    );

    herald.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.to_lowercase().contains("authentication failed"),
        "the log does not say why:\n{text}"
    );
    assert!(!text.contains(wrong), "the password is logged:\n{text}");
}
