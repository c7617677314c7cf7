//! Slow and dead consumers, for real: clients that stop reading are cut off after
//! `limits.write_timeout`, their memory stays bounded, and healthy subscribers on the same
//! node keep receiving every event in order and on time.

mod common;
#[path = "common/hardening.rs"]
mod hardening;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hardening::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const STUCK: usize = 1000;
const HEALTHY: usize = 4;
const EVENTS: usize = 2500;
/// Publish pace: a batch of 5 events every 10 ms (500 events/s, about 0.5 MiB/s).
const BATCH: usize = 5;
const BATCH_EVERY: Duration = Duration::from_millis(10);
const EVENT_DATA_BYTES: usize = 1024;

/// The tests here measure time and memory: one at a time, so they do not skew each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const OPEN: &str = "herald_connections_open";
const WRITE_TIMEOUTS: &str = "herald_write_timeouts_total";
const LAGGED: &str = "herald_disconnects_total{reason=\"lagged\"}";

/// Event data: the sequence number first, padded to about 1 KiB.
fn event_data(seq: usize) -> String {
    let mut d = format!("{seq:06} ");
    d.push_str(&"x".repeat(EVENT_DATA_BYTES - d.len()));
    d
}

/// A client across a network path (Ethernet MSS) with a small receive buffer.
fn remote_client() -> RawOptions {
    RawOptions {
        recv_buffer: Some(4096),
        mss: Some(ETHERNET_MSS),
        ..RawOptions::default()
    }
}

/// A client that subscribes and then never reads.
async fn stuck_client(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let mut s = connect_raw_with(addr, remote_client()).await;
    send_get(&mut s, path, "").await;
    s
}

