//! The lean path for event streams: a `GET /events` head read by [`super::head`] is
//! answered directly on the socket.
//!
//! Why: a stream lives for hours, and hyper keeps an 8 KiB read buffer and a write buffer
//! per connection for its whole life. Here the head buffer is freed once parsed, and a
//! stream holds only its socket, its subscription and its timers; every wake-up writes
//! whatever the subscriber has pending in one `write`.

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Request, Version};
use http_body_util::{Either, Full};
use tokio::io::AsyncWriteExt;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::stream::{Chunks, SseStream};
use super::AppState;
use crate::hub;

/// Serve one subscription on `io` and close the connection when it ends.
pub async fn serve_subscription(
    state: Arc<AppState>,
    io: TcpStream,
    req: Request<()>,
    peer: SocketAddr,
) {
    if let Some(pump) = open_subscription(state, io, req, peer).await {
        pump.await
    }
}

/// Answer a subscribe request: the stream to pump, or `None` once a complete answer (a
/// refusal) is written.
pub async fn open_subscription(
    state: Arc<AppState>,
    mut io: TcpStream,
    req: Request<()>,
    peer: SocketAddr,
) -> Option<Pump> {
    let chunked = req.version() == Version::HTTP_11;
    let write_timeout = state.settings().conn.write_timeout;
    let timeouts = state.hub.metrics().write_timeouts.clone();
    let resp = super::subscribe_response(&state, &req, peer).await;
    drop(req);
    match Answer::new(resp, chunked) {
        Answer::Stream { head, stream } => Some(Pump {
            sink: Arc::new(Sink {
                state: Mutex::default(),
                io,
                chunked,
            }),
            stream,
            head: Some(head),
            backlog: None,
            stall: None,
            write_timeout,
            timeouts,
            direct: false,
            finished: false,
        }),
        Answer::Complete { mut head, body } => {
            let Ok(collected) = http_body_util::BodyExt::collect(body).await;
            head.put_slice(&collected.to_bytes());
            let _ = write_within(&mut io, &head, write_timeout, &timeouts).await;
            None
        }
    }
}

/// The task of a connection that may become an event stream: its opening (the request
/// head, the subscribe, a refusal: boxed, and freed once done), then its [`Pump`].
///
/// Why: this is what an idle stream's task holds for hours. An `async fn` awaiting the
/// pump would keep room for every earlier await point's state too (the head read, the
/// request, the subscribe, the response head): ~1.9 KiB per task where the pump alone
/// is under 400 bytes (`tests::a_stream_task_holds_only_its_pump`).
pub struct StreamTask {
    phase: Phase,
}

// The stream is the variant that lives for hours and the opening is boxed on purpose:
// boxing the pump too would add an allocation and save nothing.
#[allow(clippy::large_enum_variant)]
enum Phase {
    Opening(Pin<Box<dyn Future<Output = Option<Pump>> + Send>>),
    Streaming(Pump),
}

impl StreamTask {
    /// `opening` reads and answers what the connection asks for, and hands back the
    /// stream to pump if it was a subscription.
    pub fn new(opening: impl Future<Output = Option<Pump>> + Send + 'static) -> Self {
        Self {
            phase: Phase::Opening(Box::pin(opening)),
        }
    }
}

impl Future for StreamTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.phase {
                Phase::Opening(opening) => match opening.as_mut().poll(cx) {
                    Poll::Ready(Some(pump)) => this.phase = Phase::Streaming(pump),
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                },
                Phase::Streaming(pump) => return Pin::new(pump).poll(cx),
            }
        }
    }
}

/// A subscribe response, taken apart: its head on the wire, and its body.
// Returned once per subscription and taken apart at once.
#[allow(clippy::large_enum_variant)]
enum Answer {
    Stream { head: Bytes, stream: SseStream },
    Complete { head: BytesMut, body: Full<Bytes> },
}

impl Answer {
    /// The head is written here, so the response's `HeaderMap` is dropped on return.
    fn new(resp: http::Response<super::response::Body>, chunked: bool) -> Self {
        let (parts, body) = resp.into_parts();
        let mut head = BytesMut::with_capacity(256);
        match body {
            Either::Left(full) => {
                let length = http_body::Body::size_hint(&full).exact();
                write_head(&mut head, &parts, length, Framing::Close);
                Answer::Complete { head, body: full }
            }
            Either::Right(stream) => {
                let framing = if chunked {
                    Framing::Chunked
                } else {
                    Framing::UntilClose
                };
                write_head(&mut head, &parts, None, framing);
                Answer::Stream {
                    head: head.freeze(),
                    stream,
                }
            }
        }
    }
}

