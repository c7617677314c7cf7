//! Admin endpoints: Prometheus metrics, liveness, readiness, and a JSON snapshot.

use bytes::Bytes;
use http::{Response, StatusCode};

use super::response::{self, Body};
use super::AppState;

pub fn metrics(state: &AppState) -> Response<Body> {
    let metrics = state.hub.metrics();
    let settings = state.settings();
    let groups = &settings.config.telemetry.metrics_channel_groups;
    let counts = state.hub.count_by_group(&settings.channel_groups);
    let named = groups.iter().map(String::as_str).chain(["other"]);
    let by_group: Vec<(&str, usize, usize)> = named
        .zip(counts)
        .map(|(group, (subscribers, channels))| (group, subscribers, channels))
        .collect();
    metrics.set_channel_groups(&by_group);
    response::full(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(metrics.render()),
    )
}

/// Alive as long as the process answers.
pub fn healthz() -> Response<Body> {
    response::json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// Ready to take traffic: false before serving and from the start of shutdown, so a
/// load balancer stops sending new streams while old ones drain; and false until a Redis
/// backend has answered once, so a node pointed at the wrong Redis never takes traffic.
///
/// A Redis lost *later* leaves every node ready (`"backend": "down"`): Redis is shared, so
/// it fails for every node at once, and an orchestrator that pulled them all would turn a
/// publish outage into a total one. Open streams stay up with heartbeats, resumes within
/// a node's ring are served, and publishes get 503 `backend_unavailable` until it is back.
pub fn readyz(state: &AppState) -> Response<Body> {
    let backend = state.backend.status();
    if !state.is_ready() {
        response::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "draining", "backend": backend }),
        )
    } else if !state.backend.is_ready() {
        response::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "starting", "backend": backend }),
        )
    } else {
        response::json(
            StatusCode::OK,
            &serde_json::json!({ "status": "ready", "backend": backend }),
        )
    }
}

pub fn stats(state: &AppState) -> Response<Body> {
    let channels = state.hub.stats();
    let body = serde_json::json!({
        "connections": state.hub.metrics().connections_open.get(),
        "channels": channels.len(),
        "subscribers": channels.iter().map(|c| c.subscribers).sum::<usize>(),
        "ready": state.is_ready(),
        "backend": { "kind": state.backend.kind(), "status": state.backend.status() },
        "per_channel": channels,
    });
    response::json(StatusCode::OK, &body)
}
