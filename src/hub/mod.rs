//! Channels, fan-out and history: the in-memory heart of the broker.
//!
//! Each channel keeps one ring of encoded events. The ring is both the resume history and
//! the fan-out buffer: a subscriber is a cursor into the rings of its channels, woken when
//! they grow, so a publish costs one push and one wake per *waiting* subscriber, never a
//! copy per subscriber; a caught-up stream on one channel is not even woken: the publish's
//! pass writes to its socket (`fanout`). A subscriber whose cursor falls too far behind is
//! cut off (it resumes from history with `Last-Event-ID`), so a slow client can never
//! hold memory.
//!
//! Event IDs order events across channels, so one `Last-Event-ID` resumes a multi-channel
//! subscription. The hub works in one of two roles:
//! - **owner** (`backend.kind = "memory"`): IDs come from one node-wide counter that starts
//!   at the process start time in microseconds, so IDs keep increasing across restarts and
//!   an ID from an earlier process is recognised as outside history;
//! - **mirror** (`backend.kind = "redis"`): IDs and history belong to the backend, and the
//!   hub mirrors the channels its subscribers read (see `mirror`), fed in ID order by the
//!   backend's reader.
//!
//! Either way one number, `seq`, is the horizon of the multi-channel merge: every event
//! with an ID at or below it that belongs to a channel subscribers read is in its ring.

mod channel;
mod fanout;
mod flush;
mod mirror;
mod subscription;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::metrics::Metrics;
use crate::sse;
use channel::{Channel, ChannelState, Stored};
use fanout::Wakes;
pub use fanout::{Sink, Tail, Written};
pub use mirror::{FollowPlan, FollowStatus, Retained};
pub use subscription::{Poll as SubscriptionPoll, Subscription};

/// Limits the hub enforces; taken from `history.*` and `limits.*`.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub history_max_events: usize,
    pub history_max_age: Duration,
    /// A subscriber further behind than this is disconnected as too slow.
    pub subscriber_queue_events: usize,
    /// A subscriber with more unread bytes than this is disconnected as too slow.
    pub subscriber_queue_bytes: usize,
    /// Channels that may exist at once (publishing to a new one beyond it is refused).
    pub max_channels: usize,
    /// Subscribers one channel may have.
    pub max_subscribers_per_channel: usize,
    /// Event type of the event sent when a resume cannot be served.
    pub reset_event: String,
    /// A channel wakes its subscribers at most once per window; publishes inside it are
    /// delivered together at its end (one write carries several events). Zero is off.
    pub coalesce_window: Duration,
    /// The hub mirrors a backend that owns IDs and history (Redis) instead of owning them.
    pub mirror: bool,
}

impl HubSettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            history_max_events: config.history.max_events,
            history_max_age: config.history.max_age,
            subscriber_queue_events: config.limits.subscriber_queue_events,
            subscriber_queue_bytes: config.limits.subscriber_queue_bytes,
            max_channels: config.limits.max_channels,
            max_subscribers_per_channel: config.limits.max_subscribers_per_channel,
            reset_event: config.sse.reset_event.clone(),
            coalesce_window: config.sse.coalesce_window,
            mirror: config.backend.kind == "redis",
        }
    }

    /// Ring length: history for resume, and at least a full subscriber queue for fan-out.
    fn ring_capacity(&self) -> usize {
        self.history_max_events.max(self.subscriber_queue_events)
    }
}

/// An event accepted for publishing, already validated.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub channel: String,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HubError {
    #[error("the node holds the maximum of {0} channels")]
    TooManyChannels(usize),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("channel {0:?} has the maximum number of subscribers")]
    ChannelFull(String),
    /// Mirror role: a channel is not (or no longer) followed; the backend follows it and
    /// tries again.
    #[error("channel {0:?} is not followed from the backend yet")]
    NotFollowed(String),
}

/// Per-channel figures for `/stats`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelStats {
    pub name: String,
    pub subscribers: usize,
    pub retained_events: usize,
    pub last_event_id: Option<u64>,
}

