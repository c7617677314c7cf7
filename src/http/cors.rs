//! CORS for the public listener: exact allowed origins (`server.cors_allowed_origins`),
//! with credentials, and preflight answers for publish, tickets and events.

use http::{header, HeaderValue, Response, StatusCode};

use super::response::{self, ApiError, Body};
use super::AppState;

fn allowed<'a>(state: &AppState, origin: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
    let origin = origin?;
    let text = origin.to_str().ok()?;
    state
        .settings()
        .config
        .server
        .cors_allowed_origins
        .iter()
        .any(|o| o == text)
        .then_some(origin)
}

/// Add the CORS headers to a response for an allowed origin; `Vary: Origin` always, so
/// caches never serve one origin's answer to another.
pub fn decorate(state: &AppState, origin: Option<&HeaderValue>, resp: &mut Response<Body>) {
    if state
        .settings()
        .config
        .server
        .cors_allowed_origins
        .is_empty()
    {
        return;
    }
    let headers = resp.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = allowed(state, origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// `OPTIONS` on any path: allowed origins get the methods and headers herald accepts.
pub fn preflight(state: &AppState, origin: Option<&HeaderValue>) -> Response<Body> {
    if allowed(state, origin).is_none() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin is not in server.cors_allowed_origins",
        )
        .into_response();
    }
    let mut resp = response::full(StatusCode::NO_CONTENT, "text/plain", bytes::Bytes::new());
    let headers = resp.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, Last-Event-ID"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    resp
}
