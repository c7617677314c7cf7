//! `GET /events?channel=a&channel=b[&lastEventId=N]`: open an event stream.

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Either;

use super::response::{self, ApiError, Body};
use super::stream::SseStream;
use super::AppState;
use crate::auth::{bearer, AuthError, Grants};
use crate::doctor::HEADER as DOCTOR_HEADER;
use crate::hub::HubError;
use crate::limits::Refusal;
use crate::metrics::REQUEST_REFUSALS;
use crate::settings::Settings;
use crate::validate;
use std::net::IpAddr;

/// What a subscribe request asks for, validated.
#[derive(Debug, PartialEq, Eq)]
pub struct SubscribeRequest {
    pub channels: Vec<String>,
    pub last_event_id: Option<String>,
    /// Single-use ticket from `POST /tickets`, for private channels.
    pub ticket: Option<String>,
}

/// Longest `Last-Event-ID` we look at; ours are at most 20 digits.
const MAX_LAST_EVENT_ID: usize = 64;

pub fn parse<B>(
    req: &Request<B>,
    max_channels: usize,
    max_name: usize,
) -> Result<SubscribeRequest, ApiError> {
    let mut channels: Vec<String> = Vec::new();
    let mut query_last_id = None;
    let mut ticket = None;
    for (key, value) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "channel" => {
                validate::channel(&value, max_name)
                    .map_err(|r| ApiError::bad_request("invalid_channel", r))?;
                if !channels.iter().any(|c| *c == value) {
                    channels.push(value.into_owned());
                }
                if channels.len() > max_channels {
                    return Err(ApiError::bad_request(
                        "too_many_channels",
                        format!("at most {max_channels} channels per subscription (limits.max_channels_per_subscription)"),
                    ));
                }
            }
            "lastEventId" => query_last_id = Some(value.into_owned()),
            "ticket" => ticket = Some(value.into_owned()),
            // Anything else (cache busters such as `_=123`) is ignored.
            _ => {}
        }
    }
    if channels.is_empty() {
        return Err(ApiError::bad_request(
            "missing_channel",
            "name at least one channel: /events?channel=NAME",
        ));
    }
    // The header (sent by EventSource on reconnect) wins over the query parameter.
    let header_last_id = req
        .headers()
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let last_event_id = header_last_id.or(query_last_id).filter(|id| !id.is_empty());
    if last_event_id
        .as_ref()
        .is_some_and(|id| id.len() > MAX_LAST_EVENT_ID)
    {
        return Err(ApiError::bad_request(
            "invalid_last_event_id",
            format!("Last-Event-ID is longer than {MAX_LAST_EVENT_ID} bytes"),
        ));
    }
    Ok(SubscribeRequest {
        channels,
        last_event_id,
        ticket,
    })
}

// Span fields are channel names and counts only: never the query string (tickets) or
// credentials.
#[tracing::instrument(name = "subscribe", skip_all, fields(channel, channels, error))]
pub async fn handle<B>(state: &AppState, req: &Request<B>, client: IpAddr) -> Response<Body> {
    match open(state, req, client).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::Span::current().record("error", e.code);
            let metrics = state.hub.metrics();
            debug_assert!(REQUEST_REFUSALS.contains(&e.code), "unlisted {}", e.code);
            metrics.requests_rejected.with_label_values(&[e.code]).inc();
            e.into_response()
        }
    }
}

async fn open<B>(
    state: &AppState,
    req: &Request<B>,
    client: IpAddr,
) -> Result<Response<Body>, ApiError> {
    let settings = state.live.current();
    let limits = &settings.config.limits;
    let request = parse(
        req,
        limits.max_channels_per_subscription,
        limits.max_channel_name_length,
    )?;
    let span = tracing::Span::current();
    span.record("channel", request.channels.join(",").as_str());
    span.record("channels", request.channels.len() as i64);
    let retry_after = limits.retry_after.as_secs().max(1);
    if state.hub.is_closing() {
        return Err(response::hub_error(HubError::ShuttingDown, retry_after));
    }
    let permit = state
        .admission
        .admit(client, &settings.admission)
        .map_err(|refusal| {
            let (status, message, secs) = match refusal {
                Refusal::NodeFull => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the node holds limits.max_connections ({}) streams",
                        limits.max_connections
                    ),
                    retry_after,
                ),
                Refusal::TooManyFromIp => (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "this client holds limits.max_connections_per_ip ({}) streams",
                        limits.max_connections_per_ip
                    ),
                    retry_after,
                ),
                Refusal::RateLimited { retry_after_secs } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many new streams from this client (limits.new_streams_per_ip_per_second)"
                        .to_string(),
                    retry_after_secs,
                ),
            };
            ApiError::new(status, refusal.code(), message).retry_after(secs)
        })?;
    // After admission, so a refused stream (429/503) does not spend its single-use ticket.
    let private = settings.auth.private_among(&request.channels);
    if !private.is_empty() {
        let grants =
            subscriber_grants(state, &settings, req, request.ticket.as_deref(), private[0])?;
        if let Some(denied) = grants.first_denied(private.iter().copied()) {
            return Err(AuthError::Forbidden(denied.to_string()).into());
        }
    }
    let subscription = state
        .backend
        .subscribe(
            &state.hub,
            &request.channels,
            request.last_event_id.as_deref(),
        )
        .await
        .map_err(|e| response::backend_error(e, retry_after))?;
    tracing::debug!(channels = ?request.channels, resumed = request.last_event_id.is_some(), "stream opened");
    let body = SseStream::new(
        state.hub.clone(),
        subscription,
        settings.preamble.clone(),
        state.live.clone(),
        permit,
    );
    let mut resp = Response::new(Either::Right(body));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if req.headers().contains_key(DOCTOR_HEADER) {
        let seen = doctor_report(req, &request, &settings);
        if let Ok(value) = HeaderValue::from_str(&seen) {
            headers.insert(DOCTOR_HEADER, value);
        }
    }
    Ok(resp)
}