pub struct Hub {
    /// Live channels by name. Lock order: this map, then channels in name order.
    channels: Mutex<HashMap<Arc<str>, Arc<Channel>>>,
    /// The merge horizon: owner, the last assigned ID (assigned under the channel lock, so
    /// the event is in its ring once the lock is released); mirror, the last ID the
    /// backend's reader handed over, in ID order.
    seq: AtomicU64,
    /// IDs below this are from an earlier process (owner) or an earlier Redis data set
    /// (mirror, the backend's epoch): never in our history.
    base_seq: AtomicU64,
    /// Highest ID evicted from a channel that has since been removed; a resume from below
    /// it on a channel we no longer know may have missed events.
    removed_floor: AtomicU64,
    /// Monotonic origin for the millisecond timestamps stored with events.
    epoch: Instant,
    /// `epoch` in microseconds since the Unix epoch, to place backend IDs on it.
    start_unix_us: u64,
    /// Set when shutdown begins: streams end and publishes are refused.
    closing: AtomicBool,
    /// The live part of the settings, replaced whole by a reload (`reconfigure`).
    settings: arc_swap::ArcSwap<HubSettings>,
    /// Reloads so far: a stream that saw this count has its timers set for the settings
    /// in force (see `SseStream`'s quiet window).
    reloads: AtomicU32,
    /// Mirror role (Redis backend): fixed for the process's life.
    mirror: bool,
    metrics: Arc<Metrics>,
    /// Channels whose wake was deferred by the coalescing window, in due order (every
    /// window has the same length, so appending keeps the order).
    flush_queue: Mutex<VecDeque<(tokio::time::Instant, Arc<Channel>)>>,
    flush_ready: tokio::sync::Notify,
    /// Mirror role: channels waiting for a barrier to go live, see `mirror`.
    staged: Mutex<mirror::Staging>,
    /// Mirror role: signalled whenever followed channels go live or are dropped.
    follow_changed: tokio::sync::Notify,
}

/// Seconds from `at_us` (µs since `epoch`) to `now`.
fn seconds_since(epoch: Instant, at_us: u64, now: Instant) -> f64 {
    let now_us = now.saturating_duration_since(epoch).as_micros() as u64;
    now_us.saturating_sub(at_us) as f64 / 1e6
}

impl Hub {
    pub fn new(settings: HubSettings, metrics: Arc<Metrics>) -> Arc<Self> {
        let now_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Arc::new(Self {
            channels: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(now_micros),
            base_seq: AtomicU64::new(now_micros),
            removed_floor: AtomicU64::new(0),
            epoch: Instant::now(),
            start_unix_us: now_micros,
            closing: AtomicBool::new(false),
            mirror: settings.mirror,
            settings: arc_swap::ArcSwap::from_pointee(settings),
            reloads: AtomicU32::new(0),
            metrics,
            flush_queue: Mutex::new(VecDeque::new()),
            flush_ready: tokio::sync::Notify::new(),
            staged: Mutex::new(mirror::Staging::default()),
            follow_changed: tokio::sync::Notify::new(),
        })
    }

