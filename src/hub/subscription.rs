//! A subscriber: cursors into the rings of its channels, read in ID order.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Waker};

use bytes::Bytes;

use super::channel::{Channel, ChannelState};
use super::fanout::Sink;
use super::Hub;

/// What a poll of a subscription produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// This many events were appended to the output buffer; more may be ready.
    Events(usize),
    /// This many events were appended, and they were all there was: the task is already
    /// registered for the next publish, so polling again would only find nothing (the
    /// common case of a delivery, told apart to spare that second poll).
    CaughtUp(usize),
    /// Nothing new; the task is woken on the next publish to one of the channels.
    Pending,
    /// The subscriber fell further behind than the queue allows (or its events left
    /// the ring before it read them): its stream must end, and it resumes from history.
    Lagged,
    /// The hub is shutting down.
    Closed,
}

struct Cursor {
    channel: Arc<Channel>,
    /// Absolute ring position of the next event to deliver.
    pos: u64,
    /// Ring end when the subscription opened. A resume's replay backlog lies before it
    /// and does not count against the queue limit: only falling behind live events does.
    live_from: u64,
    /// Current waker registration in the channel, see `ChannelState::park`.
    parked: Option<(u64, usize)>,
    /// The stream's sink in the channel's list, once it offered one.
    sink: Option<usize>,
}

pub struct Subscription {
    hub: Arc<Hub>,
    cursors: Vec<Cursor>,
    /// A reset event to send before anything else.
    reset: Option<Bytes>,
    /// When (µs since the hub's epoch) the oldest live event of the last poll reached
    /// the hub; replayed history does not count. Read by the stream for the delivery
    /// latency.
    oldest_live_us: Option<u64>,
}

/// How far a subscriber may fall behind its channel before it is cut off.
#[derive(Clone, Copy)]
struct QueueLimit {
    events: u64,
    bytes: u64,
}

impl QueueLimit {
    /// True when the cursor's unread events left the ring, or its unread live events
    /// exceed the limit.
    fn exceeded_by(&self, c: &Cursor, g: &ChannelState) -> bool {
        let from = c.pos.max(c.live_from);
        c.pos < g.start_pos()
            || g.end_pos() - from > self.events
            || g.bytes_behind(from) > self.bytes
    }
}

/// Upper bound on the bytes gathered in one poll: one write's worth.
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// Upper bound on the events gathered in one poll (each is one `iovec` of a write).
const MAX_BATCH_EVENTS: usize = 256;

impl Subscription {
    pub(super) fn new(
        hub: Arc<Hub>,
        channels: Vec<Arc<Channel>>,
        positions: Vec<u64>,
        live_from: Vec<u64>,
        reset: Option<Bytes>,
    ) -> Self {
        let cursors = channels
            .into_iter()
            .zip(positions.into_iter().zip(live_from))
            .map(|(channel, (pos, live_from))| Cursor {
                channel,
                pos,
                live_from,
                parked: None,
                sink: None,
            })
            .collect();
        Self {
            hub,
            cursors,
            reset,
            oldest_live_us: None,
        }
    }

    /// When the oldest live event of the last poll that produced events reached the hub
    /// (µs since its epoch), taken once.
    pub fn take_oldest_live_us(&mut self) -> Option<u64> {
        self.oldest_live_us.take()
    }

    /// True when the subscription opened with a reset (its resume ID was not served).
    pub fn starts_with_reset(&self) -> bool {
        self.reset.is_some()
    }

    /// Append the next pending events, in ID order, to `out`: the shared encoded bytes
    /// of each event, never a copy.
    pub fn poll_events(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll {
        if self.hub.is_closing() {
            return Poll::Closed;
        }
        let mut produced = 0;
        if let Some(reset) = self.reset.take() {
            out.push(reset);
            produced += 1;
        }
        let settings = self.hub.settings.load();
        let queue = QueueLimit {
            events: settings.subscriber_queue_events as u64,
            bytes: settings.subscriber_queue_bytes as u64,
        };
        drop(settings);
        let live = &mut self.oldest_live_us;
        let result = if self.cursors.len() == 1 {
            poll_single(&mut self.cursors[0], cx, out, queue, live)
        } else {
            poll_merged(&self.hub, &mut self.cursors, cx, out, queue, live)
        };
        match result {
            Poll::Events(n) => Poll::Events(n + produced),
            Poll::CaughtUp(n) => Poll::CaughtUp(n + produced),
            Poll::Pending if produced > 0 => Poll::CaughtUp(produced),
            other => other,
        }
    }
}

impl Subscription {
    /// Let pushes write this subscriber's next events straight to `sink` (see
    /// `fanout`) instead of waking its task, when it reads one channel and has read
    /// everything there is. False (and nothing changed) otherwise.
    pub fn go_direct<S: Sink + 'static>(&mut self, sink: &Arc<S>, waker: &Waker) -> bool {
        let [c] = self.cursors.as_mut_slice() else {
            return false;
        };
        let mut g = c.channel.lock();
        // Under the channel lock: a shutdown's recall (`Hub::close`) comes after this.
        if c.pos != g.end_pos() || g.is_loading() || self.hub.is_closing() {
            return false;
        }
        g.unpark(c.parked.take());
        if c.sink.is_none() {
            c.sink = Some(g.add_sink(sink.clone()));
        }
        sink.enter(c.pos, waker);
        true
    }

