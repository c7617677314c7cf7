//! Serving: accept loops for both listeners, the history sweeper, and the drain.
//!
//! [`run`] takes bound listeners and any shutdown future, so tests start a real server on
//! port 0 and stop it at will; `main` passes the signal handler.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::http::{self, AppState};
use crate::hub::{Hub, HubSettings};
use crate::metrics::Metrics;
use crate::write_timeout::WriteTimeout;

/// Options that are not configuration: how this process was started.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// `herald --demo`: open publishing on the public listener when no key is set.
    pub demo: bool,
}

/// The two bound sockets herald serves.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Bind the addresses of `server.listen` and `server.admin_listen`.
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        let public = TcpListener::bind(config.server.listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot bind server.listen {}: {e}", config.server.listen),
            )
        })?;
        let admin = TcpListener::bind(config.server.admin_listen)
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot bind server.admin_listen {}: {e}",
                        config.server.admin_listen
                    ),
                )
            })?;
        Ok(Self { public, admin })
    }
}

/// Serve until `shutdown` completes, then drain within `shutdown.drain_timeout`.
pub async fn run(
    config: Config,
    options: RunOptions,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) {
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(HubSettings::from_config(&config), metrics);
    let drain_timeout = config.shutdown.drain_timeout;
    let sweep_interval = config.history.sweep_interval;
    let conn_limits = ConnLimits {
        header_read_timeout: config.limits.header_read_timeout,
        max_header_bytes: config.limits.max_header_bytes,
        write_timeout: config.limits.write_timeout,
    };
    let state = Arc::new(AppState::new(config, hub.clone(), options.demo));

    let stop_public = CancellationToken::new();
    let stop_admin = CancellationToken::new();

    let sweeper = tokio::spawn({
        let hub = hub.clone();
        let sweep_state = state.clone();
        let stop = stop_admin.clone();
        async move {
            let mut tick = tokio::time::interval(sweep_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        hub.sweep();
                        sweep_state.admission.sweep();
                        sweep_state.tickets.sweep();
                    }
                    _ = stop.cancelled() => break,
                }
            }
        }
    });

    let public = tokio::spawn(accept_loop(
        listeners.public,
        stop_public.clone(),
        conn_limits,
        hub.metrics().write_timeouts.clone(),
        hub.metrics().accept_errors.clone(),
        {
            let state = state.clone();
            move |peer| {
                let state = state.clone();
                service_fn(move |req| http::serve_public(state.clone(), req, peer))
            }
        },
    ));
    let admin = tokio::spawn(accept_loop(
        listeners.admin,
        stop_admin.clone(),
        conn_limits,
        hub.metrics().write_timeouts.clone(),
        hub.metrics().accept_errors.clone(),
        {
            let state = state.clone();
            move |_peer| {
                let state = state.clone();
                service_fn(move |req| http::serve_admin(state.clone(), req))
            }
        },
    ));

    state.ready.store(true, Ordering::SeqCst);
    shutdown.await;

    // Drain: not ready, no new connections, every stream told to end, then wait for the
    // public connections to finish, bounded by the drain timeout. The admin listener keeps
    // answering (readyz says 503) until the public side is done.
    info!(timeout = ?drain_timeout, open_streams = state.hub.metrics().connections_open.get(), "draining");
    state.ready.store(false, Ordering::SeqCst);
    stop_public.cancel();
    let public_conns = public.await.unwrap_or_default();
    hub.close();
    let drained = tokio::time::timeout(drain_timeout, public_conns.shutdown()).await;
    if drained.is_err() {
        warn!(
            open_streams = state.hub.metrics().connections_open.get(),
            "drain timeout reached; closing remaining connections"
        );
    }
    stop_admin.cancel();
    let admin_conns = admin.await.unwrap_or_default();
    let _ = tokio::time::timeout(Duration::from_millis(200), admin_conns.shutdown()).await;
    let _ = sweeper.await;
    info!("stopped");
}

/// Per-connection protections, from `limits.*`.
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    header_read_timeout: Duration,
    max_header_bytes: usize,
    write_timeout: Duration,
}

/// Accept connections until `stop`, serving each with HTTP/1.1; returns the watcher of the
/// connections still open, for the caller to drain.
async fn accept_loop<S, F>(
    listener: TcpListener,
    stop: CancellationToken,
    limits: ConnLimits,
    write_timeouts: prometheus::IntCounter,
    accept_errors: prometheus::IntCounter,
    make_service: F,
) -> GracefulShutdown
where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = http::response::Body>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connections = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on a socket that
                    // stays readable, and recover once descriptors are free again.
                    warn!(error = %e, "accept failed; backing off");
                    accept_errors.inc();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let io = WriteTimeout::new(stream, limits.write_timeout, write_timeouts.clone());
        let conn = builder.serve_connection(TokioIo::new(io), make_service(peer));
        let conn = connections.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    connections
}
