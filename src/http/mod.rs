//! HTTP: the public router (subscribe, publish, demo pages) and the admin router
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

use crate::auth::Listener;
use crate::backend::Backend;
use crate::hub::Hub;
use crate::limits::Admission;
use crate::settings::{LiveSettings, Settings};
use response::Served;

/// Everything a request handler needs, shared by all connections.
pub struct AppState {
    pub hub: Arc<Hub>,
    /// Where publishes go and subscriptions read from (memory or Redis).
    pub backend: Backend,
    /// The settings in force, replaced whole by a reload: read once per request.
    pub live: Arc<LiveSettings>,
    pub tickets: crate::tickets::Tickets,
    pub admission: Arc<Admission>,
    /// Readiness latch: true once serving, false from the start of shutdown.
    pub ready: AtomicBool,
    /// The demo apps' jobs and figures publisher (`/demo/...`).
    pub demo: crate::demo::Demo,
}

impl AppState {
    pub fn new(settings: Settings, hub: Arc<Hub>, backend: Backend) -> Self {
        Self {
            live: Arc::new(LiveSettings::new(settings)),
            tickets: crate::tickets::Tickets::new(),
            admission: Admission::new(),
            ready: AtomicBool::new(false),
            demo: crate::demo::Demo::new(),
            hub,
            backend,
        }
    }

    /// The snapshot in force now.
    pub fn settings(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.live.load()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

const DEMO_PAGE: &str = include_str!("demo.html");
/// The browser client (an ES module), also usable standalone: see its header.
pub const HERALD_JS: &str = include_str!("herald.js");

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
        (&Method::GET | &Method::HEAD, "/herald.js") => {
            let mut resp = response::full(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                Bytes::from_static(HERALD_JS.as_bytes()),
            );
            // Revalidated on every load: a herald upgrade reaches the pages at once.
            resp.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-cache"),
            );
            resp
        }
        (&Method::GET, "/") if state.settings().demo_page => response::full(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(DEMO_PAGE.as_bytes()),
        ),
        (_, path) if path.starts_with("/demo/") => crate::demo::serve(&state, &req).await,
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
    let settings = state.settings();
    let trusted = &settings.config.server.trusted_proxies;
    let client = crate::client_ip::resolve(peer.ip(), req.headers(), trusted);
    drop(settings);
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
