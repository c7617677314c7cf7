//! Minimal HTTP/1.1 client wire format: loopback endpoints, response heads, and an
//! incremental body decoder for chunked, content-length and close-delimited bodies.

use std::net::{Ipv4Addr, SocketAddrV4};

/// An `http://` URL on the loopback network, the only place the tool sends traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddrV4,
    /// Value of the `Host` header (`host:port` as written in the URL).
    pub host: String,
    /// Path and query, possibly holding the `{channel}` placeholder.
    pub path: String,
}

impl Endpoint {
    /// Parse `http://HOST[:PORT]/PATH`, where HOST is `localhost` or an address in
    /// 127.0.0.0/8. Anything else is refused.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url}: bad port {p:?}"))?,
            ),
            None => (authority, 80),
        };
        let ip = if host.eq_ignore_ascii_case("localhost") {
            Ipv4Addr::LOCALHOST
        } else {
            host.parse::<Ipv4Addr>()
                .map_err(|_| format!("{url}: the host must be localhost or a 127.x.x.x address"))?
        };
        if !ip.is_loopback() {
            return Err(format!(
                "{url}: refusing a target outside 127.0.0.0/8 (the tool loads this machine only)"
            ));
        }
        Ok(Self {
            addr: SocketAddrV4::new(ip, port),
            host: authority.to_string(),
            path: path.to_string(),
        })
    }

    /// The path with `{channel}` replaced.
    pub fn path_for(&self, channel: &str) -> String {
        self.path.replace("{channel}", channel)
    }
}

/// How the end of a response body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    Length(u64),
    /// The body runs until the server closes the connection.
    Close,
}

/// The parts of a response head the tool acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
    /// Bytes of the buffer taken by the head; the body starts after them.
    pub len: usize,
}

/// Largest response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// Parse a response head at the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err("response head too large".into())
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut chunked = false;
    let mut length = None;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<u64>()
                    .map_err(|_| format!("bad content-length {value:?}"))?,
            );
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    Ok(Some(Head {
        status,
        keep_alive: !close && framing != Framing::Close,
        framing,
        len,
    }))
}

/// Where a chunked body decoder stands between two reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading hex digits of a chunk size.
    Size { value: u64, digits: u8 },
    /// Skipping a chunk extension up to the end of the size line.
    Extension { value: u64 },
    /// Inside chunk data, this many bytes to go.
    Data(u64),
    /// After chunk data: expecting CR LF.
    DataEnd { seen_cr: bool },
    /// After the last chunk: trailer lines up to an empty line.
    Trailer { line_empty: bool },
}

/// Incremental response body decoder: feed raw bytes as they are read, get body bytes.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Chunked(Chunk),
    Length(u64),
    Close,
    Done,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Chunked => State::Chunked(Chunk::Size {
                value: 0,
                digits: 0,
            }),
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Close => State::Close,
        };
        Self { state }
    }

    /// The whole body has been read (never true for a close-delimited body).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode `input`, handing each run of body bytes to `sink`. Returns how many bytes
    /// of `input` belong to this response (the rest, if any, follows the body).
    pub fn feed(&mut self, input: &[u8], sink: &mut impl FnMut(&[u8])) -> Result<usize, String> {
        match &mut self.state {
            State::Done => Ok(0),
            State::Close => {
                if !input.is_empty() {
                    sink(input);
                }
                Ok(input.len())
            }
            State::Length(remaining) => {
                let take = (*remaining).min(input.len() as u64) as usize;
                if take > 0 {
                    sink(&input[..take]);
                }
                *remaining -= take as u64;
                if *remaining == 0 {
                    self.state = State::Done;
                }
                Ok(take)
            }
            State::Chunked(_) => self.feed_chunked(input, sink),
        }
    }

    fn feed_chunked(
        &mut self,
        input: &[u8],
        sink: &mut impl FnMut(&[u8]),
    ) -> Result<usize, String> {
        let mut i = 0;
        while i < input.len() {
            let State::Chunked(chunk) = self.state else {
                break;
            };
            let b = input[i];
            let next = match chunk {
                Chunk::Data(remaining) => {
                    let take = remaining.min((input.len() - i) as u64) as usize;
                    sink(&input[i..i + take]);
                    i += take;
                    let left = remaining - take as u64;
                    self.state = State::Chunked(if left == 0 {
                        Chunk::DataEnd { seen_cr: false }
                    } else {
                        Chunk::Data(left)
                    });
                    continue;
                }
                Chunk::Size { value, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits >= 15 {
                            return Err("chunk size too large".into());
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        State::Chunked(Chunk::Size {
                            value: value * 16 + d,
                            digits: digits + 1,
                        })
                    }
                    _ if digits == 0 => return Err(format!("bad chunk size byte {b:#04x}")),
                    b'\n' => size_line_done(value),
                    _ => State::Chunked(Chunk::Extension { value }),
                },
                Chunk::Extension { value } => match b {
                    b'\n' => size_line_done(value),
                    _ => self.state,
                },
                Chunk::DataEnd { seen_cr } => match b {
                    b'\r' if !seen_cr => State::Chunked(Chunk::DataEnd { seen_cr: true }),
                    b'\n' => State::Chunked(Chunk::Size {
                        value: 0,
                        digits: 0,
                    }),
                    _ => return Err("chunk data not followed by CRLF".into()),
                },
                Chunk::Trailer { line_empty } => match b {
                    b'\r' => self.state,
                    b'\n' if line_empty => State::Done,
                    b'\n' => State::Chunked(Chunk::Trailer { line_empty: true }),
                    _ => State::Chunked(Chunk::Trailer { line_empty: false }),
                },
            };
            self.state = next;
            i += 1;
        }
        Ok(i)
    }
}

