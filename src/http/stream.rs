//! The body of a `text/event-stream` response: preamble, events, heartbeats, and an end
//! of its own when the subscriber lags, its lifetime is up, or the node drains (hyper
//! never ends a streaming body on graceful shutdown: hyper#2787).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use rand::Rng;
use tokio::time::{Instant, Sleep};

use crate::hub::{Hub, Sink, Subscription, SubscriptionPoll};
use crate::limits::StreamPermit;
use crate::settings::LiveSettings;

/// Per-node stream settings, shared by every stream.
#[derive(Clone)]
pub struct StreamSettings {
    pub heartbeat_interval: Duration,
    /// The heartbeat as it goes on the wire (a comment or a named event).
    pub heartbeat: Bytes,
    /// `sse.retry`, the base of the `retry:` hints sent when we end a stream.
    pub retry: Duration,
    /// `limits.max_connection_lifetime`; zero is unlimited.
    pub max_lifetime: Duration,
    pub lifetime_jitter: f64,
    /// Streams end at a random moment within this window once the node drains.
    pub drain_spread: Duration,
}

pub struct SseStream {
    subscription: Subscription,
    hub: Arc<Hub>,
    /// The settings in force: read when a timer fires or the stream ends, so an open
    /// stream follows a reload (a new heartbeat interval applies at once).
    live: Arc<LiveSettings>,
    /// `retry:` line and opening comment, sent before anything else.
    preamble: Option<Bytes>,
    /// Fires when the stream has been idle for a heartbeat interval.
    idle_timer: Pin<Box<Sleep>>,
    /// When data was last written; the timer re-arms from it instead of being reset on
    /// every event, which keeps the hot path free of timer-wheel work.
    last_write: Instant,
    /// When the stream opened, for its lifetime metric.
    opened: Instant,
    /// When we will end the stream ourselves (lifetime or drain), and why.
    end_timer: Option<(Pin<Box<Sleep>>, &'static str)>,
    /// Why the stream ended, for the disconnect metric (`client` unless we ended it).
    end_reason: &'static str,
    /// Until when neither timer can fire, as of the last poll that registered them.
    quiet: Quiet,
    done: bool,
    _permit: StreamPermit,
}

impl SseStream {
    pub fn new(
        hub: Arc<Hub>,
        subscription: Subscription,
        preamble: Bytes,
        live: Arc<LiveSettings>,
        permit: StreamPermit,
    ) -> Self {
        hub.metrics().connections_open.inc();
        hub.metrics().connections_total.inc();
        let now = Instant::now();
        let current = live.load();
        let settings = &current.stream;
        let end_timer = (!settings.max_lifetime.is_zero()).then(|| {
            let jitter = settings
                .max_lifetime
                .mul_f64(rand::rng().random_range(0.0..=settings.lifetime_jitter));
            (
                Box::pin(tokio::time::sleep_until(
                    now + settings.max_lifetime + jitter,
                )),
                "lifetime",
            )
        });
        Self {
            subscription,
            hub,
            preamble: Some(preamble),
            idle_timer: Box::pin(tokio::time::sleep_until(now + settings.heartbeat_interval)),
            last_write: now,
            opened: now,
            end_timer,
            end_reason: "client",
            // Nothing registered yet: the first poll checks the timers.
            quiet: Quiet::default(),
            done: false,
            _permit: permit,
            live,
        }
    }

    /// Record why the connection carrying this stream ended, when the stream itself did
    /// not end it (e.g. `write_timeout`).
    pub fn mark_ended(&mut self, reason: &'static str) {
        self.end_reason = reason;
    }

    /// Schedule the end of the stream for a random moment within the drain window.
    fn schedule_drain(&mut self) {
        if matches!(self.end_timer, Some((_, "shutdown"))) {
            return;
        }
        let spread = self.live.load().stream.drain_spread;
        let delay = spread.mul_f64(rand::rng().random_range(0.0..1.0));
        self.end_timer = Some((Box::pin(tokio::time::sleep(delay)), "shutdown"));
    }