    /// Back from direct writes that took the subscriber to ring position `pos`.
    pub fn resume_at(&mut self, pos: u64) {
        if let [c] = self.cursors.as_mut_slice() {
            c.pos = c.pos.max(pos);
        }
    }
}

fn poll_single(
    c: &mut Cursor,
    cx: &mut Context<'_>,
    out: &mut Vec<Bytes>,
    queue: QueueLimit,
    oldest_live_us: &mut Option<u64>,
) -> Poll {
    let mut g = c.channel.lock();
    if queue.exceeded_by(c, &g) {
        return Poll::Lagged;
    }
    let mut n = 0;
    let mut bytes = 0;
    let mut first_live = None;
    let mut caught_up = false;
    while n < MAX_BATCH_EVENTS && bytes < MAX_BATCH_BYTES {
        match g.get(c.pos) {
            Some(e) => {
                if first_live.is_none() && c.pos >= c.live_from {
                    first_live = Some(e.at_us);
                }
                bytes += e.bytes.len();
                out.push(e.bytes.clone());
                c.pos += 1;
                n += 1;
            }
            None => {
                caught_up = true;
                break;
            }
        }
    }
    if n == 0 {
        g.park(&mut c.parked, cx.waker());
        return Poll::Pending;
    }
    *oldest_live_us = first_live;
    if caught_up {
        // Under the same lock as the read: no publish can slip in between.
        g.park(&mut c.parked, cx.waker());
        return Poll::CaughtUp(n);
    }
    Poll::Events(n)
}

/// Several channels: deliver only events up to an ID horizon read *before* looking at the
/// rings. Every event with an ID at or below it is already in its ring (IDs are assigned
/// under the channel lock), so what is delivered is in global ID order and a later poll
/// can never produce a smaller ID, which keeps `Last-Event-ID` exact.
fn poll_merged(
    hub: &Hub,
    cursors: &mut [Cursor],
    cx: &mut Context<'_>,
    out: &mut Vec<Bytes>,
    queue: QueueLimit,
    oldest_live_us: &mut Option<u64>,
) -> Poll {
    loop {
        let horizon = hub.seq.load(Ordering::Acquire);
        // (id, cursor, bytes, reached the hub at: for live events only)
        let mut batch: Vec<(u64, usize, Bytes, Option<u64>)> = Vec::new();
        let mut pending_beyond_horizon = false;
        // Mirror role: an event loaded with history can wait beyond the horizon until its
        // pub/sub message arrives; the subscriber parks on its channel meanwhile.
        // Each channel contributes a bounded slice; the lowest last ID among slices that
        // were cut short bounds what is safe to deliver this time.
        let mut cutoff = u64::MAX;
        for (i, c) in cursors.iter_mut().enumerate() {
            let mut g = c.channel.lock();
            if queue.exceeded_by(c, &g) {
                return Poll::Lagged;
            }
            let mut pos = c.pos;
            let mut bytes = 0;
            let mut last_id = 0;
            while let Some(e) = g.get(pos) {
                if e.id > horizon {
                    if hub.mirror && e.id > hub.seq.load(Ordering::Acquire) {
                        g.park(&mut c.parked, cx.waker());
                    } else {
                        pending_beyond_horizon = true;
                    }
                    break;
                }
                if bytes >= MAX_BATCH_BYTES || pos - c.pos >= MAX_BATCH_EVENTS as u64 {
                    cutoff = cutoff.min(last_id);
                    break;
                }
                bytes += e.bytes.len();
                last_id = e.id;
                let live = (pos >= c.live_from).then_some(e.at_us);
                batch.push((e.id, i, e.bytes.clone(), live));
                pos += 1;
            }
            if pos == g.end_pos() && pos == c.pos {
                g.park(&mut c.parked, cx.waker());
            }
        }
        if batch.is_empty() {
            // Beyond a horizon that has moved since: look again. Blocked channels have a
            // waker registered and do not count.
            if pending_beyond_horizon {
                continue;
            }
            return Poll::Pending;
        }
        batch.sort_unstable_by_key(|(id, ..)| *id);
        let mut n = 0;
        let mut oldest = None;
        for (id, i, bytes, live) in batch.into_iter().take(MAX_BATCH_EVENTS) {
            if id > cutoff {
                break;
            }
            out.push(bytes);
            cursors[i].pos += 1;
            n += 1;
            if let Some(at) = live {
                oldest = Some(oldest.map_or(at, |o: u64| o.min(at)));
            }
        }
        *oldest_live_us = oldest;
        return Poll::Events(n);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for c in &self.cursors {
            let mut g = c.channel.lock();
            g.subscribers -= 1;
            g.unpark(c.parked);
            if let Some(key) = c.sink {
                g.remove_sink(key);
            }
        }
    }
}