fn size_line_done(value: u64) -> State {
    State::Chunked(if value == 0 {
        Chunk::Trailer { line_empty: true }
    } else {
        Chunk::Data(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(framing: Framing, wire: &[u8], piece: usize) -> (Vec<u8>, usize, bool) {
        let mut d = BodyDecoder::new(framing);
        let mut body = Vec::new();
        let mut consumed = 0;
        for part in wire.chunks(piece) {
            let n = d.feed(part, &mut |b| body.extend_from_slice(b)).unwrap();
            consumed += n;
            if n < part.len() {
                break;
            }
        }
        (body, consumed, d.is_done())
    }

    #[test]
    fn endpoints_are_loopback_only() {
        let e = Endpoint::parse("http://127.0.0.1:8080/events?channel={channel}").unwrap();
        assert_eq!(e.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(e.host, "127.0.0.1:8080");
        assert_eq!(e.path_for("bench-3"), "/events?channel=bench-3");
        assert_eq!(
            Endpoint::parse("http://localhost").unwrap().addr,
            "127.0.0.1:80".parse().unwrap()
        );
        assert!(Endpoint::parse("http://10.0.0.1:80/").is_err());
        assert!(Endpoint::parse("http://example.com/").is_err());
        assert!(Endpoint::parse("https://127.0.0.1/").is_err());
    }

    #[test]
    fn heads() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxx")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.framing, h.keep_alive, h.len),
            (200, Framing::Chunked, true, 47)
        );
        let h = parse_head(b"HTTP/1.1 503 x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.framing, h.keep_alive),
            (503, Framing::Length(5), false)
        );
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn chunked_in_every_split() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for piece in 1..wire.len() {
            let (body, consumed, done) = decode_in_pieces(Framing::Chunked, wire, piece);
            assert_eq!(body, b"hello, world", "piece {piece}");
            assert!(done);
            assert_eq!(consumed, wire.len() - 4, "piece {piece}");
        }
    }

    #[test]
    fn chunked_uppercase_hex_and_bare_lf() {
        let wire = b"A\nabcdefghij\n0\n\n";
        let (body, _, done) = decode_in_pieces(Framing::Chunked, wire, 3);
        assert_eq!(body, b"abcdefghij");
        assert!(done);
    }

    #[test]
    fn chunked_errors() {
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert!(d.feed(b"zz\r\n", &mut |_| {}).is_err());
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert!(d.feed(b"2\r\nabX", &mut |_| {}).is_err());
    }

    #[test]
    fn length_and_close() {
        let (body, consumed, done) = decode_in_pieces(Framing::Length(3), b"abcdef", 2);
        assert_eq!((body.as_slice(), consumed, done), (&b"abc"[..], 3, true));
        let (body, consumed, done) = decode_in_pieces(Framing::Close, b"abcdef", 4);
        assert_eq!(
            (body.as_slice(), consumed, done),
            (&b"abcdef"[..], 6, false)
        );
        assert!(BodyDecoder::new(Framing::Length(0)).is_done());
    }
}
