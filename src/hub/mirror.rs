//! The hub as a mirror of a backend that owns IDs and history (`backend.kind = "redis"`).
//!
//! The backend's reader hands every event over in ID order ([`Hub::apply`]). A channel is
//! followed when its first subscriber arrives: it is created *loading*, the backend loads
//! its retained history and stages it here, then publishes a barrier on the pub/sub
//! channel the events travel on. When the reader meets the barrier, every event published
//! before it has been either loaded or handed over (and buffered while loading), so the
//! two together are complete: they are merged and the channel goes live
//! ([`Hub::complete_barrier`]). After a lost pub/sub connection the same happens for every
//! followed channel at once, from the last ID each ring holds ([`Hub::begin_resync`]).
//!
//! Rings only ever receive events at or below the horizon `seq`, or events whose pub/sub
//! message is still on its way (loaded history), which the merge waits for; so the
//! multi-channel merge stays in global ID order.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use super::channel::{Channel, ChannelState, Stored};
use super::fanout::Wakes;
use super::{Hub, HubError};

/// An event as the backend holds it: its ID and its complete SSE encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub id: u64,
    pub bytes: Bytes,
}

/// What a channel collects while its history is being loaded.
#[derive(Default)]
pub(crate) struct Loading {
    /// Events handed over meanwhile, in ID order; bounded by the ring capacity.
    buffered: VecDeque<Retained>,
    /// Newest event dropped from a full buffer (0: none).
    dropped: u64,
    /// A catch-up of a channel that has subscribers (not a first follow).
    resync: bool,
}

/// What waits for barriers: channel histories, and Redis's last ID as read by loads.
#[derive(Default)]
pub(super) struct Staging {
    channels: Vec<Staged>,
    /// `(barrier, last ID)`: once the barrier is back, every event up to that ID is in
    /// the ring of every channel followed (see [`Hub::stage_horizon`]).
    horizons: Vec<(u64, u64)>,
    /// Channels of the current catch-up not merged yet. While any is, the horizon stays:
    /// their rings lack what was missed, and their subscribers read on.
    resyncing: usize,
}

/// History waiting for its barrier.
struct Staged {
    barrier: u64,
    channel: Arc<Channel>,
    history: Vec<Retained>,
    /// The backend's gap floor for the channel: resumes from below it have a gap.
    floor: u64,
}

/// What [`Hub::begin_follow`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FollowPlan {
    /// Channels created by this call, loading: the caller loads and stages them.
    pub load: Vec<String>,
    /// Some channels are being loaded by someone else: wait for them.
    pub wait: bool,
}

/// Where a set of followed channels stands.
#[derive(Debug, PartialEq, Eq)]
pub enum FollowStatus {
    Live,
    Loading,
    /// Some channel was dropped (a failed load, a reconnect): follow again.
    Missing,
}

impl Hub {
    /// Follow the channels of `names` not followed yet: they are created loading and
    /// returned for the caller to load. Refused as a whole beyond `limits.max_channels`.
    pub fn begin_follow(&self, names: &[String]) -> Result<FollowPlan, HubError> {
        let mut map = self.lock_map();
        let mut plan = FollowPlan::default();
        for name in names {
            match map.get(name.as_str()) {
                Some(ch) => plan.wait |= ch.lock().is_loading(),
                None if !plan.load.contains(name) => plan.load.push(name.clone()),
                None => {}
            }
        }
        if map.len() + plan.load.len() > self.settings.load().max_channels && !plan.load.is_empty()
        {
            return Err(HubError::TooManyChannels(self.settings.load().max_channels));
        }
        for name in &plan.load {
            let ch = Arc::new(Channel::new(name, 0));
            ch.lock().loading = Some(Box::default());
            map.insert(ch.name.clone(), ch);
        }
        self.metrics.channels.set(map.len() as i64);
        Ok(plan)
    }

    /// Whether every channel of `names` is live.
    pub fn follow_status(&self, names: &[String]) -> FollowStatus {
        let map = self.lock_map();
        let mut status = FollowStatus::Live;
        for name in names {
            match map.get(name.as_str()) {
                None => return FollowStatus::Missing,
                Some(ch) if ch.lock().is_loading() => status = FollowStatus::Loading,
                Some(_) => {}
            }
        }
        status
    }

    /// Wait until [`Hub::follow_status`] of `names` is no longer `Loading`, or `deadline`.
    pub async fn wait_followed(&self, names: &[String], deadline: Instant) -> FollowStatus {
        loop {
            let changed = self.follow_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let status = self.follow_status(names);
            if status != FollowStatus::Loading {
                return status;
            }
            let until = tokio::time::Instant::from_std(deadline);
            if tokio::time::timeout_at(until, changed).await.is_err() {
                return FollowStatus::Loading;
            }
        }
    }

