//! `herald doctor URL`: checks the path in front of herald the way a browser sees it,
//! and names the nginx directive or herald key to change for each fault.
//!
//! It opens event streams through the URL (a proxy, a CDN, or herald itself), asks herald
//! (header `x-herald-doctor`) what reached it, and, given a publish URL and key, publishes
//! two events through the path and times their arrival. Every check prints as PASS, FAIL
//! or SKIP with its fix; the exit status is 1 when one fails, so a deploy pipeline can
//! run it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::{header, StatusCode, Version};

/// Asked for by `doctor` on its streams; herald answers with what reached it through the
/// proxy (see `http::subscribe`).
pub const HEADER: &str = "x-herald-doctor";

/// How soon the stream's first bytes (herald writes them at once) must arrive.
const FIRST_BYTES_WITHIN: Duration = Duration::from_secs(1);
/// How soon a published event must arrive through the path.
const DELIVERY_WITHIN: Duration = Duration::from_millis(500);
/// Between the two test publishes: arrivals closer than half of it came in one batch.
const PUBLISH_GAP: Duration = Duration::from_millis(400);

/// How long any request may wait for its response head.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    /// The events URL as browsers use it (`/events` is added to a bare origin).
    pub url: String,
    /// Where to publish the test events (`POST`), with `key`.
    pub publish_url: Option<String>,
    pub key: Option<String>,
    /// Channel for the test streams and events.
    pub channel: String,
    /// Hold a stream idle this long and see that the path keeps it.
    pub idle: Option<Duration>,
    /// PEM CA to trust for https (a self-signed proxy).
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// One check's result: what was seen, and what to change when it failed.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
    pub fix: &'static str,
}

impl Check {
    fn new(name: &'static str, ok: bool, detail: String, fix: &'static str) -> Self {
        let outcome = if ok { Outcome::Pass } else { Outcome::Fail };
        Self {
            name,
            outcome,
            detail,
            fix,
        }
    }

    fn skip(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Skip,
            detail: detail.into(),
            fix: "",
        }
    }

    /// `PASS  name: detail`, and for a failure the fix on the next line.
    pub fn render(&self) -> String {
        let tag = match self.outcome {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
        };
        let mut line = format!("{tag}  {}: {}", self.name, self.detail);
        if self.outcome == Outcome::Fail && !self.fix.is_empty() {
            line.push_str(&format!("\n      fix: {}", self.fix));
        }
        line
    }
}

