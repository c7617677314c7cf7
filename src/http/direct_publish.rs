//! The lean path for publishes: a plain `POST /publish` (HTTP/1.1, one `Content-Length`)
//! read by [`super::head`] is answered on the socket without hyper, by the same
//! `publish::respond` that hyper's requests go through, and the connection stays on
//! the lean path for its next request.
//!
//! Why: publishers keep connections open and send small requests one after another, and
//! hyper's per-request machinery (dispatcher, header maps, write buffer) was an eighth of
//! the instructions herald spent on a publish (callgrind).

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::direct::{write_head_end, write_status_line, write_within, Framing};
use super::head::PublishHead;
use super::publish::{respond, BodyError};
use super::response::JsonAnswer;
use super::{cors, AppState};
use crate::auth::Listener;

/// What the connection does after a publish was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Read the next request.
    KeepAlive,
    /// The answer said `connection: close`, or the connection failed: close it.
    Close,
}

/// Answer the publish whose head is at the start of `buf`; its body follows there or on
/// the socket. `closing`: the server is draining, so this is the last request.
pub async fn serve(
    state: &AppState,
    io: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: PublishHead,
    closing: bool,
) -> After {
    let length = head.content_length;
    let end = head.len + length;
    let answer = if buf.len() >= end {
        // The body came with the head (a small publish's usual case): taken from `buf`.
        let (head_bytes, body) = buf[..end].split_at(head.len);
        respond(state, &head.headers(head_bytes), Listener::Public, |max| {
            std::future::ready(body_within(body, max))
        })
        .await
    } else {
        // The body is still on its way. `buf` keeps the head, which the headers point
        // into; the body is read into `rest`, and put back after the head once answered.
        let mut rest = buf.split_off(head.len);
        let answer = respond(state, &head.headers(buf), Listener::Public, |max| {
            read_body(io, &mut rest, length, max)
        })
        .await;
        buf.extend_from_slice(&rest);
        answer
    };
    // A body the handler did not read (refused on its headers) may still be on its way:
    // then the next request's start is unknown and the connection closes.
    let body_unread = buf.len() < end;
    let keep_alive = !body_unread && !head.close && !closing;
    let mut out = BytesMut::new();
    encode_answer(state, head.origin(buf), answer, keep_alive, &mut out);
    if write_answers(state, io, &out).await.is_err() {
        return After::Close;
    }
    if !keep_alive {
        let _ = io.shutdown().await;
        if body_unread {
            linger(io).await;
        }
        return After::Close;
    }
    // Whatever followed the body is the next request; `buf` keeps its capacity.
    buf.drain(..end);
    After::KeepAlive
}

/// Answer the publishes of `run` (from [`super::head::complete_publishes`]: at least
/// two, each complete in `buf`) together, and write their answers in one `send`.
///
/// Why: a pipelining publisher's requests arrive in one read, and answering them one
/// by one costs a `send` each and, with Redis, one script call each, since a request
/// would wait for its answer before the next one queues. Here they are handled at once:
/// `join_all` polls them in order, and each reaches the backend (the hub, or the Redis
/// publisher's FIFO queue) without waiting on anything before it, since its body is
/// already read; so they are published in the order they were sent, and the answers
/// go out in that order too.
pub async fn serve_pipelined(
    state: &AppState,
    io: &mut TcpStream,
    buf: &mut Vec<u8>,
    run: Vec<(usize, PublishHead)>,
) -> After {
    let answers = futures_util::future::join_all(run.iter().map(|(at, head)| {
        let (head_bytes, body) = buf[*at..*at + head.len + head.content_length].split_at(head.len);
        let headers = head.headers(head_bytes);
        async move {
            respond(state, &headers, Listener::Public, move |max| {
                std::future::ready(body_within(body, max))
            })
            .await
        }
    }))
    .await;
    let mut out = BytesMut::new();
    for ((at, head), answer) in run.iter().zip(answers) {
        // The run ends at a `Connection: close`, so only the last one can say it.
        encode_answer(
            state,
            head.origin(&buf[*at..]),
            answer,
            !head.close,
            &mut out,
        );
    }
    if write_answers(state, io, &out).await.is_err() {
        return After::Close;
    }
    let Some((at, last)) = run.last() else {
        return After::KeepAlive;
    };
    if last.close {
        let _ = io.shutdown().await;
        return After::Close;
    }
    buf.drain(..at + last.len + last.content_length);
    After::KeepAlive
}

async fn write_answers(state: &AppState, io: &mut TcpStream, out: &[u8]) -> std::io::Result<()> {
    let write_timeout = state.settings().conn.write_timeout;
    write_within(io, out, write_timeout, &state.hub.metrics().write_timeouts).await
}

/// Append `answer` to `out` as it goes on the wire, with the CORS headers for `origin`:
/// the same head hyper's path would send for it ([`JsonAnswer::into_response`],
/// [`cors::decorate`]), written directly.
fn encode_answer(
    state: &AppState,
    origin: Option<&[u8]>,
    answer: JsonAnswer,
    keep_alive: bool,
    out: &mut BytesMut,
) {
    let framing = if keep_alive {
        Framing::KeepAlive
    } else {
        Framing::Close
    };
    out.reserve(256 + answer.body.len());
    write_status_line(out, answer.status);
    out.put_slice(b"content-type: application/json\r\n");
    if let Some(secs) = answer.retry_after {
        out.put_slice(b"retry-after: ");
        out.put_slice(itoa::Buffer::new().format(secs).as_bytes());
        out.put_slice(b"\r\n");
    }
    cors::write_lines(state, origin, out);
    write_head_end(out, Some(answer.body.len() as u64), framing);
    out.put_slice(&answer.body);
}

/// A complete body, unless it is over `max`.
fn body_within(body: &[u8], max: usize) -> Result<Bytes, BodyError> {
    if body.len() > max {
        return Err(BodyError::TooLarge);
    }
    Ok(Bytes::copy_from_slice(body))
}

/// The first `length` bytes of `buf`, reading more from `io` as needed.
async fn read_body(
    io: &mut TcpStream,
    buf: &mut Vec<u8>,
    length: usize,
    max: usize,
) -> Result<Bytes, BodyError> {
    if length > max {
        return Err(BodyError::TooLarge);
    }
    while buf.len() < length {
        buf.reserve(length - buf.len());
        match io.read_buf(buf).await {
            Ok(0) => return Err(BodyError::Failed("the connection closed mid-body".into())),
            Ok(_) => {}
            Err(e) => return Err(BodyError::Failed(e.to_string())),
        }
    }
    Ok(Bytes::copy_from_slice(&buf[..length]))
}

/// After an answer and our shutdown, while the client may still be sending its body:
/// discard what arrives for a moment (bounded), so the kernel does not answer unread bytes
/// with a reset that could destroy the answer before the client reads it.
async fn linger(io: &mut TcpStream) {
    let discard = async {
        let mut sink = [0u8; 4096];
        let mut left: usize = 1 << 20;
        while left > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), discard).await;
}
