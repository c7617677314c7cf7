//! Hostile requests over raw TCP against the real binary: malformed HTTP, header and SSE
//! injection, absurd lengths, broken chunking, deep and huge JSON, null bytes, pipelined
//! garbage, plus programmatic mutations of valid requests. Each is answered with a 4xx (or
//! the connection is closed) within a deadline, never a 5xx, never a hang; afterwards the
//! process is alive, its memory did not balloon, and subscribers see exactly the events
//! that were legitimately published, with no injected types or IDs.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sse_parser::Event as Parsed;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "pk-hostile-0123456789abcdef";
const SECRET: &str = "hs256-secret-of-at-least-32-bytes-0123456789";
/// The channel a subscriber watches through the whole corpus.
const VICTIM: &str = "victim";
/// limits.header_read_timeout for the broker under test.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest any single case may take to be answered or closed.
const CASE_DEADLINE: Duration = Duration::from_secs(6);
const WAIT: Duration = Duration::from_secs(5);

fn broker_toml() -> String {
    format!(
        r#"
[shutdown]
drain_timeout = "500ms"
[limits]
header_read_timeout = "{0}s"
body_read_timeout = "{0}s"
[auth]
publish_keys = ["{KEY}"]
private_channels = ["private:*"]
[auth.jwt]
algorithm = "HS256"
secret = "{SECRET}"
"#,
        HEADER_TIMEOUT.as_secs()
    )
}

/// What a case may legitimately get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Expect {
    /// A 4xx, or the connection closed (or reset) without an answer.
    Refused,
    /// 200: legal input that looks hostile (line breaks in data, odd event types).
    Accepted,
    /// A valid request with garbage pipelined after it: 200, then a 4xx or a close.
    ValidThenRefused,
    /// Legal but odd (absolute-form, lossy UTF-8, `Last-Event-ID` junk): any answer but
    /// a 5xx, or a close.
    NoServerError,
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    expect: Expect,
    /// Shut down our write side after sending: a client that went away mid-request.
    half_close: bool,
    /// (type, data) a `VICTIM` subscriber reads if this publish is accepted.
    publishes: Option<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// We had all the answers we waited for.
    Answered,
    Closed,
    Reset,
    /// Neither answered nor closed by [`CASE_DEADLINE`].
    Hung,
}

#[derive(Debug)]
struct Outcome {
    statuses: Vec<u16>,
    end: End,
    elapsed: Duration,
}

impl Outcome {
    fn label(&self) -> String {
        match (self.statuses.first(), self.end) {
            (Some(s), _) => s.to_string(),
            (None, End::Hung) => "hung".into(),
            (None, End::Reset) => "reset".into(),
            (None, _) => "closed".into(),
        }
    }

    /// Why this outcome breaks the rules for `expect`, if it does.
    fn violation(&self, expect: Expect) -> Option<String> {
        if let Some(s) = self.statuses.iter().find(|s| **s >= 500 && **s != 503) {
            return Some(format!("server error {s}"));
        }
        let closed = matches!(self.end, End::Closed | End::Reset);
        let first = self.statuses.first().copied();
        let ok = match expect {
            Expect::Refused => first.map_or(closed, |s| (400..500).contains(&s)),
            Expect::Accepted => first == Some(200),
            Expect::ValidThenRefused => {
                first == Some(200)
                    && self
                        .statuses
                        .get(1)
                        .map_or(closed, |s| (400..500).contains(s))
            }
            Expect::NoServerError => first.is_some() || closed,
        };
        (!ok).then(|| format!("{self:?}"))
    }
}

// ---------------------------------------------------------------------------------------
// Building requests.