/// Run every check against `options.url`.
pub async fn run(options: &Options) -> Result<Vec<Check>, String> {
    let client = client(options)?;
    let url = events_url(&options.url, &options.channel)?;
    let mut checks = Vec::new();

    let opened = Instant::now();
    let resp = send(
        client
            .get(url.clone())
            .header(header::ACCEPT, "text/event-stream")
            .header(header::ACCEPT_ENCODING, "gzip, deflate, br")
            .header(header::CACHE_CONTROL, "no-cache")
            .header(HEADER, "1"),
    )
    .await;
    // No response head, or a late one: a proxy buffering the whole answer (herald sends
    // its head at once), or nothing listening.
    const OPENS: &str = "stream opens at once";
    const OPENS_FIX: &str = "proxy_buffering off; and proxy_http_version 1.1; in the events location (a buffering proxy holds even the response head); or check the URL";
    let resp = match resp {
        Ok(resp) => resp,
        Err(e) => {
            checks.push(Check::new(OPENS, false, format!("{url}: {e}"), OPENS_FIX));
            return Ok(checks);
        }
    };
    let head_after = opened.elapsed();
    checks.push(Check::new(
        OPENS,
        head_after <= FIRST_BYTES_WITHIN,
        format!("response head after {head_after:?}"),
        OPENS_FIX,
    ));
    let status = resp.status();
    checks.push(Check::new(
        "status",
        status == StatusCode::OK,
        format!("{status}"),
        "the URL must reach herald's /events: check the location that proxies it",
    ));
    if status != StatusCode::OK {
        return Ok(checks);
    }
    let headers = resp.headers().clone();
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let content_type = text(header::CONTENT_TYPE);
    checks.push(Check::new(
        "content type",
        content_type.starts_with("text/event-stream"),
        format!("{content_type:?}"),
        "pass herald's Content-Type through (no default_type or add_header overriding it)",
    ));
    let cache_control = text(header::CACHE_CONTROL);
    let age = text(header::AGE).trim().parse::<u64>().unwrap_or(0);
    let cached = age > 0 || text("x-cache".parse().expect("header name")).contains("HIT");
    checks.push(Check::new(
        "no caching",
        (cache_control.contains("no-cache") || cache_control.contains("no-store")) && !cached,
        format!(
            "cache-control {cache_control:?}{}",
            if cached { ", served from a cache" } else { "" }
        ),
        "no proxy_cache for /events, and keep herald's Cache-Control: no-cache",
    ));
    let encoding = text(header::CONTENT_ENCODING);
    checks.push(Check::new(
        "no compression",
        encoding.is_empty() || encoding == "identity",
        if encoding.is_empty() { "none".into() } else { format!("content-encoding {encoding:?}") },
        "gzip off in the events location (or text/event-stream out of gzip_types): compressors hold events back",
    ));
    if url.scheme() == "https" {
        checks.push(Check::new(
            "HTTP/2",
            resp.version() == Version::HTTP_2,
            format!("{:?}", resp.version()),
            "offer HTTP/2 on TLS (nginx 1.22: listen 443 ssl http2;): on HTTP/1.1 a browser holds 6 streams per origin",
        ));
    } else {
        checks.push(Check::skip(
            "HTTP/2",
            "plain http: browsers use HTTP/1.1 here, at most 6 streams per origin",
        ));
    }
    let report = text(HEADER.parse().expect("header name"));
    let heartbeat = field(&report, "heartbeat").and_then(|h| humantime::parse_duration(h).ok());
    match field(&report, "version") {
        Some(version) => checks.push(Check::new(
            "HTTP/1.1 to herald",
            version == "HTTP/1.1" || version == "HTTP/2.0",
            format!("herald received {version}"),
            "proxy_http_version 1.1; and proxy_set_header Connection \"\"; (HTTP/1.0 cannot stream chunked or keep the upstream connection)",
        )),
        None => checks.push(Check::skip(
            "HTTP/1.1 to herald",
            "no x-herald-doctor answer (an older herald, or the proxy drops the header)",
        )),
    }

    let mut stream = SseReader::new(resp);
    let first = stream.next_bytes(FIRST_BYTES_WITHIN).await;
    checks.push(Check::new(
        "first bytes at once",
        first.is_some(),
        match first {
            Some(at) => format!("after {:?}", at - opened),
            None => format!("nothing within {FIRST_BYTES_WITHIN:?}: held back on the way"),
        },
        "proxy_buffering off; in the events location (herald also sends X-Accel-Buffering: no: do not ignore it)",
    ));

    checks.push(resume_check(&client, &url).await);
    checks.push(publish_check(&client, options, &mut stream).await);
    checks.push(match options.idle {
        Some(idle) => idle_check(&mut stream, idle, heartbeat).await,
        None => Check::skip(
            "idle stream kept",
            "give --idle SECS (longer than the proxy's read timeout)",
        ),
    });
    Ok(checks)
}

fn client(options: &Options) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        // Compressed answers are what the "no compression" check looks for: never
        // decoded here, and never hidden.
        .no_gzip()
        .no_brotli()
        .no_deflate();
    if let Some(path) = &options.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(|e| e.to_string())
}

/// `request`'s response head, within `ANSWER_WITHIN`.
async fn send(request: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
    match tokio::time::timeout(ANSWER_WITHIN, request.send()).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {ANSWER_WITHIN:?}")),
    }
}

/// `raw` with `/events` for a bare origin, and `channel` unless it names channels.
fn events_url(raw: &str, channel: &str) -> Result<url::Url, String> {
    let mut url = url::Url::parse(raw).map_err(|e| format!("{raw}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{raw}: not an http(s) URL"));
    }
    if url.path() == "/" || url.path().is_empty() {
        url.set_path("/events");
    }
    if !url.query_pairs().any(|(k, _)| k == "channel") {
        url.query_pairs_mut().append_pair("channel", channel);
    }
    Ok(url)
}

