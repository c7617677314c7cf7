//! Helpers for the hardening tests (limits, slow consumers, connection lifecycle): raw
//! sockets with a chosen source address and receive buffer, refusal checks, Prometheus
//! samples that may be absent, and process figures read from `/proc`.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Deadline for a single answer in these tests: a refusal must never hang.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(5);

/// A second loopback address: per-IP limits treat it as another client.
pub fn other_loopback() -> IpAddr {
    "127.0.0.2".parse().unwrap()
}

/// A reqwest client whose connections leave from `local`.
pub fn client_from(local: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local)
        .build()
        .expect("client with a local address")
}

/// A refused (or any non-streaming) answer, read completely.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub body: Value,
    pub body_len: usize,
}

/// Send `req` and read the whole answer within [`ANSWER_DEADLINE`].
pub async fn answer(req: reqwest::RequestBuilder) -> Answer {
    let fut = async {
        let resp = req.send().await.expect("an answer, not a reset");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let status = resp.status().as_u16();
        let retry_after = header("retry-after");
        let content_type = header("content-type");
        let text = resp.text().await.expect("a complete body, not a reset");
        Answer {
            status,
            retry_after,
            content_type,
            body_len: text.len(),
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    };
    tokio::time::timeout(ANSWER_DEADLINE, fut)
        .await
        .expect("the refusal arrives within the deadline (no hang)")
}

/// Assert a refusal: status, `{"error": code, "message": ...}` in a short JSON body, and
/// `Retry-After` equal to `retry_after` (or absent when `None`).
pub fn assert_refusal(a: &Answer, status: u16, code: &str, retry_after: Option<&str>) {
    assert_eq!(a.status, status, "status of {a:?}");
    assert_eq!(a.body["error"], code, "error code of {a:?}");
    assert!(
        a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a message for humans in {a:?}"
    );
    assert_eq!(
        a.body.as_object().map(|o| o.len()),
        Some(2),
        "only error and message in {a:?}"
    );
    assert!(a.body_len < 512, "a short body: {a:?}");
    assert_eq!(
        a.content_type.as_deref(),
        Some("application/json"),
        "JSON content type in {a:?}"
    );
    assert_eq!(
        a.retry_after.as_deref(),
        retry_after,
        "Retry-After of {a:?}"
    );
}

/// The Prometheus text of `/metrics` at `admin`.
pub async fn metrics_text(client: &reqwest::Client, admin: SocketAddr) -> String {
    let fut = async {
        client
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body")
    };
    tokio::time::timeout(ANSWER_DEADLINE, fut)
        .await
        .expect("metrics within the deadline")
}

/// A sample written out exactly (`name` or `name{label="v"}`); 0 when absent (a labelled
/// counter has no sample until first incremented).
pub fn sample(text: &str, name: &str) -> f64 {
    crate::common::metric_value(text, name).unwrap_or(0.0)
}

/// One sample, fetched now.
pub async fn metric_now(client: &reqwest::Client, admin: SocketAddr, name: &str) -> f64 {
    sample(&metrics_text(client, admin).await, name)
}

/// Poll `name` until `pred` holds or `deadline` passes; returns the last value seen.
pub async fn wait_metric(
    client: &reqwest::Client,
    admin: SocketAddr,
    name: &str,
    deadline: Duration,
    pred: impl Fn(f64) -> bool,
) -> f64 {
    let start = Instant::now();
    loop {
        let v = metric_now(client, admin, name).await;
        if pred(v) || start.elapsed() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Client socket options for [`connect_raw_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawOptions {
    /// Source address (e.g. 127.0.0.2 to be another client for per-IP limits).
    pub local: Option<IpAddr>,
    /// `SO_RCVBUF`, set before connecting so the advertised window stays small.
    pub recv_buffer: Option<u32>,
    /// `TCP_MAXSEG` announced in the SYN. Loopback announces ~64 KiB, which makes the
    /// server's kernel size its send buffer for jumbo segments (up to `tcp_wmem` max,
    /// 4 MiB); 1460 is what a client across an Ethernet path announces.
    pub mss: Option<u32>,
}

/// The MSS of a client across a 1500-byte-MTU network path.
pub const ETHERNET_MSS: u32 = 1460;

/// Connect to `addr` from `local` (any port) with an optional small receive buffer.
pub async fn connect_raw(
    addr: SocketAddr,
    local: Option<IpAddr>,
    recv_buffer: Option<u32>,
) -> TcpStream {
    connect_raw_with(
        addr,
        RawOptions {
            local,
            recv_buffer,
            mss: None,
        },
    )
    .await
}

/// Connect to `addr` with the given client socket options.
pub async fn connect_raw_with(addr: SocketAddr, options: RawOptions) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    if let Some(size) = options.recv_buffer {
        socket
            .set_recv_buffer_size(size as usize)
            .expect("SO_RCVBUF");
    }
    if let Some(mss) = options.mss {
        socket.set_tcp_mss(mss).expect("TCP_MAXSEG");
    }
    if let Some(ip) = options.local {
        socket
            .bind(&SocketAddr::new(ip, 0).into())
            .expect("bind source");
    }
    socket.set_nonblocking(true).expect("non-blocking");
    let socket = TcpSocket::from_std_stream(socket.into());
    tokio::time::timeout(ANSWER_DEADLINE, socket.connect(addr))
        .await
        .expect("connect within the deadline")
        .expect("connect")
}

/// Write a `GET path` request head on `stream`, with extra header lines.
pub async fn send_get(stream: &mut TcpStream, path: &str, extra_headers: &str) {
    let head = format!("GET {path} HTTP/1.1\r\nHost: herald\r\n{extra_headers}\r\n");
    stream.write_all(head.as_bytes()).await.expect("write head");
}

/// Read a response head within `timeout`: the status code and everything read so far
/// (head and any body bytes that came with it). `None` on timeout or end of stream.
pub async fn read_status(stream: &mut TcpStream, timeout: Duration) -> Option<(u16, Vec<u8>)> {
    let fut = async {
        let mut buf = Vec::with_capacity(1024);
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let status = std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()?;
                return Some((status, buf));
            }
        }
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

/// Read one complete response with a `content-length` body; returns status and body.
/// Leaves the connection ready for the next request (keep-alive).
pub async fn read_response(stream: &mut TcpStream, timeout: Duration) -> Option<(u16, String)> {
    let fut = async {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status = head.get(9..12)?.parse().ok()?;
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))?
            .trim()
            .parse()
            .ok()?;
        while buf.len() < head_end + length {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some((
            status,
            String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned(),
        ))
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

/// How a connection ended when read until it closed.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// Orderly end of stream (FIN).
    Eof,
    /// The server reset it (e.g. it closed with unread data pending).
    Reset,
    /// Still open at the deadline.
    Open,
}

/// Read (and discard) until the peer closes or `timeout` passes; returns how it ended and
/// the bytes read.
pub async fn read_until_closed<R: AsyncRead + Unpin>(
    stream: &mut R,
    timeout: Duration,
) -> (Closed, Vec<u8>) {
    let mut seen = Vec::new();
    let fut = async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return Closed::Eof,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
                Err(_) => return Closed::Reset,
            }
        }
    };
    let how = tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or(Closed::Open);
    (how, seen)
}

/// Resident set size of process `pid`, in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// User plus system CPU time of process `pid`, in clock ticks (`/proc/<pid>/stat`).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let after = &stat[stat.rfind(')').expect("comm field") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after `comm` and `state`.
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn clock_ticks_per_second() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK is a number")
}

/// Kernel memory held by TCP socket buffers host-wide, in KiB (`/proc/net/sockstat`).
pub fn tcp_buffers_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").expect("sockstat");
    let pages: u64 = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1))
        .and_then(|v| v.parse().ok())
        .expect("TCP mem in sockstat");
    pages * 4
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The `p`-th percentile (0..=100) of sorted `values`, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    assert!(!sorted.is_empty());
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The value of the last `retry:` line in `raw`, if the stream ends with one followed by a
/// blank line (`retry: N\n\n`).
pub fn trailing_retry(raw: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(raw).ok()?;
    let body = text.strip_suffix("\n\n")?;
    let last = body.rsplit('\n').next()?;
    last.strip_prefix("retry: ")?.parse().ok()
}
