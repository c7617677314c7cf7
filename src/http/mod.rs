//! HTTP: the public router (subscribe, publish, demo page) and the admin router
//! (metrics, health, stats, publish for private backends).

mod admin;
mod publish;
pub mod response;
pub mod stream;
mod subscribe;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use crate::auth::{Listener, PublishAuth};
use crate::config::Config;
use crate::hub::Hub;
use crate::publish::PublishLimits;
use response::Served;
use stream::Heartbeat;

/// Everything a request handler needs, shared by all connections.
pub struct AppState {
    pub hub: Arc<Hub>,
    pub config: Config,
    pub auth: PublishAuth,
    pub publish_limits: PublishLimits,
    pub heartbeat: Heartbeat,
    /// Opening bytes of every stream (`retry:` and a comment).
    pub preamble: Bytes,
    /// Readiness latch: true once serving, false from the start of shutdown.
    pub ready: AtomicBool,
}

impl AppState {
    pub fn new(config: Config, hub: Arc<Hub>, demo: bool) -> Self {
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
            auth: PublishAuth::new(&config.auth.publish_keys, demo),
            publish_limits: PublishLimits {
                max_channel_name_length: config.limits.max_channel_name_length,
                max_event_type_length: config.limits.max_event_type_length,
                max_event_bytes: config.limits.max_event_bytes,
                max_batch_events: config.limits.max_batch_events,
            },
            heartbeat: Heartbeat {
                interval: config.sse.heartbeat_interval,
                bytes: heartbeat_bytes,
            },
            preamble: crate::sse::stream_preamble(config.sse.retry.as_millis() as u64),
            ready: AtomicBool::new(false),
            hub,
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
    let _ = peer;
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/events") => subscribe::handle(&state, &req),
        (_, "/events") => response::method_not_allowed("GET, HEAD"),
        (&Method::POST, "/publish") => publish::handle(&state, req, Listener::Public).await,
        (_, "/publish") => response::method_not_allowed("POST"),
        (&Method::GET, "/") if state.config.server.demo_page => response::full(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(DEMO_PAGE.as_bytes()),
        ),
        _ => response::not_found(),
    })
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
