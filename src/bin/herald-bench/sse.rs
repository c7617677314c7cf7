//! The bench payload (publisher, sequence number, send time, padding) and a scanner that
//! pulls `data:` lines out of an event stream without building event objects.

/// A bench payload reads `P.SEQ.SENT_NS.` followed by `x` padding: digits, dots and
/// `x` only, so it needs no escaping in JSON and no encoding in a raw body.
pub fn encode_payload(out: &mut Vec<u8>, publisher: u32, seq: u64, sent_ns: u64, size: usize) {
    let start = out.len();
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(publisher).as_bytes());
    out.push(b'.');
    out.extend_from_slice(b.format(seq).as_bytes());
    out.push(b'.');
    out.extend_from_slice(b.format(sent_ns).as_bytes());
    out.push(b'.');
    let written = out.len() - start;
    out.resize(start + size.max(written), b'x');
}

/// What a subscriber reads back from a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

/// Parse a payload written by [`encode_payload`]; `None` for any other data.
pub fn parse_payload(data: &[u8]) -> Option<Stamp> {
    let mut fields = [0u64; 3];
    let mut i = 0;
    for field in &mut fields {
        let start = i;
        let mut v: u64 = 0;
        while i < data.len() && data[i].is_ascii_digit() {
            v = v.checked_mul(10)?.checked_add(u64::from(data[i] - b'0'))?;
            i += 1;
        }
        if i == start || data.get(i) != Some(&b'.') {
            return None;
        }
        i += 1;
        *field = v;
    }
    Some(Stamp {
        publisher: u32::try_from(fields[0]).ok()?,
        seq: fields[1],
        sent_ns: fields[2],
    })
}

/// Longest line kept across reads; a longer line is skipped, not buffered.
const MAX_LINE: usize = 1 << 20;

/// Splits an event-stream body into lines (LF or CRLF) and reports each `data:` value.
/// Other fields (`id:`, `event:`, `retry:`, comments) are skipped unread.
#[derive(Debug, Default)]
pub struct DataLines {
    /// The start of a line whose end has not been read yet.
    partial: Vec<u8>,
    /// The current line outgrew [`MAX_LINE`]: drop bytes up to its end.
    skipping: bool,
}

impl DataLines {
    pub fn feed(&mut self, mut body: &[u8], on_data: &mut impl FnMut(&[u8])) {
        while let Some(nl) = memchr::memchr(b'\n', body) {
            let (line, rest) = (&body[..nl], &body[nl + 1..]);
            body = rest;
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if self.partial.is_empty() {
                data_line(line, on_data);
            } else {
                self.partial.extend_from_slice(line);
                let whole = std::mem::take(&mut self.partial);
                data_line(&whole, on_data);
                self.partial = whole;
                self.partial.clear();
            }
        }
        if !body.is_empty() && !self.skipping {
            if self.partial.len() + body.len() > MAX_LINE {
                self.partial.clear();
                self.skipping = true;
            } else {
                self.partial.extend_from_slice(body);
            }
        }
    }
}

fn data_line(line: &[u8], on_data: &mut impl FnMut(&[u8])) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(value) = line.strip_prefix(b"data:") {
        on_data(value.strip_prefix(b" ").unwrap_or(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip_and_padding() {
        let mut out = Vec::new();
        encode_payload(&mut out, 3, 42, 1_700_000_000_123_456_789, 100);
        assert_eq!(out.len(), 100);
        assert!(out.starts_with(b"3.42.1700000000123456789.xxx"));
        assert_eq!(
            parse_payload(&out),
            Some(Stamp {
                publisher: 3,
                seq: 42,
                sent_ns: 1_700_000_000_123_456_789
            })
        );
        let mut short = Vec::new();
        encode_payload(&mut short, 0, 0, 1, 2);
        assert_eq!(short, b"0.0.1.");
        assert_eq!(parse_payload(b""), None);
        assert_eq!(parse_payload(b"hello"), None);
        assert_eq!(parse_payload(b"1.2"), None);
        assert_eq!(parse_payload(b"1.2.99999999999999999999999."), None);
    }

    #[test]
    fn data_lines_across_every_split() {
        let stream = b"retry: 3000\n: herald\n\nid: 1\ndata: one\n\nid: 2\nevent: x\ndata:two\r\n\r\n: ping\n\ndata: \n\n";
        for piece in 1..stream.len() {
            let mut scanner = DataLines::default();
            let mut seen: Vec<Vec<u8>> = Vec::new();
            for part in stream.chunks(piece) {
                scanner.feed(part, &mut |d| seen.push(d.to_vec()));
            }
            assert_eq!(
                seen,
                vec![b"one".to_vec(), b"two".to_vec(), b"".to_vec()],
                "piece {piece}"
            );
        }
    }

    #[test]
    fn overlong_lines_are_skipped() {
        let mut scanner = DataLines::default();
        let mut seen = 0;
        let big = vec![b'x'; MAX_LINE + 1];
        scanner.feed(b"data: ", &mut |_| seen += 1);
        scanner.feed(&big, &mut |_| seen += 1);
        scanner.feed(b"tail\ndata: ok\n", &mut |_| seen += 1);
        assert_eq!(seen, 1);
    }
}