/// How a response's body is delimited, and whether the connection stays open after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A complete body with `content-length`; the connection stays open.
    KeepAlive,
    /// A complete body with `content-length`, then the connection closes.
    Close,
    /// A stream in chunks (HTTP/1.1), then the connection closes.
    Chunked,
    /// A stream delimited by closing the connection (HTTP/1.0).
    UntilClose,
}

/// The status line and headers of `parts`, then `date`, `content-length` (for a complete
/// body of that length), the framing headers and the blank line.
pub fn write_head(
    out: &mut BytesMut,
    parts: &http::response::Parts,
    content_length: Option<u64>,
    framing: Framing,
) {
    write_status_line(out, parts.status);
    for (name, value) in &parts.headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    write_head_end(out, content_length, framing);
}

/// `HTTP/1.1 <status> <reason>`, the first line of [`write_head`].
pub fn write_status_line(out: &mut BytesMut, status: http::StatusCode) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
}

/// The end of [`write_head`], after the response's own headers: `date`, `content-length`,
/// the framing headers and the blank line.
pub fn write_head_end(out: &mut BytesMut, content_length: Option<u64>, framing: Framing) {
    out.put_slice(b"date: ");
    super::date::with_now(|date| out.put_slice(date));
    out.put_slice(b"\r\n");
    if let Some(len) = content_length {
        out.put_slice(b"content-length: ");
        out.put_slice(itoa::Buffer::new().format(len).as_bytes());
        out.put_slice(b"\r\n");
    }
    match framing {
        Framing::KeepAlive => {}
        Framing::Close | Framing::UntilClose => out.put_slice(b"connection: close\r\n"),
        // The connection closes after the stream, always: said up front, so that neither
        // a browser nor nginx's upstream keep-alive cache reuses it for the next request
        // once the last chunk arrives (it would race the close, and a POST sent on it
        // fails rather than being retried).
        Framing::Chunked => out.put_slice(b"transfer-encoding: chunked\r\nconnection: close\r\n"),
    }
    out.put_slice(b"\r\n");
}

/// Streams events until the stream ends or the client goes away. Written as a plain
/// future rather than an `async fn`: this state lives as long as the stream (hours), and
/// an `async` state machine would reserve room for every await point's locals at once.
pub struct Pump {
    sink: Arc<Sink>,
    stream: SseStream,
    /// The response head, sent with the first chunks.
    head: Option<Bytes>,
    /// Bytes the kernel has not taken yet (a full socket buffer: rare).
    backlog: Option<Bytes>,
    /// Armed while `backlog` makes no progress; allocated only then.
    stall: Option<Pin<Box<Sleep>>>,
    write_timeout: Duration,
    timeouts: prometheus::IntCounter,
    /// The stream was offered to pushes for direct writes (see [`Sink`]) when the task
    /// last went to sleep: take it back before anything else.
    direct: bool,
    /// The final chunk is written (or in `backlog`): done once the backlog drains.
    finished: bool,
}

impl Future for Pump {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.direct {
            this.take_back();
        }
        loop {
            if let Some(rest) = this.backlog.as_mut() {
                match write_some(&this.sink.io, cx, rest) {
                    Poll::Ready(Ok(())) => {
                        this.stall = None;
                        if rest.is_empty() {
                            this.backlog = None;
                        }
                        continue;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => {
                        let timeout = this.write_timeout;
                        let stall = this
                            .stall
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                        if stall.as_mut().poll(cx).is_ready() {
                            this.timeouts.inc();
                            this.stream.mark_ended("write_timeout");
                            return Poll::Ready(());
                        }
                        return Poll::Pending;
                    }
                }
            }
            if this.finished || client_gone(&this.sink.io, cx) {
                return Poll::Ready(());
            }
            let mut chunks = Vec::new();
            let gathered = gather(&mut this.stream, cx, &mut chunks);
            let more = match gathered {
                Gathered::Nothing => return this.sleep(cx),
                Gathered::Drained | Gathered::Capped => true,
                Gathered::Ended => false,
            };
            let wire = Wire::new(this.head.take(), &chunks, this.sink.chunked, !more);
            match wire.send(&this.sink.io) {
                Ok(None) => {}
                Ok(Some(rest)) => this.backlog = Some(rest),
                Err(_) => return Poll::Ready(()),
            }
            this.finished = !more;
            // Everything ready went out and the stream's last poll registered this task
            // for the next event, timer and hang-up alike: a new round now would only
            // find nothing again (the common case for every delivery).
            if gathered == Gathered::Drained && this.backlog.is_none() {
                return this.sleep(cx);
            }
        }
    }
}

