//! Memory per open event stream, on the real binary: the lean stream path keeps well under
//! 2.5 KiB per stream, and no other request path may make every connection task larger.
//! (Once the publish path's state was inlined into the connection task: idle streams went
//! from 3.2 to 8.3 KiB each, and only `make bench` noticed.)

mod common;
#[path = "common/hardening.rs"]
mod hardening;

use std::time::Duration;

use common::*;
use hardening::*;

/// Enough that the allocator's coarse steps (RSS here moves by up to 2 MiB at a time)
/// weigh ~0.5 KiB per stream, not 1.
const STREAMS: usize = 4000;
/// Issue 13's goal: 2.5 KiB at 10,000 streams (release build, `make bench`; measured
/// ~1.5). This debug build reads ~1.6 KiB at 4,000 streams (1.1 or 2.1 at 2,000,
/// depending on where a 2 MiB step falls); before the stream task held only its pump it
/// read 4.3 KiB at 2,000.
const BUDGET_KIB: f64 = 2.5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_costs_a_few_kib() {
    let herald = HeraldProcess::spawn(
        r#"
[limits]
max_connections = 5000
max_connections_per_ip = 5000
max_subscribers_per_channel = 5000
new_streams_per_ip_per_second = 0.0
"#,
        &["--demo"],
    );
    let pid = herald.child.id();
    let metrics = reqwest::Client::new();
    // A few streams first, so that the process's one-time growth (thread stacks touched,
    // allocator arenas, metric families) is not charged to the streams measured.
    let mut warm = Vec::new();
    for _ in 0..20 {
        warm.push(stream(&herald).await);
    }
    let before = rss_kib(pid);
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        streams.push(stream(&herald).await);
    }
    let open = (STREAMS + warm.len()) as f64;
    let seen = wait_metric(
        &metrics,
        herald.admin,
        "herald_connections_open",
        Duration::from_secs(20),
        |v| v == open,
    )
    .await;
    assert_eq!(seen, open, "every stream open");
    let per_stream = (rss_kib(pid) as f64 - before as f64) / STREAMS as f64;
    println!("RSS growth per idle stream: {per_stream:.2} KiB");
    assert!(
        per_stream < BUDGET_KIB,
        "an idle stream costs {per_stream:.2} KiB (budget {BUDGET_KIB})"
    );
}

/// An open stream whose response head has arrived.
async fn stream(herald: &HeraldProcess) -> tokio::net::TcpStream {
    let mut s = connect_raw(herald.public, None, None).await;
    send_get(&mut s, "/events?channel=memory", "").await;
    let (status, _) = read_status(&mut s, Duration::from_secs(10))
        .await
        .expect("response head");
    assert_eq!(status, 200);
    s
}
