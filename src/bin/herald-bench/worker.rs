//! A worker process: opens its share of the subscriptions (every `count`-th, from
//! `index`), reads them until told to stop, and reports frames on stdout.
//!
//! One thread, one `LocalSet`: counters are plain cells and every stream reads into the
//! same buffer, so a held stream costs a task, a socket and a few dozen bytes of state.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::sse::{parse_payload, DataLines};
use crate::stats::{histogram, to_buckets, Counters, Frame};
use crate::wire::{parse_head, BodyDecoder, Endpoint, Head};

/// What the coordinator asks of one worker (passed as JSON in `--spec`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub index: usize,
    pub count: usize,
    /// Subscriptions over all workers; this one opens ids `index, index + count, ...`.
    pub subscribers: usize,
    pub channels: usize,
    pub channel_prefix: String,
    pub subscribe_url: String,
    /// New subscriptions per second for this worker; 0 opens them all at once.
    pub connect_rate: f64,
    pub connect_timeout_ms: u64,
    pub report_ms: u64,
}

/// Publisher streams a subscriber keeps sequence numbers for (the `P` of a payload).
const MAX_PUBLISHERS: usize = 4096;
/// Shared read buffer: one read takes at most this much from a stream.
const READ_BUF: usize = 64 * 1024;
/// Source addresses 127.0.0.2 ..= 127.0.0.254, so ephemeral ports and per-IP limits are
/// spread over 253 addresses.
const SOURCE_FIRST: u32 = 2;
const SOURCE_COUNT: u32 = 253;

struct Shared {
    counters: RefCell<Counters>,
    /// Latencies since the last progress frame, microseconds.
    latency: RefCell<Histogram<u64>>,
    connect: RefCell<Histogram<u64>>,
    failures: RefCell<BTreeMap<String, u64>>,
    per_channel: RefCell<Vec<u32>>,
    read_buf: RefCell<Vec<u8>>,
    /// Subscriptions of this worker that are open or refused.
    settled: Cell<usize>,
}

impl Shared {
    fn fail(&self, reason: String) {
        self.counters.borrow_mut().failed += 1;
        *self.failures.borrow_mut().entry(reason).or_default() += 1;
        self.settled.set(self.settled.get() + 1);
    }
}

/// Run a worker until `stop` (or end of input) arrives on stdin.
pub fn run(spec: WorkerSpec) -> anyhow::Result<()> {
    crate::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(spec))
}

async fn serve(spec: WorkerSpec) -> anyhow::Result<()> {
    let endpoint = Rc::new(Endpoint::parse(&spec.subscribe_url).map_err(anyhow::Error::msg)?);
    let spec = Rc::new(spec);
    let shared = Rc::new(Shared {
        counters: RefCell::default(),
        latency: RefCell::new(histogram()),
        connect: RefCell::new(histogram()),
        failures: RefCell::default(),
        per_channel: RefCell::new(vec![0; spec.channels]),
        read_buf: RefCell::new(vec![0; READ_BUF]),
        settled: Cell::new(0),
    });
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if l.trim() == "stop" => break,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        let _ = stop_tx.send(());
    });
    let ids: Vec<usize> = (spec.index..spec.subscribers).step_by(spec.count).collect();
    let mine = ids.len();
    tokio::task::spawn_local(open_all(ids, spec.clone(), endpoint, shared.clone()));
    let mut tick = tokio::time::interval(Duration::from_millis(spec.report_ms));
    let mut ready_sent = false;
    loop {
        tokio::select! {
            _ = &mut stop_rx => break,
            _ = tick.tick() => {
                if !ready_sent && shared.settled.get() >= mine {
                    ready_sent = true;
                    emit(&Frame::Ready {
                        counters: shared.counters.borrow().clone(),
                        per_channel: shared.per_channel.borrow().clone(),
                    });
                }
                emit(&Frame::Progress {
                    counters: shared.counters.borrow().clone(),
                    latency: take_buckets(&shared.latency),
                });
            }
        }
    }
    emit(&Frame::Final {
        counters: shared.counters.borrow().clone(),
        latency: take_buckets(&shared.latency),
        connect: to_buckets(&shared.connect.borrow()),
        failures: shared.failures.borrow().clone(),
    });
    Ok(())
}

fn take_buckets(h: &RefCell<Histogram<u64>>) -> Vec<(u64, u64)> {
    let mut h = h.borrow_mut();
    let b = to_buckets(&h);
    h.reset();
    b
}

