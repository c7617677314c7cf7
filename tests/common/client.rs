//! Client-side helpers: a raw event-stream reader with deadlines, publishing, admin reads.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::sse_parser::{Event, Item, Parser};

/// Deadline for one request/response exchange in the helpers below.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// What [`SseClient::next`] saw first.
#[derive(Debug)]
pub enum Next {
    Item(Item),
    /// The response body finished.
    End,
    Timeout,
}

/// One `GET /events` response read byte by byte through the spec parser.
pub struct SseClient {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    body: ByteStream,
    parser: Parser,
    /// Every byte received so far, for byte-exact checks.
    pub raw: Vec<u8>,
    /// Parsed items not yet handed out, with the arrival time of their last chunk.
    queue: VecDeque<(Item, Instant)>,
    ended: bool,
}

impl SseClient {
    pub async fn connect(url: &str) -> Self {
        Self::connect_with(reqwest::Client::new().get(url)).await
    }

    /// Subscribe with a `Last-Event-ID` header.
    pub async fn resume(url: &str, last_event_id: &str) -> Self {
        Self::connect_with(
            reqwest::Client::new()
                .get(url)
                .header("Last-Event-ID", last_event_id),
        )
        .await
    }

    pub async fn connect_with(request: reqwest::RequestBuilder) -> Self {
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, request.send())
            .await
            .expect("response headers within the deadline")
            .expect("subscribe request");
        Self {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: Box::pin(resp.bytes_stream()),
            parser: Parser::new(),
            raw: Vec::new(),
            queue: VecDeque::new(),
            ended: false,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The stream's reconnection time as parsed from `retry:` lines so far.
    pub fn reconnection_time(&self) -> Option<u64> {
        self.parser.reconnection_time
    }

    /// The next event or comment, the end of the body, or a timeout.
    pub async fn next(&mut self, timeout: Duration) -> Next {
        match self.next_timed(timeout).await {
            Some(Ok((item, _))) => Next::Item(item),
            Some(Err(())) => Next::Timeout,
            None => Next::End,
        }
    }

    /// As [`SseClient::next`], with the time the item's last byte arrived:
    /// `None` at the end of the body, `Some(Err(()))` on timeout.
    pub async fn next_timed(&mut self, timeout: Duration) -> Option<Result<(Item, Instant), ()>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(Ok(item));
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Some(Err(())),
                Ok(Some(Ok(chunk))) => {
                    let at = Instant::now();
                    self.raw.extend_from_slice(&chunk);
                    self.parser.feed(&chunk);
                    while let Some(item) = self.parser.next_item() {
                        self.queue.push_back((item, at));
                    }
                }
                // A reset connection counts as the end of the body.
                Ok(Some(Err(_))) | Ok(None) => self.ended = true,
            }
        }
    }

    /// The next event, skipping comments; panics on timeout or end of stream.
    pub async fn next_event(&mut self, timeout: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Next::Item(Item::Event(e)) => return e,
                Next::Item(Item::Comment(_)) => {}
                Next::End => panic!(
                    "stream ended while waiting for an event; received so far: {:?}",
                    String::from_utf8_lossy(&self.raw)
                ),
                Next::Timeout => panic!(
                    "no event within {timeout:?}; received so far: {:?}",
                    String::from_utf8_lossy(&self.raw)
                ),
            }
        }
    }

    /// `n` events in a row (comments skipped), all within `timeout`.
    pub async fn events(&mut self, n: usize, timeout: Duration) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            out.push(self.next_event(left).await);
        }
        out
    }

    /// Read until the `: herald` comment that closes the preamble.
    pub async fn expect_preamble(&mut self) {
        match self.next(REQUEST_TIMEOUT).await {
            Next::Item(Item::Comment(c)) if c == "herald" => {}
            other => panic!(
                "expected the preamble, got {other:?}; raw {:?}",
                String::from_utf8_lossy(&self.raw)
            ),
        }
    }

    /// True if the body ends within `timeout`; events and comments until then are dropped.
    pub async fn wait_end(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Next::End => return true,
                Next::Timeout => return false,
                Next::Item(_) => {}
            }
        }
    }
}

/// `POST` a body with an optional `Content-Type`; returns status and the JSON answer.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut req = client.post(url).body(body);
    if let Some(ct) = content_type {
        req = req.header(reqwest::header::CONTENT_TYPE, ct);
    }
    send_json(req).await
}

