//! HTTP: the public router (subscribe, publish, demo page) and the admin router
//! (metrics, health, stats, publish for private backends).
//!
//! Public connections start on the lean path: [`head`] reads request heads itself;
//! event streams ([`direct`]) and plain publishes ([`direct_publish`]) are answered on
//! the socket, and the first other request hands the connection to hyper ([`prefixed`]).

mod admin;
mod cors;
mod date;
pub mod direct;
pub mod direct_publish;
pub mod head;
pub mod prefixed;
mod publish;
pub mod response;
pub mod stream;
mod subscribe;
mod tickets;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use crate::auth::{Authorizer, JwtVerifier, Listener};
use crate::backend::Backend;
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::{Admission, AdmissionLimits};
use crate::publish::PublishLimits;
use response::Served;
use stream::StreamSettings;

/// Everything a request handler needs, shared by all connections.
pub struct AppState {
    pub hub: Arc<Hub>,
    /// Where publishes go and subscriptions read from (memory or Redis).
    pub backend: Backend,
    pub config: Config,
    pub auth: Authorizer,
    pub tickets: crate::tickets::Tickets,
    pub publish_limits: PublishLimits,
    pub stream_settings: Arc<StreamSettings>,
    pub admission: Arc<Admission>,
    /// Opening bytes of every stream (`retry:` and a comment).
    pub preamble: Bytes,
    /// Readiness latch: true once serving, false from the start of shutdown.
    pub ready: AtomicBool,
}

impl AppState {
    pub fn new(config: Config, hub: Arc<Hub>, backend: Backend, demo: bool) -> Self {
        let heartbeat_bytes = if config.sse.heartbeat_event.is_empty() {
            crate::sse::comment("ping")
        } else {
            crate::sse::encode(&crate::sse::Event {
                id: None,
                event: Some(&config.sse.heartbeat_event),
                data: "",
                retry: None,
            })
        };
        Self {
            // Validated at config load, so a failure here cannot happen in practice;
            // JWT stays off rather than panicking if it somehow does.
            auth: Authorizer::new(
                &config.auth,
                JwtVerifier::from_config(&config.auth.jwt).ok().flatten(),
                demo,
            ),
            tickets: crate::tickets::Tickets::new(config.auth.ticket_ttl, config.auth.max_tickets),
            publish_limits: PublishLimits {
                max_channel_name_length: config.limits.max_channel_name_length,
                max_event_type_length: config.limits.max_event_type_length,
                max_event_bytes: config.limits.max_event_bytes,
                max_batch_events: config.limits.max_batch_events,
            },
            stream_settings: Arc::new(StreamSettings {
                heartbeat_interval: config.sse.heartbeat_interval,
                heartbeat: heartbeat_bytes,
                retry: config.sse.retry,
                max_lifetime: config.limits.max_connection_lifetime,
                lifetime_jitter: config.limits.connection_lifetime_jitter,
                drain_spread: config.shutdown.drain_timeout.mul_f64(0.7),
            }),
            admission: Admission::new(AdmissionLimits {
                max_connections: config.limits.max_connections,
                max_connections_per_ip: config.limits.max_connections_per_ip,
                new_streams_per_ip_per_second: config.limits.new_streams_per_ip_per_second,
                new_streams_burst_per_ip: f64::from(config.limits.new_streams_burst_per_ip),
                retry_after: config.limits.retry_after,
            }),
            preamble: crate::sse::stream_preamble(config.sse.retry.as_millis() as u64),
            ready: AtomicBool::new(false),
            hub,
            backend,
            config,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

const DEMO_PAGE: &str = include_str!("demo.html");

/// The internet-facing listener.
pub async fn serve_public(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Served {
    let origin = req.headers().get(http::header::ORIGIN).cloned();
    let mut resp = match (req.method(), req.uri().path()) {
        (&Method::OPTIONS, _) => cors::preflight(&state, origin.as_ref()),
        (&Method::GET | &Method::HEAD, "/events") => {
            return Ok(subscribe_response(&state, &req, peer).await)
        }
        (_, "/events") => response::method_not_allowed("GET, HEAD"),
        (&Method::POST, "/publish") => publish::handle(&state, req, Listener::Public).await,
        (_, "/publish") => response::method_not_allowed("POST"),
        (&Method::POST, "/tickets") => tickets::handle(&state, &req),
        (_, "/tickets") => response::method_not_allowed("POST"),
        (&Method::GET, "/") if state.config.server.demo_page => response::full(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(DEMO_PAGE.as_bytes()),
        ),
        _ => response::not_found(),
    };
    cors::decorate(&state, origin.as_ref(), &mut resp);
    Ok(resp)
}

/// `GET /events`, whichever path the connection took (hyper or [`direct`]).
pub async fn subscribe_response<B>(
    state: &AppState,
    req: &Request<B>,
    peer: SocketAddr,
) -> response::Response<response::Body> {
    let trusted = &state.config.server.trusted_proxies;
    let client = crate::client_ip::resolve(peer.ip(), req.headers(), trusted);
    let mut resp = subscribe::handle(state, req, client).await;
    cors::decorate(state, req.headers().get(http::header::ORIGIN), &mut resp);
    resp
}

/// The operator listener: never exposed through the proxy.
pub async fn serve_admin(state: Arc<AppState>, req: Request<Incoming>) -> Served {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => admin::metrics(&state),
        (&Method::GET, "/healthz") => admin::healthz(),
        (&Method::GET, "/readyz") => admin::readyz(&state),
        (&Method::GET, "/stats") => admin::stats(&state),
        (&Method::POST, "/publish") => publish::handle(&state, req, Listener::Admin).await,
        _ => response::not_found(),
    })
}