/// Open a raw subscription and read its response head.
async fn raw_subscriber(addr: std::net::SocketAddr, path: &str, options: RawOptions) -> TcpStream {
    let mut s = connect_raw_with(addr, options).await;
    send_get(&mut s, path, "").await;
    let (status, _) = read_status(&mut s, ANSWER_DEADLINE)
        .await
        .expect("response head");
    assert_eq!(status, 200);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_stuck_clients_are_cut_off_while_healthy_subscribers_keep_up() {
    let _serial = SERIAL.lock().await;
    let herald = HeraldProcess::spawn(
        r#"
[limits]
max_connections = 5000
max_connections_per_ip = 5000
write_timeout = "2s"
subscriber_queue_events = 256
subscriber_queue_bytes = 524288
[history]
max_events = 256
"#,
        &[],
    );
    let pid = herald.child.id();
    let m = reqwest::Client::new();
    let idle = rss_kib(pid);
    let tcp_idle = tcp_buffers_kib();

    // The healthy subscribers, reading as fast as events come.
    let path = "/events?channel=load";
    let mut healthy = Vec::new();
    for _ in 0..HEALTHY {
        let mut s = SseClient::connect(&herald.url(path)).await;
        assert_eq!(s.status, 200);
        s.expect_preamble().await;
        healthy.push(s);
    }
    // The stuck clients: a subscribe request, then silence.
    let mut stuck = Vec::with_capacity(STUCK);
    for _ in 0..STUCK {
        stuck.push(stuck_client(herald.public, path).await);
    }
    let total = (STUCK + HEALTHY) as f64;
    let open = wait_metric(&m, herald.admin, OPEN, Duration::from_secs(10), |v| {
        v == total
    })
    .await;
    assert_eq!(open, total, "every stream admitted");
    let connected = rss_kib(pid);

    // Sample the broker's RSS (and the host's TCP buffer memory) for the whole run.
    let peak = Arc::new(AtomicU64::new(connected));
    let tcp_peak = Arc::new(AtomicU64::new(tcp_idle));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = std::thread::spawn({
        let (peak, tcp_peak, sampling) = (peak.clone(), tcp_peak.clone(), sampling.clone());
        move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tcp_peak.fetch_max(tcp_buffers_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });

    // Healthy readers record when each event arrives, and keep their streams open.
    let readers: Vec<_> = healthy
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut arrivals = Vec::with_capacity(EVENTS);
                let mut last_id = 0u64;
                while arrivals.len() < EVENTS {
                    let (item, at) = match s.next_timed(Duration::from_secs(10)).await {
                        Some(Ok(x)) => x,
                        Some(Err(())) => panic!("healthy subscriber: no event within 10 s"),
                        None => panic!(
                            "healthy subscriber's stream ended after {} events",
                            arrivals.len()
                        ),
                    };
                    let common::sse_parser::Item::Event(e) = item else {
                        continue;
                    };
                    let seq: usize = e.data[..6].parse().expect("sequence number");
                    assert_eq!(seq, arrivals.len(), "every event, in order");
                    assert_eq!(e.data.len(), EVENT_DATA_BYTES);
                    let id: u64 = e.last_event_id.parse().expect("numeric id");
                    assert!(id > last_id, "IDs increase");
                    last_id = id;
                    arrivals.push(at);
                }
                (arrivals, s)
            })
        })
        .collect();

    // When the stuck clients are gone, measured from the start of publishing.
    let publish_start = Instant::now();
    let watcher = tokio::spawn({
        let (m, admin) = (m.clone(), herald.admin);
        async move {
            loop {
                if metric_now(&m, admin, OPEN).await == HEALTHY as f64 {
                    return Some(publish_start.elapsed());
                }
                if publish_start.elapsed() > Duration::from_secs(15) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    // Publish at a steady pace through the admin listener (no key needed there).
    let publisher = reqwest::Client::new();
    let publish_url = herald.admin_url("/publish");
    let mut sent_at = Vec::with_capacity(EVENTS);
    let mut tick = tokio::time::interval(BATCH_EVERY);
    for first in (0..EVENTS).step_by(BATCH) {
        tick.tick().await;
        let batch: Vec<_> = (first..first + BATCH)
            .map(|seq| serde_json::json!({"channel": "load", "data": event_data(seq)}))
            .collect();
        let now = Instant::now();
        sent_at.extend(std::iter::repeat_n(now, BATCH));
        let answer = publish(&publisher, &publish_url, &serde_json::Value::from(batch)).await;
        assert_eq!(answer["events"].as_array().map(Vec::len), Some(BATCH));
    }
    let publish_took = publish_start.elapsed();

    let mut latencies = Vec::with_capacity(EVENTS * HEALTHY);
    let mut still_open = Vec::new();
    for r in readers {
        let (arrivals, s) = tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .expect("healthy subscribers finish")
            .expect("healthy subscriber task");
        for (seq, at) in arrivals.iter().enumerate() {
            latencies.push(at.saturating_duration_since(sent_at[seq]));
        }
        still_open.push(s);
    }
    latencies.sort();
    let stuck_gone_after = watcher.await.unwrap();

    let text = metrics_text(&m, herald.admin).await;
    let open = sample(&text, OPEN);
    let write_timeouts = sample(&text, WRITE_TIMEOUTS);
    let lagged = sample(&text, LAGGED);
    let client_gone = sample(&text, "herald_disconnects_total{reason=\"client\"}");
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let final_rss = rss_kib(pid);
    let peak = peak.load(Ordering::Relaxed);
    let tcp_peak = tcp_peak.load(Ordering::Relaxed);
    drop(stuck);

    let mib = |kib: u64| kib as f64 / 1024.0;
    let unbounded_mib = (STUCK * EVENTS * EVENT_DATA_BYTES) as f64 / 1048576.0;
    eprintln!(
        "slow consumers: {STUCK} never-reading clients + {HEALTHY} healthy subscribers; \
         {EVENTS} events of {EVENT_DATA_BYTES} B published in {publish_took:?} \
         ({:.0} events/s)",
        EVENTS as f64 / publish_took.as_secs_f64()
    );
    eprintln!(
        "  broker RSS: idle {:.1} MiB, with {} streams {:.1} MiB, peak {:.1} MiB, \
         final {:.1} MiB (peak growth over idle {:.1} MiB; unbounded queues for the \
         stuck clients would need {unbounded_mib:.0} MiB); host TCP buffers: {:.1} MiB \
         before, peak {:.1} MiB",
        mib(idle),
        STUCK + HEALTHY,
        mib(connected),
        mib(peak),
        mib(final_rss),
        mib(peak.saturating_sub(idle)),
        mib(tcp_idle),
        mib(tcp_peak)
    );
    eprintln!(
        "  healthy publish-to-receive latency over {} deliveries: p50 {:?}, p90 {:?}, \
         p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        latencies[latencies.len() - 1]
    );
    eprintln!(
        "  stuck clients cut off: write timeouts {write_timeouts}, lagged {lagged}, \
         disconnects(client) {client_gone}; all gone {:?} after publishing began",
        stuck_gone_after
    );

    assert!(
        stuck_gone_after.is_some(),
        "every stuck client was disconnected ({open} streams still open)"
    );
    assert_eq!(open, HEALTHY as f64, "the healthy streams are still open");
    assert!(
        write_timeouts + lagged >= STUCK as f64,
        "each stuck client is ended by the write timeout or as lagging \
         (write timeouts {write_timeouts}, lagged {lagged})"
    );
    assert!(write_timeouts > 0.0, "herald_write_timeouts_total rose");
    assert_eq!(latencies.len(), EVENTS * HEALTHY);
    let p99 = percentile(&latencies, 99.0);
    assert!(p99 < Duration::from_secs(1), "p99 latency {p99:?}");
    let growth_mib = mib(peak.saturating_sub(idle));
    assert!(
        growth_mib < 200.0,
        "peak RSS growth {growth_mib:.1} MiB (bounded queues keep it far below the \
         {unbounded_mib:.0} MiB unbounded ones would need)"
    );
    drop(still_open);
}

/// Publish ~1 KiB events on `channel` every `every` until `stop` is set.
fn spawn_publisher(
    url: String,
    channel: &'static str,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut tick = tokio::time::interval(every);
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let body = serde_json::json!({"channel": channel, "data": event_data(n)});
            publish(&client, &url, &body).await;
            n += 1;
        }
        n
    })
}