    /// The last bytes of a stream we end: a `retry:` hint, jittered so that clients
    /// ended together do not reconnect together.
    fn farewell(&mut self, reason: &'static str) -> Bytes {
        self.end_reason = reason;
        self.done = true;
        let current = self.live.load();
        let settings = &current.stream;
        let base = settings.retry.as_millis() as u64;
        let spread = if reason == "shutdown" {
            settings.drain_spread.as_millis() as u64
        } else {
            base
        };
        let retry = base + rand::rng().random_range(0..=spread);
        Bytes::from(format!("retry: {retry}\n\n"))
    }

    /// Let pushes write the next events straight to `sink` (`hub::fanout`) while this
    /// stream is caught up; true when it does. `waker` is woken when it hands back.
    pub fn go_direct<S: Sink + 'static>(&mut self, sink: &Arc<S>, waker: &Waker) -> bool {
        !self.done && self.preamble.is_none() && self.subscription.go_direct(sink, waker)
    }

    /// Back from direct writes: they took the subscription to ring position `pos`, the
    /// last of them went out at `last_write` (the heartbeat counts from it).
    pub fn resume(&mut self, pos: u64, last_write: Option<Instant>) {
        self.subscription.resume_at(pos);
        if let Some(at) = last_write {
            self.last_write = self.last_write.max(at);
        }
    }

    /// Append what is ready to go on the wire to `out` (shared buffers, never copies).
    pub fn poll_chunks(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<Chunks> {
        let before = out.len();
        let polled = self.next_chunks(cx, out);
        let bytes: usize = out[before..].iter().map(Bytes::len).sum();
        if bytes > 0 {
            self.hub.metrics().stream_bytes.inc_by(bytes as u64);
        }
        polled
    }

    fn next_chunks(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<Chunks> {
        if self.done {
            return Poll::Ready(Chunks::End);
        }
        if let Some(preamble) = self.preamble.take() {
            out.push(preamble);
            return Poll::Ready(Chunks::More);
        }
        let polled = self.subscription.poll_events(cx, out);
        match polled {
            SubscriptionPoll::Events(n) | SubscriptionPoll::CaughtUp(n) => {
                let metrics = self.hub.metrics();
                metrics.events_delivered.inc_by(n as u64);
                // The timers' clock (tokio's: the same as std's outside paused tests).
                let now = Instant::now();
                // Handed to the socket write in this same poll (the direct path writes
                // right after gathering; hyper's within its poll of the body).
                if let Some(at) = self.subscription.take_oldest_live_us() {
                    metrics
                        .delivery_latency
                        .observe(self.hub.seconds_since(at, now.into_std()));
                }
                self.last_write = now;
                // Parked for the next event, and no timer due before the next wake-up:
                // the timers' checks (and the gather's second poll) are skipped.
                let caught_up = matches!(polled, SubscriptionPoll::CaughtUp(_))
                    && self.quiet.holds(&self.hub, self.last_write - self.opened);
                return Poll::Ready(if caught_up {
                    Chunks::CaughtUp
                } else {
                    Chunks::More
                });
            }
            SubscriptionPoll::Lagged => {
                tracing::debug!("subscriber fell behind its queue; ending its stream");
                self.end_reason = "lagged";
                self.done = true;
                return Poll::Ready(Chunks::End);
            }
            SubscriptionPoll::Closed => self.schedule_drain(),
            SubscriptionPoll::Pending => {}
        }
        // Read before the settings: a reload after this read shows as a new count.
        let reloads = self.hub.reloads();
        if let Some((timer, reason)) = &mut self.end_timer {
            if timer.as_mut().poll(cx).is_ready() {
                let reason = *reason;
                out.push(self.farewell(reason));
                return Poll::Ready(Chunks::More);
            }
        }
        let current = self.live.load();
        let settings = &current.stream;
        // A reload that shortened the interval wakes every stream (Hub::reconfigure): a
        // timer armed for the old, later moment is brought forward. A longer interval
        // needs nothing: the timer re-arms from the last write when it fires.
        let due = self.last_write + settings.heartbeat_interval;
        if self.idle_timer.deadline() > due {
            self.idle_timer.as_mut().reset(due);
        }
        while self.idle_timer.as_mut().poll(cx).is_ready() {
            let due = self.last_write + settings.heartbeat_interval;
            if due > Instant::now() {
                self.idle_timer.as_mut().reset(due);
                continue;
            }
            self.last_write = Instant::now();
            self.idle_timer
                .as_mut()
                .reset(self.last_write + settings.heartbeat_interval);
            self.hub.metrics().heartbeats_sent.inc();
            out.push(settings.heartbeat.clone());
            return Poll::Ready(Chunks::More);
        }
        // Both timers were polled and are pending: each wakes this task when due.
        let mut due = self.idle_timer.deadline();
        if let Some((timer, _)) = &self.end_timer {
            due = due.min(timer.deadline());
        }
        self.quiet = Quiet::until(reloads, due - self.opened);
        Poll::Pending
    }
}

/// What [`SseStream::poll_chunks`] appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunks {
    /// Chunks; more may be ready.
    More,
    /// Chunks, and then nothing: the task is registered for every event and timer to come,
    /// so a poll now would only find nothing (the common case of a delivery).
    CaughtUp,
    /// The stream is over (possibly with final chunks).
    End,
}

/// A window in which a stream's timers cannot fire: both were polled (so each wakes the
/// task when due) with deadlines after it, under the settings of `reloads` reloads. A
/// delivery inside it need not look at them again; a reload (which may bring the
/// heartbeat forward) ends it. Packed to six bytes so that it and `done` share the word
/// the stream had spare (`a_stream_task_holds_only_its_pump`); the reload count is the
/// hub's, truncated: 65,536 reloads inside one window would be needed to fool it.
#[derive(Default, Clone, Copy)]
#[repr(C, packed(2))]
struct Quiet {
    reloads: u16,
    /// Milliseconds after the stream opened, rounded down (a timer never fires early).
    /// Zero, the start and the value for a stream older than `u32::MAX` ms: no window.
    until_ms: u32,
}

impl Quiet {
    fn until(reloads: u32, due: Duration) -> Self {
        Self {
            reloads: reloads as u16,
            until_ms: u32::try_from(due.as_millis()).unwrap_or(0),
        }
    }

