//! The tight pass: a publish writes the next events of its channel's caught-up streams
//! straight to their sockets, one after another, instead of waking each stream's task.
//!
//! Why: a wake-up per delivery costs a run-queue round trip, the task's poll, its readiness
//! and timer checks, and spreads the writes out in time; on a network path that charges
//! per wake-up of the receiving side (RPS, interrupts) the spread costs more again. A
//! stream whose task has nothing unsent and has read everything offers its socket as a
//! [`Sink`]; every push to the channel hands the newest events to each sink, and the
//! sink either writes them or hands the stream back to its task (a partial write, a
//! stream too far behind, an error): whatever is not plain goes through the task.

use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;

use super::channel::Channel;
use crate::metrics::Metrics;

/// A caught-up stream's socket, as its channel sees it.
pub trait Sink: Send + Sync {
    /// The stream has read up to `pos` and sent all of it: later events may be written
    /// directly, and `waker` is woken when the stream is handed back. Called under the
    /// channel lock, so no push can fall between the check that `pos` is the ring's end
    /// and this.
    fn enter(&self, pos: u64, waker: &Waker);
    /// Write `tail`'s events from the sink's position on, if it is in direct mode; else
    /// (or when that cannot be done in one plain write) hand the stream back to its task.
    /// `now` is when the shard started (a few sends ago at most): the write's time.
    fn offer(&self, tail: &Tail, now: tokio::time::Instant) -> Option<Written>;
    /// Hand the stream back to its task, woken (shutdown, a reload).
    fn recall(&self);
}

/// What a sink wrote in one offer.
pub struct Written {
    /// Index in the tail of the first event written.
    pub first: usize,
    pub events: usize,
    pub bytes: usize,
}

/// The newest events of a channel, as a shard of a pass starts (shared by the shards
/// that start before the ring moves).
pub struct Tail {
    /// Ring position of `events[0]`.
    pub first_pos: u64,
    pub events: Vec<Bytes>,
    /// When each event reached the hub (µs since its epoch), for the delivery latency.
    pub at_us: Vec<u64>,
    /// A write of more than this goes through the task (its batching, its lag check).
    pub max_bytes: usize,
    /// The events on the wire, one buffer per framing (see [`Tail::framed`]).
    framed: [OnceLock<Framed>; FRAMINGS],
}

/// Some of a tail's events as they go on the wire, back to back in one buffer: a sink
/// sends the bytes from its first unread event on with one plain `send`, however many it
/// has unread, instead of gathering slices for a `sendmsg` per stream.
struct Framed {
    /// Index in the tail of the first event framed.
    from: usize,
    bytes: Vec<u8>,
    /// Where each event from `from` on starts in `bytes`.
    starts: Vec<usize>,
}

/// Framings a tail keeps (the direct sink's: HTTP/1.1 chunks, or the bytes as they are).
pub const FRAMINGS: usize = 2;

impl Tail {
    pub fn new(first_pos: u64, events: Vec<Bytes>, at_us: Vec<u64>, max_bytes: usize) -> Self {
        Self {
            first_pos,
            events,
            at_us,
            max_bytes,
            framed: Default::default(),
        }
    }

    /// The events from index `first` on as they go on the wire, framed by `frame` (which
    /// appends one event), in one buffer built by the first sink of the pass that asks,
    /// outside the channel lock, and shared by the others. The buffer starts at that
    /// sink's first unread event, so it holds no more than one write carries: `None` for
    /// a sink further behind than that one, which writes its events itself. `framing`
    /// (below [`FRAMINGS`]) names the framing: callers passing the same one pass the same
    /// `frame`.
    pub fn framed(
        &self,
        framing: usize,
        first: usize,
        frame: impl Fn(&[u8], &mut Vec<u8>),
    ) -> Option<&[u8]> {
        let framed = self.framed[framing].get_or_init(|| {
            let events = self.events.get(first..).unwrap_or_default();
            let mut bytes = Vec::with_capacity(events.iter().map(|e| e.len() + 24).sum());
            let starts = events
                .iter()
                .map(|event| {
                    let start = bytes.len();
                    frame(event, &mut bytes);
                    start
                })
                .collect();
            Framed {
                from: first,
                bytes,
                starts,
            }
        });
        let at = *framed.starts.get(first.checked_sub(framed.from)?)?;
        Some(&framed.bytes[at..])
    }

    /// The events from ring position `pos` on, with the index of the first; `None` when
    /// `pos` lies before the tail (that stream is further behind than a pass carries).
    pub fn from(&self, pos: u64) -> Option<(usize, &[Bytes])> {
        let index = usize::try_from(pos.checked_sub(self.first_pos)?).ok()?;
        Some((index, self.events.get(index..).unwrap_or_default()))
    }
}

