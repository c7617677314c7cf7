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
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;

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
    fn offer(&self, tail: &Tail) -> Option<Written>;
    /// Hand the stream back to its task, woken (shutdown, a reload).
    fn recall(&self);
}

/// What a sink wrote in one offer.
pub struct Written {
    /// Index in the tail of the first event written.
    pub first: usize,
    pub events: usize,
    pub bytes: usize,
    pub at: Instant,
}

/// The newest events of a channel at a push, shared by the shards of its pass.
pub struct Tail {
    /// Ring position of `events[0]`.
    pub first_pos: u64,
    pub events: Vec<Bytes>,
    /// When each event reached the hub (µs since its epoch), for the delivery latency.
    pub at_us: Vec<u64>,
    /// A write of more than this goes through the task (its batching, its lag check).
    pub max_bytes: usize,
}

impl Tail {
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
/// Streams one task of a pass writes: big enough for the writes to come back to back,
/// small enough to leave the worker to other tasks (and other workers a share) soon.
const SHARD: usize = 128;

/// One push's direct writes: every sink of the channel, offered the tail.
pub(super) struct Pass {
    pub tail: Arc<Tail>,
    pub sinks: Arc<[Arc<dyn Sink>]>,
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
            let len = pass.sinks.len();
            let handle = tokio::runtime::Handle::try_current();
            for start in (0..len).step_by(SHARD) {
                let shard = Shard {
                    tail: pass.tail.clone(),
                    sinks: pass.sinks.clone(),
                    range: start..len.min(start + SHARD),
                };
                match &handle {
                    Ok(handle) => {
                        let metrics = metrics.clone();
                        handle.spawn(async move { shard.run(&metrics, epoch) });
                    }
                    Err(_) => shard.run(metrics, epoch),
                }
            }
        }
    }
}

struct Shard {
    tail: Arc<Tail>,
    sinks: Arc<[Arc<dyn Sink>]>,
    range: Range<usize>,
}

impl Shard {
    fn run(self, metrics: &Metrics, epoch: Instant) {
        let (mut events, mut bytes) = (0, 0);
        for sink in &self.sinks[self.range] {
            let Some(w) = sink.offer(&self.tail) else {
                continue;
            };
            events += w.events as u64;
            bytes += w.bytes as u64;
            let latency = super::seconds_since(epoch, self.tail.at_us[w.first], w.at);
            metrics.delivery_latency.observe(latency);
        }
        if events > 0 {
            metrics.events_delivered.inc_by(events);
            metrics.events_delivered_direct.inc_by(events);
            metrics.stream_bytes.inc_by(bytes);
        }
    }
}