fn head(line: &[u8], headers: &[Vec<u8>], body: &[u8]) -> Vec<u8> {
    let mut out = line.to_vec();
    out.extend_from_slice(b"\r\nHost: herald.test\r\n");
    for h in headers {
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn h(s: impl AsRef<str>) -> Vec<u8> {
    s.as_ref().as_bytes().to_vec()
}

fn auth() -> Vec<u8> {
    h(format!("Authorization: Bearer {KEY}"))
}

fn get(target: impl AsRef<[u8]>) -> Vec<u8> {
    let mut line = b"GET ".to_vec();
    line.extend_from_slice(target.as_ref());
    line.extend_from_slice(b" HTTP/1.1");
    head(&line, &[], b"")
}

/// An authorised publish with an exact Content-Length.
fn publish(content_type: &str, body: impl AsRef<[u8]>) -> Vec<u8> {
    let body = body.as_ref();
    head(
        b"POST /publish HTTP/1.1",
        &[
            auth(),
            h(format!("Content-Type: {content_type}")),
            h(format!("Content-Length: {}", body.len())),
        ],
        body,
    )
}

fn publish_json(body: impl AsRef<[u8]>) -> Vec<u8> {
    publish("application/json", body)
}

fn publish_form(body: impl AsRef<[u8]>) -> Vec<u8> {
    publish("application/x-www-form-urlencoded", body)
}

/// An authorised publish with the given extra headers and raw body (lengths are the
/// caller's business).
fn publish_raw(headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut all = vec![auth(), h("Content-Type: application/json")];
    all.extend(headers.iter().map(h));
    head(b"POST /publish HTTP/1.1", &all, body)
}

fn pct(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn lf_normalised(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

struct Corpus(Vec<Case>);

impl Corpus {
    fn add(&mut self, name: impl Into<String>, bytes: Vec<u8>, expect: Expect) {
        self.0.push(Case {
            name: name.into(),
            bytes,
            expect,
            half_close: false,
            publishes: None,
        });
    }

    fn truncated(&mut self, name: impl Into<String>, bytes: Vec<u8>) {
        self.add(name, bytes, Expect::Refused);
        self.0.last_mut().unwrap().half_close = true;
    }

    /// A publish to `VICTIM` that must be accepted and read back as (type, data).
    fn accepted(&mut self, name: impl Into<String>, bytes: Vec<u8>, event: &str, data: &str) {
        self.add(name, bytes, Expect::Accepted);
        self.0.last_mut().unwrap().publishes = Some((event.into(), lf_normalised(data)));
    }
}

/// Characters that break or bend SSE lines, URLs, JSON and HTTP heads.
const HOSTILE_CHARS: [char; 16] = [
    '\r', '\n', '\0', '\t', '\u{b}', '\u{c}', '\u{1b}', '\u{7f}', '\u{85}', '\u{2028}', '\u{2029}',
    '\u{feff}', ' ', ':', '\u{fffd}', 'é',
];

/// One family of cases per hostile character, in every place it can be put.
fn per_character(c: &mut Corpus) {
    for (i, ch) in HOSTILE_CHARS.iter().copied().enumerate() {
        let name = format!("U+{:04X}", ch as u32);
        let enc = pct(&ch.to_string());
        let refuse_if = |bad: bool| {
            if bad {
                Expect::Refused
            } else {
                Expect::Accepted
            }
        };

        // Channel names: only [A-Za-z0-9_.:/@-] pass.
        let channel = format!("a{ch}b");
        let channel_ok = herald::validate::channel(&channel, 128).is_ok();
        c.add(
            format!("json channel {name}"),
            publish_json(json!({"channel": channel, "data": "x"}).to_string()),
            refuse_if(!channel_ok),
        );
        c.add(
            format!("subscribe channel {name} (percent-encoded)"),
            get(format!("/events?channel=a{enc}b")),
            refuse_if(!channel_ok),
        );
        if ch.is_ascii() && ch != ':' {
            // Raw in the request line: hyper refuses the request outright.
            c.add(
                format!("subscribe channel {name} (raw)"),
                get(format!("/events?channel=a{ch}b")),
                Expect::Refused,
            );
        }
        // Event types: no control characters, no Unicode line or paragraph separator.
        let kind = format!("t{ch}{i}");
        let type_refused = herald::validate::event_type(&kind, 64, false).is_err();
        let data = format!("type-{i}");
        let json_type =
            publish_json(json!({"channel": VICTIM, "event": kind, "data": data}).to_string());
        if type_refused {
            c.add(
                format!("json event type {name}"),
                json_type,
                Expect::Refused,
            );
        } else {
            c.accepted(format!("json event type {name}"), json_type, &kind, &data);
        }
        let form_type = publish_form(format!(
            "channel={VICTIM}&event={}&data=form-{data}",
            pct(&kind)
        ));
        if type_refused {
            c.add(
                format!("form event type {name}"),
                form_type,
                Expect::Refused,
            );
        } else {
            c.accepted(
                format!("form event type {name}"),
                form_type,
                &kind,
                &format!("form-{data}"),
            );
        }
        // Data: anything but NUL, and line breaks must not become fields.
        let data = format!("x{ch}event: evil{ch}id: 666{ch}retry: 1{ch}{ch}data: injected-{i}");
        let json_data = publish_json(json!({"channel": VICTIM, "data": data}).to_string());
        let form_data = publish_form(format!(
            "channel={VICTIM}&data={}",
            pct(&format!("form{data}"))
        ));
        if ch == '\0' {
            c.add(format!("json data {name}"), json_data, Expect::Refused);
            c.add(format!("form data {name}"), form_data, Expect::Refused);
        } else {
            c.accepted(format!("json data {name}"), json_data, "message", &data);
            c.accepted(
                format!("form data {name}"),
                form_data,
                "message",
                &format!("form{data}"),
            );
        }
        // Raw (unescaped) inside a JSON string: JSON forbids U+0000..U+001F.
        let raw = format!(r#"{{"channel":"{VICTIM}","event":"raw{i}","data":"r{ch}w"}}"#);
        if (ch as u32) < 0x20 {
            c.add(
                format!("raw json data {name}"),
                publish_json(raw),
                Expect::Refused,
            );
        } else {
            c.accepted(
                format!("raw json data {name}"),
                publish_json(raw),
                &format!("raw{i}"),
                &format!("r{ch}w"),
            );
        }
        // Resume IDs: junk gets a reset event, never an echo outside JSON.
        c.add(
            format!("lastEventId {name}"),
            get(format!("/events?channel=resume&lastEventId=1{enc}2")),
            Expect::NoServerError,
        );
        let mut last_id = b"Last-Event-ID: 1".to_vec();
        last_id.extend_from_slice(ch.to_string().as_bytes());
        last_id.extend_from_slice(b"2");
        c.add(
            format!("Last-Event-ID header {name} (raw)"),
            head(b"GET /events?channel=resume HTTP/1.1", &[last_id], b""),
            Expect::NoServerError,
        );
    }
}

fn request_lines(c: &mut Corpus) {
    let refused: &[(&str, &[u8])] = &[
        ("HTTP/0.9 simple request", b"GET /\r\n"),
        ("HTTP/0.9 with blank line", b"GET /events?channel=a\r\n\r\n"),
        ("version HTTP/0.9", b"GET / HTTP/0.9\r\n\r\n"),
        (
            "version HTTP/1.2",
            b"GET /events?channel=a HTTP/1.2\r\n\r\n",
        ),
        (
            "version HTTP/2.0",
            b"GET /events?channel=a HTTP/2.0\r\n\r\n",
        ),
        ("version HTTP/1.10", b"GET / HTTP/1.10\r\n\r\n"),
        ("version HTTP/11", b"GET / HTTP/11\r\n\r\n"),
        ("version HTTPS/1.1", b"GET / HTTPS/1.1\r\n\r\n"),
        ("version lower-case", b"GET / http/1.1\r\n\r\n"),
        ("version missing", b"GET / \r\n\r\n"),
        ("extra token", b"GET / HTTP/1.1 extra\r\n\r\n"),
        ("double space", b"GET  /events?channel=a HTTP/1.1\r\n\r\n"),
        ("two targets", b"GET / / HTTP/1.1\r\n\r\n"),
        ("leading space", b" GET / HTTP/1.1\r\n\r\n"),
        ("tab separator", b"GET\t/\tHTTP/1.1\r\n\r\n"),
        ("NUL in method", b"G\0ET / HTTP/1.1\r\n\r\n"),
        ("NUL in target", b"GET /\0 HTTP/1.1\r\n\r\n"),
        ("NUL in version", b"GET / HTTP/1.\x001\r\n\r\n"),
        ("only NULs", b"\0\0\0\0\0\0\0\0\r\n\r\n"),
        ("only CRLFs", b"\r\n\r\n\r\n\r\n"),
        ("bare LF line ends", b"GET /nope HTTP/1.1\nHost: x\n\n"),
        ("bare CR line ends", b"GET /nope HTTP/1.1\rHost: x\r\r"),
        ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        (
            "TLS client hello",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x01\x02\x03",
        ),
        ("SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n"),
        ("empty request", b""),
        ("relative path", b"GET ../../etc/passwd HTTP/1.1\r\n\r\n"),
        ("invalid percent in path", b"GET /%zz HTTP/1.1\r\n\r\n"),
        (
            "raw UTF-8 in path",
            "GET /événements HTTP/1.1\r\n\r\n".as_bytes(),
        ),
        (
            "raw 0xFF in query",
            b"GET /events?channel=\xff HTTP/1.1\r\n\r\n",
        ),
        (
            "incomplete head (slowloris)",
            b"GET /events?channel=a HTTP/1.1\r\nHost: x\r\n",
        ),
        (
            "request line only, no CRLF",
            b"GET /events?channel=a HTTP/1.1",
        ),
    ];
    for (name, bytes) in refused {
        c.add(*name, bytes.to_vec(), Expect::Refused);
    }
    let mut binary = Vec::with_capacity(2048);
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..2048 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        binary.push(x as u8);
    }
    c.add("2 KiB of binary", binary, Expect::Refused);
    for method in [
        "TRACE", "CONNECT", "PUT", "DELETE", "PATCH", "PROPFIND", "get", "FOO",
    ] {
        for path in ["/events?channel=a", "/publish", "/tickets", "/"] {
            let line = format!("{method} {path} HTTP/1.1");
            c.add(
                format!("{method} {path}"),
                head(line.as_bytes(), &[], b""),
                Expect::Refused,
            );
        }
    }
    c.add(
        "CONNECT authority-form",
        head(b"CONNECT herald.test:443 HTTP/1.1", &[], b""),
        Expect::Refused,
    );
    c.add(
        "OPTIONS *",
        head(b"OPTIONS * HTTP/1.1", &[], b""),
        Expect::Refused,
    );
    c.add("GET *", head(b"GET * HTTP/1.1", &[], b""), Expect::Refused);
    c.add(
        "10 KiB method",
        head(
            format!("{} / HTTP/1.1", "M".repeat(10_000)).as_bytes(),
            &[],
            b"",
        ),
        Expect::Refused,
    );
    c.add(
        "absolute-form to a missing path",
        get("https://evil.example/nope"),
        Expect::Refused,
    );
    c.add(
        "absolute-form to the demo page",
        get("https://evil.example/"),
        Expect::NoServerError,
    );
    c.add(
        "absolute-form subscribe",
        get("http://evil.example/events?channel=absform"),
        Expect::NoServerError,
    );
    c.add(
        "path with dot segments",
        get("/events/../publish"),
        Expect::Refused,
    );
    c.add(
        "double-slash path",
        get("//events?channel=a"),
        Expect::Refused,
    );
    c.add(
        "upgrade to h2c",
        head(
            b"GET /nope HTTP/1.1",
            &[
                h("Connection: Upgrade, HTTP2-Settings"),
                h("Upgrade: h2c"),
                h("HTTP2-Settings: AAMAAABkAAQAAP__"),
            ],
            b"",
        ),
        Expect::Refused,
    );
    c.add(
        "upgrade to websocket on /publish",
        head(
            b"GET /publish HTTP/1.1",
            &[h("Connection: Upgrade"), h("Upgrade: websocket")],
            b"",
        ),
        Expect::Refused,
    );
}

fn subscribe_queries(c: &mut Corpus) {
    let refused = [
        "/events",
        "/events?",
        "/events?channel",
        "/events?channel=",
        "/events?channel=a%",
        "/events?channel=%%",
        "/events?channel=%C0%80",
        "/events?channel=%FF%FE",
        "/events?channel=%EF%BB%BFa",
        "/events?channel=a%0d%0aevent:%20evil",
        "/events?channel=a%0d%0a%0d%0aHTTP/1.1%20200%20OK",
        "/events?channel=a+b",
        "/events?channel=a;b",
        "/events?chan%00nel=a",
        "/events?channel=a&lastEventId=11111111111111111111111111111111111111111111111111111111111111111",
        "/events?channel=private:1",
        "/events?channel=private:1&ticket=%0d%0a",
        "/events?channel=private:1&ticket=../../../etc/passwd",
    ];
    for q in refused {
        c.add(format!("GET {q}"), get(q), Expect::Refused);
    }
    c.add(
        "channel name of 129 bytes",
        get(format!("/events?channel={}", "n".repeat(129))),
        Expect::Refused,
    );
    let seventeen: String = (0..17).map(|i| format!("channel=c{i}&")).collect();
    c.add(
        "17 channels",
        get(format!("/events?{seventeen}")),
        Expect::Refused,
    );
    let many: String = (0..10_000).map(|i| format!("channel=c{i}&")).collect();
    c.add(
        "10,000 distinct channels",
        get(format!("/events?{many}")),
        Expect::Refused,
    );
    let same = "channel=a&".repeat(10_000);
    c.add(
        "10,000 repeats of one channel",
        get(format!("/events?{same}")),
        Expect::Refused,
    );
    c.add(
        "10 KiB ticket",
        get(format!(
            "/events?channel=private:1&ticket={}",
            "t".repeat(10_240)
        )),
        Expect::Refused,
    );
    c.add(
        "private channel with junk cookie",
        head(
            b"GET /events?channel=private:1 HTTP/1.1",
            &[h(format!("Cookie: herald_token={}", "x.".repeat(4000)))],
            b"",
        ),
        Expect::Refused,
    );
    c.add("private channel with alg none", head(b"GET /events?channel=private:1 HTTP/1.1", &[h("Authorization: Bearer eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTksImhlcmFsZCI6eyJzdWJzY3JpYmUiOlsiKiJdfX0.")], b""), Expect::Refused);
    c.add(
        "resume with 20+ digit id",
        get("/events?channel=resume&lastEventId=99999999999999999999999"),
        Expect::NoServerError,
    );
}

fn headers(c: &mut Corpus) {
    let target: &[u8] = b"GET /events?channel=a HTTP/1.1";
    let refused: &[(&str, &[u8])] = &[
        ("CR inside a header value", b"X-A: a\rb"),
        ("LF inside a header value", b"X-A: a\nb"),
        ("NUL inside a header value", b"X-A: a\0b"),
        ("ESC inside a header value", b"X-A: a\x1bb"),
        ("space in a header name", b"X A: b"),
        ("space before the colon", b"X-A : b"),
        ("empty header name", b": value"),
        ("header without colon", b"NoColonHere"),
        ("obsolete line folding", b"X-A: a\r\n b"),
        ("NUL in a header name", b"X-\0A: b"),
        (
            "header injection via Last-Event-ID",
            b"Last-Event-ID: 1\r\nX-Injected: yes\r\nBad Header",
        ),
        ("UTF-8 header name", "Événement: x".as_bytes()),
    ];
    for (name, header) in refused {
        c.add(
            *name,
            head(target, &[header.to_vec()], b""),
            Expect::Refused,
        );
    }
    c.add(
        "20 KiB header value",
        head(target, &[h(format!("X-Big: {}", "v".repeat(20_480)))], b""),
        Expect::Refused,
    );
    let many: Vec<Vec<u8>> = (0..2000).map(|i| h(format!("X-{i}: v"))).collect();
    c.add("2000 headers", head(target, &many, b""), Expect::Refused);
    c.add(
        "12 KiB bearer on publish",
        publish_raw(
            &[
                &format!("Authorization: Bearer {}", "k".repeat(12_000)),
                "Content-Length: 2",
            ],
            b"{}",
        ),
        Expect::Refused,
    );
    c.add(
        "64 KiB URI",
        get(format!("/events?channel=a&x={}", "u".repeat(65_536))),
        Expect::Refused,
    );
    c.add(
        "1 MiB URI",
        get(format!("/events?channel=a&x={}", "u".repeat(1 << 20))),
        Expect::Refused,
    );
}

fn lengths_and_chunking(c: &mut Corpus) {
    let event = json!({"channel": "lengths", "data": "x"}).to_string();
    let ev = event.as_bytes();
    for cl in [
        "-1",
        "abc",
        "99999999999999999999999",
        "1, 2",
        "+5",
        "0x10",
        "5 5",
        "1e3",
        "",
    ] {
        c.add(
            format!("Content-Length {cl:?}"),
            publish_raw(&[&format!("Content-Length: {cl}")], ev),
            Expect::Refused,
        );
    }
    c.add(
        "conflicting Content-Lengths",
        publish_raw(
            &[
                "Content-Length: 5",
                &format!("Content-Length: {}", ev.len()),
            ],
            ev,
        ),
        Expect::Refused,
    );
    c.add(
        "Content-Length 1 GB, tiny body",
        publish_raw(&["Content-Length: 1000000000"], ev),
        Expect::Refused,
    );
    c.add(
        "Content-Length above max_body_bytes",
        publish_raw(&["Content-Length: 1048577"], ev),
        Expect::Refused,
    );
    c.add(
        "Content-Length 1 GB with Expect 100-continue",
        publish_raw(&["Content-Length: 1000000000", "Expect: 100-continue"], b""),
        Expect::Refused,
    );
    c.add(
        "Content-Length shorter than the body",
        publish_raw(&["Content-Length: 2"], b"{}GARBAGE-AFTER-THE-BODY"),
        Expect::Refused,
    );
    c.truncated(
        "truncated body (CL 100, 10 sent)",
        publish_raw(&["Content-Length: 100"], &ev[..10]),
    );
    c.truncated(
        "truncated body (one byte short)",
        publish_raw(&[&format!("Content-Length: {}", ev.len() + 1)], ev),
    );
    let te = "Transfer-Encoding: chunked";
    let chunked: &[(&str, &[u8])] = &[
        ("chunk size not hex", b"zz\r\n{}\r\n0\r\n\r\n"),
        ("negative chunk size", b"-1\r\n{}\r\n0\r\n\r\n"),
        (
            "chunk size overflow",
            b"fffffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
        ),
        ("chunk data longer than its size", b"1\r\n{}\r\n0\r\n\r\n"),
        ("chunk without CRLF after data", b"2\r\n{}0\r\n\r\n"),
        ("NUL in chunk extension", b"2;a=\0\r\n{}\r\n0\r\n\r\n"),
        ("CR in chunk size line", b"2\r\r\n{}\r\n0\r\n\r\n"),
        ("bad trailer", b"2\r\n{}\r\n0\r\nBad Trailer\r\n\r\n"),
    ];
    for (name, body) in chunked {
        c.add(*name, publish_raw(&[te], body), Expect::Refused);
    }
    let mut long_ext = b"2;".to_vec();
    long_ext.extend(std::iter::repeat_n(b'e', 100_000));
    long_ext.extend_from_slice(b"\r\n{}\r\n0\r\n\r\n");
    c.add(
        "100 KB chunk extension",
        publish_raw(&[te], &long_ext),
        Expect::Refused,
    );
    c.truncated(
        "truncated chunked body",
        publish_raw(&[te], b"10\r\n{\"chan"),
    );
    c.truncated(
        "chunked body without last chunk",
        publish_raw(&[te], format!("{:x}\r\n{event}\r\n", ev.len()).as_bytes()),
    );
    for enc in ["gzip", "chunked, gzip", "identity", "chunked\0", "xchunked"] {
        c.add(
            format!("Transfer-Encoding {enc:?}"),
            publish_raw(&[&format!("Transfer-Encoding: {enc}")], b"0\r\n\r\n"),
            Expect::Refused,
        );
    }
    let mut http10 = b"POST /publish HTTP/1.0\r\nTransfer-Encoding: chunked\r\n".to_vec();
    http10.extend_from_slice(
        format!("Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n\r\n0\r\n\r\n")
            .as_bytes(),
    );
    c.add("chunked in HTTP/1.0", http10, Expect::Refused);
    // Chunked with a Content-Length too: RFC 9112 lets chunked win (and the connection close).
    let body = format!("{:x}\r\n{event}\r\n0\r\n\r\n", ev.len());
    c.add(
        "chunked plus Content-Length",
        publish_raw(&[te, "Content-Length: 3"], body.as_bytes()),
        Expect::NoServerError,
    );
    let mut big = Vec::with_capacity(2 << 20);
    for _ in 0..64 {
        big.extend_from_slice(b"8000\r\n");
        big.extend(std::iter::repeat_n(b' ', 0x8000));
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b"0\r\n\r\n");
    c.add(
        "2 MiB chunked body",
        publish_raw(&[te], &big),
        Expect::Refused,
    );
    c.add(
        "body of max_body_bytes + 1",
        publish_json(vec![b' '; (1 << 20) + 1]),
        Expect::Refused,
    );
}

fn bodies(c: &mut Corpus) {
    let deep = |n: usize| "[".repeat(n) + &"]".repeat(n);
    c.add(
        "10,000 nested arrays",
        publish_json(deep(10_000)),
        Expect::Refused,
    );
    c.add(
        "10,000 nested objects",
        publish_json(r#"{"a":"#.repeat(10_000) + "1" + &"}".repeat(10_000)),
        Expect::Refused,
    );
    c.add(
        "10,000 unclosed arrays",
        publish_json("[".repeat(10_000)),
        Expect::Refused,
    );
    c.add(
        "deep nesting inside data",
        publish_json(format!(
            r#"{{"channel":"{VICTIM}","data":{}}}"#,
            deep(10_000)
        )),
        Expect::Refused,
    );
    let one = json!({"channel": VICTIM, "data": "batch"});
    c.add(
        "batch of 1001 events",
        publish_json(Value::Array(vec![one.clone(); 1001]).to_string()),
        Expect::Refused,
    );
    let tiny = r#"{"channel":"a","data":""},"#.repeat(35_000);
    c.add(
        "batch of 35,000 tiny events",
        publish_json(format!("[{}]", tiny.trim_end_matches(','))),
        Expect::Refused,
    );
    c.add(
        "batch of 10,000 nulls",
        publish_json(format!("[{}null]", "null,".repeat(9_999))),
        Expect::Refused,
    );
    c.add(
        "batch with one bad event",
        publish_json(json!([one, {"channel": VICTIM, "event": "a\nb", "data": "x"}]).to_string()),
        Expect::Refused,
    );
    c.add(
        "data of 65,537 bytes",
        publish_json(json!({"channel": VICTIM, "data": "d".repeat(65_537)}).to_string()),
        Expect::Refused,
    );
    let refused_json = [
        r#"{"channel":"victim","data":"x","retry":1e999}"#,
        r#"{"channel":"victim","data":"x","retry":-1}"#,
        r#"{"channel":"victim","data":"x","retry":1.5}"#,
        r#"{"channel":"victim","data":"x","retry":1e3}"#,
        r#"{"channel":"victim","data":"x","retry":"5"}"#,
        r#"{"channel":"victim","data":"x","retry":4294967296}"#,
        r#"{"channel":"victim","data":"x","retry":18446744073709551616}"#,
        r#"{"channel":"victim","data":"x","retry":[]}"#,
        r#"{"channel":1e999,"data":"x"}"#,
        r#"{"channel":null,"data":"x"}"#,
        r#"{"channel":["victim"],"data":"x"}"#,
        r#"{"channel":{"victim":1},"data":"x"}"#,
        r#"{"channel":"victim","event":123,"data":"x"}"#,
        r#"{"channel":"victim","event":["a"],"data":"x"}"#,
        r#"{"channel":"victim","data":"x","id":"666"}"#,
        r#"{"channel":"victim","data":"\u0000"}"#,
        r#"{"channel":"victim","event":"a\u0000","data":"x"}"#,
        r#"{"channel":"victim","data":"\ud800"}"#,
        r#"{"channel":"victim","data":"x"} trailing"#,
        r#"{"channel":"victim","data":"x"}{"channel":"victim","data":"y"}"#,
        r#"{"channel":"victim","data":"x""#,
        r#"{"channel":"victim",,"data":"x"}"#,
        r#"{'channel':'victim','data':'x'}"#,
        r#"{"channel":"victim","data":NaN}"#,
        r#"{"channel":"victim","data":Infinity}"#,
        "null",
        "[]",
        "{}",
        "\"victim\"",
        "",
        " ",
        "[null]",
        "[[]]",
    ];
    for body in refused_json {
        c.add(
            format!("json {body:.40}"),
            publish_json(body),
            Expect::Refused,
        );
    }
    let event_type_65 =
        json!({"channel": VICTIM, "event": "e".repeat(65), "data": "x"}).to_string();
    c.add(
        "event type of 65 bytes",
        publish_json(event_type_65),
        Expect::Refused,
    );
    let raw_bytes: &[(&str, &[u8])] = &[
        (
            "invalid UTF-8 in JSON",
            b"{\"channel\":\"victim\",\"data\":\"\xff\xfe\"}",
        ),
        (
            "overlong UTF-8 in JSON",
            b"{\"channel\":\"victim\",\"data\":\"\xc0\x80\"}",
        ),
        (
            "UTF-8 BOM before JSON",
            b"\xef\xbb\xbf{\"channel\":\"victim\",\"data\":\"x\"}",
        ),
        ("UTF-16LE JSON", b"\xff\xfe{\0\"\0c\0\"\0:\0\"\0v\0\"\0}\0"),
        (
            "NULs around JSON",
            b"\0{\"channel\":\"victim\",\"data\":\"x\"}\0",
        ),
        (
            "NUL inside a JSON key",
            b"{\"chan\0nel\":\"victim\",\"data\":\"x\"}",
        ),
    ];
    for (name, body) in raw_bytes {
        c.add(*name, publish_json(body), Expect::Refused);
    }
    // Duplicate keys: see json_duplicate_keys_are_refused; here they must not break anything.
    for body in [
        r#"{"channel":"dupa","channel":"dupb","data":"x"}"#,
        r#"{"channel":"dupa","data":"x","data":"y"}"#,
        r#"{"channel":"dupa","event":"a","event":"b\n","data":"x"}"#,
    ] {
        c.add(
            format!("duplicate keys {body}"),
            publish_json(body),
            Expect::NoServerError,
        );
    }
    let event = json!({"channel": VICTIM, "data": "ct"}).to_string();
    for ct in [
        "text/plain",
        "application/jsonx",
        "application/json-patch+json",
        "multipart/form-data; boundary=x",
        "text/event-stream",
        "*/*",
        "",
    ] {
        c.add(
            format!("Content-Type {ct:?}"),
            publish(ct, &event),
            Expect::Refused,
        );
    }
    c.add(
        "no Content-Type",
        head(
            b"POST /publish HTTP/1.1",
            &[auth(), h(format!("Content-Length: {}", event.len()))],
            event.as_bytes(),
        ),
        Expect::Refused,
    );
    c.add(
        "NUL in Content-Type",
        publish("application/json\0", &event),
        Expect::Refused,
    );
    c.add("JSON sent as a form", publish_form(&event), Expect::Refused);
    c.add(
        "form sent as JSON",
        publish_json(format!("channel={VICTIM}&data=x")),
        Expect::Refused,
    );
    c.add(
        "UTF-16 JSON with a charset",
        publish("application/json; charset=utf-16", b"\xff\xfe{\0}\0"),
        Expect::Refused,
    );
    for body in [
        "channel=victim&data=x&retry=1e999",
        "channel=victim&data=x&retry=-1",
        "channel=victim&data=x&retry=99999999999999999999",
        "channel=victim&channel=victim&data=x",
        "channel=victim&data=x&id=666",
        "channel=victim&data=%00",
        "channel=%FF&data=x",
        "channel=victim",
        "data=x",
        "",
        "&&&&",
        "=",
    ] {
        c.add(format!("form {body}"), publish_form(body), Expect::Refused);
    }
    c.add(
        "form with invalid UTF-8 data",
        publish_form("channel=lossy&data=%FF%FE"),
        Expect::NoServerError,
    );
}

fn credentials(c: &mut Corpus) {
    let event = json!({"channel": VICTIM, "data": "unauthorised"}).to_string();
    let with = |authz: &[u8]| {
        head(
            b"POST /publish HTTP/1.1",
            &[
                authz.to_vec(),
                h("Content-Type: application/json"),
                h(format!("Content-Length: {}", event.len())),
            ],
            event.as_bytes(),
        )
    };
    let cases: &[(&str, Vec<u8>)] = &[
        ("no credentials", with(b"X-No-Auth: 1")),
        ("Bearer without a token", with(b"Authorization: Bearer")),
        ("key with a suffix", with(h(format!("Authorization: Bearer {KEY}x")).as_slice())),
        ("key prefix", with(h(format!("Authorization: Bearer {}", &KEY[..8])).as_slice())),
        ("percent-encoded NUL after the key", with(h(format!("Authorization: Bearer {KEY}%00")).as_slice())),
        ("raw NUL after the key", with([h(format!("Authorization: Bearer {KEY}")), b"\0".to_vec()].concat().as_slice())),
        ("wrong key first", [with(b"Authorization: Bearer pk-wrong-0123456789abcdef")].concat()),
        ("alg none token", with(b"Authorization: Bearer eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTksImhlcmFsZCI6eyJwdWJsaXNoIjpbIioiXX19.")),
        ("garbage JWT", with(b"Authorization: Bearer a.b.c")),
    ];
    for (name, bytes) in cases {
        c.add(
            format!("publish with {name}"),
            bytes.clone(),
            Expect::Refused,
        );
    }
    // The auth scheme is case-insensitive (RFC 9110 section 11.1).
    c.accepted(
        "publish with lower-case scheme",
        with(h(format!("Authorization: bearer {KEY}")).as_slice()),
        "message",
        "unauthorised",
    );
    c.add(
        "tickets without a token",
        head(b"POST /tickets HTTP/1.1", &[h("Content-Length: 0")], b""),
        Expect::Refused,
    );
    c.add(
        "tickets with a publish key",
        head(
            b"POST /tickets HTTP/1.1",
            &[auth(), h("Content-Length: 0")],
            b"",
        ),
        Expect::Refused,
    );
    c.add(
        "tickets with a garbage body",
        head(
            b"POST /tickets HTTP/1.1",
            &[h("Content-Length: 3")],
            b"\0\0\0",
        ),
        Expect::Refused,
    );
}

fn pipelined(c: &mut Corpus) {
    let valid = || publish_json(json!({"channel": "pipe", "data": "ok"}).to_string());
    let garbage: &[(&str, &[u8])] = &[
        ("NULs", b"\0\0\0\0\r\n\r\n"),
        ("a bad request line", b"GARBAGE\r\n\r\n"),
        ("a bad version", b"GET / HTTP/9.9\r\n\r\n"),
        (
            "a bad Content-Length",
            b"POST /publish HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        ),
        (
            "a header injection",
            b"GET /events?channel=a HTTP/1.1\r\nX: a\rb\r\n\r\n",
        ),
        (
            "binary",
            b"\x16\x03\x01\x00\xff\xfe\xfd\x00\x01\x02\r\n\r\n",
        ),
    ];
    for (name, tail) in garbage {
        let mut bytes = valid();
        bytes.extend_from_slice(tail);
        c.add(
            format!("valid publish then {name}"),
            bytes,
            Expect::ValidThenRefused,
        );
    }
}

/// Deterministic mutations of valid requests: flipped, inserted and deleted bytes,
/// truncations, duplicated lines.
fn mutations(c: &mut Corpus, n: usize) {
    let bases = [
        publish_json(json!({"channel": "fuzz", "event": "f", "data": "fuzz data"}).to_string()),
        publish_form("channel=fuzz&event=f&data=fuzz+data"),
        get("/events?channel=fuzz&lastEventId=3"),
        head(
            b"POST /tickets HTTP/1.1",
            &[h("Authorization: Bearer a.b.c"), h("Content-Length: 0")],
            b"",
        ),
    ];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = move |below: usize| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % below.max(1)
    };
    let nasty = [
        b'\r', b'\n', 0, b' ', b':', 0xff, 0x80, b'%', b'"', b'\\', b'{', b'[',
    ];
    for i in 0..n {
        let mut bytes = bases[i % bases.len()].clone();
        let mut what = Vec::new();
        for _ in 0..1 + rand(4) {
            let at = rand(bytes.len());
            match rand(6) {
                0 => {
                    bytes[at] = nasty[rand(nasty.len())];
                    what.push(format!("set@{at}"));
                }
                1 => {
                    bytes.insert(at, nasty[rand(nasty.len())]);
                    what.push(format!("ins@{at}"));
                }
                2 => {
                    bytes.remove(at);
                    what.push(format!("del@{at}"));
                }
                3 => {
                    bytes[at] = rand(256) as u8;
                    what.push(format!("rnd@{at}"));
                }
                4 => {
                    let line_end = bytes[at..]
                        .windows(2)
                        .position(|w| w == b"\r\n")
                        .map_or(bytes.len(), |p| at + p + 2);
                    let line_start = bytes[..at]
                        .windows(2)
                        .rposition(|w| w == b"\r\n")
                        .map_or(0, |p| p + 2);
                    let line = bytes[line_start..line_end].to_vec();
                    bytes.splice(line_start..line_start, line);
                    what.push(format!("dup-line@{line_start}"));
                }
                _ => {
                    bytes.truncate(at);
                    what.push(format!("cut@{at}"));
                }
            }
        }
        c.add(
            format!("mutation {i}: {}", what.join(",")),
            bytes,
            Expect::NoServerError,
        );
        // Half-closed: a mutation that shortens a body would otherwise be a stalled body,
        // which stalled_bodies_are_cut_off covers on its own.
        c.0.last_mut().unwrap().half_close = true;
    }
}

fn corpus() -> Vec<Case> {
    let mut c = Corpus(Vec::new());
    request_lines(&mut c);
    subscribe_queries(&mut c);
    headers(&mut c);
    lengths_and_chunking(&mut c);
    bodies(&mut c);
    credentials(&mut c);
    pipelined(&mut c);
    per_character(&mut c);
    mutations(&mut c, 120);
    c.0
}

// ---------------------------------------------------------------------------------------
// Running cases.

/// Status codes of the response heads in `buf` (up to `max`), and whether the reader may
/// stop: `max` heads seen, or an event stream started (it never ends by itself).
fn response_statuses(buf: &[u8], max: usize) -> (Vec<u16>, bool) {
    let mut statuses = Vec::new();
    let mut pos = 0;
    while statuses.len() < max {
        let Some(end) = buf[pos..].windows(4).position(|w| w == b"\r\n\r\n") else {
            return (statuses, false);
        };
        let text = String::from_utf8_lossy(&buf[pos..pos + end]).to_ascii_lowercase();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // 1xx (100 Continue) is not the answer.
        if (100..200).contains(&status) {
            pos += end + 4;
            continue;
        }
        statuses.push(status);
        if text.contains("content-type: text/event-stream") {
            return (statuses, true);
        }
        let length: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        pos += end + 4 + length;
        if pos > buf.len() {
            return (statuses.clone(), statuses.len() >= max);
        }
    }
    (statuses, true)
}

async fn run_case(addr: SocketAddr, case: &Case) -> Outcome {
    let start = Instant::now();
    let max = if case.expect == Expect::ValidThenRefused {
        2
    } else {
        1
    };
    let exchange = async {
        let Ok(stream) = TcpStream::connect(addr).await else {
            return (Vec::new(), End::Reset);
        };
        let (mut rd, mut wr) = stream.into_split();
        let write = async {
            // The server may answer and close before taking everything: not an error.
            let _ = wr.write_all(&case.bytes).await;
            if case.half_close {
                let _ = wr.shutdown().await;
            }
            // Keep the write half (dropping it would half-close) until reading is done.
            std::future::pending::<()>().await
        };
        let read = async {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match rd.read(&mut chunk).await {
                    Ok(0) => return (response_statuses(&buf, max).0, End::Closed),
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        let (statuses, done) = response_statuses(&buf, max);
                        if done {
                            return (statuses, End::Answered);
                        }
                    }
                    Err(_) => return (response_statuses(&buf, max).0, End::Reset),
                }
            }
        };
        tokio::select! {
            out = read => out,
            _ = write => unreachable!(),
        }
    };
    let (statuses, end) = tokio::time::timeout(CASE_DEADLINE, exchange)
        .await
        .unwrap_or((Vec::new(), End::Hung));
    Outcome {
        statuses,
        end,
        elapsed: start.elapsed(),
    }
}

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn publish_markers(herald: &HeraldProcess, n: usize, tag: &str) -> Vec<u64> {
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let req = client
            .post(herald.url("/publish"))
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(
                json!({"channel": VICTIM, "event": "marker", "data": format!("{tag}-{i}")})
                    .to_string(),
            );
        let (status, answer) = send_json(req).await;
        assert_eq!(status, 200, "marker publish: {answer}");
        ids.push(id_of(&answer));
    }
    ids
}

/// Every event carries a decimal ID above the previous one.
#[track_caller]
fn assert_ids_increase(events: &[Parsed]) {
    let mut last = 0u64;
    for e in events {
        let id: u64 = e
            .last_event_id
            .parse()
            .unwrap_or_else(|_| panic!("non-numeric id in {e:?}"));
        assert!(id > last, "ids increase: {e:?} after {last}");
        last = id;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_leaves_the_broker_healthy() {
    let herald = HeraldProcess::spawn(&broker_toml(), &[]);
    let pid = herald.child.id();
    let mut watcher = SseClient::connect(&herald.url(&format!("/events?channel={VICTIM}"))).await;
    assert_eq!(watcher.status, 200);
    watcher.expect_preamble().await;
    let rss_before = rss_kib(pid);

    let cases = Arc::new(corpus());
    assert!(cases.len() >= 150, "corpus of {}", cases.len());
    let started = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..cases.len() {
        let (cases, limit, addr) = (cases.clone(), limit.clone(), herald.public);
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            run_case(addr, &cases[i]).await
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let corpus_time = started.elapsed();

    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_expect: BTreeMap<String, usize> = BTreeMap::new();
    let mut violations = Vec::new();
    let mut slowest = (Duration::ZERO, String::new());
    let verbose = std::env::var_os("HOSTILE_VERBOSE").is_some();
    for (case, outcome) in cases.iter().zip(&outcomes) {
        if verbose {
            println!("{:>7} {:?} {:?}", outcome.label(), case.expect, case.name);
        }
        *by_status.entry(outcome.label()).or_default() += 1;
        *by_expect.entry(format!("{:?}", case.expect)).or_default() += 1;
        if outcome.elapsed > slowest.0 {
            slowest = (outcome.elapsed, case.name.clone());
        }
        if let Some(v) = outcome.violation(case.expect) {
            violations.push(format!("{} (expected {:?}): {v}", case.name, case.expect));
        }
    }
    println!(
        "hostile corpus: {} requests in {corpus_time:.2?}; by expectation {by_expect:?}",
        cases.len()
    );
    println!("outcomes by first status: {by_status:?}");
    println!("slowest case: {:?} ({:.2?})", slowest.1, slowest.0);
    assert!(
        violations.is_empty(),
        "{} cases broke the rules:\n{}",
        violations.len(),
        violations.join("\n")
    );

    // Still alive, and memory did not balloon.
    let mut herald = herald;
    assert!(
        herald.child.try_wait().unwrap().is_none(),
        "herald died: {}",
        herald.stderr_text()
    );
    let rss_after = rss_kib(pid);
    println!("RSS before {rss_before} KiB, after {rss_after} KiB");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let (status, _) = get_text(&herald.admin_url("/healthz")).await;
    assert_eq!(status, 200);
    // tokio catches a panicking connection task and the process lives on: look for it.
    let stderr = herald.stderr_text();
    assert!(!stderr.contains("panicked"), "a task panicked:\n{stderr}");

    // The watcher saw exactly the accepted publishes (in some order), then the markers.
    let mut expected: Vec<(String, String)> =
        cases.iter().filter_map(|c| c.publishes.clone()).collect();
    let new_subscriber =
        SseClient::connect(&herald.url(&format!("/events?channel={VICTIM}"))).await;
    let mut fresh = new_subscriber;
    fresh.expect_preamble().await;
    const N: usize = 50;
    let markers = publish_markers(&herald, N, "after").await;
    let seen = watcher
        .events(expected.len() + N, Duration::from_secs(10))
        .await;
    assert_ids_increase(&seen);
    let (corpus_events, marker_events) = seen.split_at(expected.len());
    let mut got: Vec<(String, String)> = corpus_events
        .iter()
        .map(|e| (e.event_type.clone(), e.data.clone()))
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(
        got, expected,
        "the watcher saw exactly the accepted publishes"
    );
    assert_markers(marker_events, &markers);
    // A subscriber that arrived after the corpus sees the markers and nothing else.
    let fresh_events = fresh.events(N, WAIT).await;
    assert_ids_increase(&fresh_events);
    assert_markers(&fresh_events, &markers);
    println!(
        "after the corpus: {} accepted hostile-looking events and {N} markers arrived intact",
        expected.len()
    );
    assert!(
        herald.child.try_wait().unwrap().is_none(),
        "herald still alive"
    );
    herald.terminate();
    assert!(herald
        .wait_exit_async(Duration::from_secs(10))
        .await
        .is_some());
    // The check above read the log of a live process, which the reader thread may not
    // have caught up with: check again once stderr is read to its end.
    assert!(herald.wait_stderr_closed(WAIT).await, "stderr never closed");
    let stderr = herald.stderr_text();
    assert!(!stderr.contains("panicked"), "a task panicked:\n{stderr}");
}

/// A resume ID full of line breaks comes back only inside the reset event's JSON data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_id_injection_stays_inside_json() {
    let server = TestServer::start(quick_config()).await;
    let evil = "1\r\nevent: evil\r\nid: 666\r\n\r\ndata: injected";
    let by_query = server.url(&format!("/events?channel=a&lastEventId={}", pct(evil)));
    let by_header_value = "1%0d%0aevent:%20evil";
    for (by_header, sent) in [(false, evil), (true, by_header_value)] {
        let mut s = if by_header {
            SseClient::resume(&server.url("/events?channel=a"), by_header_value).await
        } else {
            SseClient::connect(&by_query).await
        };
        assert_eq!(s.status, 200);
        s.expect_preamble().await;
        let e = s.next_event(WAIT).await;
        assert_eq!(e.event_type, "reset", "{e:?}");
        assert!(e.last_event_id.parse::<u64>().is_ok(), "{e:?}");
        let data: Value = serde_json::from_str(&e.data).expect("reset data is JSON");
        assert_eq!(data["last_event_id"], sent);
        let id = publish_data(
            &reqwest::Client::new(),
            &server.url("/publish"),
            "a",
            "next",
        )
        .await;
        let next = s.next_event(WAIT).await;
        assert_eq!(
            (
                next.event_type.as_str(),
                next.data.as_str(),
                next.last_event_id
            ),
            ("message", "next", id.to_string())
        );
        assert!(!String::from_utf8_lossy(&s.raw).contains("\nevent: evil"));
    }
    server.stop().await;
}

/// JSON with a repeated key is ambiguous (parsers disagree on which value wins; a proxy or
/// a WAF may read the other one). Form bodies refuse repeated fields; JSON must too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_duplicate_keys_are_refused() {
    let server = TestServer::start(quick_config()).await;
    let client = reqwest::Client::new();
    for body in [
        r#"{"channel":"a","channel":"b","data":"x"}"#,
        r#"{"channel":"a","data":"x","data":"y"}"#,
        r#"{"channel":"a","event":"e","event":"f","data":"x"}"#,
        r#"[{"channel":"a","data":"x","retry":1,"retry":2}]"#,
    ] {
        let (status, answer) = post(
            &client,
            &server.url("/publish"),
            Some("application/json"),
            body,
        )
        .await;
        assert_eq!(status, 400, "{body} answered {status} {answer}");
    }
    server.stop().await;
}

/// Each event is marker `after-i` with the ID its publish answered.
fn assert_markers(events: &[Parsed], ids: &[u64]) {
    assert_eq!(events.len(), ids.len());
    for (i, (e, id)) in events.iter().zip(ids).enumerate() {
        assert_eq!(
            (
                e.event_type.as_str(),
                e.data.as_str(),
                e.last_event_id.as_str()
            ),
            (
                "marker",
                format!("after-{i}").as_str(),
                id.to_string().as_str()
            )
        );
    }
}

/// A client that sends part of a body and stalls must not hold its connection forever:
/// it is cut off within a bounded time, as a stalled request head is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_are_cut_off() {
    let herald = HeraldProcess::spawn(&broker_toml(), &[]);
    let stalled = publish_raw(&["Content-Length: 100"], b"{\"channel\"");
    let chunked_stall = publish_raw(&["Transfer-Encoding: chunked"], b"10\r\n{\"chan");
    let head_stall = b"POST /publish HTTP/1.1\r\nHost: x\r\n".to_vec();
    // Twice the head's allowance, plus slack.
    let deadline = HEADER_TIMEOUT * 2 + Duration::from_secs(1);
    let attempts = [
        ("stalled head (control)", head_stall),
        ("stalled Content-Length body", stalled),
        ("stalled chunked body", chunked_stall),
    ]
    .map(|(name, bytes)| async move {
        let mut tcp = TcpStream::connect(herald.public).await.unwrap();
        tcp.write_all(&bytes).await.unwrap();
        let start = Instant::now();
        let mut buf = Vec::new();
        let ended = tokio::time::timeout(deadline, tcp.read_to_end(&mut buf)).await;
        let answer = String::from_utf8_lossy(&buf).into_owned();
        println!(
            "{name}: {} after {:.2?} {answer:.40?}",
            if ended.is_ok() {
                "closed"
            } else {
                "still open"
            },
            start.elapsed()
        );
        (name, ended.is_ok(), answer)
    });
    let mut still_open = Vec::new();
    for (name, closed, answer) in futures_util::future::join_all(attempts).await {
        if !closed {
            still_open.push(name);
        }
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{name}: {answer}"
        );
    }
    assert!(
        still_open.is_empty(),
        "connections still open {deadline:?} after the client stalled: {still_open:?}"
    );
}