    /// Hold `history` (ascending IDs) and the backend's gap `floor` for `name` until the
    /// reader meets `barrier`. Ignored when the channel is no longer loading.
    pub fn stage(&self, name: &str, history: Vec<Retained>, floor: u64, barrier: u64) {
        let Some(channel) = self.lock_map().get(name).cloned() else {
            return;
        };
        if !channel.lock().is_loading() {
            return;
        }
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        staged.channels.push(Staged {
            barrier,
            channel,
            history,
            floor,
        });
    }

    /// A load read `last_id` as the backend's newest ID before `barrier` was sent. When the
    /// barrier is back, the reader has received everything published before it, and the
    /// loads hold everything older on channels nobody followed yet: the horizon may move
    /// to `last_id`. (Without this, after events lost on pub/sub during a reconnect on
    /// channels not followed then, the horizon would wait for the next event to pass them:
    /// resumes from such IDs were refused as unknown, merged streams stalled.) Staged
    /// horizons die with the pub/sub connection they were read on (`begin_resync`).
    pub fn stage_horizon(&self, barrier: u64, last_id: u64) {
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        staged.horizons.push((barrier, last_id));
    }

    /// Drop channels of `names` still loading without subscribers (a follow that failed).
    pub fn abort_follow(&self, names: &[String]) {
        let mut map = self.lock_map();
        for name in names {
            let remove = map.get(name.as_str()).is_some_and(|ch| {
                let mut g = ch.lock();
                let stale = g.is_loading() && g.subscribers == 0;
                if stale {
                    g.removed = true;
                }
                stale
            });
            if remove {
                map.remove(name.as_str());
            }
        }
        self.metrics.channels.set(map.len() as i64);
        drop(map);
        self.follow_changed.notify_waiters();
    }

    /// The pub/sub connection was replaced: events may have been missed. Every channel
    /// with subscribers turns loading again and is returned with the ID to catch up
    /// after; follows in progress are dropped (their callers follow again).
    pub fn begin_resync(&self) -> Vec<(String, u64)> {
        let mut map = self.lock_map();
        let mut catch_up = Vec::new();
        map.retain(|name, ch| {
            let mut g = ch.lock();
            if g.is_loading() && !g.loading.as_ref().is_some_and(|l| l.resync) {
                g.removed = true;
                return false;
            }
            g.loading = Some(Box::new(Loading {
                resync: true,
                ..Loading::default()
            }));
            catch_up.push((name.to_string(), g.last_id().unwrap_or(g.evicted_id())));
            true
        });
        self.metrics.channels.set(map.len() as i64);
        drop(map);
        // Only the reader calls this and `complete_barrier`, so no barrier completes
        // between the marking above and this reset.
        *self.staged.lock().unwrap_or_else(|e| e.into_inner()) = Staging {
            resyncing: catch_up.len(),
            ..Staging::default()
        };
        self.follow_changed.notify_waiters();
        catch_up
    }

    /// The reader met `barrier` (a number of this node's, increasing): merge every
    /// channel staged up to it and let it go live.
    pub fn complete_barrier(&self, barrier: u64) {
        let mut ready: Vec<Staged> = {
            let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
            let (ready, waiting) = staged
                .channels
                .drain(..)
                .partition(|s| s.barrier <= barrier);
            staged.channels = waiting;
            ready
        };
        if ready.is_empty() {
            self.raise_horizon(barrier, 0);
            return;
        }
        ready.sort_by(|a, b| a.channel.name.cmp(&b.channel.name));
        ready.dedup_by(|later, first| Arc::ptr_eq(&later.channel, &first.channel));
        // All locks at once: a merged subscriber sees every channel of a catch-up either
        // before or after it, never half of it.
        let channels: Vec<Arc<Channel>> = ready.iter().map(|s| s.channel.clone()).collect();
        let mut guards: Vec<MutexGuard<'_, ChannelState>> =
            channels.iter().map(|c| c.lock()).collect();
        let capacity = self.settings.load().ring_capacity();
        let wake_at = tokio::time::Instant::now();
        let mut wakes = Wakes::default();
        let mut resynced = 0;
        for ((staged, g), ch) in ready.iter_mut().zip(guards.iter_mut()).zip(&channels) {
            let Some(loading) = g.loading.take() else {
                continue;
            };
            resynced += usize::from(loading.resync);
            let history = std::mem::take(&mut staged.history);
            let last_loaded = history.last().map_or(0, |e| e.id);
            let mut floor = staged.floor;
            if loading.dropped > last_loaded {
                floor = floor.max(loading.dropped);
            }
            if loading.resync && floor > g.last_id().unwrap_or(g.evicted_id()) {
                // Events after what the subscribers have were trimmed before we could
                // catch up: end them, so they resume and learn of the gap.
                g.cut_all();
            }
            g.raise_evicted(floor);
            for event in merge(history, loading.buffered) {
                if g.last_id().is_some_and(|last| event.id <= last) {
                    continue;
                }
                let at_us = self.at_us_of(event.id);
                g.push(
                    Stored {
                        id: event.id,
                        at_us,
                        bytes: event.bytes,
                        offset: 0,
                    },
                    capacity,
                );
            }
            self.wake_or_defer(g, ch, wake_at, &mut wakes);
        }
        // Under the locks: a merged subscriber sees the catch-up and the horizon that
        // passes it together.
        self.raise_horizon(barrier, resynced);
        drop(guards);
        self.run(wakes);
        self.follow_changed.notify_waiters();
    }

