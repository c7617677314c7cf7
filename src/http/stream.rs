//! The body of a `text/event-stream` response: preamble, events, heartbeats, and an end
//! of its own when the subscriber lags, its lifetime is up, or the node drains (hyper
//! never ends a streaming body on graceful shutdown: hyper#2787).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use rand::Rng;
use tokio::time::{Instant, Sleep};

use crate::hub::{Hub, Subscription, SubscriptionPoll};
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

    /// Append what is ready to go on the wire to `out` (shared buffers, never copies):
    /// `Ready(true)` when something was appended, `Ready(false)` once the stream is over.
    pub fn poll_chunks(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<bool> {
        let before = out.len();
        let polled = self.next_chunks(cx, out);
        let bytes: usize = out[before..].iter().map(Bytes::len).sum();
        if bytes > 0 {
            self.hub.metrics().stream_bytes.inc_by(bytes as u64);
        }
        polled
    }

    fn next_chunks(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<bool> {
        if self.done {
            return Poll::Ready(false);
        }
        if let Some(preamble) = self.preamble.take() {
            out.push(preamble);
            return Poll::Ready(true);
        }
        match self.subscription.poll_events(cx, out) {
            SubscriptionPoll::Events(n) => {
                let metrics = self.hub.metrics();
                metrics.events_delivered.inc_by(n as u64);
                let now = std::time::Instant::now();
                // Handed to the socket write in this same poll (the direct path writes
                // right after gathering; hyper's within its poll of the body).
                if let Some(at) = self.subscription.take_oldest_live_us() {
                    metrics
                        .delivery_latency
                        .observe(self.hub.seconds_since(at, now));
                }
                self.last_write = Instant::from_std(now);
                return Poll::Ready(true);
            }
            SubscriptionPoll::Lagged => {
                tracing::debug!("subscriber fell behind its queue; ending its stream");
                self.end_reason = "lagged";
                self.done = true;
                return Poll::Ready(false);
            }
            SubscriptionPoll::Closed => self.schedule_drain(),
            SubscriptionPoll::Pending => {}
        }
        if let Some((timer, reason)) = &mut self.end_timer {
            if timer.as_mut().poll(cx).is_ready() {
                let reason = *reason;
                out.push(self.farewell(reason));
                return Poll::Ready(true);
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
            return Poll::Ready(true);
        }
        Poll::Pending
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
            Poll::Ready(false) => Poll::Ready(None),
            Poll::Ready(true) => Poll::Ready(Some(Ok(Frame::data(concat(out))))),
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
