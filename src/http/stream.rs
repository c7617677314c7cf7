//! The body of a `text/event-stream` response: preamble, events, heartbeats, and an end
//! of its own when the subscriber lags or the node shuts down (hyper never ends a
//! streaming body on graceful shutdown: hyper#2787).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use tokio::time::{Instant, Sleep};

use crate::hub::{Hub, Subscription, SubscriptionPoll};

/// How heartbeats look on the wire; one shared buffer for every stream.
#[derive(Clone)]
pub struct Heartbeat {
    pub interval: Duration,
    pub bytes: Bytes,
}

pub struct SseStream {
    subscription: Subscription,
    hub: Arc<Hub>,
    /// `retry:` line and opening comment, sent before anything else.
    preamble: Option<Bytes>,
    heartbeat: Heartbeat,
    /// Fires when the stream has been idle for a heartbeat interval.
    idle_timer: Pin<Box<Sleep>>,
    /// When data was last written; the timer re-arms from it instead of being reset on
    /// every event, which keeps the hot path free of timer-wheel work.
    last_write: Instant,
    /// Why the stream ended, for the disconnect metric (`client` unless we ended it).
    end_reason: &'static str,
    done: bool,
}

impl SseStream {
    pub fn new(
        hub: Arc<Hub>,
        subscription: Subscription,
        preamble: Bytes,
        heartbeat: Heartbeat,
    ) -> Self {
        hub.metrics().connections_open.inc();
        hub.metrics().connections_total.inc();
        let now = Instant::now();
        Self {
            subscription,
            hub,
            preamble: Some(preamble),
            idle_timer: Box::pin(tokio::time::sleep_until(now + heartbeat.interval)),
            heartbeat,
            last_write: now,
            end_reason: "client",
            done: false,
        }
    }

    fn end(&mut self, reason: &'static str) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.end_reason = reason;
        self.done = true;
        Poll::Ready(None)
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
                return this.end("lagged");
            }
            SubscriptionPoll::Closed => return this.end("shutdown"),
            SubscriptionPoll::Pending => {}
        }
        while this.idle_timer.as_mut().poll(cx).is_ready() {
            let due = this.last_write + this.heartbeat.interval;
            if due > Instant::now() {
                this.idle_timer.as_mut().reset(due);
                continue;
            }
            this.last_write = Instant::now();
            this.idle_timer
                .as_mut()
                .reset(this.last_write + this.heartbeat.interval);
            this.hub.metrics().heartbeats_sent.inc();
            return Poll::Ready(Some(Ok(Frame::data(this.heartbeat.bytes.clone()))));
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
