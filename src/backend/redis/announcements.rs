//! Sentinel's failover announcements: a subscription to `+switch-master` on one sentinel
//! at a time, so a node follows a new primary as soon as Sentinel has switched, whether
//! or not it has a publish or a reconnect of its own under way then (its reader may be
//! waiting out a long backoff).
//!
//! Only a hint: each announcement for our master, and each (re)connect to a sentinel (one
//! may have been missed meanwhile), makes [`Primary::refresh`] ask every sentinel and
//! check `ROLE`, as any other trigger does.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::primary::Primary;

/// Sentinel's channel for a completed failover: `<name> <old ip> <old port> <new ip>
/// <new port>`.
const SWITCH_MASTER: &str = "+switch-master";
/// Longest life of one subscription to a sentinel (see `listen`).
const SESSION: std::time::Duration = std::time::Duration::from_secs(60);

pub(super) async fn run(primary: Arc<Primary>, stop: CancellationToken) {
    let sentinels = primary.sentinel_urls();
    let (backoff_min, backoff_max) = primary.backoff();
    let mut delay = backoff_min;
    for url in sentinels.iter().cycle() {
        let ended = tokio::select! {
            ended = listen(&primary, url) => ended,
            _ = stop.cancelled() => return,
        };
        tracing::debug!(sentinel = %url, reason = %ended, retry_in = ?delay,
            "sentinel announcements lost");
        if ended.is_empty() {
            delay = backoff_min; // it had been listening: start over quickly
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
        delay = (delay * 2).min(backoff_max);
    }
}

/// Listen on one sentinel until the connection ends; why it ended, empty if it had
/// been subscribed.
async fn listen(primary: &Primary, url: &str) -> String {
    let (connect_timeout, command_timeout) = primary.timeouts();
    let client = match ::redis::Client::open(url) {
        Ok(client) => client,
        Err(e) => return e.to_string(),
    };
    let mut pubsub = match tokio::time::timeout(connect_timeout, client.get_async_pubsub()).await {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(e)) => return e.to_string(),
        Err(_) => return "connect timed out".into(),
    };
    match tokio::time::timeout(command_timeout, pubsub.subscribe(SWITCH_MASTER)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return e.to_string(),
        Err(_) => return "subscribe timed out".into(),
    }
    // A switch may have happened while no sentinel was listened to.
    refresh(primary).await;
    let mut messages = pubsub.into_on_message();
    // A subscribed connection cannot be probed, and a half-open one would be silent
    // forever: each session ends after `SESSION`, and the next starts with a refresh.
    let session_end = tokio::time::Instant::now() + SESSION;
    while let Ok(Some(message)) = tokio::time::timeout_at(session_end, messages.next()).await {
        let payload = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
        if is_for(&payload, primary.master_name()) {
            tracing::info!(announcement = %payload, "sentinel announced a failover");
            refresh(primary).await;
        }
    }
    String::new()
}

async fn refresh(primary: &Primary) {
    if let Err(e) = primary.refresh().await {
        tracing::warn!(error = %e, "no primary found after a sentinel announcement");
    }
}

/// The announcement names our master.
fn is_for(payload: &str, master_name: &str) -> bool {
    payload.split(' ').next() == Some(master_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_for_other_masters_are_ignored() {
        assert!(is_for("herald 127.0.0.1 6379 127.0.0.1 6380", "herald"));
        assert!(!is_for("herald-b 127.0.0.1 6379 127.0.0.1 6380", "herald"));
        assert!(!is_for("", "herald"));
    }
}