/// `value` of `name=value` in a `; `-separated report.
fn field<'a>(report: &'a str, name: &str) -> Option<&'a str> {
    report
        .split(';')
        .filter_map(|part| part.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A resume with `Last-Event-ID: 1`, older than anything herald holds: herald answers
/// with a reset event at once, but only if the header reached it.
async fn resume_check(client: &reqwest::Client, url: &url::Url) -> Check {
    const NAME: &str = "Last-Event-ID reaches herald";
    const FIX: &str = "pass the Last-Event-ID request header (no proxy_set_header Last-Event-ID \"\"; proxy_pass_request_headers on)";
    let resp = send(
        client
            .get(url.clone())
            .header("last-event-id", "1")
            .header(HEADER, "1"),
    )
    .await;
    let resp = match resp {
        Ok(r) if r.status() == StatusCode::OK => r,
        Ok(r) => return Check::new(NAME, false, format!("resume answered {}", r.status()), FIX),
        Err(e) => return Check::new(NAME, false, format!("resume failed: {e}"), FIX),
    };
    let seen = resp
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| field(r, "last-event-id").map(str::to_string));
    let mut stream = SseReader::new(resp);
    let reset = stream
        .next_event(Duration::from_secs(2), |e| {
            e.data.contains("\"last_event_id\"")
        })
        .await;
    let detail = match (&reset, seen.as_deref()) {
        (Some(_), _) => {
            "herald answered the resume (a reset event for an ID it no longer holds)".to_string()
        }
        (None, Some(id)) => format!("herald saw last-event-id={id} but sent no reset"),
        (None, None) => "no reset event: the header did not arrive".to_string(),
    };
    Check::new(NAME, reset.is_some(), detail, FIX)
}

/// Two events published through the path, `PUBLISH_GAP` apart, while the stream is
/// read: each must arrive within `DELIVERY_WITHIN` of its publish, and on its own (a
/// buffering hop delivers them together).
async fn publish_check(
    client: &reqwest::Client,
    options: &Options,
    stream: &mut SseReader,
) -> Check {
    const NAME: &str = "events arrive promptly, one by one";
    const FIX: &str = "proxy_buffering off; and gzip off for text/event-stream; sse.coalesce_window delays by design";
    let (Some(publish_url), Some(key)) = (&options.publish_url, &options.key) else {
        return Check::skip(
            NAME,
            "give --publish-url and --key to publish two test events",
        );
    };
    let tag = rand::random::<u32>();
    let markers = [1, 2].map(|n| format!("herald-doctor {n} {tag}"));
    let publishing = async {
        let mut sent = Vec::new();
        for (n, marker) in markers.iter().enumerate() {
            if n > 0 {
                tokio::time::sleep(PUBLISH_GAP).await;
            }
            sent.push(Instant::now());
            let body = serde_json::json!({ "channel": options.channel, "data": marker });
            let answer = send(
                client
                    .post(publish_url)
                    .bearer_auth(key)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body.to_string()),
            )
            .await;
            match answer {
                Ok(r) if r.status() == StatusCode::OK => {}
                Ok(r) => return Err(format!("publish answered {}", r.status())),
                Err(e) => return Err(format!("publish failed: {e}")),
            }
        }
        Ok(sent)
    };
    let limit = PUBLISH_GAP + DELIVERY_WITHIN + Duration::from_secs(2);
    let reading = async {
        let mut arrived = Vec::new();
        for marker in &markers {
            arrived.push(stream.next_event(limit, |e| e.data == *marker).await);
        }
        arrived
    };
    let (sent, arrived) = tokio::join!(publishing, reading);
    let sent = match sent {
        Ok(sent) => sent,
        Err(e) => return Check::new(NAME, false, e, "check --publish-url and --key"),
    };
    let arrived: Option<Vec<Instant>> = arrived.into_iter().collect();
    let Some(arrived) = arrived else {
        return Check::new(
            NAME,
            false,
            format!("the events did not arrive within {limit:?}"),
            FIX,
        );
    };
    let latencies: Vec<Duration> = sent
        .iter()
        .zip(&arrived)
        .map(|(s, a)| a.saturating_duration_since(*s))
        .collect();
    let apart = arrived[1].saturating_duration_since(arrived[0]);
    let ok = latencies.iter().all(|l| *l <= DELIVERY_WITHIN) && apart >= PUBLISH_GAP / 2;
    Check::new(
        NAME,
        ok,
        format!("publish to arrival {latencies:?}, arrivals {apart:?} apart"),
        FIX,
    )
}

