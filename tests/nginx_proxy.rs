//! A real nginx, configured from nginx/herald.conf, in front of an in-process herald:
//! streams open at once, events pass unbuffered, heartbeats outlive proxy_read_timeout,
//! Last-Event-ID and X-Forwarded-For reach herald, and the admin endpoints stay private.

mod common;
mod support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::TestServer;
use support::nginx::Nginx;
use support::{herald_config, repo_path, EventStream, Read};

/// What herald writes first on every stream (`sse.retry` = 3s).
const PREAMBLE: &str = "retry: 3000\n: herald\n\n";
const HEARTBEAT: &str = ": ping\n\n";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
}

/// herald with 1 s heartbeats, behind nginx with a 3 s proxy_read_timeout.
async fn stack() -> (TestServer, Nginx) {
    stack_with("[sse]\nheartbeat_interval = \"1s\"\n", "3s").await
}

async fn stack_with(herald_toml: &str, read_timeout: &str) -> (TestServer, Nginx) {
    let herald = TestServer::start(herald_config(herald_toml)).await;
    let nginx = Nginx::start(herald.public, read_timeout);
    (herald, nginx)
}

async fn subscribe(nginx: &Nginx, query: &str, headers: &[(&str, &str)]) -> EventStream {
    let mut req = client().get(nginx.url(&format!("/events?{query}")));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(Duration::from_secs(5), req.send())
        .await
        .expect("response headers within 5 s")
        .expect("GET /events through nginx");
    assert_eq!(resp.status(), 200, "GET /events?{query}: {}", nginx.logs());
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream",
        "content type through nginx"
    );
    EventStream::new(resp)
}

