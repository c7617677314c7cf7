//! CORS on the public listener: exact allowed origins get credentialed answers on
//! publish, events and tickets; other origins get nothing that lets a browser read the
//! answer; preflights are answered or refused; `"*"` never loads.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use herald::config::{Config, JwtConfig};
use jsonwebtoken::{EncodingKey, Header};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

const APP: &str = "https://app.example";
const KEY: &str = "pk-cors-test-key-0123456789";
const SECRET: &str = "hs256-secret-of-at-least-32-bytes-0123456789";

fn cors_config() -> Config {
    let mut config = quick_config();
    config.server.cors_allowed_origins = vec![APP.into()];
    config.auth.publish_keys = vec![KEY.into()];
    config.auth.jwt = JwtConfig {
        algorithm: "HS256".into(),
        secret: SECRET.into(),
        ..Default::default()
    };
    config
}

fn token() -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"exp": exp, "herald": {"subscribe": ["*"]}}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Every `Vary` value, split on commas.
fn vary(h: &HeaderMap) -> Vec<String> {
    h.get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect()
}

/// The answers a browser app reads cross-origin, each sent with `origin`
/// (or none): a publish, a ticket, an event stream, plus a refused publish. Returns
/// (what, status, headers).
async fn answers(server: &TestServer, origin: Option<&str>) -> Vec<(&'static str, u16, HeaderMap)> {
    let client = reqwest::Client::new();
    let with_origin = |req: reqwest::RequestBuilder| match origin {
        Some(o) => req.header("origin", o),
        None => req,
    };
    let send = |req: reqwest::RequestBuilder| async move {
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, req.send())
            .await
            .expect("answer within the deadline")
            .expect("request");
        (resp.status().as_u16(), resp.headers().clone())
    };
    let mut out = Vec::new();
    let publish = client
        .post(server.url("/publish"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(json!({"channel": "news", "data": "x"}).to_string());
    let (s, h) = send(with_origin(publish)).await;
    out.push(("POST /publish", s, h));
    let refused = client
        .post(server.url("/publish"))
        .header("content-type", "application/json")
        .body("{}");
    let (s, h) = send(with_origin(refused)).await;
    out.push(("POST /publish without a key", s, h));
    let ticket = client
        .post(server.url("/tickets"))
        .header("authorization", format!("Bearer {}", token()));
    let (s, h) = send(with_origin(ticket)).await;
    out.push(("POST /tickets", s, h));
    let mut stream =
        SseClient::connect_with(with_origin(client.get(server.url("/events?channel=news")))).await;
    stream.expect_preamble().await;
    out.push((
        "GET /events",
        stream.status.as_u16(),
        stream.headers.clone(),
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origin_gets_credentialed_answers() {
    let server = TestServer::start(cors_config()).await;
    let got = answers(&server, Some(APP)).await;
    let statuses: Vec<u16> = got.iter().map(|(_, s, _)| *s).collect();
    assert_eq!(statuses, vec![200, 401, 200, 200]);
    for (what, _, h) in &got {
        assert_eq!(
            header(h, "access-control-allow-origin"),
            Some(APP),
            "{what}: echoes the origin"
        );
        assert_eq!(
            header(h, "access-control-allow-credentials"),
            Some("true"),
            "{what}"
        );
        assert!(vary(h).contains(&"origin".into()), "{what}: Vary {h:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_origins_get_no_allow_origin() {
    let server = TestServer::start(cors_config()).await;
    let near_misses = [
        "https://evil.example",
        "http://app.example",
        "https://app.example.evil",
        "https://app.example:8443",
        "https://app.example/",
        "https://sub.app.example",
        "null",
        "*",
    ];
    for origin in near_misses.iter().map(|o| Some(*o)).chain([None]) {
        for (what, _, h) in answers(&server, origin).await {
            assert_eq!(
                header(&h, "access-control-allow-origin"),
                None,
                "{what} from {origin:?}"
            );
            assert_eq!(
                header(&h, "access-control-allow-credentials"),
                None,
                "{what} from {origin:?}"
            );
            // Caches must still key on Origin: the same URL answers differently for APP.
            assert!(
                vary(&h).contains(&"origin".into()),
                "{what} from {origin:?}"
            );
        }
    }
    server.stop().await;

    // With no origins configured, nobody is allowed, APP included.
    let mut config = cors_config();
    config.server.cors_allowed_origins.clear();
    let server = TestServer::start(config).await;
    for (what, _, h) in answers(&server, Some(APP)).await {
        assert_eq!(header(&h, "access-control-allow-origin"), None, "{what}");
    }
    server.stop().await;
}

async fn preflight(
    server: &TestServer,
    path: &str,
    origin: Option<&str>,
) -> (u16, HeaderMap, Value) {
    let mut req = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, server.url(path))
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        );
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, req.send())
        .await
        .expect("answer within the deadline")
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

fn list(h: &HeaderMap, name: &str) -> Vec<String> {
    header(h, name)
        .unwrap_or_default()
        .split(',')
        .map(|v| v.trim().to_ascii_lowercase())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_from_allowed_origins_only() {
    let server = TestServer::start(cors_config()).await;
    for path in ["/publish", "/tickets", "/events?channel=news"] {
        let (status, h, _) = preflight(&server, path, Some(APP)).await;
        assert_eq!(status, 204, "{path}");
        let methods = list(&h, "access-control-allow-methods");
        assert!(methods.contains(&"post".into()), "{path}: {methods:?}");
        assert!(methods.contains(&"get".into()), "{path}: {methods:?}");
        let headers = list(&h, "access-control-allow-headers");
        for needed in ["authorization", "content-type", "last-event-id"] {
            assert!(headers.contains(&needed.into()), "{path}: {headers:?}");
        }
        assert_eq!(
            header(&h, "access-control-allow-origin"),
            Some(APP),
            "{path}"
        );
        assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
        assert!(vary(&h).contains(&"origin".into()));
    }
    for origin in [Some("https://evil.example"), Some("null"), None] {
        let (status, h, body) = preflight(&server, "/publish", origin).await;
        assert_eq!(status, 403, "{origin:?}");
        assert_eq!(body["error"], "origin_not_allowed", "{origin:?}");
        assert_eq!(header(&h, "access-control-allow-origin"), None);
        assert_eq!(header(&h, "access-control-allow-methods"), None);
        assert_eq!(header(&h, "access-control-allow-headers"), None);
    }
    server.stop().await;
}

#[test]
fn wildcard_origin_never_loads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    for origins in [r#"["*"]"#, r#"["https://app.example", "*"]"#] {
        std::fs::write(
            &file,
            format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ncors_allowed_origins = {origins}\n"),
        )
        .unwrap();
        let err = Config::load_with_env(Some(&file), Vec::new())
            .expect_err("\"*\" is refused")
            .to_string();
        assert!(err.contains("server.cors_allowed_origins"), "{err}");

        // The binary refuses to start: exit 64 (EX_USAGE), naming the key, within a deadline.
        for args in [vec![], vec!["check-config"]] {
            let mut child = Command::new(herald_bin())
                .arg("--config")
                .arg(&file)
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("herald {args:?} with cors \"*\" did not exit");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            assert_eq!(status.code(), Some(64), "{args:?}: {stderr}");
            assert!(stderr.contains("server.cors_allowed_origins"), "{stderr}");
        }
    }
    // Other non-origins are refused the same way; so is one that would inject a header
    // line when echoed (TOML decodes the `\r\n`).
    for bad in [
        "app.example",
        "https://app.example/",
        "ftp://app.example",
        "https://app.example\\r\\nx-injected: 1",
        "https://app example",
    ] {
        std::fs::write(
            &file,
            format!("[server]\ncors_allowed_origins = [\"{bad}\"]\n"),
        )
        .unwrap();
        let err = Config::load_with_env(Some(&file), Vec::new())
            .expect_err(bad)
            .to_string();
        assert!(err.contains("server.cors_allowed_origins"), "{bad}: {err}");
    }
}