/// Events a pass carries at most: a stream further behind goes through its task.
pub const TAIL_EVENTS: usize = 32;
/// Bytes one direct write carries at most.
pub const MAX_DIRECT_BYTES: usize = 64 * 1024;
/// Streams one task of a pass writes: enough for the writes to come back to back, few
/// enough that the worker soon looks at other tasks and at its sockets (tokio polls the
/// I/O driver every 61 task polls: with shards of 128, a publisher's next request waited
/// for most of a 10,000-stream pass, and at 50 publishes/s to 10,000 streams only ~30 got
/// in; with 16, 491-500 of 500; with 8, 500 and a lower p99, at the same CPU per delivery).
const SHARD: usize = 8;

/// A channel's direct writes, owed since a push. A channel has at most one pass queued:
/// pushes while it waits add nothing, and each shard reads the ring's newest events when
/// it starts, so at a high rate one write to a stream carries every event published
/// since the last (as a task woken twice runs once).
pub(super) struct Pass {
    pub channel: Arc<Channel>,
    /// `subscriber_queue_events` and `subscriber_queue_bytes` at the push.
    pub limits: (usize, usize),
    /// Set once it ran; one dropped unrun (a runtime shutting down) unblocks the next.
    pub started: bool,
}

impl Drop for Pass {
    fn drop(&mut self) {
        if !self.started {
            self.channel.lock().cancel_pass();
        }
    }
}

/// What a push owes the channel's subscribers, gathered under the channel locks and done
/// once they are released: tasks to wake, and passes to run.
#[derive(Default)]
pub(super) struct Wakes {
    pub wakers: Vec<Waker>,
    pub passes: Vec<Pass>,
}

impl Wakes {
    /// Wake the tasks, and run the passes as tasks of their own on the current runtime
    /// (in shards), or here when there is none.
    pub fn run(self, metrics: &Arc<Metrics>, epoch: Instant) {
        for w in self.wakers {
            w.wake();
        }
        for pass in self.passes {
            let metrics = metrics.clone();
            spawn_or_run(move || pass.run(&metrics, epoch));
        }
    }
}

/// Run `work` as a task of the current runtime, or here when there is none (a hub used
/// outside one: tests).
fn spawn_or_run(work: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn(async move { work() })),
        Err(_) => work(),
    }
}

impl Pass {
    /// Take the channel's sinks (from here on a push queues a new pass), write the first
    /// shard of them and queue the others as tasks, which other workers may take.
    fn run(mut self, metrics: &Arc<Metrics>, epoch: Instant) {
        self.started = true;
        let Some(sinks) = self.channel.lock().start_pass() else {
            return;
        };
        let len = sinks.len();
        for start in (SHARD..len).step_by(SHARD) {
            let shard = Shard {
                channel: self.channel.clone(),
                limits: self.limits,
                sinks: sinks.clone(),
                range: start..len.min(start + SHARD),
            };
            let metrics = metrics.clone();
            spawn_or_run(move || shard.run(&metrics, epoch));
        }
        let first = Shard {
            channel: self.channel.clone(),
            limits: self.limits,
            sinks,
            range: 0..len.min(SHARD),
        };
        first.run(metrics, epoch);
    }
}

struct Shard {
    channel: Arc<Channel>,
    limits: (usize, usize),
    sinks: Arc<[Arc<dyn Sink>]>,
    range: Range<usize>,
}

impl Shard {
    fn run(self, metrics: &Metrics, epoch: Instant) {
        let tail = self.channel.lock().tail(self.limits);
        // One clock read for the shard's writes (as their time) and one after them (for
        // their latency), rather than one per stream.
        let now = tokio::time::Instant::now();
        let (mut events, mut bytes) = (0, 0);
        let mut firsts = [0; SHARD];
        let mut written = 0;
        for sink in &self.sinks[self.range] {
            let Some(w) = sink.offer(&tail, now) else {
                continue;
            };
            events += w.events as u64;
            bytes += w.bytes as u64;
            firsts[written] = w.first;
            written += 1;
        }
        let done = Instant::now();
        for &first in &firsts[..written] {
            let latency = super::seconds_since(epoch, tail.at_us[first], done);
            metrics.delivery_latency.observe(latency);
        }
        if events > 0 {
            metrics.events_delivered.inc_by(events);
            metrics.events_delivered_direct.inc_by(events);
            metrics.stream_bytes.inc_by(bytes);
        }
    }
}
