//! `herald-bench floor`: the least any broker can do on this machine, to show how close
//! herald is to it. Not a broker: no history, no limits, no timeouts, no HTTP beyond
//! finding the end of a request head.
//!
//! - `GET /sub?id=CH`: the response head is written, then the socket is parked in a list;
//!   nothing reads from it again.
//! - `POST /pub?id=CH` (body = the data, as Nchan takes it): the event is encoded once,
//!   then written with one `write()` per subscriber in a plain loop, before the answer.
//!
//! One thread, so the CPU per delivery it shows is one `write()` of a small event to a
//! loopback socket plus a loop step: the figure the issue calls the floor. A subscriber
//! whose socket will not take a whole event is dropped (at 2 events/s none is).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n: floor\n\n";
const PUBLISHED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";

#[derive(Default)]
struct Subscribers {
    by_channel: Mutex<HashMap<String, Vec<std::net::TcpStream>>>,
    next_id: AtomicU64,
}

impl Subscribers {
    fn add(&self, channel: String, stream: std::net::TcpStream) {
        let mut map = self.by_channel.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(channel).or_default().push(stream);
    }

    /// One `write()` per subscriber; those that did not take the whole event are dropped.
    fn fan_out(&self, channel: &str, data: &[u8]) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut event = Vec::with_capacity(data.len() + 32);
        event.extend_from_slice(b"id: ");
        event.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        event.extend_from_slice(b"\ndata: ");
        event.extend_from_slice(data);
        event.extend_from_slice(b"\n\n");
        let mut map = self.by_channel.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = map.get_mut(channel) {
            list.retain(|mut s| matches!(s.write(&event), Ok(n) if n == event.len()));
        }
    }
}

/// Serve on `listen` until the process is killed.
pub fn run(listen: SocketAddr) -> anyhow::Result<()> {
    anyhow::ensure!(
        listen.ip().is_loopback(),
        "the floor server listens on loopback only"
    );
    crate::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        eprintln!("floor server listening on {}", listener.local_addr()?);
        let subscribers = Arc::new(Subscribers::default());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, most likely: back off briefly.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(connection(stream, subscribers.clone()));
        }
    })
}

/// Requests on one connection until it closes, errs, or becomes a stream.
async fn connection(mut stream: TcpStream, subscribers: Arc<Subscribers>) {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let Some(head) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        match (head.method.as_str(), head.path.as_str()) {
            ("GET", "/sub") => {
                if stream.write_all(SSE_HEAD).await.is_err() {
                    return;
                }
                if let Ok(stream) = stream.into_std() {
                    subscribers.add(head.channel, stream);
                }
                return;
            }
            ("POST", "/pub") if head.content_length <= MAX_BODY => {
                while buf.len() < head.len + head.content_length {
                    if read_more(&mut stream, &mut buf).await.is_none() {
                        return;
                    }
                }
                subscribers.fan_out(
                    &head.channel,
                    &buf[head.len..head.len + head.content_length],
                );
                buf.drain(..head.len + head.content_length);
                if stream.write_all(PUBLISHED).await.is_err() {
                    return;
                }
            }
            _ => {
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
                return;
            }
        }
    }
}

struct Head {
    method: String,
    path: String,
    channel: String,
    content_length: usize,
    /// Bytes of the head in the buffer.
    len: usize,
}

async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Head> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(len) = req.parse(buf).ok()? {
            let target = req.path?;
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let channel = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "id")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            let content_length = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            return Some(Head {
                method: req.method?.to_string(),
                path: path.to_string(),
                channel,
                content_length,
                len,
            });
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        read_more(stream, buf).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    buf.reserve(4096);
    match stream.read_buf(buf).await {
        Ok(n) if n > 0 => Some(()),
        _ => None,
    }
}
