//! `POST /demo/tasks`: a simulated job on the server that reports its progress as events,
//! the way a real backend would report an export or an upload.
//!
//! The job publishes through the backend, as `POST /publish` does, so on a Redis cluster
//! the page may subscribe on any node. It does not wait for its page: the answer names
//! the job's channel and the ID of its first event, and the page subscribes with that ID
//! as its `Last-Event-ID`, so it gets every later event however late its stream opens.
//!
//! Events on `demo:task:<id>`: `progress` `{"task", "percent", "step", "steps", "label"}`
//! ([`STEPS`] of them after the first, rising to 100), then `done` `{"task", "percent",
//! "elapsed_ms"}`; or `cancelled` `{"task", "percent", "reason"}` when the node drains
//! (best effort: see [`super::Demo::stop`]).

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;

use crate::backend::BackendError;
use crate::http::response::{self, ApiError, Body, Response};
use crate::http::AppState;
use crate::hub::{HubError, NewEvent};

// The job's shape is fixed, not configuration: the demo is for trying herald from a few
// tabs, and these bound what anyone reaching the page can make a node do (at most 8 jobs
// of ~5 small events a second), which no deployment needs to tune.

/// Jobs running at once on a node; the next start gets 429 `too_many_tasks`.
pub const MAX_RUNNING: usize = 8;
/// Progress events after the first (0 %): the bar moves in steps of 100 / STEPS.
pub const STEPS: u32 = 20;
/// Pause before each step, drawn at random so the bar moves like real work: a job takes
/// 2 to 6 seconds.
const STEP_PAUSE_MS: RangeInclusive<u64> = 100..=300;
/// A job stops after this long even if its publishes stall (a slow Redis).
pub const MAX_DURATION: Duration = Duration::from_secs(30);
/// How long a job cancelled by the drain tries to publish its `cancelled` event.
const CANCEL_PUBLISH: Duration = Duration::from_millis(500);
/// Channel of a job: this and its ID.
pub const CHANNEL_PREFIX: &str = "demo:task:";
/// What the job pretends to do, in order over its steps.
const LABELS: [&str; 5] = [
    "fetching the input",
    "parsing",
    "resizing images",
    "compressing",
    "uploading",
];

/// Start a job: 202 with `{"task", "channel", "last_event_id", "steps"}`.
pub async fn start(state: &Arc<AppState>) -> Response<Body> {
    match try_start(state).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn try_start(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let retry_after = state.settings().config.limits.retry_after.as_secs().max(1);
    if state.demo.is_stopping() || state.hub.is_closing() {
        return Err(response::hub_error(HubError::ShuttingDown, retry_after));
    }
    let permit = state.demo.jobs.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_tasks",
            format!("{MAX_RUNNING} demo jobs are running on this node, the most it runs at once"),
        )
        .retry_after(retry_after)
    })?;
    // Random, not a counter: nodes sharing a Redis must not pick the same channel.
    let task = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let job = Job {
        state: state.clone(),
        channel: format!("{CHANNEL_PREFIX}{task}"),
        task,
        started: Instant::now(),
        _permit: permit,
    };
    // The first event is published before the answer: its ID is where the page resumes.
    let first = job
        .publish("progress", job.progress(0, "queued"))
        .await
        .map_err(|e| response::backend_error(e, retry_after))?;
    let body = json!({
        "task": job.task,
        "channel": job.channel,
        "last_event_id": first.to_string(),
        "steps": STEPS,
    });
    tracing::debug!(task = %job.task, "demo job started");
    state.demo.spawn(job.run());
    Ok(response::json(StatusCode::ACCEPTED, &body))
}

struct Job {
    state: Arc<AppState>,
    task: String,
    channel: String,
    started: Instant,
    /// Held for the job's life: its place under [`MAX_RUNNING`].
    _permit: OwnedSemaphorePermit,
}

impl Job {
    async fn run(self) {
        let stop = self.state.demo.stop.clone();
        let deadline = tokio::time::Instant::now() + MAX_DURATION;
        let mut percent = 0;
        // Steps 1..=STEPS report progress; after one more pause comes `done`.
        for step in 1..=STEPS + 1 {
            let pause = Duration::from_millis(rand::rng().random_range(STEP_PAUSE_MS));
            let event = async {
                tokio::time::sleep(pause).await;
                if step <= STEPS {
                    let label = LABELS[((step - 1) as usize * LABELS.len()) / STEPS as usize];
                    self.publish("progress", self.progress(step, label)).await
                } else {
                    self.publish("done", self.done()).await
                }
            };
            let outcome = tokio::select! {
                outcome = tokio::time::timeout_at(deadline, event) => outcome,
                _ = stop.cancelled() => return self.cancelled(percent).await,
            };
            match outcome {
                Ok(Ok(_)) => percent = step.min(STEPS) * 100 / STEPS,
                Ok(Err(e)) => {
                    tracing::warn!(task = %self.task, error = %e, "demo job stopped: an event was refused");
                    return;
                }
                Err(_) => {
                    tracing::warn!(task = %self.task, "demo job stopped: it ran past {MAX_DURATION:?}");
                    return;
                }
            }
        }
        tracing::debug!(task = %self.task, "demo job done");
    }

    /// Step `step` of [`STEPS`] (0: queued).
    fn progress(&self, step: u32, label: &str) -> Value {
        json!({
            "task": self.task,
            "percent": step * 100 / STEPS,
            "step": step,
            "steps": STEPS,
            "label": label,
        })
    }

    fn done(&self) -> Value {
        json!({
            "task": self.task,
            "percent": 100,
            "elapsed_ms": self.started.elapsed().as_millis() as u64,
        })
    }

    /// The drain stopped the job: say so on its channel, briefly (the hub closes next).
    async fn cancelled(&self, percent: u32) {
        let event = json!({
            "task": self.task,
            "percent": percent,
            "reason": "the node is shutting down",
        });
        let _ = tokio::time::timeout(CANCEL_PUBLISH, self.publish("cancelled", event)).await;
    }

    async fn publish(&self, event: &str, data: Value) -> Result<u64, BackendError> {
        let event = NewEvent {
            channel: self.channel.clone(),
            event: Some(event.to_string()),
            data: data.to_string(),
            retry: None,
        };
        let ids = self
            .state
            .backend
            .publish(&self.state.hub, std::slice::from_ref(&event))
            .await?;
        // One event in, one ID out.
        Ok(ids[0])
    }
}
