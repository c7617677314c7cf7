//! Who may publish and who may read private channels, over real HTTP: bearer keys (global
//! and scoped), JWTs (HS256, RS256, ES256, issuer and audience), private channels via
//! cookie, bearer and single-use tickets, and that no secret ever reaches the logs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use herald::config::{JwtConfig, ScopedKeyConfig};
use herald::server::RunOptions;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);
const KEY: &str = "pk-all-channels-0123456789";
const ORDERS_KEY: &str = "pk-orders-only-0123456789";
const SECRET: &str = "hs256-secret-of-at-least-32-bytes-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims granting `publish` and `subscribe` patterns, expiring `exp_in` seconds from now
/// (negative: already expired).
fn claims(publish: &[&str], subscribe: &[&str], exp_in: i64) -> Value {
    json!({
        "exp": now().saturating_add_signed(exp_in),
        "herald": {"publish": publish, "subscribe": subscribe},
    })
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign")
}

fn hs256(secret: &str, claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
        claims,
    )
}

/// An unsigned token (`alg: none`), the classic downgrade.
fn alg_none(claims: &Value) -> String {
    format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(claims.to_string().as_bytes())
    )
}

/// Unpadded base64url, enough to forge tokens by hand.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A token whose payload was swapped for one granting everything, signature kept.
fn tampered(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = base64_url(claims(&["*"], &["*"], 600).to_string().as_bytes());
    format!("{}.{}.{}", parts[0], payload, parts[2])
}

