//! Keep-alive HTTP/1.1 publishers: each connection sends one request at a time, on a
//! schedule (`--rate`) or back to back (`--flood`, where `--pipeline N` sends N before
//! reading their answers), and numbers its events per channel.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::sse::encode_payload;
use crate::wire::{parse_head, BodyDecoder, Endpoint, Framing, Head};

/// How events go into a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishFormat {
    /// herald's JSON: `{"channel","data"}`, or an array of them with `--batch`.
    Herald,
    /// The body is the payload; the channel goes in the URL (`{channel}`), as Nchan wants.
    Raw,
}

/// What every publisher connection shares.
pub struct Plan {
    pub endpoint: Endpoint,
    pub format: PublishFormat,
    pub channels: usize,
    pub channel_prefix: String,
    /// Events per second over all connections; `None` floods.
    pub rate: Option<f64>,
    pub batch: usize,
    pub connections: usize,
    /// Requests sent before their answers are read (1 unless flooding).
    pub pipeline: usize,
    pub payload_bytes: usize,
    pub start: Instant,
    pub end: Instant,
}

/// Totals over all publisher connections.
#[derive(Default)]
pub struct Totals {
    /// Events in requests answered 2xx.
    pub events: Cell<u64>,
    pub requests: Cell<u64>,
    pub errors: Cell<u64>,
    pub failures: RefCell<BTreeMap<String, u64>>,
    /// Events sent per channel index and not refused: what subscribers are owed.
    pub per_channel: RefCell<Vec<u64>>,
    /// Publisher connections that have finished.
    pub finished: Cell<usize>,
}

impl Totals {
    pub fn new(channels: usize) -> Self {
        Self {
            per_channel: RefCell::new(vec![0; channels]),
            ..Self::default()
        }
    }
}

/// Pause after a failed connection before trying again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// Publish as connection `p` until the plan ends.
pub async fn publisher(p: usize, plan: Rc<Plan>, totals: Rc<Totals>) {
    let mut seqs = vec![0u64; plan.channels];
    let mut client: Option<Client> = None;
    let mut body = Vec::with_capacity(plan.batch * (plan.payload_bytes + 48) + 2);
    let mut request = Vec::with_capacity(body.capacity() + 256);
    let mut r = p as u64;
    loop {
        // A broker that answers slowly leaves a publisher behind its schedule: what it
        // could not send in the window is not sent after it.
        if Instant::now() >= plan.end {
            break;
        }
        if let Some(rate) = plan.rate {
            let due = plan.start + Duration::from_secs_f64((r * plan.batch as u64) as f64 / rate);
            if due >= plan.end {
                break;
            }
            tokio::time::sleep_until(due).await;
        }
        if client.is_none() {
            match Client::connect(&plan.endpoint).await {
                Ok(c) => client = Some(c),
                Err(reason) => {
                    fail(&totals, reason);
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    r += plan.connections as u64;
                    continue;
                }
            }
        }
        let Some(conn) = client.as_mut() else {
            continue;
        };
        // Requests r, r + connections, ...: the numbering of one request at a time.
        let round: Vec<u64> = (0..plan.pipeline as u64)
            .map(|k| r + k * plan.connections as u64)
            .collect();
        request.clear();
        for &q in &round {
            let first = q * plan.batch as u64;
            let sent_ns = crate::worker::now_ns();
            build_body(&mut body, &plan, p as u32, first, sent_ns, &mut seqs);
            let channel = format!("{}{}", plan.channel_prefix, channel_of(&plan, first, 0));
            build_request(&mut request, &plan, &channel, &body);
            // Counted as owed to subscribers from the moment it is sent, so that a
            // request still in flight when the run ends (and then published) is not an
            // "extra".
            count(&totals, &plan, first, 1);
        }
        let mut answers = Vec::with_capacity(round.len());
        match conn.send(&request).await {
            Ok(()) => {
                for _ in &round {
                    let answer = conn.read_answer().await;
                    let failed = answer.is_err();
                    answers.push(answer);
                    if failed {
                        break;
                    }
                }
            }
            Err(reason) => answers.push(Err(reason)),
        }
        let mut answers = answers.into_iter();
        for &q in &round {
            let first = q * plan.batch as u64;
            let answer = answers
                .next()
                .unwrap_or_else(|| Err("the connection failed before this answer".into()));
            let refused = match answer {
                Ok(head) if (200..300).contains(&head.status) => {
                    totals.events.set(totals.events.get() + plan.batch as u64);
                    totals.requests.set(totals.requests.get() + 1);
                    if !head.keep_alive {
                        client = None;
                    }
                    None
                }
                Ok(head) => {
                    if !head.keep_alive {
                        client = None;
                    }
                    Some(format!("status {}", head.status))
                }
                Err(reason) => {
                    client = None;
                    Some(reason)
                }
            };
            if let Some(reason) = refused {
                // Not published: give the numbers back so subscribers see no gap (one
                // request at a time; a refused request of a pipelined round leaves its
                // numbers unused, since later ones were sent with the next numbers).
                fail(&totals, reason);
                count(&totals, &plan, first, -1);
                if plan.pipeline == 1 {
                    for j in 0..plan.batch {
                        let c = channel_of(&plan, first, j);
                        seqs[c] = seqs[c].saturating_sub(1);
                    }
                }
            }
        }
        r += (plan.connections * plan.pipeline) as u64;
    }
    totals.finished.set(totals.finished.get() + 1);
}

