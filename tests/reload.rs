//! Live reload on the real binary: SIGHUP re-reads the config file; what can change does
//! so with every open stream kept, an invalid file keeps the old config, and keys only a
//! restart can change are kept and named.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::sse_parser::Item;
use common::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);
const OLD_KEY: &str = "pk-before-rotation-0123456789";
const NEW_KEY: &str = "pk-after-rotation-0123456789";
const OLD_SECRET: &str = "hs256-secret-before-rotation-0123456789";
const NEW_SECRET: &str = "hs256-secret-after-rotation-01234567890";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

async fn metric_now(herald: &HeraldProcess, sample: &str) -> f64 {
    metric(&herald.admin_url("/metrics"), sample).await
}

/// Send SIGHUP and wait until the reload it caused is counted under `result`.
async fn reload(herald: &HeraldProcess, result: &str) {
    let sample = format!("herald_config_reloads_total{{result=\"{result}\"}}");
    let before = metric_now(herald, &sample).await;
    herald.hangup();
    let deadline = Instant::now() + WAIT;
    while metric_now(herald, &sample).await <= before {
        assert!(
            Instant::now() < deadline,
            "no reload counted as {result} within {WAIT:?}:\n{}",
            herald.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publish `data` to `channel` with `key` (none when empty); the status.
async fn publish(herald: &HeraldProcess, key: &str, channel: &str, data: &str) -> u16 {
    let mut request = client().post(herald.url("/publish"));
    if !key.is_empty() {
        request = request.bearer_auth(key);
    }
    request
        .json(&json!({ "channel": channel, "data": data }))
        .send()
        .await
        .expect("publish")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_shorter_heartbeat_reaches_a_stream_opened_before_the_reload() {
    let before = "[sse]\nheartbeat_interval = \"10s\"\n";
    let herald = HeraldProcess::spawn(before, &["--demo"]);
    let mut stream = SseClient::connect(&herald.url("/events?channel=hb")).await;
    stream.expect_preamble().await;
    assert_eq!(metric_now(&herald, "herald_connections_open").await, 1.0);

    herald.rewrite_config("[sse]\nheartbeat_interval = \"200ms\"\n");
    reload(&herald, "success").await;
    let reloaded = Instant::now();
    // Three heartbeats within 2 s: at 10 s not even one would come.
    let mut beats = Vec::new();
    while beats.len() < 3 {
        let left = (reloaded + Duration::from_secs(2)).saturating_duration_since(Instant::now());
        match stream.next_timed(left).await {
            Some(Ok((Item::Comment(c), at))) if c == "ping" => beats.push(at),
            other => panic!("expected heartbeats at the new pace, got {other:?}"),
        }
    }
    let gaps: Vec<Duration> = beats.windows(2).map(|w| w[1] - w[0]).collect();
    for gap in &gaps {
        assert!(
            (Duration::from_millis(150)..Duration::from_millis(600)).contains(gap),
            "heartbeat gaps {gaps:?}"
        );
    }
    assert_eq!(
        metric_now(&herald, "herald_connections_open").await,
        1.0,
        "the stream stayed open"
    );
    assert_eq!(
        metric_now(&herald, "herald_config_last_reload_successful").await,
        1.0
    );
}

#[tokio::test]
async fn rotated_publish_and_jwt_keys_apply_at_once_and_open_streams_stay() {
    let config = |key: &str, secret: &str| {
        format!(
            "[auth]\npublish_keys = [\"{key}\"]\nprivate_channels = [\"private:*\"]\n\
             [auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{secret}\"\n"
        )
    };
    let herald = HeraldProcess::spawn(&config(OLD_KEY, OLD_SECRET), &[]);
    let token = |secret: &str| {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let claims = json!({ "exp": exp, "herald": { "subscribe": ["private:*"] } });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let private = |secret: &str| {
        client()
            .get(herald.url("/events?channel=private:a"))
            .bearer_auth(token(secret))
    };
    let mut public_stream = SseClient::connect(&herald.url("/events?channel=news")).await;
    public_stream.expect_preamble().await;
    let mut private_stream = SseClient::connect_with(private(OLD_SECRET)).await;
    private_stream.expect_preamble().await;
    assert_eq!(publish(&herald, OLD_KEY, "news", "one").await, 200);
    assert_eq!(public_stream.next_event(WAIT).await.data, "one");

    herald.rewrite_config(&config(NEW_KEY, NEW_SECRET));
    reload(&herald, "success").await;
    assert_eq!(publish(&herald, OLD_KEY, "news", "refused").await, 401);
    assert_eq!(publish(&herald, NEW_KEY, "news", "two").await, 200);
    assert_eq!(publish(&herald, NEW_KEY, "private:a", "three").await, 200);
    // The streams opened before the rotation are still there and still receive.
    assert_eq!(public_stream.next_event(WAIT).await.data, "two");
    assert_eq!(private_stream.next_event(WAIT).await.data, "three");
    // New subscribers need the new key.
    let old = private(OLD_SECRET).send().await.unwrap();
    assert_eq!(
        old.status(),
        401,
        "a token signed with the rotated-out secret"
    );
    let new = private(NEW_SECRET).send().await.unwrap();
    assert_eq!(new.status(), 200);
    assert_eq!(metric_now(&herald, "herald_connections_open").await, 3.0);
    assert_eq!(
        metric_now(&herald, "herald_disconnects_total{reason=\"client\"}").await,
        0.0,
        "nothing was dropped by the reload"
    );
}

#[tokio::test]
async fn an_invalid_file_keeps_the_old_config_in_force() {
    let good = format!("[auth]\npublish_keys = [\"{OLD_KEY}\"]\n");
    let herald = HeraldProcess::spawn(&good, &[]);
    let mut stream = SseClient::connect(&herald.url("/events?channel=c")).await;
    stream.expect_preamble().await;

    herald.rewrite_config(&format!(
        "[auth]\npublish_keys = [\"{NEW_KEY}\"]\n[sse]\nheartbeat_interval = \"soon\"\n"
    ));
    reload(&herald, "failure").await;
    assert_eq!(
        metric_now(&herald, "herald_config_last_reload_successful").await,
        0.0
    );
    let log = herald.stderr_text();
    assert!(
        log.contains("config reload failed") && log.contains("sse.heartbeat_interval"),
        "the error names the key:\n{log}"
    );
    // Nothing of the refused file applies: the old key publishes, the new one does not.
    assert_eq!(publish(&herald, NEW_KEY, "c", "refused").await, 401);
    assert_eq!(publish(&herald, OLD_KEY, "c", "kept").await, 200);
    assert_eq!(stream.next_event(WAIT).await.data, "kept");
    assert_eq!(metric_now(&herald, "herald_connections_open").await, 1.0);

    // A JWT secret file that disappears: the reload fails, JWT stays on with the old key
    // (never off, which would open the admin listener to publishes without credentials).
    let secret_file = herald.dir.path().join("jwt.secret");
    std::fs::write(&secret_file, OLD_SECRET).unwrap();
    let with_jwt = format!(
        "{good}[auth.jwt]\nalgorithm = \"HS256\"\nsecret_file = \"{}\"\n",
        secret_file.display()
    );
    herald.rewrite_config(&with_jwt);
    reload(&herald, "success").await;
    std::fs::remove_file(&secret_file).unwrap();
    reload(&herald, "failure").await;
    assert!(herald.stderr_text().contains("auth.jwt.secret_file"));
    let admin_publish = client()
        .post(herald.admin_url("/publish"))
        .json(&json!({ "channel": "c", "data": "no credentials" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        admin_publish.status(),
        401,
        "credentials are still required"
    );
}

#[tokio::test]
async fn restart_only_keys_are_kept_and_named_and_a_lower_cap_spares_open_streams() {
    let herald = HeraldProcess::spawn("[limits]\nmax_connections = 10\n", &["--demo"]);
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut s = SseClient::connect(&herald.url("/events?channel=cap")).await;
        s.expect_preamble().await;
        streams.push(s);
    }
    herald.rewrite_config(
        "[server]\nlisten = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [telemetry]\nlog_format = \"json\"\nlog_level = \"info\"\n\
         [limits]\nmax_connections = 1\n[backend]\nkind = \"not-a-backend\"\n",
    );
    // The backend is restart-only: its invalid value is kept out, not a reason to refuse
    // the rest of the file.
    reload(&herald, "success").await;
    let log = herald.stderr_text();
    for key in ["server.listen", "backend"] {
        assert!(
            log.contains("needs a restart") && log.contains(&format!("\"key\":\"{key}\"")),
            "the kept key {key} is named:\n{log}"
        );
    }
    assert_eq!(metric_now(&herald, "herald_connections_limit").await, 1.0);
    // Still on the old address; the two streams stay; a third is refused.
    let refused = client()
        .get(herald.url("/events?channel=cap"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.json::<serde_json::Value>().await.unwrap()["error"],
        "max_connections"
    );
    assert_eq!(publish(&herald, "", "cap", "still here").await, 200);
    for s in &mut streams {
        assert_eq!(s.next_event(WAIT).await.data, "still here");
    }
}
