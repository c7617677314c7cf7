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
    settings: Arc<StreamSettings>,
    /// `retry:` line and opening comment, sent before anything else.
    preamble: Option<Bytes>,
    /// Fires when the stream has been idle for a heartbeat interval.
    idle_timer: Pin<Box<Sleep>>,
    /// When data was last written; the timer re-arms from it instead of being reset on
    /// every event, which keeps the hot path free of timer-wheel work.
    last_write: Instant,
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
        settings: Arc<StreamSettings>,
        permit: StreamPermit,
    ) -> Self {
        hub.metrics().connections_open.inc();
        hub.metrics().connections_total.inc();
        let now = Instant::now();
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
            settings,
            last_write: now,
            end_timer,
            end_reason: "client",
            done: false,
            _permit: permit,
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
        let spread = self.settings.drain_spread;
        let delay = spread.mul_f64(rand::rng().random_range(0.0..1.0));
        self.end_timer = Some((Box::pin(tokio::time::sleep(delay)), "shutdown"));
    }

    /// The last frame of a stream we end: a `retry:` hint, jittered so that clients
    /// ended together do not reconnect together.
    fn farewell(&mut self, reason: &'static str) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.end_reason = reason;
        self.done = true;
        let base = self.settings.retry.as_millis() as u64;
        let spread = if reason == "shutdown" {
            self.settings.drain_spread.as_millis() as u64
        } else {
            base
        };
        let retry = base + rand::rng().random_range(0..=spread);
        let hint = format!("retry: {retry}\n\n");
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(hint)))))
    }
}

impl Body for SseStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(preamble) = this.preamble.take() {
            return Poll::Ready(Some(Ok(Frame::data(preamble))));
        }
        let mut out = BytesMut::new();
        match this.subscription.poll_events(cx, &mut out) {
            SubscriptionPoll::Events(n) => {
                this.hub.metrics().events_delivered.inc_by(n as u64);
                this.last_write = Instant::now();
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
            SubscriptionPoll::Lagged => {
                tracing::debug!("subscriber fell behind its queue; ending its stream");
                this.end_reason = "lagged";
                this.done = true;
                return Poll::Ready(None);
            }
            SubscriptionPoll::Closed => this.schedule_drain(),
            SubscriptionPoll::Pending => {}
        }
        if let Some((timer, reason)) = &mut this.end_timer {
            if timer.as_mut().poll(cx).is_ready() {
                let reason = *reason;
                return this.farewell(reason);
            }
        }
        while this.idle_timer.as_mut().poll(cx).is_ready() {
            let due = this.last_write + this.settings.heartbeat_interval;
            if due > Instant::now() {
                this.idle_timer.as_mut().reset(due);
                continue;
            }
            this.last_write = Instant::now();
            this.idle_timer
                .as_mut()
                .reset(this.last_write + this.settings.heartbeat_interval);
            this.hub.metrics().heartbeats_sent.inc();
            return Poll::Ready(Some(Ok(Frame::data(this.settings.heartbeat.clone()))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        let metrics = self.hub.metrics();
        metrics.connections_open.dec();
        metrics
            .disconnects
            .with_label_values(&[self.end_reason])
            .inc();
    }
}
