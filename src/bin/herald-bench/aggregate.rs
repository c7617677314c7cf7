//! What the coordinator knows from its workers: their frames merged into totals and
//! histograms, and the loop that takes frames in and prints progress every second.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::publisher::Totals;
use crate::stats::{add_buckets, histogram, Counters, Frame, Percentiles};

/// A message from a worker's stdout reader thread.
pub enum Msg {
    Frame(usize, Frame),
    /// The worker's stdout closed (it exited).
    Gone(usize),
}

/// What the coordinator knows, merged from the workers' frames.
pub struct Aggregate {
    started: Instant,
    latest: Vec<Counters>,
    /// Workers that have opened (or failed) all their streams.
    pub ready: Vec<bool>,
    gone: Vec<bool>,
    /// Workers whose final frame arrived.
    pub finals: Vec<bool>,
    /// Open streams per channel over all workers (from their ready frames).
    pub per_channel: Vec<u64>,
    pub latency: Histogram<u64>,
    /// Latencies since the last progress line.
    interval: Histogram<u64>,
    pub connect: Histogram<u64>,
    pub failures: BTreeMap<String, u64>,
    last_unique: u64,
    /// When the count of first deliveries last grew.
    pub last_unique_change: Instant,
    /// Shown in progress lines.
    pub phase: &'static str,
    next_print: Instant,
    printed_delivered: u64,
    printed_published: u64,
    printed_at: Instant,
}

impl Aggregate {
    pub fn new(workers: usize, channels: usize) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            latest: vec![Counters::default(); workers],
            ready: vec![false; workers],
            gone: vec![false; workers],
            finals: vec![false; workers],
            per_channel: vec![0; channels],
            latency: histogram(),
            interval: histogram(),
            connect: histogram(),
            failures: BTreeMap::new(),
            last_unique: 0,
            last_unique_change: now,
            phase: "open",
            next_print: now + Duration::from_secs(1),
            printed_delivered: 0,
            printed_published: 0,
            printed_at: now,
        }
    }

    pub fn totals(&self) -> Counters {
        let mut t = Counters::default();
        for c in &self.latest {
            t.add(c);
        }
        t
    }

    pub fn all(&self, flags: &[bool]) -> bool {
        flags.iter().zip(&self.gone).all(|(f, g)| *f || *g)
    }

    pub fn absorb(&mut self, msg: Msg) {
        match msg {
            Msg::Gone(w) => self.gone[w] = true,
            Msg::Frame(w, frame) => match frame {
                Frame::Progress { counters, latency } => {
                    add_buckets(&mut self.latency, &latency);
                    add_buckets(&mut self.interval, &latency);
                    self.latest[w] = counters;
                }
                Frame::Ready {
                    counters,
                    per_channel,
                } => {
                    for (total, n) in self.per_channel.iter_mut().zip(per_channel) {
                        *total += u64::from(n);
                    }
                    self.latest[w] = counters;
                    self.ready[w] = true;
                }
                Frame::Final {
                    counters,
                    latency,
                    connect,
                    failures,
                } => {
                    add_buckets(&mut self.latency, &latency);
                    add_buckets(&mut self.connect, &connect);
                    for (k, v) in failures {
                        *self.failures.entry(k).or_default() += v;
                    }
                    self.latest[w] = counters;
                    self.finals[w] = true;
                }
            },
        }
        let unique = self.totals().unique;
        if unique != self.last_unique {
            self.last_unique = unique;
            self.last_unique_change = Instant::now();
        }
    }

    pub fn print_progress(&mut self, published: u64) {
        let now = Instant::now();
        let secs = now.duration_since(self.printed_at).as_secs_f64().max(1e-3);
        let t = self.totals();
        let p = Percentiles::of(&self.interval);
        eprintln!(
            "[{:6.1}s] {:<7} streams {} ok, {} failed, {} dropped | published {} ({:.0}/s) | delivered {} ({:.0}/s) | p50 {:.2} ms p99 {:.2} ms",
            now.duration_since(self.started).as_secs_f64(),
            self.phase,
            t.connected,
            t.failed,
            t.dropped,
            published,
            (published - self.printed_published) as f64 / secs,
            t.unique,
            t.unique.saturating_sub(self.printed_delivered) as f64 / secs,
            p.p50,
            p.p99,
        );
        self.interval.reset();
        self.printed_delivered = t.unique;
        self.printed_published = published;
        self.printed_at = now;
        self.next_print = now + Duration::from_secs(1);
    }
}

/// Absorb worker frames and print progress until `done` or the deadline.
pub async fn pump(
    agg: &mut Aggregate,
    rx: &mut mpsc::Receiver<Msg>,
    totals: &Totals,
    deadline: Instant,
    mut done: impl FnMut(&Aggregate) -> bool,
) {
    let mut open = true;
    while !done(agg) {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tokio::time::sleep_until(agg.next_print) => agg.print_progress(totals.events.get()),
            msg = rx.recv(), if open => match msg {
                Some(m) => agg.absorb(m),
                None => open = false,
            },
        }
    }
}
