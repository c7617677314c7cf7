//! Reading request heads on the lean path with `httparse`, and deciding who serves them:
//! event streams and plain publishes are answered here ([`super::direct`],
//! [`super::direct_publish`]); everything else goes to hyper with the bytes already read.

use std::ops::Range;
use std::time::Duration;

use http::{Method, Request, Version};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::publish::PublishHeaders;

/// What the next request head on a connection turned out to be.
pub enum Head {
    /// `GET /events...`: stream it directly.
    Subscribe(Request<()>),
    /// A `POST /publish` with a `Content-Length` body, HTTP/1.1: answer it directly. The
    /// head is the first `head.len` bytes of the buffer; the body follows.
    Publish(PublishHead),
    /// Anything else (or a head httparse cannot take): hyper serves the rest of the
    /// connection, starting with the bytes in the buffer.
    Other,
    /// The head exceeded `limits.max_header_bytes`.
    TooLarge,
    /// The client went away, or sent no complete head in time.
    Gone,
}

/// Where the parts of a publish head that matter are in the buffer (offsets, so that the
/// buffer can go on filling with the body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishHead {
    /// Bytes of the head, blank line included.
    pub len: usize,
    pub content_length: usize,
    /// `Connection: close`.
    pub close: bool,
    authorization: Option<Range<usize>>,
    content_type: Option<Range<usize>>,
    origin: Option<Range<usize>>,
}

impl PublishHead {
    /// The headers, from the buffer the head was parsed from.
    pub fn headers<'a>(&self, head: &'a [u8]) -> PublishHeaders<'a> {
        PublishHeaders {
            authorization: self.authorization.clone().map(|r| &head[r]),
            content_type: self.content_type.clone().map(|r| &head[r]),
            // Known as a number (`content_length`): the body reader checks the limit.
            content_length: None,
        }
    }

    pub fn origin<'a>(&self, head: &'a [u8]) -> Option<&'a [u8]> {
        self.origin.clone().map(|r| &head[r])
    }
}

/// Most headers a direct request may carry; more go to hyper.
const MAX_HEADERS: usize = 48;

/// Free space a read into the head buffer is given at least.
const READ_ROOM: usize = 2048;

/// Read until `buf` starts with a complete request head (it may already hold one, from
/// a pipelining client), within `timeout` and `max_bytes`.
pub async fn read(
    io: &mut TcpStream,
    buf: &mut Vec<u8>,
    max_bytes: usize,
    timeout: Duration,
) -> Head {
    if let Some(head) = parse(buf, max_bytes) {
        return head;
    }
    let read_head = async {
        loop {
            // Room for a whole typical request per read: a short buffer would split it
            // over two `recv` calls (and a third that finds nothing).
            if buf.capacity() - buf.len() < READ_ROOM {
                buf.reserve(READ_ROOM);
            }
            match io.read_buf(buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            if let Some(head) = parse(buf, max_bytes) {
                return Some(head);
            }
        }
    };
    match tokio::time::timeout(timeout, read_head).await {
        Ok(Some(head)) => head,
        // A partial head from a client that closed: hyper answers it as it sees fit.
        Ok(None) if !buf.is_empty() => Head::Other,
        Ok(None) | Err(_) => Head::Gone,
    }
}

/// The publishes that arrived complete, head and body, one after another at the start of
/// `buf` (a pipelining client's), beginning with `first`: each with its offset in `buf`.
/// Stops at `most`, at the first that is incomplete or anything but a plain publish, and
/// after one that says `Connection: close`.
pub fn complete_publishes(
    buf: &[u8],
    first: &PublishHead,
    max_bytes: usize,
    most: usize,
) -> Vec<(usize, PublishHead)> {
    let mut run = Vec::new();
    let mut at = 0;
    let mut head = first.clone();
    while run.len() < most && at + head.len + head.content_length <= buf.len() {
        let next = at + head.len + head.content_length;
        let close = head.close;
        run.push((at, head));
        if close {
            break;
        }
        at = next;
        match parse(&buf[at..], max_bytes) {
            Some(Head::Publish(h)) => head = h,
            _ => break,
        }
    }
    run
}

/// Parse what has arrived: `None` while the head is incomplete.
fn parse(buf: &[u8], max_bytes: usize) -> Option<Head> {
    if buf.is_empty() {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > max_bytes => Some(Head::TooLarge),
        Ok(httparse::Status::Complete(len)) => Some(classify(buf, &parsed, len)),
        Ok(httparse::Status::Partial) if buf.len() >= max_bytes => Some(Head::TooLarge),
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Head::Other),
    }
}

fn classify(buf: &[u8], parsed: &httparse::Request<'_, '_>, head_len: usize) -> Head {
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return Head::Other;
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    match (method, path) {
        ("GET", "/events") => to_request(parsed).map_or(Head::Other, Head::Subscribe),
        ("POST", "/publish") => {
            publish_head(buf, parsed, head_len).map_or(Head::Other, Head::Publish)
        }
        _ => Head::Other,
    }
}