/// A key pair made by `openssl` in `dir`: (public key file, private key PEM).
fn openssl_keypair(dir: &Path, name: &str, genpkey_args: &[&str]) -> (PathBuf, Vec<u8>) {
    let private = dir.join(format!("{name}.key.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey_args);
    args.extend_from_slice(&["-out", private.to_str().unwrap()]);
    run(&args);
    run(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (public, std::fs::read(&private).unwrap())
}

fn rsa_keypair(dir: &Path, name: &str) -> (PathBuf, EncodingKey) {
    let (public, private) = openssl_keypair(
        dir,
        name,
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    (
        public,
        EncodingKey::from_rsa_pem(&private).expect("RSA PEM"),
    )
}

fn ec_keypair(dir: &Path, name: &str) -> (PathBuf, EncodingKey) {
    let (public, private) = openssl_keypair(
        dir,
        name,
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    (public, EncodingKey::from_ec_pem(&private).expect("EC PEM"))
}

fn hs256_config(secret: &str) -> JwtConfig {
    JwtConfig {
        algorithm: "HS256".into(),
        secret: secret.into(),
        ..Default::default()
    }
}

/// `POST /publish` of one JSON event with an optional `Authorization` header value.
async fn publish_as(url: &str, authorization: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    send_json(req).await
}

/// Publish one event with [`KEY`]; it must be accepted. Returns its ID.
async fn publish_keyed(url: &str, channel: &str, data: &str) -> u64 {
    let (status, answer) = publish_as(url, Some(&bearer(KEY)), &event(channel, data)).await;
    assert_eq!(status, 200, "{answer}");
    id_of(&answer)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn event(channel: &str, data: &str) -> Value {
    json!({"channel": channel, "data": data})
}

/// Assert a refusal's status and stable code.
#[track_caller]
fn refused(answer: (u16, Value), status: u16, code: &str) {
    assert_eq!(
        (answer.0, answer.1["error"].as_str()),
        (status, Some(code)),
        "answer {}",
        answer.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_keys_missing_wrong_and_scoped() {
    let mut config = quick_config();
    config.auth.publish_keys = vec![KEY.into()];
    config.auth.scoped_publish_keys = vec![ScopedKeyConfig {
        key: ORDERS_KEY.into(),
        channels: vec!["orders:*".into()],
    }];
    // Demo mode must not open publishing once a key is configured.
    let server = TestServer::start(config).await;
    let url = server.url("/publish");
    let mut s = SseClient::connect(&server.url("/events?channel=news&channel=orders:1")).await;
    s.expect_preamble().await;

    refused(
        publish_as(&url, None, &event("news", "x")).await,
        401,
        "missing_key",
    );
    refused(
        publish_as(&url, Some("Bearer "), &event("news", "x")).await,
        401,
        "missing_key",
    );
    refused(
        publish_as(&url, Some(&format!("Basic {KEY}")), &event("news", "x")).await,
        401,
        "missing_key",
    );
    refused(
        publish_as(
            &url,
            Some("Bearer pk-wrong-key-0123456789"),
            &event("news", "x"),
        )
        .await,
        401,
        "invalid_key",
    );
    // A prefix of a valid key is not the key.
    refused(
        publish_as(&url, Some(&bearer(&KEY[..10])), &event("news", "x")).await,
        401,
        "invalid_key",
    );
    // The admin listener asks for the key too once keys are configured.
    refused(
        publish_as(&server.admin_url("/publish"), None, &event("news", "x")).await,
        401,
        "missing_key",
    );
    // A scoped key outside its patterns, alone and inside a batch.
    refused(
        publish_as(&url, Some(&bearer(ORDERS_KEY)), &event("news", "x")).await,
        403,
        "forbidden_channel",
    );
    let batch = json!([event("orders:1", "batched"), event("news", "batched")]);
    refused(
        publish_as(&url, Some(&bearer(ORDERS_KEY)), &batch).await,
        403,
        "forbidden_channel",
    );

    // What is allowed goes through, and is all the subscriber sees.
    let (status, answer) =
        publish_as(&url, Some(&bearer(ORDERS_KEY)), &event("orders:1", "o")).await;
    assert_eq!(status, 200, "{answer}");
    let first = id_of(&answer);
    let (status, answer) = publish_as(&url, Some(&bearer(KEY)), &event("news", "n")).await;
    assert_eq!(status, 200, "{answer}");
    let second = id_of(&answer);
    let (status, answer) = publish_as(
        &server.admin_url("/publish"),
        Some(&bearer(KEY)),
        &event("news", "admin"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let got = s.events(3, WAIT).await;
    let seen: Vec<(&str, String)> = got
        .iter()
        .map(|e| (e.data.as_str(), e.last_event_id.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("o", first.to_string()),
            ("n", second.to_string()),
            ("admin", id_of(&answer).to_string())
        ],
        "refused publishes (the batch included) published nothing"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_only_the_admin_listener_publishes() {
    let server = TestServer::start_with_options(quick_config(), RunOptions::default()).await;
    let mut s = SseClient::connect(&server.url("/events?channel=news")).await;
    s.expect_preamble().await;
    refused(
        publish_as(&server.url("/publish"), None, &event("news", "public")).await,
        403,
        "publish_disabled",
    );
    // A key nobody configured does not open it either.
    refused(
        publish_as(
            &server.url("/publish"),
            Some(&bearer(KEY)),
            &event("news", "k"),
        )
        .await,
        403,
        "publish_disabled",
    );
    let (status, answer) =
        publish_as(&server.admin_url("/publish"), None, &event("news", "admin")).await;
    assert_eq!(status, 200, "{answer}");
    let e = s.next_event(WAIT).await;
    assert_eq!(e.data, "admin", "the refused public publish never arrived");
    assert_eq!(e.last_event_id, id_of(&answer).to_string());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_publishers_get_exactly_their_grants() {
    let mut config = quick_config();
    config.auth.jwt = hs256_config(SECRET);
    let server = TestServer::start(config).await;
    let url = server.url("/publish");
    let mut s = SseClient::connect(&server.url("/events?channel=news&channel=orders:7")).await;
    s.expect_preamble().await;

    let good = hs256(SECRET, &claims(&["news", "orders:*"], &[], 600));
    let expired = hs256(SECRET, &claims(&["*"], &[], -60));
    let wrong_secret = hs256(
        "another-secret-of-at-least-32-bytes-xyz",
        &claims(&["*"], &[], 600),
    );
    let no_exp = hs256(SECRET, &json!({"herald": {"publish": ["*"]}}));
    let hs384 = sign(
        Algorithm::HS384,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims(&["*"], &[], 600),
    );
    refused(
        publish_as(&url, None, &event("news", "x")).await,
        401,
        "missing_key",
    );
    for (what, token) in [
        ("expired", expired),
        ("wrong secret", wrong_secret),
        ("tampered payload", tampered(&good)),
        ("no exp", no_exp),
        ("alg none", alg_none(&claims(&["*"], &[], 600))),
        ("other algorithm", hs384),
        ("garbage", "a.b.c".to_string()),
    ] {
        let answer = publish_as(&url, Some(&bearer(&token)), &event("news", what)).await;
        assert_eq!(answer.0, 401, "{what}: {}", answer.1);
        assert_eq!(answer.1["error"], "invalid_key", "{what}");
    }
    refused(
        publish_as(&url, Some(&bearer(&good)), &event("sports", "x")).await,
        403,
        "forbidden_channel",
    );
    refused(
        publish_as(
            &url,
            Some(&bearer(&good)),
            &json!([event("news", "x"), event("orders", "x")]),
        )
        .await,
        403,
        "forbidden_channel",
    );
    let (status, a) = publish_as(&url, Some(&bearer(&good)), &event("news", "n")).await;
    assert_eq!(status, 200, "{a}");
    let (status, b) = publish_as(&url, Some(&bearer(&good)), &event("orders:7", "o")).await;
    assert_eq!(status, 200, "{b}");
    let got = s.events(2, WAIT).await;
    assert_eq!(
        got.iter()
            .map(|e| (e.data.clone(), e.last_event_id.clone()))
            .collect::<Vec<_>>(),
        vec![
            ("n".to_string(), id_of(&a).to_string()),
            ("o".to_string(), id_of(&b).to_string())
        ],
        "nothing refused was published"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_publishers() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa_pub, rsa_key) = rsa_keypair(dir.path(), "rsa");
    let (_, other_rsa_key) = rsa_keypair(dir.path(), "rsa-other");
    let (ec_pub, ec_key) = ec_keypair(dir.path(), "ec");
    let (_, other_ec_key) = ec_keypair(dir.path(), "ec-other");
    let cases = [
        (
            "RS256",
            Algorithm::RS256,
            &rsa_pub,
            &rsa_key,
            &other_rsa_key,
        ),
        ("ES256", Algorithm::ES256, &ec_pub, &ec_key, &other_ec_key),
    ];
    for (name, alg, public, key, other_key) in cases {
        let mut config = quick_config();
        config.auth.jwt = JwtConfig {
            algorithm: name.into(),
            public_key_file: public.to_str().unwrap().into(),
            ..Default::default()
        };
        let server = TestServer::start(config).await;
        let url = server.url("/publish");
        let grants = claims(&["news"], &[], 600);
        let good = sign(alg, key, &grants);
        let (status, answer) = publish_as(&url, Some(&bearer(&good)), &event("news", name)).await;
        assert_eq!(status, 200, "{name}: {answer}");
        refused(
            publish_as(&url, Some(&bearer(&good)), &event("other", name)).await,
            403,
            "forbidden_channel",
        );
        // Signed by another key of the same kind; expired; tampered; and the classic
        // confusion: HS256 keyed with the public key's PEM bytes.
        let pem = std::fs::read(public).unwrap();
        let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(&pem), &grants);
        for (what, token) in [
            ("other key", sign(alg, other_key, &grants)),
            ("expired", sign(alg, key, &claims(&["news"], &[], -60))),
            ("tampered", tampered(&good)),
            ("HS256 with the public key", confused),
            ("alg none", alg_none(&grants)),
        ] {
            let answer = publish_as(&url, Some(&bearer(&token)), &event("news", what)).await;
            assert_eq!(answer.0, 401, "{name} {what}: {}", answer.1);
            assert_eq!(answer.1["error"], "invalid_key", "{name} {what}");
        }
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_checked_when_configured() {
    let mut config = quick_config();
    config.auth.jwt = JwtConfig {
        issuer: "https://issuer.example".into(),
        audience: "herald".into(),
        ..hs256_config(SECRET)
    };
    config.auth.private_channels = vec!["private:*".into()];
    let server = TestServer::start(config).await;
    let url = server.url("/publish");
    let with = |extra: Value| {
        let mut c = claims(&["*"], &["*"], 600);
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        hs256(SECRET, &c)
    };
    let good = with(json!({"iss": "https://issuer.example", "aud": "herald"}));
    let (status, answer) = publish_as(&url, Some(&bearer(&good)), &event("news", "x")).await;
    assert_eq!(status, 200, "{answer}");
    let list_aud = with(json!({"iss": "https://issuer.example", "aud": ["other", "herald"]}));
    let (status, answer) = publish_as(&url, Some(&bearer(&list_aud)), &event("news", "x")).await;
    assert_eq!(status, 200, "aud may be a list containing ours: {answer}");
    // Every case is tried before failing, so a failure lists them all.
    let mut accepted = Vec::new();
    for (what, extra) in [
        (
            "wrong iss",
            json!({"iss": "https://evil.example", "aud": "herald"}),
        ),
        ("missing iss", json!({"aud": "herald"})),
        (
            "wrong aud",
            json!({"iss": "https://issuer.example", "aud": "other"}),
        ),
        ("missing aud", json!({"iss": "https://issuer.example"})),
        ("neither", json!({})),
    ] {
        let token = with(extra);
        let answer = publish_as(&url, Some(&bearer(&token)), &event("news", what)).await;
        if (answer.0, answer.1["error"].as_str()) != (401, Some("invalid_key")) {
            accepted.push(format!(
                "{what}: publish answered {} {}",
                answer.0, answer.1
            ));
        }
        let s = subscribe_with(
            &server.url("/events?channel=private:1"),
            &[("authorization", &bearer(&token))],
        )
        .await;
        if s.status != 401 {
            accepted.push(format!("{what}: private subscribe answered {}", s.status));
        }
        let answer = ticket_request(&server.url("/tickets"), Some(&bearer(&token))).await;
        if answer.0 != 401 {
            accepted.push(format!(
                "{what}: POST /tickets answered {} {}",
                answer.0, answer.1
            ));
        }
    }
    assert!(
        accepted.is_empty(),
        "tokens failing auth.jwt.issuer/audience were accepted:\n{}",
        accepted.join("\n")
    );
    server.stop().await;
}

fn private_config() -> herald::config::Config {
    let mut config = quick_config();
    config.auth.publish_keys = vec![KEY.into()];
    config.auth.jwt = hs256_config(SECRET);
    config.auth.private_channels = vec!["private:*".into()];
    config
}

/// `GET /events` with extra headers, read through the spec parser.
async fn subscribe_with(url: &str, headers: &[(&str, &str)]) -> SseClient {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    SseClient::connect_with(req).await
}

/// The error code of a refused subscription (its body is one JSON object).
async fn refusal_code(mut s: SseClient) -> String {
    assert!(s.wait_end(WAIT).await, "a refusal body ends");
    let v: Value = serde_json::from_slice(&s.raw).expect("JSON refusal");
    v["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_channels_need_a_token_granting_them() {
    let server = TestServer::start(private_config()).await;
    let private = server.url("/events?channel=private:1");
    let mixed = server.url("/events?channel=news&channel=private:1");
    let token = hs256(SECRET, &claims(&[], &["private:1"], 600));
    let other = hs256(SECRET, &claims(&["*"], &["private:2", "news"], 600));
    let expired = hs256(SECRET, &claims(&[], &["private:*"], -60));
    let cookie = format!("theme=dark; herald_token={token}; x=1");

    let s = subscribe_with(&private, &[]).await;
    assert_eq!(s.status, 401);
    assert_eq!(refusal_code(s).await, "missing_token");
    let s = subscribe_with(&mixed, &[]).await;
    assert_eq!(
        s.status, 401,
        "a public channel does not unlock a private one"
    );
    assert_eq!(refusal_code(s).await, "missing_token");
    let s = subscribe_with(&private, &[("cookie", &format!("herald_token={other}"))]).await;
    assert_eq!(s.status, 403);
    assert_eq!(refusal_code(s).await, "forbidden_channel");
    let s = subscribe_with(&private, &[("authorization", &bearer(&other))]).await;
    assert_eq!(s.status, 403);
    assert_eq!(refusal_code(s).await, "forbidden_channel");
    let s = subscribe_with(&private, &[("cookie", &format!("herald_token={expired}"))]).await;
    assert_eq!(s.status, 401);
    assert_eq!(refusal_code(s).await, "invalid_token");
    let s = subscribe_with(&private, &[("authorization", &bearer(&tampered(&token)))]).await;
    assert_eq!(s.status, 401);
    assert_eq!(refusal_code(s).await, "invalid_token");
    // A publish key is not a subscriber token.
    let s = subscribe_with(&private, &[("authorization", &bearer(KEY))]).await;
    assert_eq!(s.status, 401);
    assert_eq!(refusal_code(s).await, "invalid_token");

    // Granted: by cookie, by bearer, and a public channel alongside needs nothing more.
    let mut by_cookie = subscribe_with(&private, &[("cookie", &cookie)]).await;
    let mut by_bearer = subscribe_with(&private, &[("authorization", &bearer(&token))]).await;
    let mut both = subscribe_with(&mixed, &[("cookie", &cookie)]).await;
    let mut public = subscribe_with(&server.url("/events?channel=news"), &[]).await;
    for s in [&mut by_cookie, &mut by_bearer, &mut both, &mut public] {
        assert_eq!(s.status, 200);
        assert_eq!(s.header("content-type"), Some("text/event-stream"));
        s.expect_preamble().await;
    }
    let admin = server.admin_url("/publish");
    let p = publish_keyed(&admin, "private:1", "secret news").await;
    let n = publish_keyed(&admin, "news", "public news").await;
    for s in [&mut by_cookie, &mut by_bearer] {
        let e = s.next_event(WAIT).await;
        assert_eq!(
            (e.data.as_str(), e.last_event_id),
            ("secret news", p.to_string())
        );
    }
    let got = both.events(2, WAIT).await;
    assert_eq!(
        got.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        vec!["secret news", "public news"]
    );
    let e = public.next_event(WAIT).await;
    assert_eq!(
        (e.data.as_str(), e.last_event_id),
        ("public news", n.to_string())
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_name_is_configurable() {
    let mut config = private_config();
    config.auth.cookie_name = "session_jwt".into();
    let server = TestServer::start(config).await;
    let private = server.url("/events?channel=private:1");
    let token = hs256(SECRET, &claims(&[], &["private:*"], 600));
    let s = subscribe_with(&private, &[("cookie", &format!("herald_token={token}"))]).await;
    assert_eq!(s.status, 401, "the default name is not looked at");
    assert_eq!(refusal_code(s).await, "missing_token");
    let mut s = subscribe_with(&private, &[("cookie", &format!("session_jwt={token}"))]).await;
    assert_eq!(s.status, 200);
    s.expect_preamble().await;
    server.stop().await;
}

/// `POST /tickets` with an optional `Authorization` value.
async fn ticket_request(url: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    send_json(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_single_use_and_carry_the_token_grants() {
    let server = TestServer::start(private_config()).await;
    let tickets = server.url("/tickets");
    let token = hs256(SECRET, &claims(&[], &["private:1"], 600));

    refused(ticket_request(&tickets, None).await, 401, "missing_key");
    refused(
        ticket_request(&tickets, Some(&bearer(&tampered(&token)))).await,
        401,
        "invalid_token",
    );
    refused(
        ticket_request(
            &tickets,
            Some(&bearer(&hs256(SECRET, &claims(&[], &["*"], -60)))),
        )
        .await,
        401,
        "invalid_token",
    );
    let (status, v) = send_json(reqwest::Client::new().get(&tickets)).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (405, Some("method_not_allowed"))
    );

    let (status, answer) = ticket_request(&tickets, Some(&bearer(&token))).await;
    assert_eq!(status, 200, "{answer}");
    let obj = answer.as_object().unwrap();
    assert_eq!(obj.len(), 2, "{answer}");
    assert_eq!(answer["expires_in"], 30, "auth.ticket_ttl default");
    let ticket = answer["ticket"].as_str().expect("a ticket").to_string();
    assert!(ticket.len() >= 32, "{ticket}");
    assert!(!ticket.contains(&token) && !token.contains(&ticket));

    let url = server.url(&format!("/events?channel=private:1&ticket={ticket}"));
    let mut s = SseClient::connect(&url).await;
    assert_eq!(s.status, 200);
    s.expect_preamble().await;
    let id = publish_keyed(&server.admin_url("/publish"), "private:1", "via ticket").await;
    let e = s.next_event(WAIT).await;
    assert_eq!(
        (e.data.as_str(), e.last_event_id),
        ("via ticket", id.to_string())
    );

    let again = SseClient::connect(&url).await;
    assert_eq!(again.status, 401, "second use");
    assert_eq!(refusal_code(again).await, "invalid_ticket");
    let unknown = SseClient::connect(
        &server.url("/events?channel=private:1&ticket=00000000000000000000000000000000"),
    )
    .await;
    assert_eq!(unknown.status, 401);
    assert_eq!(refusal_code(unknown).await, "invalid_ticket");

    // A ticket carries the token's subscribe grants, no more.
    let (_, answer) = ticket_request(&tickets, Some(&bearer(&token))).await;
    let t2 = answer["ticket"].as_str().unwrap();
    let s =
        SseClient::connect(&server.url(&format!("/events?channel=private:2&ticket={t2}"))).await;
    assert_eq!(s.status, 403);
    assert_eq!(refusal_code(s).await, "forbidden_channel");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_expire_after_their_ttl() {
    let mut config = private_config();
    let ttl = Duration::from_secs(1);
    config.auth.ticket_ttl = ttl;
    let server = TestServer::start(config).await;
    let token = hs256(SECRET, &claims(&[], &["private:*"], 600));
    let issue = || async {
        let (status, answer) = ticket_request(&server.url("/tickets"), Some(&bearer(&token))).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["expires_in"], 1);
        // The server set the expiry before answering, so it is over by then + ttl.
        let expired_by = tokio::time::Instant::now() + ttl + Duration::from_millis(50);
        (answer["ticket"].as_str().unwrap().to_string(), expired_by)
    };
    let (fresh, _) = issue().await;
    let (stale, expired_by) = issue().await;
    let mut s =
        SseClient::connect(&server.url(&format!("/events?channel=private:1&ticket={fresh}"))).await;
    assert_eq!(s.status, 200, "used within its TTL");
    s.expect_preamble().await;

    tokio::time::sleep_until(expired_by).await;
    let s =
        SseClient::connect(&server.url(&format!("/events?channel=private:1&ticket={stale}"))).await;
    assert_eq!(s.status, 401, "used after its TTL");
    assert_eq!(refusal_code(s).await, "invalid_ticket");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_without_jwt_are_disabled() {
    let mut config = quick_config();
    config.auth.publish_keys = vec![KEY.into()];
    let server = TestServer::start(config).await;
    refused(
        ticket_request(&server.url("/tickets"), Some(&bearer(KEY))).await,
        404,
        "tickets_disabled",
    );
    refused(
        ticket_request(&server.url("/tickets"), None).await,
        404,
        "tickets_disabled",
    );
    server.stop().await;
}

/// Runs the binary at `trace`, presents every kind of secret (accepted and refused) on
/// every path, and checks that none of them appears anywhere in what it logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let token = hs256(SECRET, &claims(&["news"], &["private:*"], 600));
    let bad_token = tampered(&token);
    let bogus_key = "pk-bogus-key-never-valid-42";
    let mut herald = HeraldProcess::spawn_with_env(
        &format!(
            r#"
[telemetry]
log_format = "json"
log_level = "trace"
[shutdown]
drain_timeout = "500ms"
[auth]
publish_keys = ["{KEY}"]
scoped_publish_keys = [{{ key = "{ORDERS_KEY}", channels = ["orders:*"] }}]
private_channels = ["private:*"]
[auth.jwt]
algorithm = "HS256"
secret = "{SECRET}"
"#
        ),
        &[],
        // RUST_LOG would override telemetry.log_level: pin it to the same.
        &[("RUST_LOG", "trace")],
    );
    let url = herald.url("/publish");
    let mut secrets: Vec<String> = vec![
        KEY.into(),
        ORDERS_KEY.into(),
        SECRET.into(),
        token.clone(),
        bad_token.clone(),
        bogus_key.into(),
    ];
    // Publishes: accepted and refused, with every credential kind.
    for (auth, channel) in [
        (bearer(KEY), "news"),
        (bearer(ORDERS_KEY), "orders:1"),
        (bearer(ORDERS_KEY), "news"),
        (bearer(&token), "news"),
        (bearer(&token), "elsewhere"),
        (bearer(&bad_token), "news"),
        (bearer(bogus_key), "news"),
    ] {
        let (status, _) = publish_as(&url, Some(&auth), &event(channel, "x")).await;
        assert!(status == 200 || status == 401 || status == 403, "{status}");
    }
    let (status, _) = publish_as(
        &herald.admin_url("/publish"),
        Some(&bearer(KEY)),
        &event("news", "x"),
    )
    .await;
    assert_eq!(status, 200);
    // Subscriptions by cookie and bearer, good and bad.
    let private = herald.url("/events?channel=private:1");
    for headers in [
        vec![("cookie", format!("herald_token={token}"))],
        vec![("authorization", bearer(&token))],
        vec![("cookie", format!("herald_token={bad_token}"))],
        vec![("authorization", bearer(&bad_token))],
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut s = subscribe_with(&private, &h).await;
        if s.status == 200 {
            s.expect_preamble().await;
        }
    }
    // Tickets: issued, redeemed, reused, unknown, and in a query with the token too.
    let (status, answer) = ticket_request(&herald.url("/tickets"), Some(&bearer(&token))).await;
    assert_eq!(status, 200);
    let ticket = answer["ticket"].as_str().unwrap().to_string();
    secrets.push(ticket.clone());
    let with_ticket = herald.url(&format!("/events?channel=private:1&ticket={ticket}"));
    let mut s = SseClient::connect(&with_ticket).await;
    assert_eq!(s.status, 200);
    s.expect_preamble().await;
    assert_eq!(SseClient::connect(&with_ticket).await.status, 401);
    let fake_ticket = "ffffffffffffffffffffffffffff1234";
    secrets.push(fake_ticket.into());
    let s =
        SseClient::connect(&herald.url(&format!("/events?channel=private:1&ticket={fake_ticket}")))
            .await;
    assert_eq!(s.status, 401);
    let (status, _) = ticket_request(&herald.url("/tickets"), Some(&bearer(&bad_token))).await;
    assert_eq!(status, 401);
    // A malformed request carrying a secret: the connection error path logs too.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(herald.public).await.unwrap();
        let req = format!("GET /events?channel=private:1&ticket={ticket} HTTP/1.1\r\nAuthorization: Bearer {token}\r\nBad\0Header: {KEY}\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf)).await;
    }
    drop(s);

    // Stop the process so every log line is flushed, then read them all.
    herald.terminate();
    assert!(
        herald
            .wait_exit_async(Duration::from_secs(10))
            .await
            .is_some(),
        "herald exits on SIGTERM"
    );
    // Lines may follow "stopped" (telemetry shutdown): read stderr to its end.
    assert!(
        herald.wait_stderr_closed(WAIT).await,
        "stderr never reached its end: {}",
        herald.stderr_text()
    );
    assert!(
        wait_until(WAIT, || herald.stderr_text().contains("\"stopped\"")).await,
        "the final log line arrives: {}",
        herald.stderr_text()
    );
    let lines = herald.stderr_lines.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.contains("stream opened")),
        "debug logging was on (a subscription was logged): {lines:?}"
    );
    println!("{} log lines checked at trace level", lines.len());
    for secret in &secrets {
        for line in &lines {
            assert!(
                !line.contains(secret.as_str()),
                "secret {secret:?} leaked into the log line {line}"
            );
        }
    }
}

/// A stream refused by a limit (here the per-IP cap) does not spend its single-use ticket:
/// the client retries after `Retry-After` with the same ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_keeps_its_ticket() {
    let mut config = private_config();
    config.limits.max_connections_per_ip = 1;
    let server = TestServer::start(config).await;
    let token = hs256(SECRET, &claims(&[], &["private:*"], 60));
    let (status, answer) = ticket_request(&server.url("/tickets"), Some(&bearer(&token))).await;
    assert_eq!(status, 200, "{answer}");
    let ticket = answer["ticket"].as_str().expect("a ticket").to_string();

    let mut holder = SseClient::connect(&server.url("/events?channel=public")).await;
    holder.expect_preamble().await;
    let url = server.url(&format!("/events?channel=private:1&ticket={ticket}"));
    let refused = SseClient::connect(&url).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refusal_code(refused).await, "max_connections_per_ip");

    drop(holder);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut s = SseClient::connect(&url).await;
        if s.status == 200 {
            s.expect_preamble().await;
            break;
        }
        assert_eq!(s.status, 429, "only the per-IP cap may refuse it");
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}
