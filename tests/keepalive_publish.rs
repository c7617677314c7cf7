//! Publishes on one kept-alive connection, byte by byte on the wire: the lean path answers
//! plain `POST /publish` requests itself (keep-alive, pipelining, `Connection: close`,
//! bodies that arrive late or never) and hands the connection to hyper at the first other
//! request without losing a byte.

mod common;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::redis::{RedisOptions, RedisServer};

const WAIT: Duration = Duration::from_secs(5);

/// One parsed response.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// A raw connection that reads responses one at a time (`Content-Length` bodies).
struct Conn {
    io: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(server: &TestServer) -> Self {
        Self::to(server.public).await
    }

    async fn to(addr: SocketAddr) -> Self {
        Self {
            io: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    async fn answer(&mut self) -> Answer {
        tokio::time::timeout(WAIT, self.read_answer())
            .await
            .expect("an answer within the deadline")
            .expect("an answer, not a closed connection")
    }

    async fn read_answer(&mut self) -> Option<Answer> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) = parsed.parse(&self.buf).unwrap() {
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_string(), value)
                    })
                    .collect();
                let status = parsed.code.unwrap();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                while self.buf.len() < len + length {
                    self.read_more().await?;
                }
                let body = self.buf[len..len + length].to_vec();
                self.buf.drain(..len + length);
                return Some(Answer {
                    status,
                    headers,
                    body,
                });
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> Option<()> {
        let mut chunk = [0u8; 4096];
        match self.io.read(&mut chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(())
            }
        }
    }

    /// True once the server has closed the connection (within the deadline).
    async fn closed(&mut self) -> bool {
        let read = async {
            let mut chunk = [0u8; 64];
            loop {
                match self.io.read(&mut chunk).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => continue,
                }
            }
        };
        tokio::time::timeout(WAIT, read).await.unwrap_or(false)
    }
}