fn emit(frame: &Frame) {
    let mut out = std::io::stdout().lock();
    // The coordinator reading the other end is gone if this fails: nothing to do.
    let _ = serde_json::to_writer(&mut out, frame);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Open the subscriptions, paced at `connect_rate`.
async fn open_all(
    ids: Vec<usize>,
    spec: Rc<WorkerSpec>,
    endpoint: Rc<Endpoint>,
    shared: Rc<Shared>,
) {
    let start = Instant::now();
    for (n, id) in ids.into_iter().enumerate() {
        if spec.connect_rate > 0.0 {
            let due = start + Duration::from_secs_f64(n as f64 / spec.connect_rate);
            tokio::time::sleep_until(due).await;
        }
        tokio::task::spawn_local(subscriber(
            id,
            spec.clone(),
            endpoint.clone(),
            shared.clone(),
        ));
    }
}

async fn subscriber(id: usize, spec: Rc<WorkerSpec>, endpoint: Rc<Endpoint>, shared: Rc<Shared>) {
    let channel = id % spec.channels;
    let started = Instant::now();
    shared.counters.borrow_mut().attempted += 1;
    let timeout = Duration::from_millis(spec.connect_timeout_ms);
    let opened = tokio::time::timeout(timeout, open(id, channel, &spec, &endpoint)).await;
    let (stream, head, leftover) = match opened {
        Ok(Ok(o)) => o,
        Ok(Err(reason)) => return shared.fail(reason),
        Err(_) => return shared.fail("timeout".into()),
    };
    if !(200..300).contains(&head.status) {
        return shared.fail(format!("status {}", head.status));
    }
    shared.counters.borrow_mut().connected += 1;
    shared.per_channel.borrow_mut()[channel] += 1;
    shared.settled.set(shared.settled.get() + 1);
    let elapsed = started.elapsed().as_micros() as u64;
    shared
        .connect
        .borrow_mut()
        .saturating_record(elapsed.max(1));

    let mut stream_state = Stream {
        decoder: BodyDecoder::new(head.framing),
        lines: DataLines::default(),
        next_seq: Vec::new(),
    };
    let mut ok = stream_state.process(&leftover, now_ns(), &shared).is_ok();
    while ok {
        if stream.readable().await.is_err() {
            break;
        }
        let mut buf = shared.read_buf.borrow_mut();
        match stream.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => ok = stream_state.process(&buf[..n], now_ns(), &shared).is_ok(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
    }
    shared.counters.borrow_mut().dropped += 1;
}

/// Connect from a spread source address, send the request, read the response head.
async fn open(
    id: usize,
    channel: usize,
    spec: &WorkerSpec,
    endpoint: &Endpoint,
) -> Result<(TcpStream, Head, Vec<u8>), String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {:?}", e.kind()))?;
    let source = Ipv4Addr::from(
        u32::from(Ipv4Addr::new(127, 0, 0, 0)) + SOURCE_FIRST + (id as u32 % SOURCE_COUNT),
    );
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .map_err(|e| format!("bind: {:?}", e.kind()))?;
    let mut stream = socket
        .connect(endpoint.addr.into())
        .await
        .map_err(|e| format!("connect: {:?}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let path = endpoint.path_for(&format!("{}{channel}", spec.channel_prefix));
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\nUser-Agent: herald-bench\r\n\r\n",
        endpoint.host
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {:?}", e.kind()))?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        stream
            .readable()
            .await
            .map_err(|e| format!("read: {:?}", e.kind()))?;
        let mut chunk = [0u8; 2048];
        match stream.try_read(&mut chunk) {
            Ok(0) => return Err("closed before the response head".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(format!("read: {:?}", e.kind())),
        }
        if let Some(head) = parse_head(&buf)? {
            let leftover = buf[head.len..].to_vec();
            return Ok((stream, head, leftover));
        }
    }
}

/// Per-stream decoding state: body framing, line scanner, next sequence per publisher.
struct Stream {
    decoder: BodyDecoder,
    lines: DataLines,
    next_seq: Vec<u64>,
}

impl Stream {
    fn process(&mut self, input: &[u8], now_ns: u64, shared: &Shared) -> Result<(), String> {
        let Stream {
            decoder,
            lines,
            next_seq,
        } = self;
        let mut c = shared.counters.borrow_mut();
        let mut latency = shared.latency.borrow_mut();
        c.bytes += input.len() as u64;
        decoder.feed(input, &mut |body| {
            lines.feed(body, &mut |data| {
                let Some(stamp) =
                    parse_payload(data).filter(|s| (s.publisher as usize) < MAX_PUBLISHERS)
                else {
                    c.foreign += 1;
                    return;
                };
                c.delivered += 1;
                let p = stamp.publisher as usize;
                if p >= next_seq.len() {
                    next_seq.resize(p + 1, 0);
                }
                let expected = &mut next_seq[p];
                if stamp.seq < *expected {
                    c.duplicates += 1;
                    return;
                }
                c.gaps += stamp.seq - *expected;
                *expected = stamp.seq + 1;
                c.unique += 1;
                let micros = now_ns.saturating_sub(stamp.sent_ns) / 1000;
                latency.saturating_record(micros.max(1));
            })
        })?;
        Ok(())
    }
}

/// Wall-clock nanoseconds since the UNIX epoch (the clock publishers stamp with).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
