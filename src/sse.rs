//! The SSE wire format (WHATWG HTML, "Server-sent events"): a pure encoder from an event
//! to bytes. An event is encoded once at publish and the same `Bytes` go to every subscriber.

use bytes::{BufMut, Bytes, BytesMut};

/// One event as published. `event` and `id` must not contain CR, LF or NUL; the
/// publish path rejects such input before it gets here (see `validate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub id: Option<&'a str>,
    pub event: Option<&'a str>,
    pub data: &'a str,
    /// Reconnection time hint in milliseconds.
    pub retry: Option<u64>,
}

/// Encode `event` as one SSE message terminated by a blank line.
///
/// `data` is split on CR, LF and CRLF into one `data:` line each, so a payload can never
/// start a new field; an empty `data` still yields one `data:` line so the event dispatches.
pub fn encode(event: &Event<'_>) -> Bytes {
    let mut buf = BytesMut::with_capacity(encoded_len_hint(event));
    encode_into(event, &mut buf);
    buf.freeze()
}

/// [`encode`], appending to an existing buffer.
pub fn encode_into(event: &Event<'_>, buf: &mut BytesMut) {
    debug_assert!(event.event.is_none_or(|e| !has_line_break_or_nul(e)));
    debug_assert!(event.id.is_none_or(|i| !has_line_break_or_nul(i)));
    if let Some(kind) = event.event.filter(|e| !e.is_empty()) {
        field(buf, b"event", kind.as_bytes());
    }
    if let Some(id) = event.id {
        field(buf, b"id", id.as_bytes());
    }
    if let Some(retry) = event.retry {
        field(buf, b"retry", itoa::Buffer::new().format(retry).as_bytes());
    }
    for line in split_lines(event.data) {
        field(buf, b"data", line.as_bytes());
    }
    buf.put_u8(b'\n');
}

/// A comment line (ignored by clients, seen by proxies), closed by a blank line.
pub fn comment(text: &str) -> Bytes {
    debug_assert!(!has_line_break_or_nul(text));
    let mut buf = BytesMut::with_capacity(text.len() + 4);
    buf.put_slice(b": ");
    buf.put_slice(text.as_bytes());
    buf.put_slice(b"\n\n");
    buf.freeze()
}

/// The first bytes of every stream: the reconnection delay and a comment, so that the
/// response headers and a first chunk leave at once (nginx waits for them).
pub fn stream_preamble(retry_ms: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(32);
    field(
        &mut buf,
        b"retry",
        itoa::Buffer::new().format(retry_ms).as_bytes(),
    );
    buf.put_slice(b": herald\n\n");
    buf.freeze()
}

fn field(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    buf.put_slice(name);
    buf.put_slice(b": ");
    buf.put_slice(value);
    buf.put_u8(b'\n');
}

fn encoded_len_hint(event: &Event<'_>) -> usize {
    let lines = 1 + memchr::memchr2_iter(b'\n', b'\r', event.data.as_bytes()).count();
    event.data.len()
        + lines * 7
        + event.event.map_or(0, |e| e.len() + 8)
        + event.id.map_or(0, |i| i.len() + 5)
        + 24
}

/// Split on CRLF, CR or LF, as the spec's line parser does on the receiving side.
fn split_lines(data: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let text = rest?;
        match memchr::memchr2(b'\r', b'\n', text.as_bytes()) {
            None => {
                rest = None;
                Some(text)
            }
            Some(i) => {
                let skip = if text[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&text[i + skip..]);
                Some(&text[..i])
            }
        }
    })
}

/// True if `s` could not be carried in a single-line SSE field.
pub fn has_line_break_or_nul(s: &str) -> bool {
    s.bytes().any(|b| matches!(b, b'\r' | b'\n' | b'\0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(event: Event<'_>) -> String {
        String::from_utf8(encode(&event).to_vec()).unwrap()
    }

    fn data(d: &str) -> Event<'_> {
        Event {
            id: None,
            event: None,
            data: d,
            retry: None,
        }
    }

    #[test]
    fn plain_data() {
        assert_eq!(enc(data("hello")), "data: hello\n\n");
    }

    #[test]
    fn empty_data_still_dispatches() {
        assert_eq!(enc(data("")), "data: \n\n");
    }

    #[test]
    fn every_line_break_form_splits() {
        assert_eq!(
            enc(data("a\nb\rc\r\nd")),
            "data: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(enc(data("a\n")), "data: a\ndata: \n\n");
        assert_eq!(enc(data("\r\n\r\n")), "data: \ndata: \ndata: \n\n");
    }

    #[test]
    fn data_cannot_inject_fields() {
        assert_eq!(
            enc(data("x\nevent: evil\nid: 9")),
            "data: x\ndata: event: evil\ndata: id: 9\n\n"
        );
    }

    #[test]
    fn leading_space_in_data_is_kept() {
        assert_eq!(enc(data(" x")), "data:  x\n\n");
    }

    #[test]
    fn all_fields_in_order() {
        let e = Event {
            id: Some("42"),
            event: Some("score"),
            data: "{\"a\":1}",
            retry: Some(5000),
        };
        assert_eq!(
            enc(e),
            "event: score\nid: 42\nretry: 5000\ndata: {\"a\":1}\n\n"
        );
    }

    #[test]
    fn comment_and_preamble() {
        assert_eq!(&comment("ping")[..], b": ping\n\n");
        assert_eq!(&stream_preamble(3000)[..], b"retry: 3000\n: herald\n\n");
    }
}
