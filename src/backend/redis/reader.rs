//! The node's one pub/sub connection: every event of the cluster arrives here once, in
//! ID order, and goes to the hub; so do the node's own barriers.
//!
//! Each connection starts with a catch-up: before subscribing, every followed channel
//! turns loading (`Hub::begin_resync`), so what arrives from then on waits; the history
//! published while the node was away is loaded from the last ID each ring holds, and the
//! barrier after it lets every channel go live at once. A probe (a barrier sent through
//! the command connection) every `health_interval` must come back within
//! `command_timeout`, or the connection is taken for dead and replaced: a half-open TCP
//! connection or a paused Redis would otherwise hold the node silent.
//!
//! With Sentinel, every connect attempt first asks where the primary is, and a move of
//! the primary (found by any caller) ends the connection and cuts the backoff short: a
//! failover is a reconnect to another address, caught up like any other.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::RedisBackend;

/// A connection that stayed healthy this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

pub(super) async fn run(backend: Arc<RedisBackend>, stop: CancellationToken) {
    let mut delay = backend.settings.backoff_min;
    let mut sessions = 0u64;
    let mut moved = backend.primary.moved();
    loop {
        let started = Instant::now();
        let ended = serve(&backend, &stop, &mut moved, sessions > 0).await;
        backend.set_up(false);
        match ended {
            None => return,
            Some(reason) => {
                tracing::warn!(url = %backend.display_url, reason = %reason, retry_in = ?delay,
                    "redis pub/sub connection lost");
            }
        }
        sessions += 1;
        if started.elapsed() > STABLE_AFTER {
            delay = backend.settings.backoff_min;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = moved.changed() => {}
            _ = stop.cancelled() => return,
        }
        delay = (delay * 2).min(backend.settings.backoff_max);
    }
}

/// One connection's life; `None` when stopped, else why it ended.
async fn serve(
    backend: &Arc<RedisBackend>,
    stop: &CancellationToken,
    moved: &mut tokio::sync::watch::Receiver<u64>,
    again: bool,
) -> Option<String> {
    let settings = &backend.settings;
    // Sentinels that do not answer leave the primary as it was: it may still be there.
    let refreshed = tokio::select! {
        refreshed = backend.primary.refresh() => refreshed,
        _ = stop.cancelled() => return None,
    };
    moved.borrow_and_update();
    let Some(primary) = backend.primary.current() else {
        let why = refreshed.err().unwrap_or_default();
        return Some(format!("no primary known: {why}"));
    };
    if let Err(e) = refreshed {
        tracing::warn!(error = %e, primary = %primary.address,
            "sentinels named no primary; trying the last one");
    }
    let connect = primary.client.get_async_pubsub();
    let mut pubsub = match tokio::time::timeout(settings.connect_timeout, connect).await {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(e)) => return Some(fail(backend, "connect", e.to_string())),
        Err(_) => return Some(fail(backend, "connect", "connect timed out".into())),
    };
    // Before subscribing: from here on, what arrives waits for the catch-up.
    let catch_up = backend.hub.begin_resync();
    match tokio::time::timeout(
        settings.command_timeout,
        pubsub.subscribe(&backend.keys.events),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Some(fail(backend, "connect", e.to_string())),
        Err(_) => return Some(fail(backend, "timeout", "subscribe timed out".into())),
    }
    if again {
        backend.metrics.backend_reconnects.inc();
    }
    let mut messages = pubsub.into_on_message();
    let (failed_tx, mut failed) = tokio::sync::mpsc::channel::<String>(1);
    {
        let backend = backend.clone();
        tokio::spawn(async move {
            match backend.load_and_stage(&catch_up).await {
                Ok((_, loaded)) if again => {
                    backend
                        .metrics
                        .backend_caught_up_events
                        .inc_by(loaded as u64);
                    tracing::info!(
                        channels = catch_up.len(),
                        events = loaded,
                        "caught up after reconnect"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = failed_tx.send(format!("catch-up failed: {e}")).await;
                }
            }
        });
    }
    let mut probe = tokio::time::interval(settings.health_interval);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outstanding: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            message = messages.next() => {
                let Some(message) = message else {
                    return Some("connection closed".into());
                };
                if let Some(n) = backend.handle_message(message.get_payload_bytes()) {
                    if outstanding.is_some_and(|(probe, _)| probe <= n) {
                        outstanding = None;
                        backend.set_up(true);
                    }
                }
            }
            Some(reason) = failed.recv() => return Some(reason),
            _ = moved.changed() => {
                return Some(format!("the primary moved away from {}", primary.address));
            }
            _ = probe.tick() => match outstanding {
                Some((_, sent)) if sent.elapsed() > settings.command_timeout => {
                    backend.metrics.backend_errors.with_label_values(&["probe"]).inc();
                    return Some(format!(
                        "probe not back within {:?}",
                        settings.command_timeout
                    ));
                }
                Some(_) => {}
                None => {
                    let n = backend.next_barrier();
                    outstanding = Some((n, Instant::now()));
                    let backend = backend.clone();
                    tokio::spawn(async move {
                        let _ = backend.send_barrier(n).await;
                    });
                }
            },
        }
    }
}

fn fail(backend: &RedisBackend, kind: &'static str, message: String) -> String {
    backend
        .metrics
        .backend_errors
        .with_label_values(&[kind])
        .inc();
    message
}