fn publish_request(channel: &str, data: &str, extra_headers: &str) -> Vec<u8> {
    let body = serde_json::json!({ "channel": channel, "data": data }).to_string();
    format!(
        "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_pipelined_publishes_are_answered_in_order() {
    let server = TestServer::start(quick_config()).await;
    let mut events = SseClient::connect(&server.url("/events?channel=ka")).await;
    events.expect_preamble().await;
    let mut conn = Conn::open(&server).await;

    // One after another on the same connection.
    let mut ids = Vec::new();
    for i in 0..3 {
        conn.send(&publish_request("ka", &format!("one-{i}"), ""))
            .await;
        let answer = conn.answer().await;
        assert_eq!(answer.status, 200, "{:?}", answer);
        assert_eq!(answer.header("connection"), None);
        assert!(answer.header("date").is_some(), "{:?}", answer.headers);
        ids.push(id_of(&answer.json()));
    }
    // Three more in one write, the last split mid-body across two writes.
    let mut burst = Vec::new();
    for i in 0..3 {
        burst.extend(publish_request("ka", &format!("burst-{i}"), ""));
    }
    let cut = burst.len() - 5;
    conn.send(&burst[..cut]).await;
    // The rest goes out only once the first two are answered: by then the server has
    // read the first write, so it sees the third body split across two reads.
    for i in 0..3 {
        if i == 2 {
            conn.send(&burst[cut..]).await;
        }
        let answer = conn.answer().await;
        assert_eq!(answer.status, 200, "{:?}", answer);
        ids.push(id_of(&answer.json()));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    let got = events.events(6, WAIT).await;
    let data: Vec<String> = got.iter().map(|e| e.data.clone()).collect();
    assert_eq!(
        data,
        ["one-0", "one-1", "one-2", "burst-0", "burst-1", "burst-2"]
    );
    let got_ids: Vec<u64> = got
        .iter()
        .map(|e| e.last_event_id.parse().unwrap())
        .collect();
    assert_eq!(got_ids, ids);
    server.stop().await;
}

/// Forty publishes in one write (one of them refused, one with an `Origin`, the last
/// with `Connection: close`), against the node at `addr` while `events` follows the
/// channel: every answer in request order, the refusal in its place, the events in that
/// order with the IDs the answers gave, and the connection closed after the last.
async fn a_pipelined_run_is_published_in_order(addr: SocketAddr, mut events: SseClient) {
    events.expect_preamble().await;
    let mut conn = Conn::to(addr).await;
    const RUN: usize = 40;
    let mut burst = Vec::new();
    for i in 0..RUN {
        match i {
            17 => burst.extend_from_slice(
                b"POST /publish HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 1\r\n\r\n{",
            ),
            23 => burst.extend(publish_request("pl", "p23", "Origin: https://app.example\r\n")),
            _ if i == RUN - 1 => burst.extend(publish_request("pl", "last", "Connection: close\r\n")),
            _ => burst.extend(publish_request("pl", &format!("p{i}"), "")),
        }
    }
    conn.send(&burst).await;
    let mut ids = Vec::new();
    for i in 0..RUN {
        let answer = conn.answer().await;
        if i == 17 {
            assert_eq!(answer.status, 400, "{answer:?}");
            assert_eq!(answer.json()["error"], "invalid_json");
            continue;
        }
        assert_eq!(answer.status, 200, "answer {i}: {answer:?}");
        let close = answer.header("connection");
        assert_eq!(close, (i == RUN - 1).then_some("close"), "answer {i}");
        if i == 23 {
            let allowed = answer.header("access-control-allow-origin");
            assert_eq!(allowed, Some("https://app.example"), "{answer:?}");
        }
        ids.push(id_of(&answer.json()));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(conn.closed().await, "open after Connection: close");

    let got = events.events(RUN - 1, WAIT).await;
    let mut sent: Vec<String> = (0..RUN - 1)
        .filter(|&i| i != 17)
        .map(|i| format!("p{i}"))
        .collect();
    sent.push("last".into());
    let data: Vec<String> = got.iter().map(|e| e.data.clone()).collect();
    assert_eq!(data, sent);
    let got_ids: Vec<u64> = got
        .iter()
        .map(|e| e.last_event_id.parse().unwrap())
        .collect();
    assert_eq!(got_ids, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_are_answered_in_order() {
    let mut config = quick_config();
    config.server.cors_allowed_origins = vec!["https://app.example".into()];
    let server = TestServer::start(config).await;
    let events = SseClient::connect(&server.url("/events?channel=pl")).await;
    a_pipelined_run_is_published_in_order(server.public, events).await;
    server.stop().await;
}

/// With Redis the run goes through the publisher's queue together: its order must hold
/// there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_keep_their_order_through_redis() {
    let redis = RedisServer::start(RedisOptions::default());
    let origins = ("HERALD_SERVER__CORS_ALLOWED_ORIGINS", "https://app.example");
    let node = HeraldProcess::spawn_with_env(&redis.backend_toml(), &["--demo"], &[origins]);
    let events = SseClient::connect(&node.url("/events?channel=pl")).await;
    a_pipelined_run_is_published_in_order(node.public, events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_honoured() {
    let server = TestServer::start(quick_config()).await;
    let mut conn = Conn::open(&server).await;
    conn.send(&publish_request("c", "x", "Connection: close\r\n"))
        .await;
    let answer = conn.answer().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(conn.closed().await, "the server closes after the answer");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_requests_hand_the_connection_to_hyper_mid_stream() {
    let server = TestServer::start(quick_config()).await;
    let mut conn = Conn::open(&server).await;
    // A publish, then (pipelined in the same write) a request the lean path leaves to
    // hyper, then another publish, which hyper now serves.
    let mut bytes = publish_request("h", "first", "");
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    bytes.extend(publish_request("h", "second", ""));
    conn.send(&bytes).await;
    let first = conn.answer().await;
    assert_eq!(first.status, 200, "{first:?}");
    let page = conn.answer().await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let second = conn.answer().await;
    assert_eq!(second.status, 200, "{second:?}");
    assert!(id_of(&second.json()) > id_of(&first.json()));
    // A chunked body is hyper's too.
    let body = r#"{"channel":"h","data":"chunked"}"#;
    let chunked = format!(
        "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    conn.send(chunked.as_bytes()).await;
    assert_eq!(conn.answer().await.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_keep_the_connection_when_the_body_was_consumed() {
    let mut config = quick_config();
    config.auth.publish_keys = vec!["sekrit-key-0123456789".into()];
    let server = TestServer::start(config).await;
    let mut conn = Conn::open(&server).await;
    // Refused on its headers, but the whole body came with them: the connection goes on.
    conn.send(&publish_request("r", "x", "")).await;
    let refused = conn.answer().await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.json()["error"], "missing_key");
    assert_eq!(refused.header("connection"), None);
    conn.send(&publish_request(
        "r",
        "x",
        "Authorization: Bearer sekrit-key-0123456789\r\n",
    ))
    .await;
    assert_eq!(conn.answer().await.status, 200);
    // Invalid JSON: a 400 naming the problem, and the connection still goes on.
    conn.send(b"POST /publish HTTP/1.1\r\nAuthorization: Bearer sekrit-key-0123456789\r\nContent-Type: application/json\r\nContent-Length: 1\r\n\r\n{")
        .await;
    let bad = conn.answer().await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "invalid_json");
    conn.send(&publish_request(
        "r",
        "y",
        "Authorization: Bearer sekrit-key-0123456789\r\n",
    ))
    .await;
    assert_eq!(conn.answer().await.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_missing_bodies_are_refused_and_the_connection_closed() {
    let mut config = quick_config();
    config.limits.max_body_bytes = 1024;
    config.limits.body_read_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;

    // Declared over the limit: 413 before any of it is read, then close.
    let mut conn = Conn::open(&server).await;
    conn.send(b"POST /publish HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{\"channel\":")
        .await;
    let answer = conn.answer().await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(answer.json()["error"], "body_too_large");
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(conn.closed().await);

    // A body that never comes: 408 after limits.body_read_timeout, then close.
    let mut conn = Conn::open(&server).await;
    conn.send(b"POST /publish HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"chan")
        .await;
    let answer = conn.answer().await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.json()["error"], "body_timeout");
    assert!(conn.closed().await);

    // Nothing was published by either.
    let published = events_published(server.admin).await;
    assert_eq!(published, 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_closes_after_the_header_timeout() {
    let mut config = quick_config();
    config.limits.header_read_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let mut conn = Conn::open(&server).await;
    conn.send(&publish_request("i", "x", "")).await;
    assert_eq!(conn.answer().await.status, 200);
    let idle_since = std::time::Instant::now();
    assert!(conn.closed().await, "an idle connection is closed");
    assert!(idle_since.elapsed() >= Duration::from_millis(250));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_closes_idle_publisher_connections_at_once() {
    let mut config = quick_config();
    config.shutdown.drain_timeout = Duration::from_secs(20);
    let server = TestServer::start(config).await;
    let mut conn = Conn::open(&server).await;
    conn.send(&publish_request("d", "x", "")).await;
    assert_eq!(conn.answer().await.status, 200);
    // Between requests when the drain starts: closed right away, not kept until the
    // 20 s drain timeout, and the server stops without waiting for it.
    let stopping = tokio::spawn(server.stop());
    assert!(conn.closed().await, "the idle connection is closed");
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("the server stops well within the drain timeout")
        .unwrap();
}
