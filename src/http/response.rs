//! Building responses: JSON bodies, and the one mapping from errors to status and body.

use std::convert::Infallible;

use bytes::Bytes;
pub use http::Response;
use http::{header, HeaderValue, StatusCode};
use http_body_util::{Either, Full};

use super::stream::SseStream;
use crate::auth::AuthError;
use crate::backend::BackendError;
use crate::hub::HubError;

/// Every response body herald sends: a complete buffer, or a live event stream.
pub type Body = Either<Full<Bytes>, SseStream>;

/// A refused request: status, a stable machine-readable code, and a sentence for humans.
/// Rendered as `{"error": code, "message": message}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After` on 429/503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn into_response(self) -> Response<Body> {
        JsonAnswer::from(self).into_response()
    }
}

/// A complete JSON answer, before it is a `Response`: what a publish answers. hyper's
/// path turns it into one; the lean path ([`super::direct_publish`]) writes it to the
/// wire as it is, without building a header map only to encode it again.
#[derive(Debug, Clone)]
pub struct JsonAnswer {
    pub status: StatusCode,
    pub body: Bytes,
    /// Seconds for `Retry-After` on 429/503.
    pub retry_after: Option<u64>,
}

impl JsonAnswer {
    pub fn ok(body: Bytes) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            retry_after: None,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let mut resp = full(self.status, "application/json", self.body);
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<ApiError> for JsonAnswer {
    fn from(e: ApiError) -> Self {
        let body = serde_json::json!({ "error": e.code, "message": e.message });
        Self {
            status: e.status,
            body: Bytes::from(body.to_string()),
            retry_after: e.retry_after,
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let (status, code) = match &e {
            AuthError::MissingKey => (StatusCode::UNAUTHORIZED, "missing_key"),
            AuthError::BadKey => (StatusCode::UNAUTHORIZED, "invalid_key"),
            AuthError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden_channel"),
            AuthError::PublicPublishDisabled => (StatusCode::FORBIDDEN, "publish_disabled"),
            AuthError::MissingToken(_) => (StatusCode::UNAUTHORIZED, "missing_token"),
            AuthError::BadToken(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// The one mapping of hub refusals, for publishes and streams alike. All of them are
/// "not now": 503 with `Retry-After` (`retry_after` seconds, or 1 while draining, since
/// another node can take the request at once).
pub fn hub_error(e: HubError, retry_after: u64) -> ApiError {
    let (code, retry_after) = match &e {
        // Named after the limit like the other 503s; `too_many_channels` is the 400 for a
        // subscription naming more than `limits.max_channels_per_subscription`.
        HubError::TooManyChannels(_) => ("max_channels", retry_after),
        HubError::ChannelFull(_) => ("max_subscribers_per_channel", retry_after),
        HubError::ShuttingDown => ("draining", 1),
        // The backend could not bring the channel in (it gives up only when unreachable).
        HubError::NotFollowed(_) => ("backend_unavailable", retry_after),
    };
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string()).retry_after(retry_after)
}

/// Backend refusals: the hub's, or 503 `backend_unavailable` when Redis cannot be
/// reached, or did not answer in time (the client retries after `Retry-After`; after a
/// timeout the event may have been published anyway, see the README).
pub fn backend_error(e: BackendError, retry_after: u64) -> ApiError {
    match e {
        BackendError::Hub(e) => hub_error(e, retry_after),
        BackendError::Unavailable(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable",
            e.to_string(),
        )
        .retry_after(retry_after),
    }
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    full(status, "application/json", Bytes::from(value.to_string()))
}

pub fn full(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Either::Left(Full::new(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub fn not_found() -> Response<Body> {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint").into_response()
}

pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("allowed methods: {allow}"),
    )
    .into_response();
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// hyper services return `Result`; ours never fail (errors become responses).
pub type Served = Result<Response<Body>, Infallible>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hub_refusal_has_its_own_code() {
        let cases = [
            (HubError::TooManyChannels(2), "max_channels", 7),
            (
                HubError::ChannelFull("a".into()),
                "max_subscribers_per_channel",
                7,
            ),
            (HubError::ShuttingDown, "draining", 1),
        ];
        for (e, code, retry_after) in cases {
            let refusal = hub_error(e, 7);
            assert_eq!(refusal.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                (refusal.code, refusal.retry_after),
                (code, Some(retry_after))
            );
        }
    }
}
