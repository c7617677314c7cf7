//! CORS for the public listener: exact allowed origins (`server.cors_allowed_origins`),
//! with credentials, and preflight answers for publish, tickets and events.

use bytes::{BufMut, BytesMut};
use http::{header, HeaderValue, Response, StatusCode};

use super::response::{self, ApiError, Body};
use super::AppState;

/// What CORS adds to an answer for this `Origin`.
enum Grant {
    /// No origins are configured: nothing, not even `Vary`.
    Off,
    /// `Vary: Origin` only.
    Vary,
    /// `Vary: Origin`, and the origin is allowed, with credentials.
    Allow,
}

fn grant(state: &AppState, origin: Option<&[u8]>) -> Grant {
    let settings = state.settings();
    let origins = &settings.config.server.cors_allowed_origins;
    if origins.is_empty() {
        Grant::Off
    } else if origin.is_some_and(|origin| origins.iter().any(|o| o.as_bytes() == origin)) {
        Grant::Allow
    } else {
        Grant::Vary
    }
}

fn allowed<'a>(state: &AppState, origin: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
    let origin = origin?;
    matches!(grant(state, Some(origin.as_bytes())), Grant::Allow).then_some(origin)
}

/// Add the CORS headers to a response for an allowed origin; `Vary: Origin` always, so
/// caches never serve one origin's answer to another.
pub fn decorate(state: &AppState, origin: Option<&HeaderValue>, resp: &mut Response<Body>) {
    let grant = grant(state, origin.map(HeaderValue::as_bytes));
    let headers = resp.headers_mut();
    if let Grant::Vary | Grant::Allow = grant {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    if let (Grant::Allow, Some(origin)) = (grant, origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// The same headers as [`decorate`], written as header lines for the lean path, whose
/// `origin` is the request's raw value (echoed only when it equals a configured one).
pub fn write_lines(state: &AppState, origin: Option<&[u8]>, out: &mut BytesMut) {
    let grant = grant(state, origin);
    if let Grant::Vary | Grant::Allow = grant {
        out.put_slice(b"vary: Origin\r\n");
    }
    if let (Grant::Allow, Some(origin)) = (grant, origin) {
        out.put_slice(b"access-control-allow-origin: ");
        out.put_slice(origin);
        out.put_slice(b"\r\naccess-control-allow-credentials: true\r\n");
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