/// HTTP/1.1 with exactly one numeric `Content-Length` and nothing that changes how the
/// body arrives (`Transfer-Encoding`, `Expect: 100-continue`); otherwise `None`, and
/// hyper, which knows every framing rule, takes the request.
fn publish_head(buf: &[u8], parsed: &httparse::Request<'_, '_>, len: usize) -> Option<PublishHead> {
    if parsed.version != Some(1) {
        return None;
    }
    // httparse's values are slices of `buf`.
    let range = |value: &[u8]| {
        let start = value.as_ptr() as usize - buf.as_ptr() as usize;
        Some(start..start + value.len())
    };
    let mut head = PublishHead {
        len,
        content_length: 0,
        close: false,
        authorization: None,
        content_type: None,
        origin: None,
    };
    let mut lengths = 0;
    for h in parsed.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let digits = h.value.trim_ascii();
            if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            head.content_length = std::str::from_utf8(digits).ok()?.parse().ok()?;
            lengths += 1;
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
        {
            return None;
        } else if name.eq_ignore_ascii_case("authorization") && head.authorization.is_none() {
            head.authorization = range(h.value);
        } else if name.eq_ignore_ascii_case("content-type") && head.content_type.is_none() {
            head.content_type = range(h.value);
        } else if name.eq_ignore_ascii_case("origin") && head.origin.is_none() {
            head.origin = range(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            head.close |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    (lengths == 1).then_some(head)
}

fn to_request(parsed: &httparse::Request<'_, '_>) -> Option<Request<()>> {
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(parsed.path?)
        .version(if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        });
    for h in parsed.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    // Invalid URIs or header values: hyper answers those with its own 400.
    builder.body(()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(raw: &str) -> &'static str {
        match parse(raw.as_bytes(), 16 * 1024) {
            None => "partial",
            Some(Head::Subscribe(_)) => "subscribe",
            Some(Head::Publish(_)) => "publish",
            Some(Head::Other) => "other",
            Some(Head::TooLarge) => "too large",
            Some(Head::Gone) => "gone",
        }
    }

    #[test]
    fn streams_and_plain_publishes_stay_on_the_lean_path() {
        assert_eq!(
            kind("GET /events?channel=a HTTP/1.1\r\nHost: x\r\n\r\n"),
            "subscribe"
        );
        assert_eq!(kind("GET /events HTTP/1.0\r\n\r\n"), "subscribe");
        let publish = "POST /publish HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(kind(publish), "publish");
        assert_eq!(kind("POST /publish HTTP/1.1\r\n"), "partial");
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for raw in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET /eventsx HTTP/1.1\r\n\r\n",
            "POST /events HTTP/1.1\r\n\r\n",
            "POST /tickets HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            // Bodies whose framing hyper knows best.
            "POST /publish HTTP/1.1\r\n\r\n",
            "POST /publish HTTP/1.0\r\nContent-Length: 2\r\n\r\n",
            "POST /publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /publish HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            "POST /publish HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            "POST /publish HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
            "POST /publish HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "GARBAGE\r\n\r\n",
        ] {
            assert_eq!(kind(raw), "other", "{raw:?}");
        }
    }

    #[test]
    fn a_publish_head_locates_the_headers_it_needs() {
        let raw = b"POST /publish HTTP/1.1\r\nAuthorization: Bearer k\r\nconnection: keep-alive, Close\r\ncontent-type: application/json\r\nOrigin: https://a.example\r\nContent-Length:  7 \r\n\r\n{body}";
        let Some(Head::Publish(head)) = parse(raw, 1024) else {
            panic!("not a publish");
        };
        assert_eq!(head.len, raw.len() - 6);
        assert_eq!(head.content_length, 7);
        assert!(head.close);
        let headers = head.headers(raw);
        assert_eq!(headers.authorization, Some(&b"Bearer k"[..]));
        assert_eq!(headers.content_type, Some(&b"application/json"[..]));
        assert_eq!(head.origin(raw), Some(&b"https://a.example"[..]));
        let plain = b"POST /publish?x=1 HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        let Some(Head::Publish(head)) = parse(plain, 1024) else {
            panic!("not a publish");
        };
        assert!(!head.close);
        assert_eq!(head.headers(plain).authorization, None);
        assert_eq!(head.origin(plain), None);
    }

    #[test]
    fn oversized_heads_are_refused() {
        let big = format!("GET /events HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100));
        assert!(matches!(parse(big.as_bytes(), 64), Some(Head::TooLarge)));
        assert!(matches!(
            parse(&big.as_bytes()[..80], 64),
            Some(Head::TooLarge)
        ));
    }

    #[test]
    fn a_pipelined_run_ends_at_what_is_not_a_complete_publish() {
        let publish = |body: &str, extra: &str| {
            format!(
                "POST /publish HTTP/1.1\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let run_of = |raw: &str, most: usize| {
            let Some(Head::Publish(first)) = parse(raw.as_bytes(), 1024) else {
                panic!("not a publish: {raw:?}");
            };
            complete_publishes(raw.as_bytes(), &first, 1024, most)
        };
        let (a, b, c) = (publish("aa", ""), publish("bbb", ""), publish("c", ""));
        let three = format!("{a}{b}{c}");
        let offsets: Vec<usize> = run_of(&three, 64).iter().map(|(at, _)| *at).collect();
        assert_eq!(offsets, [0, a.len(), a.len() + b.len()]);
        assert_eq!(run_of(&three, 2).len(), 2);
        // The third's body has not all arrived; a head alone does not count either.
        assert_eq!(run_of(&three[..three.len() - 1], 64).len(), 2);
        assert_eq!(run_of(&a[..a.len() - 1], 64).len(), 0);
        // Anything else ends it, and so does a `Connection: close`.
        assert_eq!(
            run_of(&format!("{a}GET /x HTTP/1.1\r\n\r\n{c}"), 64).len(),
            1
        );
        let close = publish("x", "Connection: close\r\n");
        assert_eq!(run_of(&format!("{a}{close}{c}"), 64).len(), 2);
    }
}
