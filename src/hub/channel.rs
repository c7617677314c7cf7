//! One channel: its ring of encoded events and the wakers of subscribers waiting on it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use bytes::Bytes;
use slab::Slab;

use super::fanout::{Pass, Sink, Tail, Wakes, MAX_DIRECT_BYTES, TAIL_EVENTS};
use super::HubSettings;

/// An encoded event in a channel ring.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub id: u64,
    /// Microseconds since the hub's epoch: for `history.max_age`, and the delivery latency.
    pub at_us: u64,
    /// The complete SSE message, shared by every subscriber.
    pub bytes: Bytes,
    /// Bytes pushed to the channel before this event, so the bytes a subscriber has
    /// unread are one subtraction away.
    pub offset: u64,
}

pub(super) struct Channel {
    pub name: Arc<str>,
    state: Mutex<ChannelState>,
}

impl Channel {
    /// A channel that knows nothing of events up to `gap_floor` (the newest ID evicted
    /// from channels removed earlier, possibly this one's predecessor): resuming from
    /// below it reports a gap instead of silently skipping what was lost.
    pub fn new(name: &str, gap_floor: u64) -> Self {
        Self {
            name: Arc::from(name),
            state: Mutex::new(ChannelState {
                evicted_id: gap_floor,
                ..ChannelState::default()
            }),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, ChannelState> {
        // Every edit of the state is a single step, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake every subscriber, directly written ones included, so that each looks at the
    /// hub again (a shutdown, a reload).
    pub fn wake_all(&self) {
        let mut g = self.lock();
        g.recall_sinks();
        let wakers = g.take_waiters();
        drop(g);
        for w in wakers {
            w.wake();
        }
    }
}

#[derive(Default)]
pub(super) struct ChannelState {
    ring: VecDeque<Stored>,
    /// Absolute position of `ring[0]`: positions count every event ever pushed, so a
    /// subscriber cursor stays meaningful while the ring slides.
    start_pos: u64,
    /// ID of the newest event that left the ring; resumes from below it have a gap.
    evicted_id: u64,
    /// Bytes ever pushed (the offset the next event gets).
    pushed_bytes: u64,
    pub subscribers: usize,
    /// Subscribers parked until the next push, keyed by slab index.
    waiters: Slab<Waker>,
    /// Sockets of streams that may be written directly by a push (see `fanout`): listed
    /// once per stream, for its life.
    sinks: Slab<Arc<dyn Sink>>,
    /// `sinks` as a pass takes them, rebuilt at the first pass after a change.
    sinks_snapshot: Option<Arc<[Arc<dyn Sink>]>>,
    /// A pass of this channel is queued and has not taken the sinks yet.
    pass_queued: bool,
    /// The last tail a shard took: the next shards of a pass reuse it while the ring
    /// has not moved, instead of cloning the same events again.
    tail: Option<Arc<Tail>>,
    /// Bumped each time `waiters` is emptied, so a subscriber knows whether its slab key
    /// still refers to its own registration.
    pub wake_gen: u64,
    /// Set by the sweeper when the channel leaves the hub map; a publisher that raced with
    /// it retries on a fresh channel.
    pub removed: bool,
    /// When subscribers were last woken, for the coalescing window.
    pub last_wake: Option<tokio::time::Instant>,
    /// A deferred wake is queued with the hub's flusher.
    pub flush_queued: bool,
    /// Mirror role: set while the channel's history is being loaded from the backend;
    /// events the reader hands over meanwhile wait here.
    pub loading: Option<Box<super::mirror::Loading>>,
}

impl ChannelState {
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    pub fn is_loading(&self) -> bool {
        self.loading.is_some()
    }

    /// Raise the gap floor: a resume from below `id` reports a gap.
    pub fn raise_evicted(&mut self, id: u64) {
        self.evicted_id = self.evicted_id.max(id);
    }

    /// Drop every event and move past every cursor, so each current subscriber ends as
    /// lagged and resumes (with a reset) instead of silently skipping a gap.
    pub fn cut_all(&mut self) {
        while !self.ring.is_empty() {
            self.evict_front();
        }
        self.start_pos += 1;
    }

    pub fn start_pos(&self) -> u64 {
        self.start_pos
    }

    pub fn end_pos(&self) -> u64 {
        self.start_pos + self.ring.len() as u64
    }

    pub fn evicted_id(&self) -> u64 {
        self.evicted_id
    }

    pub fn last_id(&self) -> Option<u64> {
        self.ring.back().map(|e| e.id)
    }

    /// The event at absolute position `pos`, if still in the ring.
    pub fn get(&self, pos: u64) -> Option<&Stored> {
        let index = pos.checked_sub(self.start_pos)?;
        self.ring.get(usize::try_from(index).ok()?)
    }

    /// Append an event; `offset` is filled in here.
    pub fn push(&mut self, mut event: Stored, capacity: usize) {
        while self.ring.len() >= capacity {
            self.evict_front();
        }
        event.offset = self.pushed_bytes;
        self.pushed_bytes += event.bytes.len() as u64;
        self.ring.push_back(event);
    }

    /// The position just after the events with IDs up to `id`.
    pub fn pos_after(&self, id: u64) -> u64 {
        self.start_pos + self.ring.partition_point(|e| e.id <= id) as u64
    }

    /// Bytes from absolute position `pos` to the end of the ring.
    pub fn bytes_behind(&self, pos: u64) -> u64 {
        self.get(pos).map_or(0, |e| self.pushed_bytes - e.offset)
    }

    fn evict_front(&mut self) {
        if let Some(old) = self.ring.pop_front() {
            self.evicted_id = old.id;
            self.start_pos += 1;
        }
    }

    pub fn trim_older_than(&mut self, oldest_us: u64) {
        // The sweep also lets go of the last pass's tail, whose events may be gone.
        self.tail = None;
        while self.ring.front().is_some_and(|e| e.at_us < oldest_us) {
            self.evict_front();
        }
        if self.ring.is_empty() && self.ring.capacity() > 0 {
            self.ring.shrink_to_fit();
        }
    }

    /// Where a resume after `id` starts, if every event after `id` is still retained:
    /// within the newest `max_events` and not older than `oldest_us`.
    pub fn resume_pos(&self, id: u64, max_events: usize, oldest_us: u64) -> Option<u64> {
        if self.evicted_id > id {
            return None;
        }
        let index = self.ring.partition_point(|e| e.id <= id);
        let retained_from = self.ring.len().saturating_sub(max_events);
        let first_needed = self.ring.get(index);
        let outside_window = index < retained_from;
        let too_old = first_needed.is_some_and(|e| e.at_us < oldest_us);
        if first_needed.is_some() && (outside_window || too_old) {
            return None;
        }
        Some(self.start_pos + index as u64)
    }

    /// Park a subscriber until the next push. `slot` is its previous registration
    /// (generation, slab key), reused when still current so a subscriber is listed once.
    pub fn park(&mut self, slot: &mut Option<(u64, usize)>, waker: &Waker) {
        if let Some((generation, key)) = *slot {
            if generation == self.wake_gen {
                if let Some(w) = self.waiters.get_mut(key) {
                    if !w.will_wake(waker) {
                        w.clone_from(waker);
                    }
                    return;
                }
            }
        }
        let key = self.waiters.insert(waker.clone());
        *slot = Some((self.wake_gen, key));
    }

    /// Forget a registration made by [`ChannelState::park`] (a subscriber going away).
    pub fn unpark(&mut self, slot: Option<(u64, usize)>) {
        if let Some((generation, key)) = slot {
            if generation == self.wake_gen && self.waiters.contains(key) {
                self.waiters.remove(key);
            }
        }
    }

    /// List a stream's sink; the key is for [`ChannelState::remove_sink`].
    pub fn add_sink(&mut self, sink: Arc<dyn Sink>) -> usize {
        self.sinks_snapshot = None;
        self.sinks.insert(sink)
    }

    pub fn remove_sink(&mut self, key: usize) {
        if self.sinks.try_remove(key).is_some() {
            // Dropped now rather than at the next push: its clones keep sockets open.
            self.sinks_snapshot = None;
        }
    }

    /// What the subscribers are owed now (`ch` is this channel): parked tasks to wake,
    /// and a pass for the directly written ones.
    pub fn wake(
        &mut self,
        ch: &Arc<Channel>,
        now: tokio::time::Instant,
        settings: &HubSettings,
        wakes: &mut Wakes,
    ) {
        self.last_wake = Some(now);
        wakes.wakers.extend(self.take_waiters());
        wakes.passes.extend(self.pass(ch, settings));
    }

    /// The direct writes a push owes, unless a pass of this channel is queued already
    /// (it will carry this push's events too).
    fn pass(&mut self, ch: &Arc<Channel>, settings: &HubSettings) -> Option<Pass> {
        if self.sinks.is_empty() || self.pass_queued {
            return None;
        }
        self.pass_queued = true;
        Some(Pass {
            channel: ch.clone(),
            limits: (
                settings.subscriber_queue_events,
                settings.subscriber_queue_bytes,
            ),
            started: false,
        })
    }

    /// A queued pass was dropped without running.
    pub fn cancel_pass(&mut self) {
        self.pass_queued = false;
    }

    /// A queued pass starts: the sinks it writes; pushes from now on queue another.
    pub fn start_pass(&mut self) -> Option<Arc<[Arc<dyn Sink>]>> {
        self.pass_queued = false;
        if self.sinks.is_empty() {
            return None;
        }
        let sinks = self
            .sinks_snapshot
            .get_or_insert_with(|| self.sinks.iter().map(|(_, s)| s.clone()).collect());
        Some(sinks.clone())
    }

    /// The newest events, as many as a subscriber may have unread (`limits`: queue
    /// events and bytes), so a stream further behind is handed back to its task, which
    /// ends it as lagged as it would without the pass.
    pub fn tail(&mut self, (queue_events, queue_bytes): (usize, usize)) -> Arc<Tail> {
        let skip = self
            .ring
            .len()
            .saturating_sub(TAIL_EVENTS.min(queue_events));
        let first_pos = self.start_pos + skip as u64;
        let max_bytes = queue_bytes.min(MAX_DIRECT_BYTES);
        if let Some(tail) = &self.tail {
            let end = tail.first_pos + tail.events.len() as u64;
            if tail.first_pos == first_pos && end == self.end_pos() && tail.max_bytes == max_bytes {
                return tail.clone();
            }
        }
        let newest = self.ring.iter().skip(skip);
        let tail = Arc::new(Tail::new(
            first_pos,
            newest.clone().map(|e| e.bytes.clone()).collect(),
            newest.map(|e| e.at_us).collect(),
            max_bytes,
        ));
        self.tail = Some(tail.clone());
        tail
    }

    /// Hand every directly written stream back to its task, woken.
    pub fn recall_sinks(&self) {
        for (_, sink) in &self.sinks {
            sink.recall();
        }
    }

    /// Empty the waiter list; the caller wakes them after releasing the lock.
    pub fn take_waiters(&mut self) -> Vec<Waker> {
        if self.waiters.is_empty() {
            return Vec::new();
        }
        self.wake_gen += 1;
        let wakers: Vec<Waker> = self.waiters.drain().collect();
        if self.waiters.capacity() > 64 && self.waiters.capacity() > 4 * wakers.len() {
            self.waiters.shrink_to_fit();
        }
        wakers
    }
}