    /// New limits for what comes next (the mirror role stays): publishes, subscribes and
    /// sweeps use them from now on, and every parked subscriber is woken so that open
    /// streams pick up new stream settings at once.
    pub fn reconfigure(&self, settings: HubSettings) {
        self.settings.store(Arc::new(settings));
        // Before the wakes: a stream woken by them sees the new count.
        self.reloads.fetch_add(1, Ordering::AcqRel);
        let channels: Vec<_> = self.lock_map().values().cloned().collect();
        for ch in channels {
            ch.wake_all();
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Seconds from `at_us` (µs since the hub's epoch, as events are stamped) to `now`.
    pub fn seconds_since(&self, at_us: u64, now: Instant) -> f64 {
        seconds_since(self.epoch, at_us, now)
    }

    /// Do what pushes owe subscribers, once the channel locks are released.
    fn run(&self, wakes: Wakes) {
        wakes.run(&self.metrics, self.epoch);
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn lock_map(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Channel>>> {
        // A panic while holding the map lock leaves it consistent (no multi-step edits),
        // so a poisoned lock is still usable.
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get_or_create(
        &self,
        map: &mut HashMap<Arc<str>, Arc<Channel>>,
        name: &str,
    ) -> Result<Arc<Channel>, HubError> {
        if let Some(ch) = map.get(name) {
            return Ok(ch.clone());
        }
        if map.len() >= self.settings.load().max_channels {
            return Err(HubError::TooManyChannels(self.settings.load().max_channels));
        }
        let floor = self.removed_floor.load(Ordering::Acquire);
        let ch = Arc::new(Channel::new(name, floor));
        map.insert(ch.name.clone(), ch.clone());
        self.metrics.channels.set(map.len() as i64);
        Ok(ch)
    }

    /// Publish a batch atomically: every event gets its ID and lands in its channel's
    /// history before any subscriber can see any of them. Returns the IDs in batch order.
    pub fn publish(&self, batch: &[NewEvent]) -> Result<Vec<u64>, HubError> {
        if self.closing.load(Ordering::Relaxed) {
            return Err(HubError::ShuttingDown);
        }
        loop {
            let mut touched: Vec<Arc<Channel>> = {
                let mut map = self.lock_map();
                let mut names: Vec<&str> = batch.iter().map(|e| e.channel.as_str()).collect();
                names.sort_unstable();
                names.dedup();
                names
                    .into_iter()
                    .map(|n| self.get_or_create(&mut map, n))
                    .collect::<Result<_, _>>()?
            };
            touched.sort_by(|a, b| a.name.cmp(&b.name));
            let mut guards: Vec<MutexGuard<'_, ChannelState>> =
                touched.iter().map(|c| c.lock()).collect();
            // The sweeper may have removed a channel between the map lookup and its lock.
            if guards.iter().any(|g| g.removed) {
                continue;
            }
            let now = self.now_us();
            let capacity = self.settings.load().ring_capacity();
            let mut published = Vec::with_capacity(batch.len());
            for ev in batch {
                let slot = touched
                    .binary_search_by(|c| (*c.name).cmp(ev.channel.as_str()))
                    .expect("every channel of the batch was looked up");
                let id = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
                let bytes = sse::encode(&sse::Event {
                    id: Some(itoa::Buffer::new().format(id)),
                    event: ev.event.as_deref(),
                    data: &ev.data,
                    retry: ev.retry,
                });
                guards[slot].push(
                    Stored {
                        id,
                        at_us: now,
                        bytes,
                        offset: 0,
                    },
                    capacity,
                );
                published.push(id);
            }
            let mut wakes = Wakes::default();
            let wake_at = tokio::time::Instant::now();
            for (g, ch) in guards.iter_mut().zip(&touched) {
                self.wake_or_defer(g, ch, wake_at, &mut wakes);
            }
            drop(guards);
            self.metrics.events_published.inc_by(batch.len() as u64);
            self.run(wakes);
            return Ok(published);
        }
    }

    /// Open a subscription. With `last_event_id`, it first replays every retained event
    /// after that ID, or starts with a reset event when history cannot cover the gap.
    pub fn subscribe(
        self: &Arc<Self>,
        names: &[String],
        last_event_id: Option<&str>,
    ) -> Result<Subscription, HubError> {
        if self.is_closing() {
            return Err(HubError::ShuttingDown);
        }
        let mut map = self.lock_map();
        let floor = self.removed_floor.load(Ordering::Acquire);
        let mut channels: Vec<Arc<Channel>> = Vec::with_capacity(names.len());
        for name in names {
            // The channel limit holds for subscribers too: without it, streams naming
            // fresh channels would grow the map past `limits.max_channels`.
            let ch = match map.get(name.as_str()) {
                Some(ch) => ch.clone(),
                None if self.mirror => return Err(HubError::NotFollowed(name.clone())),
                None if map.len() >= self.settings.load().max_channels => {
                    return Err(HubError::TooManyChannels(self.settings.load().max_channels));
                }
                None => {
                    let ch = Arc::new(Channel::new(name, floor));
                    map.insert(ch.name.clone(), ch.clone());
                    ch
                }
            };
            if !channels.iter().any(|c| Arc::ptr_eq(c, &ch)) {
                channels.push(ch);
            }
        }
        self.metrics.channels.set(map.len() as i64);
        channels.sort_by(|a, b| a.name.cmp(&b.name));
        // Holding every channel lock at once makes the seam exact: each event is either
        // in the snapshot positions below or published after them.
        let mut guards: Vec<MutexGuard<'_, ChannelState>> =
            channels.iter().map(|c| c.lock()).collect();
        drop(map);
        if let Some(loading) = guards.iter().position(|g| g.is_loading()) {
            return Err(HubError::NotFollowed(channels[loading].name.to_string()));
        }
        if let Some(full) = guards
            .iter()
            .position(|g| g.subscribers >= self.settings.load().max_subscribers_per_channel)
        {
            return Err(HubError::ChannelFull(channels[full].name.to_string()));
        }
        let last_seq = self.seq.load(Ordering::Acquire);
        let resume_from = last_event_id.map(parse_event_id);
        let mut reset: Option<(&'static str, Bytes)> = None;
        let mut positions = Vec::with_capacity(guards.len());
        for g in guards.iter_mut() {
            g.subscribers += 1;
            // Mirror: loaded history can hold events beyond the horizon whose turn in the
            // global order has not come; a new stream starts before them, so what it gets
            // is exactly the events after its start, in ID order.
            positions.push(if self.mirror {
                g.pos_after(last_seq)
            } else {
                g.end_pos()
            });
        }
        let live_from = positions.clone();
        if let Some(from) = resume_from {
            let reason = match from {
                None => Some("unknown_id"),
                Some(id) if id > last_seq || id < self.base_seq.load(Ordering::Acquire) => {
                    Some("unknown_id")
                }
                Some(id) => {
                    let max_age = self.settings.load().history_max_age.as_micros() as u64;
                    let oldest_us = self.now_us().saturating_sub(max_age);
                    let mut gap = false;
                    for (g, pos) in guards.iter().zip(positions.iter_mut()) {
                        match g.resume_pos(id, self.settings.load().history_max_events, oldest_us) {
                            Some(p) => *pos = p,
                            _ => gap = true,
                        }
                    }
                    gap.then_some("history_exhausted")
                }
            };
            if let Some(reason) = reason {
                positions.clone_from(&live_from);
                reset = Some((reason, self.reset_event(reason, last_event_id, last_seq)));
            }
        }
        drop(guards);
        match &reset {
            Some((reason, _)) => self
                .metrics
                .resume_resets
                .with_label_values(&[reason])
                .inc(),
            None if resume_from.is_some() => {
                let replayed: u64 = live_from.iter().zip(&positions).map(|(l, p)| l - p).sum();
                self.metrics.resume_replayed.observe(replayed as f64);
            }
            None => {}
        }
        Ok(Subscription::new(
            self.clone(),
            channels,
            positions,
            live_from,
            reset.map(|(_, b)| b),
        ))
    }

    fn reset_event(&self, reason: &str, last_event_id: Option<&str>, last_seq: u64) -> Bytes {
        let data = serde_json::json!({
            "reason": reason,
            "last_event_id": last_event_id,
            "message": "events after last_event_id are no longer retained; refetch state",
        })
        .to_string();
        sse::encode(&sse::Event {
            id: Some(itoa::Buffer::new().format(last_seq)),
            event: Some(&self.settings.load().reset_event),
            data: &data,
            retry: None,
        })
    }

    /// Drop aged events and remove channels that have neither subscribers nor history.
    pub fn sweep(&self) {
        let max_age = self.settings.load().history_max_age.as_micros() as u64;
        let oldest_us = self.now_us().saturating_sub(max_age);
        let mut map = self.lock_map();
        map.retain(|_, ch| {
            let mut g = ch.lock();
            g.trim_older_than(oldest_us);
            // A mirror keeps a channel only while it is read (or being followed): its
            // history lives in the backend and is loaded again on the next subscribe.
            let keep = g.subscribers > 0 || g.is_loading() || (!self.mirror && !g.is_empty());
            if !keep {
                g.removed = true;
                self.removed_floor
                    .fetch_max(g.evicted_id(), Ordering::AcqRel);
            }
            keep
        });
        self.metrics.channels.set(map.len() as i64);
    }

    /// Start shutdown: refuse publishes and wake every subscriber so its stream ends.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let channels: Vec<_> = self.lock_map().values().cloned().collect();
        for ch in channels {
            ch.wake_all();
        }
    }

    /// How many reloads reached the hub (wrapping).
    pub fn reloads(&self) -> u32 {
        self.reloads.load(Ordering::Acquire)
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    pub fn channel_count(&self) -> usize {
        self.lock_map().len()
    }

    /// Subscribers of `name` on this node; 0 when the node does not hold the channel.
    pub fn subscriber_count(&self, name: &str) -> usize {
        let channel = self.lock_map().get(name).cloned();
        channel.map_or(0, |ch| ch.lock().subscribers)
    }

    /// `(subscribers, channels)` per pattern, a channel counting in the first it
    /// matches; the last entry is for channels matching none.
    pub fn count_by_group(&self, patterns: &[wildmatch::WildMatch]) -> Vec<(usize, usize)> {
        let mut counts = vec![(0, 0); patterns.len() + 1];
        let channels: Vec<_> = self.lock_map().values().cloned().collect();
        for ch in channels {
            let group = patterns
                .iter()
                .position(|p| p.matches(&ch.name))
                .unwrap_or(patterns.len());
            counts[group].0 += ch.lock().subscribers;
            counts[group].1 += 1;
        }
        counts
    }

    pub fn stats(&self) -> Vec<ChannelStats> {
        let channels: Vec<_> = self.lock_map().values().cloned().collect();
        let mut stats: Vec<_> = channels
            .iter()
            .map(|ch| {
                let g = ch.lock();
                ChannelStats {
                    name: ch.name.to_string(),
                    subscribers: g.subscribers,
                    retained_events: g.len(),
                    last_event_id: g.last_id(),
                }
            })
            .collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }
}

/// `Last-Event-ID` values are decimal IDs we assigned; anything else is unknown.
fn parse_event_id(raw: &str) -> Option<u64> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 20 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

#[cfg(test)]
mod mirror_tests;
#[cfg(test)]
mod tests;
