//! Fan-out coalescing (`sse.coalesce_window`): a channel wakes its parked subscribers at
//! most once per window; wakes due inside the window are queued and delivered by the
//! flusher task at the window's end, so each subscriber writes several events at once.

use std::sync::Arc;

use tokio::time::Instant;

use super::channel::{Channel, ChannelState};
use super::fanout::Wakes;
use super::Hub;

impl Hub {
    /// Wake a channel's parked subscribers now, or, inside its coalescing window, queue
    /// one wake for the window's end with the flusher.
    pub(super) fn wake_or_defer(
        &self,
        g: &mut ChannelState,
        ch: &Arc<Channel>,
        now: Instant,
        wakes: &mut Wakes,
    ) {
        let settings = self.settings.load();
        let window = settings.coalesce_window;
        match g.last_wake {
            Some(last) if !window.is_zero() && now < last + window => {
                if !g.flush_queued {
                    g.flush_queued = true;
                    let mut queue = self.flush_queue.lock().unwrap_or_else(|e| e.into_inner());
                    queue.push_back((last + window, ch.clone()));
                    drop(queue);
                    self.flush_ready.notify_one();
                }
            }
            _ => g.wake(ch, now, &settings, wakes),
        }
    }

    /// Deliver deferred wakes as their windows end; runs until `stop`.
    pub async fn run_flusher(&self, stop: tokio_util::sync::CancellationToken) {
        loop {
            let next = {
                let queue = self.flush_queue.lock().unwrap_or_else(|e| e.into_inner());
                queue.front().map(|(due, _)| *due)
            };
            match next {
                None => {
                    tokio::select! {
                        _ = self.flush_ready.notified() => continue,
                        _ = stop.cancelled() => return,
                    }
                }
                Some(due) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
            let now = Instant::now();
            let due: Vec<Arc<Channel>> = {
                let mut queue = self.flush_queue.lock().unwrap_or_else(|e| e.into_inner());
                let mut ready = Vec::new();
                while queue.front().is_some_and(|(d, _)| *d <= now) {
                    if let Some((_, ch)) = queue.pop_front() {
                        ready.push(ch);
                    }
                }
                ready
            };
            let mut wakes = Wakes::default();
            let settings = self.settings.load();
            for ch in due {
                let mut g = ch.lock();
                g.flush_queued = false;
                g.wake(&ch, now, &settings, &mut wakes);
            }
            drop(settings);
            self.run(wakes);
        }
    }
}