/// Send a request and read its JSON answer (`Value::Null` if the body is not JSON).
pub async fn send_json(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, req.send())
        .await
        .expect("answer within the deadline")
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("response body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Publish a JSON body that must be accepted; returns the answer.
pub async fn publish(client: &reqwest::Client, url: &str, body: &Value) -> Value {
    let (status, answer) = post(client, url, Some("application/json"), body.to_string()).await;
    assert_eq!(status, 200, "publish {body} answered {answer}");
    answer
}

/// The IDs of a batch publish's answer (`{"events": [{"id": ...}, ...]}`), in order.
pub fn batch_ids(answer: &Value) -> Vec<u64> {
    answer["events"]
        .as_array()
        .unwrap_or_else(|| panic!("not a batch answer: {answer}"))
        .iter()
        .map(id_of)
        .collect()
}

/// Publish one event and return its ID.
pub async fn publish_data(client: &reqwest::Client, url: &str, channel: &str, data: &str) -> u64 {
    let answer = publish(
        client,
        url,
        &serde_json::json!({ "channel": channel, "data": data }),
    )
    .await;
    id_of(&answer)
}

/// The numeric ID in a `{"id": "<decimal>", ...}` answer.
pub fn id_of(answer: &Value) -> u64 {
    answer["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no string id in {answer}"))
        .parse()
        .unwrap_or_else(|_| panic!("id is not a decimal u64 in {answer}"))
}

pub async fn get_json(url: &str) -> (u16, Value) {
    send_json(reqwest::Client::new().get(url)).await
}

pub async fn get_text(url: &str) -> (u16, String) {
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, reqwest::get(url))
        .await
        .expect("answer within the deadline")
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// The value of an unlabelled sample (or of `name{labels}` written out exactly) in a
/// Prometheus text exposition.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok()).flatten()
    })
}

/// Read one sample from `/metrics` on the admin listener; panics if absent.
pub async fn metric(admin_metrics_url: &str, sample: &str) -> f64 {
    let (status, text) = get_text(admin_metrics_url).await;
    assert_eq!(status, 200);
    metric_value(&text, sample).unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
}

/// `herald_events_published_total` of the node whose admin listener is `admin`, so a
/// test can check that refused publishes published nothing.
pub async fn events_published(admin: std::net::SocketAddr) -> f64 {
    metric(
        &format!("http://{admin}/metrics"),
        "herald_events_published_total",
    )
    .await
}

/// One publish of `data` to `channel`: its ID when accepted, `None` when refused as
/// Redis being away, which must be 503 `backend_unavailable` with a `Retry-After`.
pub async fn try_publish(
    client: &reqwest::Client,
    url: &str,
    channel: &str,
    data: &str,
) -> Option<u64> {
    let request = client
        .post(url)
        .json(&serde_json::json!({"channel": channel, "data": data}))
        .send();
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .expect("a publish answered within the deadline")
        .expect("publish request");
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").cloned();
    let body: Value = resp.json().await.expect("a JSON answer");
    if status == 200 {
        return Some(id_of(&body));
    }
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "backend_unavailable", "{body}");
    let retry_after = retry_after.expect("a Retry-After header");
    let seconds: u64 = retry_after.to_str().unwrap().parse().expect("seconds");
    assert!(seconds >= 1, "Retry-After: {seconds}");
    None
}

/// `(id, data)` of each event (IDs are herald's numeric ones).
pub fn id_and_data(events: &[Event]) -> Vec<(u64, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.last_event_id.parse().expect("a numeric ID"),
                e.data.clone(),
            )
        })
        .collect()
}

/// Every event of `stream` up to the one whose data is `"end"`, as `(id, data)`; each
/// within `wait` of the one before.
pub async fn events_until_end(stream: &mut SseClient, wait: Duration) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    loop {
        let e = stream.next_event(wait).await;
        assert_eq!(e.event_type, "message", "{e:?}");
        if e.data == "end" {
            return got;
        }
        got.extend(id_and_data(&[e]));
    }
}

/// Wait until the count published on `counts` reaches `n`, at most `deadline`.
pub async fn wait_count(
    counts: &tokio::sync::watch::Receiver<usize>,
    n: usize,
    deadline: Duration,
) {
    let mut counts = counts.clone();
    let reached = tokio::time::timeout(deadline, counts.wait_for(|c| *c >= n)).await;
    assert!(reached.is_ok(), "fewer than {n} publishes accepted");
}
