//! herald.js, the browser client, under node's own test runner against real herald nodes
//! (in process, loopback): `tests/js/herald.test.mjs` gets their URLs in its environment.
//! The file herald serves at /herald.js is the one tested.

mod common;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use support::herald_config;

const JWT_SECRET: &str = "herald-js-test-secret-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_js_passes_its_node_tests_against_real_nodes() {
    let plain = TestServer::start(test_config()).await;
    let capped = TestServer::start(herald_config(
        "[limits]\nmax_connections_per_ip = 1\nretry_after = \"1s\"\n",
    ))
    .await;
    let short = TestServer::start(herald_config(
        "[limits]\nmax_connection_lifetime = \"1s\"\nconnection_lifetime_jitter = 0.0\n\
         [sse]\nretry = \"100ms\"\n",
    ))
    .await;
    let private = TestServer::start(herald_config(&format!(
        "[auth]\nprivate_channels = [\"private:*\"]\n[auth.jwt]\nalgorithm = \"HS256\"\n\
         secret = \"{JWT_SECRET}\"\n[limits]\nmax_connection_lifetime = \"1s\"\n\
         connection_lifetime_jitter = 0.0\n[sse]\nretry = \"100ms\"\n"
    )))
    .await;
    let beats = |interval: &str| {
        herald_config(&format!(
            "[sse]\nheartbeat_event = \"hb\"\nheartbeat_interval = \"{interval}\"\n"
        ))
    };
    let quiet = TestServer::start(beats("2s")).await;
    let beating = TestServer::start(beats("200ms")).await;

    let library = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/herald.js");
    let (status, served) = get_text(&plain.url("/herald.js")).await;
    assert_eq!(status, 200);
    assert_eq!(
        served,
        std::fs::read_to_string(&library).unwrap(),
        "/herald.js serves src/http/herald.js"
    );

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/herald.test.mjs");
    let run = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("--test")
            .arg("--test-timeout=30000")
            .arg(script)
            .env("HERALD_JS", format!("file://{}", library.display()))
            .env("HERALD_PLAIN", plain.url(""))
            .env("HERALD_CAPPED", capped.url(""))
            .env("HERALD_SHORT", short.url(""))
            .env("HERALD_PRIVATE", private.url(""))
            .env("HERALD_JWT_SECRET", JWT_SECRET)
            .env("HERALD_QUIET", quiet.url(""))
            .env("HERALD_BEATING", beating.url(""))
            .output()
            .map(|out| (out, [plain, capped, short, private, quiet, beating]))
    });
    let (out, servers) = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("node's tests finished within 120 s")
        .unwrap()
        .expect("node runs (scripts/install-test-deps.sh installs it)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "node --test failed:\n{report}");
    // Every test ran (a script that registered none would "pass" too).
    assert!(
        report.contains("# pass 10") && report.contains("# fail 0"),
        "{report}"
    );
    for server in servers {
        server.stop().await;
    }
}