    /// Move the horizon to the newest last ID staged up to `barrier`, unless a catch-up is
    /// still missing channels (`merged` of them were just merged).
    fn raise_horizon(&self, barrier: u64, merged: usize) {
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        staged.resyncing = staged.resyncing.saturating_sub(merged);
        if staged.resyncing > 0 {
            return;
        }
        let horizon = staged
            .horizons
            .iter()
            .filter(|(b, _)| *b <= barrier)
            .map(|(_, id)| *id)
            .max();
        staged.horizons.retain(|(b, _)| *b > barrier);
        if let Some(horizon) = horizon {
            self.seq.fetch_max(horizon, Ordering::AcqRel);
        }
    }

    /// The reader's hand-over of one event, in ID order across all channels.
    pub fn apply(&self, channel: &str, id: u64, bytes: Bytes) {
        let ch = self.lock_map().get(channel).cloned();
        let mut wakes = Wakes::default();
        if let Some(ch) = ch {
            let mut g = ch.lock();
            let capacity = self.settings.load().ring_capacity();
            if let Some(loading) = g.loading.as_mut() {
                if loading.buffered.len() >= capacity {
                    if let Some(old) = loading.buffered.pop_front() {
                        loading.dropped = old.id;
                    }
                }
                loading.buffered.push_back(Retained { id, bytes });
            } else if g.last_id().is_none_or(|last| id > last) {
                let at_us = self.at_us_of(id);
                g.push(
                    Stored {
                        id,
                        at_us,
                        bytes,
                        offset: 0,
                    },
                    capacity,
                );
                self.wake_or_defer(&mut g, &ch, tokio::time::Instant::now(), &mut wakes);
            } else {
                // Already loaded with the history: a merged subscriber may be parked on
                // it as beyond the horizon, which moves now.
                wakes.wakers.extend(g.take_waiters());
            }
            // Under the channel lock, so a poll that sees the event sees the horizon too.
            self.seq.fetch_max(id, Ordering::AcqRel);
        } else {
            self.seq.fetch_max(id, Ordering::AcqRel);
        }
        self.run(wakes);
    }

    /// The backend's data set began at `epoch` (its first ID): IDs below it are unknown
    /// there, so resumes from them get a reset, here as on every other node.
    pub fn rebase(&self, epoch: u64) {
        let previous = self.base_seq.swap(epoch, Ordering::AcqRel);
        if previous == epoch {
            return;
        }
        let channels: Vec<_> = self.lock_map().values().cloned().collect();
        for ch in channels {
            ch.lock().raise_evicted(epoch.saturating_sub(1));
        }
    }

    /// The newest ID handed over (the merge horizon).
    pub fn horizon(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Microseconds since the hub's epoch at which event `id` (microseconds since the
    /// Unix epoch, as backends assign them) was published; never in the future.
    fn at_us_of(&self, id: u64) -> u64 {
        let since_start = id.saturating_sub(self.start_unix_us);
        since_start.min(self.now_us())
    }
}

/// Two ascending runs as one, in ID order (duplicates are skipped by the caller).
fn merge(history: Vec<Retained>, buffered: VecDeque<Retained>) -> Vec<Retained> {
    let mut out = Vec::with_capacity(history.len() + buffered.len());
    let mut a = history.into_iter().peekable();
    let mut b = buffered.into_iter().peekable();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.id <= y.id,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        out.extend(if take_a { a.next() } else { b.next() });
    }
    out
}