/// Publish through nginx; returns the event ID herald assigned.
async fn publish(nginx: &Nginx, channel: &str, data: &str) -> String {
    let resp = client()
        .post(nginx.url("/publish"))
        .json(&serde_json::json!({ "channel": channel, "data": data }))
        .send()
        .await
        .expect("POST /publish through nginx");
    assert_eq!(resp.status(), 200, "publish through nginx");
    let body: serde_json::Value = resp.json().await.expect("publish answer is JSON");
    body["id"]
        .as_str()
        .expect("publish answer has an id")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_preamble_arrives_at_once() {
    let (herald, nginx) = stack().await;
    let started = Instant::now();
    let mut stream = subscribe(&nginx, "channel=first", &[]).await;
    // Nothing is published; the first heartbeat is due 1 s after the stream opened. A
    // buffering proxy holds the 21-byte preamble until its buffer fills or herald ends.
    let first = stream.next(Duration::from_secs(1)).await;
    let elapsed = started.elapsed();
    match first {
        Read::Data(bytes) => assert_eq!(
            &bytes[..],
            PREAMBLE.as_bytes(),
            "first chunk through nginx is the preamble alone"
        ),
        other => panic!(
            "no preamble within 1 s through nginx: {other:?}\n{}",
            nginx.logs()
        ),
    }
    assert!(
        elapsed < Duration::from_secs(1),
        "preamble took {elapsed:?}"
    );
    drop(stream);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preamble_check_catches_a_buffering_proxy() {
    // The classic broken setup: nginx's default HTTP/1.0 upstream (no chunking, so the
    // body has no message boundaries) with buffering on, and herald's X-Accel-Buffering
    // header ignored. The check above must fail against it.
    let herald = TestServer::start(herald_config("[sse]\nheartbeat_interval = \"1s\"\n")).await;
    let nginx = Nginx::start_with(herald.public, "3s", |site| {
        site.replacen("proxy_http_version 1.1;", "proxy_http_version 1.0;", 1)
            .replacen(
                "proxy_buffering off;",
                "proxy_buffering on;\n        proxy_ignore_headers X-Accel-Buffering;",
                1,
            )
    });
    let first = tokio::time::timeout(Duration::from_secs(1), async {
        let resp = client()
            .get(nginx.url("/events?channel=first"))
            .send()
            .await
            .expect("GET /events");
        let mut stream = EventStream::new(resp);
        stream.next(Duration::from_secs(1)).await
    })
    .await;
    assert!(
        !matches!(first, Ok(Read::Data(_))),
        "a buffering proxy passed the preamble check: {first:?}"
    );
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_event_arrives_while_the_stream_stays_open() {
    let (herald, nginx) = stack().await;
    let mut stream = subscribe(&nginx, "channel=news", &[]).await;
    stream
        .read_until(PREAMBLE, Duration::from_secs(2))
        .await
        .unwrap();
    let published = Instant::now();
    let id = publish(&nginx, "news", "hello through nginx").await;
    stream
        .read_until(
            &format!("id: {id}\ndata: hello through nginx\n\n"),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    let latency = published.elapsed();
    // Still open afterwards: the event was not flushed by the end of the response.
    stream
        .read_until(HEARTBEAT, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(!stream.ended);
    assert!(latency < Duration::from_secs(2), "event took {latency:?}");
    drop(stream);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_idle_stream_past_proxy_read_timeout() {
    let (herald, nginx) = stack().await;
    let opened = Instant::now();
    let mut stream = subscribe(&nginx, "channel=idle", &[]).await;
    stream
        .read_until(PREAMBLE, Duration::from_secs(2))
        .await
        .unwrap();
    // Idle for 5 s, well past nginx's 3 s read timeout, reading whatever arrives.
    let idle = Duration::from_secs(5);
    while opened.elapsed() < idle {
        match stream.next(idle.saturating_sub(opened.elapsed())).await {
            Read::Data(_) | Read::TimedOut => {}
            other => panic!(
                "stream ended after {:?}: {other:?}\n{}",
                opened.elapsed(),
                nginx.logs()
            ),
        }
    }
    let pings = stream.text.matches(HEARTBEAT).count();
    assert!(pings >= 3, "{pings} heartbeats in 5 s: {:?}", stream.text);
    let id = publish(&nginx, "idle", "still here").await;
    stream
        .read_until(
            &format!("id: {id}\ndata: still here\n\n"),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    drop(stream);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_heartbeats_nginx_cuts_the_stream_at_proxy_read_timeout() {
    // The trap the rule guards against: heartbeat (60 s) above proxy_read_timeout (2 s).
    let (herald, nginx) = stack_with("[sse]\nheartbeat_interval = \"60s\"\n", "2s").await;
    let opened = Instant::now();
    let mut stream = subscribe(&nginx, "channel=quiet", &[]).await;
    stream
        .read_until(PREAMBLE, Duration::from_secs(2))
        .await
        .unwrap();
    let end = loop {
        match stream.next(Duration::from_secs(8)).await {
            Read::Data(_) => continue,
            other => break other,
        }
    };
    let lived = opened.elapsed();
    assert!(
        matches!(end, Read::End | Read::Failed(_)),
        "an idle stream outlived proxy_read_timeout 2s: {end:?}"
    );
    assert!(
        lived >= Duration::from_millis(1900) && lived < Duration::from_secs(6),
        "cut after {lived:?}, expected about 2 s"
    );
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_through_nginx() {
    let (herald, nginx) = stack().await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(publish(&nginx, "resume", &format!("event {n}")).await);
    }
    let mut stream = subscribe(&nginx, "channel=resume", &[("Last-Event-ID", &ids[0])]).await;
    stream
        .read_until(PREAMBLE, Duration::from_secs(2))
        .await
        .unwrap();
    for (id, n) in ids.iter().zip(1..).skip(1) {
        stream
            .read_until(
                &format!("id: {id}\ndata: event {n}\n\n"),
                Duration::from_secs(2),
            )
            .await
            .unwrap();
    }
    assert!(
        !stream.text.contains("event 1") && !stream.text.contains("event: reset"),
        "resume after {} replays only what came later: {:?}",
        ids[0],
        stream.text
    );
    drop(stream);
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_client_address_reaches_herald() {
    // Per-IP limit of one stream: a second stream from the same forwarded address is
    // refused, one from another forwarded address is not. Without X-Forwarded-For every
    // stream would count against nginx's own 127.0.0.1.
    let toml = "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
                [limits]\nmax_connections_per_ip = 1\n\
                [sse]\nheartbeat_interval = \"1s\"\n";
    let (herald, nginx) = stack_with(toml, "3s").await;
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
    let _a = subscribe(&nginx, "channel=ip", &xff("198.51.100.1")).await;
    let _b = subscribe(&nginx, "channel=ip", &xff("198.51.100.2")).await;
    let refused = client()
        .get(nginx.url("/events?channel=ip"))
        .header("X-Forwarded-For", "198.51.100.1")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429, "second stream of 198.51.100.1");
    drop((_a, _b));
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_oversized_bodies_stop_at_nginx() {
    let (herald, nginx) = stack().await;
    for path in [
        "/metrics",
        "/healthz",
        "/readyz",
        "/stats",
        "/events/x",
        "/publish/",
    ] {
        let resp = client().get(nginx.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "GET {path} through nginx");
    }
    // limits.max_body_bytes is 1 MiB; nginx refuses a larger body without asking herald.
    let too_big = vec![b'x'; 1024 * 1024 + 1];
    let resp = client()
        .post(nginx.url("/publish"))
        .header("content-type", "application/json")
        .body(too_big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("nginx"),
        "413 comes from nginx, not herald: {body}"
    );
    herald.stop().await;
}

#[test]
fn herald_configs_behind_the_shipped_proxies_load() {
    // deploy/compose-herald.toml (behind the compose nginx) and the Kubernetes ConfigMap (ingress)
    // both trust their proxy; they must stay valid as herald's keys evolve.
    let load = |path: &Path| {
        herald::config::Config::load_with_env(Some(path), Vec::new())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let compose = load(&repo_path("deploy/compose-herald.toml"));
    assert_eq!(compose.server.listen.to_string(), "0.0.0.0:8080");

    // The ConfigMap's `herald.toml: |` block, de-indented.
    let manifest = fs::read_to_string(repo_path("deploy/kubernetes/configmap.yaml")).unwrap();
    let (_, block) = manifest
        .split_once("  herald.toml: |\n")
        .expect("configmap.yaml holds herald.toml");
    let toml: String = block
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    fs::write(&file, toml).unwrap();
    let k8s = load(&file);
    assert_eq!(k8s.server.admin_listen.port(), 9090, "probes use port 9090");
}