    /// True at `age` (time since the stream opened) under the hub's current settings.
    fn holds(&self, hub: &Hub, age: Duration) -> bool {
        let Self { reloads, until_ms } = *self;
        age.as_millis() < u128::from(until_ms) && reloads == hub.reloads() as u16
    }
}

/// The hyper path: one body frame per poll, concatenating when several chunks are ready.
impl Body for SseStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let mut out = Vec::new();
        match self.poll_chunks(cx, &mut out) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Chunks::End) => Poll::Ready(None),
            Poll::Ready(_) => Poll::Ready(Some(Ok(Frame::data(concat(out))))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// One buffer from several; a single chunk is passed on without a copy.
pub fn concat(mut chunks: Vec<Bytes>) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut buf = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in &chunks {
        buf.extend_from_slice(chunk);
    }
    buf.freeze()
}

impl Drop for SseStream {
    fn drop(&mut self) {
        let metrics = self.hub.metrics();
        metrics.connections_open.dec();
        metrics.observe_stream_end(self.end_reason, self.opened.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use super::*;
    use crate::config::Config;
    use crate::hub::NewEvent;
    use crate::limits::Admission;
    use crate::metrics::Metrics;
    use crate::settings::Settings;

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Fixture {
        hub: Arc<Hub>,
        stream: SseStream,
        wakes: Arc<CountingWaker>,
    }

    impl Fixture {
        fn new(heartbeat: Duration) -> Self {
            let mut config = Config::default();
            config.sse.heartbeat_interval = heartbeat;
            let settings = Settings::build(config, false).unwrap();
            let hub = Hub::new(settings.hub.clone(), Arc::new(Metrics::new()));
            let permit = Admission::new()
                .admit([127, 0, 0, 1].into(), &settings.admission)
                .unwrap();
            let preamble = settings.preamble.clone();
            let subscription = hub.subscribe(&["a".to_string()], None).unwrap();
            let live = Arc::new(LiveSettings::new(settings));
            let stream = SseStream::new(hub.clone(), subscription, preamble, live, permit);
            Self {
                hub,
                stream,
                wakes: Arc::default(),
            }
        }

        /// Poll until nothing is ready, as the stream's task does; the chunks' text.
        fn drain(&mut self) -> String {
            let waker = Waker::from(self.wakes.clone());
            let mut cx = Context::from_waker(&waker);
            let mut out = Vec::new();
            loop {
                match self.stream.poll_chunks(&mut cx, &mut out) {
                    Poll::Ready(Chunks::More) => continue,
                    Poll::Ready(Chunks::End) => panic!("the stream ended"),
                    Poll::Ready(Chunks::CaughtUp) | Poll::Pending => break,
                }
            }
            out.iter().map(|b| String::from_utf8_lossy(b)).collect()
        }

        fn publish(&self, data: &str) {
            let event = NewEvent {
                channel: "a".into(),
                event: None,
                data: data.into(),
                retry: None,
            };
            self.hub.publish(&[event]).unwrap();
        }

        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::SeqCst)
        }
    }