/// Hold the stream idle for `idle`: the path must not end it.
async fn idle_check(stream: &mut SseReader, idle: Duration, heartbeat: Option<Duration>) -> Check {
    const NAME: &str = "idle stream kept";
    let started = Instant::now();
    let ended = stream.wait_end(idle).await;
    let beats = stream.comments;
    let note = match heartbeat {
        Some(h) if h > idle => format!(
            "; herald's heartbeat is {}: an idle of {} s does not prove the path keeps a stream until then",
            crate::config::duration::render(h),
            idle.as_secs()
        ),
        _ => String::new(),
    };
    match ended {
        Some(at) => Check::new(
            NAME,
            false,
            format!("the path ended the stream after {:?}{note}", at - started),
            "proxy_read_timeout (nginx) above sse.heartbeat_interval, 2x to be safe; or a shorter sse.heartbeat_interval",
        ),
        None => Check::new(
            NAME,
            true,
            format!("open after {idle:?} ({beats} comments/heartbeats seen){note}"),
            "",
        ),
    }
}

/// Just enough of an SSE parser for the checks: events (data joined) and comments.
struct SseReader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
    comments: usize,
    ended: bool,
}

struct Event {
    data: String,
}

impl SseReader {
    fn new(resp: reqwest::Response) -> Self {
        Self {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
            comments: 0,
            ended: false,
        }
    }

    /// When the next bytes arrived, within `limit`.
    async fn next_bytes(&mut self, limit: Duration) -> Option<Instant> {
        match tokio::time::timeout(limit, self.body.next()).await {
            Ok(Some(Ok(chunk))) => {
                self.buf.push_str(&String::from_utf8_lossy(&chunk));
                Some(Instant::now())
            }
            Ok(_) => {
                self.ended = true;
                None
            }
            Err(_) => None,
        }
    }

    /// When an event matching `wanted` arrived, within `limit`.
    async fn next_event(
        &mut self,
        limit: Duration,
        wanted: impl Fn(&Event) -> bool,
    ) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let event = self.parse(&block);
                if event.as_ref().is_some_and(&wanted) {
                    return Some(Instant::now());
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if self.ended {
                return None;
            }
            self.next_bytes(left).await?;
        }
    }

    /// When the stream ended, if it did within `limit`; counts comments meanwhile.
    async fn wait_end(&mut self, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                self.parse(&block);
            }
            if self.ended {
                return Some(Instant::now());
            }
            let left = deadline.checked_duration_since(Instant::now());
            match left {
                None => return None,
                Some(left) => {
                    if self.next_bytes(left).await.is_none() && !self.ended {
                        return None;
                    }
                }
            }
        }
    }

    fn parse(&mut self, block: &str) -> Option<Event> {
        let mut data: Vec<&str> = Vec::new();
        let mut is_event = false;
        for line in block.lines() {
            if line.starts_with(':') {
                self.comments += 1;
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push(value.strip_prefix(' ').unwrap_or(value));
                is_event = true;
            }
        }
        is_event.then(|| Event {
            data: data.join("\n"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_origin_gets_the_events_path_and_a_channel() {
        let url = events_url("https://example.com", "doc").unwrap();
        assert_eq!(url.as_str(), "https://example.com/events?channel=doc");
        let url = events_url("http://h/sse/events?channel=a", "doc").unwrap();
        assert_eq!(url.as_str(), "http://h/sse/events?channel=a");
        assert!(events_url("ftp://h", "doc").is_err());
    }

    #[test]
    fn report_fields_are_found_by_name() {
        let report = "version=HTTP/1.1; last-event-id=1; heartbeat=120s";
        assert_eq!(field(report, "version"), Some("HTTP/1.1"));
        assert_eq!(field(report, "heartbeat"), Some("120s"));
        assert_eq!(field(report, "missing"), None);
    }
}