/// `version=HTTP/1.1; last-event-id=42; heartbeat=120s`: the request's HTTP version
/// and `Last-Event-ID` as they reached herald, and the heartbeat interval the proxy's read
/// timeout must exceed. Nothing secret: no addresses, no credentials.
fn doctor_report<B>(req: &Request<B>, request: &SubscribeRequest, settings: &Settings) -> String {
    let last_event_id = request
        .last_event_id
        .as_deref()
        .filter(|id| id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or("none");
    format!(
        "version={:?}; last-event-id={last_event_id}; heartbeat={}",
        req.version(),
        crate::config::duration::render(settings.config.sse.heartbeat_interval)
    )
}

/// What the subscriber may read: from a ticket, else a JWT in `Authorization: Bearer`,
/// else a JWT in the auth cookie. Tokens and tickets are never logged.
fn subscriber_grants<B>(
    state: &AppState,
    settings: &Settings,
    req: &Request<B>,
    ticket: Option<&str>,
    first_private: &str,
) -> Result<Grants, ApiError> {
    if let Some(ticket) = ticket {
        return state.tickets.redeem(ticket).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_ticket",
                "unknown, used or expired ticket",
            )
        });
    }
    let token = cookie(req, &settings.config.auth.cookie_name).or_else(|| {
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        bearer(authorization).and_then(|t| std::str::from_utf8(t).ok())
    });
    let token = token.ok_or_else(|| AuthError::MissingToken(first_private.to_string()))?;
    let jwt = settings
        .auth
        .jwt()
        .ok_or_else(|| AuthError::MissingToken(first_private.to_string()))?;
    Ok(jwt.verify(token)?.subscribe)
}

/// The value of cookie `name`, if the request carries it.
fn cookie<'a, B>(req: &'a Request<B>, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, last_id: Option<&str>) -> Request<()> {
        let mut b = Request::get(uri);
        if let Some(id) = last_id {
            b = b.header("Last-Event-ID", id);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn channels_and_resume_id() {
        let r = parse(
            &req(
                "/events?channel=a&channel=b&channel=a&lastEventId=5&_=1",
                None,
            ),
            16,
            64,
        )
        .unwrap();
        assert_eq!(r.channels, vec!["a", "b"]);
        assert_eq!(r.last_event_id.as_deref(), Some("5"));
        let r = parse(&req("/events?channel=a&lastEventId=5", Some("9")), 16, 64).unwrap();
        assert_eq!(r.last_event_id.as_deref(), Some("9"), "header wins");
    }

    #[test]
    fn cookies() {
        let r = Request::get("/")
            .header("Cookie", "a=1; herald_token=\"t.k.n\"; b=2")
            .body(())
            .unwrap();
        assert_eq!(cookie(&r, "herald_token"), Some("t.k.n"));
        assert_eq!(cookie(&r, "missing"), None);
    }

    #[test]
    fn refusals() {
        let code = |uri: &str| parse(&req(uri, None), 2, 8).unwrap_err().code;
        assert_eq!(code("/events"), "missing_channel");
        assert_eq!(code("/events?channel="), "invalid_channel");
        assert_eq!(code("/events?channel=a%0Ab"), "invalid_channel");
        assert_eq!(code("/events?channel=toolongname"), "invalid_channel");
        assert_eq!(
            code("/events?channel=a&channel=b&channel=c"),
            "too_many_channels"
        );
    }
}