    /// Paused time: advance it and let the timer driver fire what is due.
    async fn advance(by: Duration) {
        tokio::time::advance(by).await;
        tokio::task::yield_now().await;
    }

    /// The idle timer fires while events flow and its wake-up finds an event too: that
    /// delivery must not skip the timer (it would never wake the task again, and the
    /// stream would go silent for good once the events stop).
    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_due_during_a_delivery_still_comes_after_the_events_stop() {
        let interval = Duration::from_secs(10);
        let mut f = Fixture::new(interval);
        assert!(f.drain().contains(": herald"), "the preamble");

        // Inside the quiet window: a delivery that skips the timers.
        advance(Duration::from_secs(5)).await;
        f.publish("early");
        assert!(f.drain().contains("data: early"));

        // The timer's moment passes (it wakes the task) and an event arrives before the
        // task runs: one poll sees both.
        let before = f.wakes();
        advance(Duration::from_secs(6)).await;
        assert!(f.wakes() > before, "the idle timer woke the task");
        f.publish("late");
        assert!(f.drain().contains("data: late"));

        // No more events: one interval after the last, the task is woken for a heartbeat.
        let before = f.wakes();
        advance(interval - Duration::from_millis(100)).await;
        assert_eq!(f.wakes(), before, "no wake-up before the interval is over");
        advance(Duration::from_millis(200)).await;
        assert!(f.wakes() > before, "woken for the heartbeat");
        assert_eq!(f.drain(), ": ping\n\n");
    }

    /// A reload that shortens the heartbeat wakes every stream; one that finds an event
    /// at that moment still brings its heartbeat forward.
    #[tokio::test(start_paused = true)]
    async fn a_reload_during_a_delivery_still_brings_the_heartbeat_forward() {
        let mut f = Fixture::new(Duration::from_secs(100));
        f.drain();
        advance(Duration::from_secs(1)).await;
        let shorter = {
            let mut config = Config::default();
            config.sse.heartbeat_interval = Duration::from_secs(2);
            Settings::build(config, false).unwrap()
        };
        let hub_settings = shorter.hub.clone();
        f.stream.live.store(shorter);
        f.hub.reconfigure(hub_settings);
        f.publish("during");
        assert!(f.drain().contains("data: during"));

        let before = f.wakes();
        advance(Duration::from_millis(2100)).await;
        assert!(f.wakes() > before, "woken at the new, shorter interval");
        assert_eq!(f.drain(), ": ping\n\n");
    }
}