/// The body of request `first / batch`: events `first ..` go to channels round-robin,
/// each numbered by the next sequence number of its channel.
fn build_body(body: &mut Vec<u8>, plan: &Plan, p: u32, first: u64, sent_ns: u64, seqs: &mut [u64]) {
    body.clear();
    let batched = plan.format == PublishFormat::Herald && plan.batch > 1;
    if batched {
        body.push(b'[');
    }
    for j in 0..plan.batch {
        let c = ((first + j as u64) % plan.channels as u64) as usize;
        let seq = seqs[c];
        seqs[c] += 1;
        if plan.format == PublishFormat::Raw {
            encode_payload(body, p, seq, sent_ns, plan.payload_bytes);
            continue;
        }
        if j > 0 {
            body.push(b',');
        }
        body.extend_from_slice(br#"{"channel":""#);
        body.extend_from_slice(plan.channel_prefix.as_bytes());
        body.extend_from_slice(itoa::Buffer::new().format(c).as_bytes());
        body.extend_from_slice(br#"","data":""#);
        encode_payload(body, p, seq, sent_ns, plan.payload_bytes);
        body.extend_from_slice(b"\"}");
    }
    if batched {
        body.push(b']');
    }
}

/// The channel index of event `j` of the request whose first event is number `first`:
/// events go round-robin over the channels.
fn channel_of(plan: &Plan, first: u64, j: usize) -> usize {
    ((first + j as u64) % plan.channels as u64) as usize
}

/// Add (or take back) one event per batch member to its channel's owed count.
fn count(totals: &Totals, plan: &Plan, first: u64, delta: i64) {
    let mut per_channel = totals.per_channel.borrow_mut();
    for j in 0..plan.batch {
        let c = &mut per_channel[channel_of(plan, first, j)];
        *c = c.saturating_add_signed(delta);
    }
}

fn fail(totals: &Totals, reason: String) {
    totals.errors.set(totals.errors.get() + 1);
    *totals.failures.borrow_mut().entry(reason).or_default() += 1;
}

/// Append the request for `body` to `out`.
fn build_request(out: &mut Vec<u8>, plan: &Plan, channel: &str, body: &[u8]) {
    let content_type = match plan.format {
        PublishFormat::Herald => "application/json",
        PublishFormat::Raw => "text/plain",
    };
    out.extend_from_slice(b"POST ");
    if plan.endpoint.path.contains("{channel}") {
        out.extend_from_slice(plan.endpoint.path_for(channel).as_bytes());
    } else {
        out.extend_from_slice(plan.endpoint.path.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(plan.endpoint.host.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// One keep-alive connection.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(endpoint: &Endpoint) -> Result<Self, String> {
        let stream = TcpStream::connect(endpoint.addr)
            .await
            .map_err(|e| format!("connect: {:?}", e.kind()))?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Send requests (one, or several pipelined).
    async fn send(&mut self, requests: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(requests)
            .await
            .map_err(|e| format!("write: {:?}", e.kind()))
    }

    /// Read the next whole response; what follows it (the next pipelined answer) stays
    /// in the buffer.
    async fn read_answer(&mut self) -> Result<Head, String> {
        let head = loop {
            if let Some(head) = parse_head(&self.buf)? {
                break head;
            }
            if self.read_more().await? == 0 {
                return Err("closed before the response head".into());
            }
        };
        self.buf.drain(..head.len);
        let mut decoder = BodyDecoder::new(head.framing);
        loop {
            let used = decoder.feed(&self.buf, &mut |_| {})?;
            self.buf.drain(..used);
            if decoder.is_done() {
                break;
            }
            if self.read_more().await? == 0 {
                if head.framing == Framing::Close {
                    break;
                }
                return Err("closed inside the response body".into());
            }
        }
        Ok(head)
    }

    async fn read_more(&mut self) -> Result<usize, String> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        self.stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| format!("read: {:?}", e.kind()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(format: PublishFormat, batch: usize) -> Plan {
        let now = Instant::now();
        Plan {
            endpoint: Endpoint::parse("http://127.0.0.1:9/pub?id={channel}").unwrap(),
            format,
            channels: 2,
            channel_prefix: "bench-".into(),
            rate: None,
            batch,
            connections: 1,
            pipeline: 1,
            payload_bytes: 20,
            start: now,
            end: now,
        }
    }

    #[test]
    fn herald_bodies_are_json_with_numbered_events() {
        let mut body = Vec::new();
        let mut seqs = vec![0, 0];
        build_body(
            &mut body,
            &plan(PublishFormat::Herald, 1),
            7,
            1,
            5,
            &mut seqs,
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["channel"], "bench-1");
        assert_eq!(v["data"].as_str().unwrap().len(), 20);
        assert!(v["data"].as_str().unwrap().starts_with("7.0.5."));
        build_body(
            &mut body,
            &plan(PublishFormat::Herald, 3),
            7,
            3,
            5,
            &mut seqs,
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let channels: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["channel"].as_str().unwrap())
            .collect();
        assert_eq!(channels, ["bench-1", "bench-0", "bench-1"]);
        assert!(v[2]["data"].as_str().unwrap().starts_with("7.2.5."));
        assert_eq!(seqs, [1, 3]);
        build_body(&mut body, &plan(PublishFormat::Raw, 1), 0, 0, 9, &mut seqs);
        assert!(body.starts_with(b"0.1.9.x"));
    }

    #[test]
    fn requests_carry_length_and_channel() {
        let mut out = Vec::new();
        build_request(
            &mut out,
            &plan(PublishFormat::Raw, 1),
            "bench-1",
            b"0.0.1.xx",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /pub?id=bench-1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
        assert!(
            text.ends_with("Content-Length: 8\r\n\r\n0.0.1.xx"),
            "{text}"
        );
    }
}