impl Pump {
    /// Go to sleep with nothing unsent: offer the stream to pushes for direct writes.
    fn sleep(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.head.is_none() && self.backlog.is_none() && !self.finished {
            self.direct = self.stream.go_direct(&self.sink, cx.waker());
        }
        Poll::Pending
    }

    /// Back from direct writes: where they left the stream, and what they left unsent.
    fn take_back(&mut self) {
        self.direct = false;
        let mut s = self.sink.lock();
        s.direct = false;
        let (pos, last_write) = (s.pos, s.last_write.take());
        self.backlog = s.backlog.take();
        drop(s);
        self.stream.resume(pos, last_write);
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        // A pass that still holds the sink must not write to a stream that is over.
        let mut s = self.sink.lock();
        s.direct = false;
        s.waker = None;
    }
}

/// Write what the socket takes of `rest`, advancing it.
fn write_some(io: &TcpStream, cx: &mut Context<'_>, rest: &mut Bytes) -> Poll<io::Result<()>> {
    loop {
        match io.poll_write_ready(cx) {
            Poll::Ready(Ok(())) => match io.try_write(rest) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    rest.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            },
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// A stream's socket, shared with its channel so that a push can write the stream's next
/// events itself while the task sleeps (`hub::fanout`). The task and the pushes take
/// turns under its lock: a push writes only in direct mode, which the task enters when
/// it goes to sleep with nothing unsent and leaves first thing when it wakes.
pub struct Sink {
    state: Mutex<SinkState>,
    io: TcpStream,
    chunked: bool,
}

#[derive(Default)]
struct SinkState {
    /// Pushes may write; the task sleeps until it is handed back.
    direct: bool,
    /// Ring position of the next event to write.
    pos: u64,
    /// When the last direct write went out.
    last_write: Option<Instant>,
    /// What the kernel did not take of a direct write, for the task.
    backlog: Option<Bytes>,
    /// The task, woken when the stream is handed back.
    waker: Option<Waker>,
}

impl Sink {
    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        // Every edit is a few plain stores: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leave direct mode and wake the task, which takes over from here.
    fn hand_back(mut s: std::sync::MutexGuard<'_, SinkState>) {
        s.direct = false;
        let waker = s.waker.take();
        drop(s);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl hub::Sink for Sink {
    fn enter(&self, pos: u64, waker: &Waker) {
        let mut s = self.lock();
        s.direct = true;
        s.pos = pos;
        match &mut s.waker {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
    }

    fn offer(&self, tail: &hub::Tail, now: Instant) -> Option<hub::Written> {
        let mut s = self.lock();
        if !s.direct {
            return None;
        }
        let Some((first, events)) = tail.from(s.pos) else {
            Self::hand_back(s);
            return None;
        };
        if events.is_empty() {
            return None;
        }
        let bytes: usize = events.iter().map(Bytes::len).sum();
        if bytes > tail.max_bytes {
            Self::hand_back(s);
            return None;
        }
        let frame: fn(&[u8], &mut Vec<u8>) = if self.chunked {
            frame_chunk
        } else {
            |event, out| out.extend_from_slice(event)
        };
        let sent = match tail.framed(usize::from(self.chunked), first, frame) {
            // Straight to the socket, past tokio's readiness check: the task that gets
            // the stream back after a WouldBlock here finds the readiness stale and
            // clears it with its first try (`write_some`).
            Some(wire) => match socket2::SockRef::from(&self.io).send(wire) {
                Ok(n) if n == wire.len() => Ok(None),
                Ok(n) => Ok(Some(Bytes::copy_from_slice(&wire[n..]))),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    Ok(Some(Bytes::copy_from_slice(wire)))
                }
                Err(e) => Err(e),
            },
            // Further behind than the pass's framed events: its own slices.
            None => Wire::new(None, events, self.chunked, false).send(&self.io),
        };
        let Ok(rest) = sent else {
            // The task finds the error itself and ends the stream.
            Self::hand_back(s);
            return None;
        };
        s.pos += events.len() as u64;
        s.last_write = Some(now);
        if let Some(rest) = rest {
            s.backlog = Some(rest);
            Self::hand_back(s);
        }
        Some(hub::Written {
            first,
            events: events.len(),
            bytes,
        })
    }

    fn recall(&self) {
        let s = self.lock();
        if s.direct {
            Self::hand_back(s);
        }
    }
}

/// The client sends nothing after its request, so a readable socket means it closed (or
/// sent junk, which is discarded). Registers for read readiness when it returns false.
fn client_gone(io: &TcpStream, cx: &mut Context<'_>) -> bool {
    let mut probe = [0u8; 16];
    loop {
        match io.poll_read_ready(cx) {
            Poll::Pending => return false,
            Poll::Ready(Err(_)) => return true,
            Poll::Ready(Ok(())) => match io.try_read(&mut probe) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return true,
            },
        }
    }
}

/// What [`gather`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gathered {
    /// Nothing ready; the task is registered for what comes next.
    Nothing,
    /// Chunks, and the stream then had nothing more (the task is registered again).
    Drained,
    /// Chunks, stopped at one write's worth: more may be ready.
    Capped,
    /// The stream is over (possibly with final chunks).
    Ended,
}

/// Everything the stream has ready, up to one write's worth.
fn gather(stream: &mut SseStream, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Gathered {
    loop {
        match stream.poll_chunks(cx, out) {
            Poll::Ready(Chunks::CaughtUp) => return Gathered::Drained,
            Poll::Ready(Chunks::More) if out.len() < 256 => continue,
            Poll::Ready(Chunks::More) => return Gathered::Capped,
            Poll::Ready(Chunks::End) => return Gathered::Ended,
            Poll::Pending if out.is_empty() => return Gathered::Nothing,
            Poll::Pending => return Gathered::Drained,
        }
    }
}

/// One write: optional response head, then the chunks, framed for chunked encoding.
struct Wire<'a> {
    head: Option<Bytes>,
    size_line: ([u8; 20], usize),
    chunks: &'a [Bytes],
    chunked: bool,
    last: bool,
}

impl<'a> Wire<'a> {
    fn new(head: Option<Bytes>, chunks: &'a [Bytes], chunked: bool, last: bool) -> Self {
        let len: usize = chunks.iter().map(Bytes::len).sum();
        let mut size_line = ([0u8; 20], 0);
        if chunked && len > 0 {
            size_line.1 = chunk_size_line(len, &mut size_line.0);
        }
        Self {
            head,
            size_line,
            chunks,
            chunked,
            last,
        }
    }

    fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut slices = Vec::with_capacity(self.chunks.len() + 4);
        if let Some(head) = &self.head {
            slices.push(IoSlice::new(head));
        }
        slices.push(IoSlice::new(&self.size_line.0[..self.size_line.1]));
        slices.extend(self.chunks.iter().map(|c| IoSlice::new(c)));
        if self.chunked && self.size_line.1 > 0 {
            slices.push(IoSlice::new(b"\r\n"));
        }
        if self.chunked && self.last {
            slices.push(IoSlice::new(b"0\r\n\r\n"));
        }
        slices.retain(|s| !s.is_empty());
        slices
    }

    /// One vectored `sendmsg` (rather than writev: same bytes, fewer kernel layers, no VFS
    /// file-position lock). Returns what the kernel did not take, copied once.
    fn send(&self, io: &TcpStream) -> io::Result<Option<Bytes>> {
        let slices = self.slices();
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let send = || socket2::SockRef::from(io).send_vectored(&slices);
        let written = match io.try_io(Interest::WRITABLE, send) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if written == total {
            return Ok(None);
        }
        let mut rest = BytesMut::with_capacity(total - written);
        let mut skip = written;
        for slice in &slices {
            if skip >= slice.len() {
                skip -= slice.len();
                continue;
            }
            rest.put_slice(&slice[skip..]);
            skip = 0;
        }
        Ok(Some(rest.freeze()))
    }
}

/// `event` as one HTTP/1.1 chunk, appended to `out` (nothing for an empty one, which
/// would read as the last chunk).
fn frame_chunk(event: &[u8], out: &mut Vec<u8>) {
    if event.is_empty() {
        return;
    }
    let mut size_line = [0u8; 20];
    let n = chunk_size_line(event.len(), &mut size_line);
    out.extend_from_slice(&size_line[..n]);
    out.extend_from_slice(event);
    out.extend_from_slice(b"\r\n");
}

/// `len` in hex and CRLF, the line before a chunk, written to the front of `out`; returns
/// its length. (`write!` would do, at several times the cost, on every delivery.)
fn chunk_size_line(len: usize, out: &mut [u8; 20]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = ((usize::BITS - len.leading_zeros()).div_ceil(4)).max(1) as usize;
    for i in 0..digits {
        out[digits - 1 - i] = HEX[(len >> (4 * i)) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// Write all of `buf`, failing if the socket accepts nothing for `timeout`. The common
/// case (the kernel takes it all at once) costs one `write` and no timer.
pub async fn write_within(
    io: &mut TcpStream,
    buf: &[u8],
    timeout: Duration,
    timeouts: &prometheus::IntCounter,
) -> io::Result<()> {
    let written = match io.try_write(buf) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if written == buf.len() {
        return Ok(());
    }
    let mut rest = &buf[written..];
    while !rest.is_empty() {
        match tokio::time::timeout(timeout, io.write(rest)).await {
            Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => rest = &rest[n..],
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                timeouts.inc();
                return Err(io::ErrorKind::TimedOut.into());
            }
        }
    }
    Ok(())
}

/// The fixed answer to a head over `limits.max_header_bytes`.
pub async fn reject_too_large(mut io: TcpStream) {
    let body = br#"{"error":"header_too_large","message":"the request head exceeds limits.max_header_bytes"}"#;
    let head = format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = io.write_all(head.as_bytes()).await;
    let _ = io.write_all(body).await;
    let _ = io.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines_are_hex() {
        for len in [
            0,
            1,
            9,
            10,
            15,
            16,
            255,
            256,
            4096,
            65535,
            1 << 40,
            usize::MAX,
        ] {
            let mut out = [0u8; 20];
            let n = chunk_size_line(len, &mut out);
            assert_eq!(&out[..n], format!("{len:x}\r\n").as_bytes(), "{len}");
        }
    }

    /// A pass's sinks send from the tail's one framed buffer, which starts at the first
    /// asker's first unread event: from there on, the bytes are well-formed chunks (one
    /// per event, none empty, so none reads as the last) carrying exactly the unread
    /// events, or unchunked the events as they are; a sink further behind gets nothing
    /// (it writes its own slices).
    #[test]
    fn a_tail_framed_from_any_event_on_is_those_events() {
        let events: Vec<Bytes> = [
            b"id: 1\ndata: a\n\n".as_slice(),
            &[b'w'; 5],
            &[b'x'; 16],
            &[],
            &[b'y'; 300],
        ]
        .into_iter()
        .map(Bytes::copy_from_slice)
        .collect();
        let tail = hub::Tail::new(7, events.clone(), vec![0; events.len()], 1 << 20);
        let plain = |event: &[u8], out: &mut Vec<u8>| out.extend_from_slice(event);
        // The first askers start at event 1: event 0 is before the buffers.
        assert!(tail.framed(1, 1, frame_chunk).is_some());
        assert!(tail.framed(0, 1, plain).is_some());
        assert!(tail.framed(1, 0, frame_chunk).is_none());
        assert!(tail.framed(0, 0, plain).is_none());
        for first in 1..events.len() {
            let want = events[first..].concat();
            assert_eq!(
                tail.framed(0, first, plain).unwrap(),
                &want[..],
                "plain from {first}"
            );
            let mut wire = tail.framed(1, first, frame_chunk).unwrap();
            let mut got = Vec::new();
            while !wire.is_empty() {
                let line_end = wire
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .expect("size line");
                let len = std::str::from_utf8(&wire[..line_end]).unwrap();
                let len = usize::from_str_radix(len, 16).unwrap();
                assert!(
                    len > 0,
                    "an empty chunk from {first} would end the response"
                );
                let data = &wire[line_end + 2..];
                got.extend_from_slice(&data[..len]);
                assert_eq!(&data[len..len + 2], b"\r\n");
                wire = &data[len + 2..];
            }
            assert_eq!(got, want, "chunked from {first}");
        }
        assert!(tail.framed(1, events.len(), frame_chunk).is_none());
    }

    /// An idle stream's task is this future plus tokio's task header and trailer
    /// (~120 bytes), rounded up to 128: 512 bytes in a release build (see the README,
    /// "Where an idle stream's memory goes"). Debug builds of tokio add 8 bytes to a
    /// `TcpStream`.
    #[test]
    fn a_stream_task_holds_only_its_pump() {
        let task = std::mem::size_of::<StreamTask>();
        assert_eq!(task, std::mem::size_of::<Pump>(), "no room beyond the pump");
        let budget = if cfg!(debug_assertions) { 392 } else { 384 };
        assert!(
            task <= budget,
            "a stream task is {task} bytes (budget {budget})"
        );
    }
}
