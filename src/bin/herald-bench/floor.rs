//! `herald-bench floor`: the least any broker can do on this machine, to show how close
//! herald is to it. Not a broker: no history, no limits, no timeouts, no HTTP beyond
//! finding the end of a request head.
//!
//! - `GET /sub?id=CH`: the response head is written, then the socket is parked in a list;
//!   nothing reads from it again.
//! - `POST /pub?id=CH` (body = the data, as Nchan takes it): the event is encoded once and
//!   appended to the channel's pending bytes, the writer thread is woken, and the publish
//!   is answered.
//! - The writer thread, in passes: it takes every channel's pending bytes (all the events
//!   published since its last pass) and writes them with one `write()` per subscriber in
//!   a plain loop. At 2 events/s a pass carries one event; when events come faster than a
//!   pass takes (50 events/s to 10,000 streams), a pass carries all that arrived meanwhile,
//!   still in one write per subscriber.
//!
//! So the floor is one `write()` per subscriber per pass plus a loop step, and what the
//! kernel does for it on the broker's core: the send, the hop to the other side (over the
//! veth of bench/netns.sh: the packet queued on the load core's backlog, and an IPI to wake
//! that core when it sleeps) and the ACK that comes back. Writing every stream back to back
//! is also what keeps that IPI rare: the load core is still busy with the previous packets
//! when the next one is queued (one IPI per ~15-20 packets here, against one per ~3 for a
//! broker whose writes come spread out). No broker sends an event to a stream with less
//! than one send, nor sends less often than once per pass over its streams, nor closer
//! together: on this machine it is the least a broker pays, at any rate. (The first floor
//! wrote each event on its own, inside the publish: at 50 events/s that made it pay a send
//! per event per stream where herald, gathering what is queued for a stream into one
//! `sendmsg`, paid one per several, and herald measured at a fifth of it.) Two threads
//! (the accept/publish loop and the writer), both on the broker's one pinned core. A
//! subscriber whose socket will not take a whole write is dropped (at these rates none is).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n: floor\n\n";
const PUBLISHED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";

/// One channel: its parked streams and the events not yet written to them.
#[derive(Default)]
struct Channel {
    streams: Vec<std::net::TcpStream>,
    pending: Vec<u8>,
    /// Its streams are out with the writer (a pass is writing to them).
    writing: bool,
}

#[derive(Default)]
struct Subscribers {
    by_channel: Mutex<HashMap<String, Channel>>,
    /// Signalled when a channel has pending events.
    work: Condvar,
    next_id: AtomicU64,
}

impl Subscribers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        self.by_channel.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, channel: String, stream: std::net::TcpStream) {
        self.lock().entry(channel).or_default().streams.push(stream);
    }

    /// Encode the event once onto the channel's pending bytes and wake the writer (when
    /// it has nothing yet: a pass takes all that is pending). A channel without streams
    /// has nobody to write to: the event goes nowhere, as a broker without history does.
    fn publish(&self, channel: &str, data: &[u8]) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut map = self.lock();
        let Some(ch) = map
            .get_mut(channel)
            .filter(|c| c.writing || !c.streams.is_empty())
        else {
            return;
        };
        let wake = ch.pending.is_empty();
        let pending = &mut ch.pending;
        pending.extend_from_slice(b"id: ");
        pending.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        pending.extend_from_slice(b"\ndata: ");
        pending.extend_from_slice(data);
        pending.extend_from_slice(b"\n\n");
        drop(map);
        if wake {
            self.work.notify_one();
        }
    }

    /// The writer thread: pass after pass, one `write()` per subscriber of each channel
    /// with pending events; those that did not take the whole write are dropped. The
    /// streams are taken out of the map for the pass, so publishes and new subscribers
    /// wait for the lock only while the pending bytes are swapped.
    fn write_forever(&self) {
        loop {
            let mut batch: Vec<(String, Vec<std::net::TcpStream>, Vec<u8>)> = Vec::new();
            {
                let mut map = self.lock();
                while !map.values().any(|c| !c.pending.is_empty()) {
                    map = self.work.wait(map).unwrap_or_else(|e| e.into_inner());
                }
                for (name, ch) in map.iter_mut().filter(|(_, c)| !c.pending.is_empty()) {
                    ch.writing = true;
                    batch.push((
                        name.clone(),
                        std::mem::take(&mut ch.streams),
                        std::mem::take(&mut ch.pending),
                    ));
                }
            }
            for (_, streams, bytes) in &mut batch {
                streams.retain(|mut s| matches!(s.write(bytes), Ok(n) if n == bytes.len()));
            }
            let mut map = self.lock();
            for (name, streams, _) in batch {
                let ch = map.entry(name).or_default();
                ch.writing = false;
                // Streams that subscribed during the pass come after the others.
                let newer = std::mem::replace(&mut ch.streams, streams);
                ch.streams.extend(newer);
            }
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
        let writer = subscribers.clone();
        std::thread::Builder::new()
            .name("floor-writer".into())
            .spawn(move || writer.write_forever())?;
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
    let mut answers = 0;
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
                subscribers.publish(
                    &head.channel,
                    &buf[head.len..head.len + head.content_length],
                );
                buf.drain(..head.len + head.content_length);
                // A pipelining publisher's next request already here: its answer goes
                // out with this one, in one `write()`.
                answers += 1;
                if !starts_with_complete_request(&buf) {
                    let out = PUBLISHED.repeat(answers);
                    answers = 0;
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
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
            let content_length = content_length(req.headers);
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

/// `buf` starts with a whole request, head and body.
fn starts_with_complete_request(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = req.parse(buf) else {
        return false;
    };
    buf.len() >= len + content_length(req.headers)
}

fn content_length(headers: &[httparse::Header<'_>]) -> usize {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0)
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    buf.reserve(4096);
    match stream.read_buf(buf).await {
        Ok(n) if n > 0 => Some(()),
        _ => None,
    }
}
