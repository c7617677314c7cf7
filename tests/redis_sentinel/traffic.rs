//! The clients of a failover run: publishers that flood the nodes and record what each
//! publish got, and subscribers that read a stream to its end.

use std::time::{Duration, Instant};

use crate::common::*;

/// The channels every publisher alternates over and every subscriber reads.
pub const CHANNELS: [&str; 2] = ["alpha", "beta"];
/// Longest wait for one event on a stream: a failover's length and more.
const EVENT_WAIT: Duration = Duration::from_secs(20);

/// One publish as the publisher saw it.
pub struct Attempt {
    pub data: String,
    pub sent: Instant,
    pub answered: Instant,
    /// The ID when answered 200; `None` when refused (503 `backend_unavailable`).
    pub id: Option<u64>,
}

/// Publish one event at a time, alternating over `urls` and `CHANNELS`, until `stop`;
/// `accepted` counts the 200s of every publisher. A refusal waits 10 ms, as a client
/// backing off would.
pub async fn flood(
    tag: usize,
    urls: Vec<String>,
    accepted: std::sync::Arc<tokio::sync::watch::Sender<usize>>,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<Attempt> {
    let client = reqwest::Client::new();
    let mut attempts = Vec::new();
    for i in 0.. {
        if stop.is_cancelled() {
            break;
        }
        let data = format!("p{tag}-{i}");
        let sent = Instant::now();
        let id = try_publish(&client, &urls[i % urls.len()], CHANNELS[i % 2], &data).await;
        attempts.push(Attempt {
            data,
            sent,
            answered: Instant::now(),
            id,
        });
        if id.is_some() {
            accepted.send_modify(|n| *n += 1);
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    attempts
}

/// Every event of `stream` up to the one whose data is `"end"`, as `(id, data)` (owned,
/// for a spawned reader).
pub async fn until_end(mut stream: SseClient) -> Vec<(u64, String)> {
    events_until_end(&mut stream, EVENT_WAIT).await
}
