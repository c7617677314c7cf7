//! `POST /publish`: authorise, read a bounded body, parse, publish, answer with the IDs.
//! The same steps whether hyper read the request or the lean path did
//! ([`super::direct_publish`]): only how the body is read differs.

use std::future::Future;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::response::{self, ApiError, Body, JsonAnswer};
use super::AppState;
use crate::auth::Listener;
use crate::hub::NewEvent;
use crate::metrics::PUBLISH_REFUSALS;
use crate::publish::{self, Format, PublishError, PublishErrorKind};

/// Why a body could not be read.
pub enum BodyError {
    /// Over the limit it was read with.
    TooLarge,
    /// The connection failed or the framing was wrong.
    Failed(String),
}

/// The request headers a publish depends on, wherever they were parsed.
#[derive(Debug, Default, Clone, Copy)]
pub struct PublishHeaders<'a> {
    pub authorization: Option<&'a [u8]>,
    pub content_type: Option<&'a [u8]>,
    pub content_length: Option<&'a [u8]>,
}

impl<'a> PublishHeaders<'a> {
    /// The first value of each, as `HeaderMap::get` gives it.
    pub fn from_map(headers: &'a HeaderMap) -> Self {
        let get = |name| headers.get(name).map(|v: &HeaderValue| v.as_bytes());
        Self {
            authorization: get(header::AUTHORIZATION),
            content_type: get(header::CONTENT_TYPE),
            content_length: get(header::CONTENT_LENGTH),
        }
    }
}

/// A publish that hyper read.
pub async fn handle(
    state: &AppState,
    req: Request<Incoming>,
    listener: Listener,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let headers = PublishHeaders::from_map(&parts.headers);
    respond(state, &headers, listener, |max| async move {
        match Limited::new(body, max).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                Err(BodyError::TooLarge)
            }
            Err(e) => Err(BodyError::Failed(e.to_string())),
        }
    })
    .await
    .into_response()
}

/// Answer a publish with these headers; `read_body(max)` reads its body, at most `max`
/// bytes, and is not called when the request is refused on its headers alone.
// Span fields are names and counts only: never the Authorization header or the body.
#[tracing::instrument(name = "publish", skip_all, fields(?listener, channel, events, error))]
pub async fn respond<F, Fut>(
    state: &AppState,
    headers: &PublishHeaders<'_>,
    listener: Listener,
    read_body: F,
) -> JsonAnswer
where
    F: FnOnce(usize) -> Fut,
    Fut: Future<Output = Result<Bytes, BodyError>>,
{
    let started = std::time::Instant::now();
    let metrics = state.hub.metrics();
    let (answer, result) = match publish(state, headers, listener, read_body).await {
        Ok(answer) => (answer, "accepted"),
        Err(e) => {
            tracing::Span::current().record("error", e.code);
            debug_assert!(PUBLISH_REFUSALS.contains(&e.code), "unlisted {}", e.code);
            metrics.publish_rejected.with_label_values(&[e.code]).inc();
            (JsonAnswer::from(e), "refused")
        }
    };
    metrics
        .publish_duration
        .with_label_values(&[result])
        .observe(started.elapsed().as_secs_f64());
    answer
}

async fn publish<F, Fut>(
    state: &AppState,
    headers: &PublishHeaders<'_>,
    listener: Listener,
    read_body: F,
) -> Result<JsonAnswer, ApiError>
where
    F: FnOnce(usize) -> Fut,
    Fut: Future<Output = Result<Bytes, BodyError>>,
{
    let settings = state.live.current();
    let authorization = headers.authorization;
    // Refuse a missing or unknown credential before reading the body; the channels it
    // grants are checked once the body is parsed.
    settings.auth.check_publish(listener, authorization, [])?;
    let content_type = headers
        .content_type
        .and_then(|v| std::str::from_utf8(v).ok());
    let format = Format::from_content_type(content_type).map_err(publish_error)?;
    let max = settings.config.limits.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body exceeds limits.max_body_bytes ({max} bytes)"),
        )
    };
    let declared = headers
        .content_length
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let timeout = settings.config.limits.body_read_timeout;
    let body = match tokio::time::timeout(timeout, read_body(max)).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the body did not arrive within limits.body_read_timeout ({timeout:?})"),
            ))
        }
        Ok(Err(BodyError::TooLarge)) => return Err(too_large()),
        Ok(Err(BodyError::Failed(e))) => {
            return Err(ApiError::bad_request(
                "body_read_failed",
                format!("could not read the body: {e}"),
            ))
        }
        Ok(Ok(body)) => body,
    };
    let events = publish::parse(format, &body, &settings.publish).map_err(publish_error)?;
    let span = tracing::Span::current();
    span.record("events", events.len() as i64);
    if let Some(first) = events.first() {
        if events.iter().all(|e| e.channel == first.channel) {
            span.record("channel", first.channel.as_str());
        }
    }
    settings.auth.check_publish(
        listener,
        authorization,
        events.iter().map(|e| e.channel.as_str()),
    )?;
    let published = state
        .backend
        .publish(&state.hub, &events)
        .await
        .map_err(|e| {
            response::backend_error(e, settings.config.limits.retry_after.as_secs().max(1))
        })?;
    let batch = format == Format::Json && body.trim_ascii_start().starts_with(b"[");
    Ok(JsonAnswer::ok(published_json(&events, &published, batch)))
}

/// `{"id":"N","channel":"C"}`, or `{"events":[...]}` for a batch. Written directly: a
/// batch of 1000 would otherwise build 1000 JSON maps. Channel names are validated to
/// `A-Z a-z 0-9 _-.:/@`, so they need no escaping.
fn published_json(events: &[NewEvent], ids: &[u64], batch: bool) -> Bytes {
    let mut out = Vec::with_capacity(16 + ids.len() * 48);
    if batch {
        out.extend_from_slice(b"{\"events\":[");
    }
    for (i, (event, id)) in events.iter().zip(ids).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"id\":\"");
        out.extend_from_slice(itoa::Buffer::new().format(*id).as_bytes());
        out.extend_from_slice(b"\",\"channel\":\"");
        out.extend_from_slice(event.channel.as_bytes());
        out.extend_from_slice(b"\"}");
    }
    if batch {
        out.extend_from_slice(b"]}");
    }
    Bytes::from(out)
}

fn publish_error(e: PublishError) -> ApiError {
    let status = match e.kind {
        PublishErrorKind::Invalid => StatusCode::BAD_REQUEST,
        PublishErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        PublishErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
    };
    ApiError::new(status, e.code, e.message)
}
