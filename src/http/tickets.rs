//! `POST /tickets`: trade a subscriber JWT (Bearer) for a single-use ticket.

use http::{header, Request, Response, StatusCode};

use super::response::{self, ApiError, Body};
use super::AppState;
use crate::auth::{bearer, AuthError};
use crate::metrics::REQUEST_REFUSALS;

pub fn handle<B>(state: &AppState, req: &Request<B>) -> Response<Body> {
    match issue(state, req) {
        Ok(resp) => resp,
        Err(e) => {
            let metrics = state.hub.metrics();
            debug_assert!(REQUEST_REFUSALS.contains(&e.code), "unlisted {}", e.code);
            metrics.requests_rejected.with_label_values(&[e.code]).inc();
            e.into_response()
        }
    }
}

fn issue<B>(state: &AppState, req: &Request<B>) -> Result<Response<Body>, ApiError> {
    let settings = state.settings();
    let jwt = settings.auth.jwt().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "tickets_disabled",
            "tickets need auth.jwt to be configured",
        )
    })?;
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let token = bearer(authorization)
        .and_then(|t| std::str::from_utf8(t).ok())
        .ok_or(AuthError::MissingKey)?;
    let grants = jwt.verify(token)?;
    let (ttl, max) = (
        settings.config.auth.ticket_ttl,
        settings.config.auth.max_tickets,
    );
    let ticket = state
        .tickets
        .issue(grants.subscribe, ttl, max)
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_tickets",
                e.to_string(),
            )
            .retry_after(1)
        })?;
    Ok(response::json(
        StatusCode::OK,
        &serde_json::json!({ "ticket": ticket, "expires_in": ttl.as_secs() }),
    ))
}