/// Read `n` bytes from a stream that must keep flowing.
async fn read_some(s: &mut TcpStream, n: usize) {
    let mut got = 0;
    let mut buf = [0u8; 4096];
    while got < n {
        let k = tokio::time::timeout(ANSWER_DEADLINE, s.read(&mut buf))
            .await
            .expect("events flow")
            .expect("read");
        assert!(k > 0, "stream ended early");
        got += k;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_timeout_ends_a_stopped_reader_but_not_a_slow_one() {
    let _serial = SERIAL.lock().await;
    let mut config = quick_config();
    config.limits.write_timeout = Duration::from_secs(2);
    // Queues large enough that only the write timeout can end a stream here.
    config.limits.subscriber_queue_events = 100_000;
    config.limits.subscriber_queue_bytes = 256 << 20;
    let write_timeout = config.limits.write_timeout;
    let server = TestServer::start(config).await;
    let m = reqwest::Client::new();
    let path = "/events?channel=flow";

    let mut stopped = raw_subscriber(server.public, path, remote_client()).await;
    let mut slow = raw_subscriber(server.public, path, remote_client()).await;

    // Events flow at ~200 KiB/s; the slow reader takes 2 KiB every 40 ms (~50 KiB/s), so
    // the server's writes to it stall often, but never for long.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = spawn_publisher(
        server.url("/publish"),
        "flow",
        Duration::from_millis(5),
        stop.clone(),
    );
    let slow_read = Arc::new(AtomicU64::new(0));
    let slow_ended = Arc::new(AtomicBool::new(false));
    let slow_reader = tokio::spawn({
        let (slow_read, slow_ended, stop) = (slow_read.clone(), slow_ended.clone(), stop.clone());
        async move {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                match slow.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        slow_ended.store(true, Ordering::Relaxed);
                        return None;
                    }
                    Ok(n) => slow_read.fetch_add(n as u64, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            // Handed back open: closing it here would end its stream before the final
            // metrics are read.
            Some(slow)
        }
    });

    // The stopped reader reads the first events, then stops reading for good.
    read_some(&mut stopped, 8 * 1024).await;
    let stopped_at = Instant::now();
    let fired = wait_metric(
        &m,
        server.admin,
        WRITE_TIMEOUTS,
        Duration::from_secs(10),
        |v| v >= 1.0,
    )
    .await;
    let cut_after = stopped_at.elapsed();
    assert_eq!(fired, 1.0, "the stopped reader's write timed out");
    let open = wait_metric(&m, server.admin, OPEN, Duration::from_secs(5), |v| v == 1.0).await;
    assert_eq!(open, 1.0, "only the slow reader's stream is left");
    // Its socket is closed by the server: after what was buffered, end of stream or reset.
    let (how, drained) = read_until_closed(&mut stopped, Duration::from_secs(5)).await;
    assert_ne!(
        how,
        Closed::Open,
        "the server closed the stopped reader's connection"
    );

    // The slow reader carries on for two more write timeouts without being cut off.
    let before = slow_read.load(Ordering::Relaxed);
    tokio::time::sleep(write_timeout * 2).await;
    let after = slow_read.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let published = publisher.await.unwrap();
    let slow = slow_reader.await.unwrap();
    let text = metrics_text(&m, server.admin).await;
    eprintln!(
        "write timeout {write_timeout:?}: stopped reader cut off {cut_after:?} after it \
         stopped reading (connection {how:?}; {} unread bytes were buffered for it); slow \
         reader read {} B in the last {:?}, {after} B in all; {published} events published",
        drained.len(),
        after - before,
        write_timeout * 2,
    );
    assert!(
        cut_after >= write_timeout && cut_after < write_timeout + Duration::from_secs(3),
        "cut off after about limits.write_timeout, took {cut_after:?}"
    );
    assert!(
        !slow_ended.load(Ordering::Relaxed),
        "the slow reader was not cut off"
    );
    assert!(after > before, "the slow reader kept receiving");
    assert_eq!(sample(&text, WRITE_TIMEOUTS), 1.0, "only one write timeout");
    assert_eq!(sample(&text, LAGGED), 0.0);
    assert_eq!(sample(&text, OPEN), 1.0);
    drop(slow);
}

/// A reader behind a proxy on the same host (nginx on loopback, the documented setup)
/// announces a ~64 KiB MSS, for which the kernel sizes herald's send buffer at up to
/// `tcp_wmem` max (4 MiB). If herald leaves SO_SNDBUF alone, a reader that stops gets
/// megabytes of unread events queued in the kernel before any write stalls, far beyond
/// `limits.subscriber_queue_bytes`, and the write timeout starts only after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_reader_on_loopback_is_cut_off_before_unread_data_exceeds_its_queue() {
    let _serial = SERIAL.lock().await;
    let mut config = quick_config();
    config.limits.write_timeout = Duration::from_secs(2);
    config.limits.subscriber_queue_bytes = 256 * 1024;
    let queue_bytes = config.limits.subscriber_queue_bytes;
    let server = TestServer::start(config).await;
    let m = reqwest::Client::new();
    let path = "/events?channel=proxied";
    let loopback_reader = RawOptions {
        recv_buffer: Some(4096),
        ..RawOptions::default()
    };
    let mut stopped = raw_subscriber(server.public, path, loopback_reader).await;

    // ~500 KiB/s of events.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = spawn_publisher(
        server.url("/publish"),
        "proxied",
        Duration::from_millis(2),
        stop.clone(),
    );
    read_some(&mut stopped, 8 * 1024).await;
    let stopped_at = Instant::now();
    let open = wait_metric(&m, server.admin, OPEN, Duration::from_secs(12), |v| {
        v == 0.0
    })
    .await;
    let cut_after = stopped_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    let published = publisher.await.unwrap();
    let (how, unread) = read_until_closed(&mut stopped, Duration::from_secs(5)).await;
    let text = metrics_text(&m, server.admin).await;
    eprintln!(
        "loopback reader that stops: {} after {cut_after:?}; {} unread bytes had been \
         queued for it (subscriber_queue_bytes {queue_bytes}); write timeouts {}, lagged \
         {}; connection {how:?}; {published} events published",
        if open == 0.0 {
            "cut off"
        } else {
            "NOT cut off"
        },
        unread.len(),
        sample(&text, WRITE_TIMEOUTS),
        sample(&text, LAGGED),
    );
    assert_eq!(open, 0.0, "the stopped reader was disconnected within 12 s");
    assert!(
        unread.len() <= queue_bytes + 512 * 1024,
        "{} unread bytes piled up for a reader that stopped (limits.subscriber_queue_bytes \
         is {queue_bytes}): the kernel send buffer is not bounded",
        unread.len()
    );
}
