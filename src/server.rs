//! Serving: accept loops for both listeners, the history sweeper, the demo apps' tasks,
//! and the drain.
//!
//! [`run`] takes bound listeners and any shutdown future, so tests start a real server on
//! port 0 and stop it at will; `main` passes the signal handler.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{service_fn, HttpService};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::backend::Backend;
use crate::config::Config;
use crate::http::direct::{self, Pump, StreamTask};
use crate::http::direct_publish::{self, After};
use crate::http::head::{self, Head};
use crate::http::prefixed::Prefixed;
use crate::http::{self, AppState};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::settings::{ConnLimits, Settings};
use crate::write_timeout::WriteTimeout;

/// Most pipelined publishes of one connection answered together: bounds the answers
/// held before their one `send`.
const MAX_PIPELINED: usize = 64;

/// Longest wait at the drain for the demo jobs to publish their last event and end.
const DEMO_STOP_WAIT: Duration = Duration::from_secs(1);

/// Options that are not configuration: how this process was started.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// `herald --demo`: open publishing on the public listener when no key is set.
    pub demo: bool,
    /// Reload on SIGHUP from this source (the binary); `None` (tests in process) keeps
    /// the settings of the start.
    pub reload: Option<crate::reload::Source>,
}

/// The two bound sockets herald serves.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Bind the addresses of `server.listen` and `server.admin_listen`.
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        let backlog = config.server.listen_backlog;
        Ok(Self {
            public: bind(config.server.listen, backlog, "server.listen")?,
            admin: bind(config.server.admin_listen, backlog, "server.admin_listen")?,
        })
    }
}

/// Bind with an explicit accept backlog: tokio's `TcpListener::bind` fixes it at 128,
/// which drops connections in a reconnect storm (the kernel caps it at somaxconn).
fn bind(addr: SocketAddr, backlog: u32, key: &str) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    };
    socket
        .and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(backlog)
        })
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {key} {addr}: {e}")))
}

/// Serve until `shutdown` completes, then drain within `shutdown.drain_timeout`.
pub async fn run(
    settings: Settings,
    options: RunOptions,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) {
    // First: from here on a SIGHUP is queued for the reloader, never the default
    // action (which ends the process).
    let hangups = options
        .reload
        .as_ref()
        .and_then(|_| crate::reload::hangups());
    let metrics = Arc::new(Metrics::new());
    metrics
        .connections_limit
        .set(settings.config.limits.max_connections as i64);
    metrics.config_applied(false);
    let hub = Hub::new(settings.hub.clone(), metrics.clone());
    // Stopped last, after the drain: streams read from it until they end.
    let stop_backend = CancellationToken::new();
    let backend = match Backend::start(&settings.config, hub.clone(), metrics, stop_backend.clone())
    {
        Ok(backend) => backend,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the backend");
            return;
        }
    };
    let state = Arc::new(AppState::new(settings, hub.clone(), backend));
    crate::demo::Demo::start(&state);

    let stop_public = CancellationToken::new();
    let stop_admin = CancellationToken::new();

    let flusher = tokio::spawn({
        let hub = hub.clone();
        let stop = stop_admin.clone();
        async move { hub.run_flusher(stop).await }
    });
    let sweeper = tokio::spawn({
        let hub = hub.clone();
        let sweep_state = state.clone();
        let stop = stop_admin.clone();
        async move {
            loop {
                // Read each round: a reload may change it.
                let interval = sweep_state.settings().config.history.sweep_interval;
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {
                        hub.sweep();
                        sweep_state.admission.sweep(&sweep_state.settings().admission);
                        sweep_state.tickets.sweep();
                    }
                    _ = stop.cancelled() => break,
                }
            }
        }
    });

    // Connections watch `closing`: on drain, hyper connections finish their current
    // response and close; streams end themselves once the hub closes.
    let closing = CancellationToken::new();
    let accept_errors = hub.metrics().accept_errors.clone();
    let public = tokio::spawn(accept_loop(
        listeners.public,
        stop_public.clone(),
        accept_errors.clone(),
        {
            let state = state.clone();
            let closing = closing.clone();
            move |stream, peer| {
                let limits = state.settings().conn;
                serve_public_connection(state.clone(), stream, peer, limits, closing.clone())
            }
        },
    ));
    let admin = tokio::spawn(accept_loop(
        listeners.admin,
        stop_admin.clone(),
        accept_errors,
        {
            let state = state.clone();
            // Admin connections keep answering (readyz says 503) through the drain.
            let closing = stop_admin.clone();
            move |stream, _peer| {
                let limits = state.settings().conn;
                let timeouts = state.hub.metrics().write_timeouts.clone();
                let state = state.clone();
                let service = service_fn(move |req| http::serve_admin(state.clone(), req));
                serve_http(stream, service, limits, timeouts, closing.clone())
            }
        },
    ));

    let reloader = options.reload.zip(hangups).map(|(source, hangups)| {
        let state = state.clone();
        let stop = stop_admin.clone();
        tokio::spawn(crate::reload::on_hangup(
            state,
            hangups,
            source,
            options.demo,
            stop,
        ))
    });

    state.ready.store(true, Ordering::SeqCst);
    shutdown.await;
    let drain_timeout = state.settings().config.shutdown.drain_timeout;
    // The demo jobs' wait below counts within the drain, not on top of it.
    let drain_deadline = tokio::time::Instant::now() + drain_timeout;

    // Drain: not ready, no new connections, every stream told to end (spread over the
    // drain window), then wait for the public connections to finish, bounded by the drain
    // timeout. The admin listener keeps answering (readyz says 503) until then.
    info!(timeout = ?drain_timeout, open_streams = state.hub.metrics().connections_open.get(), "draining");
    state.ready.store(false, Ordering::SeqCst);
    stop_public.cancel();
    let public_conns = public.await.unwrap_or_default();
    // Before the hub closes, so a demo job's `cancelled` event is still accepted.
    state.demo.stop(DEMO_STOP_WAIT.min(drain_timeout)).await;
    hub.close();
    closing.cancel();
    if tokio::time::timeout_at(drain_deadline, public_conns.wait())
        .await
        .is_err()
    {
        warn!(
            open_streams = state.hub.metrics().connections_open.get(),
            "drain timeout reached; closing remaining connections"
        );
    }
    stop_admin.cancel();
    let admin_conns = admin.await.unwrap_or_default();
    let _ = tokio::time::timeout(Duration::from_millis(500), admin_conns.wait()).await;
    stop_backend.cancel();
    let _ = sweeper.await;
    let _ = flusher.await;
    if let Some(reloader) = reloader {
        let _ = reloader.await;
    }
    info!("stopped");
}

/// Accept connections until `stop` and serve each in a tracked task; the tracker is
/// returned for the caller to wait on.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    accept_errors: IntCounter,
    serve: F,
) -> TaskTracker
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tasks = TaskTracker::new();
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
        tasks.spawn(serve(stream, peer));
    }
    tasks.close();
    tasks
}

/// A public connection on the lean path: event streams and plain publishes are served
/// here; the first other request hands the connection to hyper for the rest of its life.
/// Its task holds only the stream's pump once a stream is open (see [`StreamTask`]).
fn serve_public_connection(
    state: Arc<AppState>,
    stream: TcpStream,
    peer: SocketAddr,
    limits: ConnLimits,
    closing: CancellationToken,
) -> StreamTask {
    StreamTask::new(open_public_connection(state, stream, peer, limits, closing))
}

/// The first request of a public connection: a subscription hands back its stream to
/// pump; anything else is served to the end of the connection here.
async fn open_public_connection(
    state: Arc<AppState>,
    mut stream: TcpStream,
    peer: SocketAddr,
    limits: ConnLimits,
    closing: CancellationToken,
) -> Option<Pump> {
    if limits.send_buffer_bytes > 0 {
        // Without a cap, Linux lets a loopback peer (nginx on the same host) grow the send
        // buffer to megabytes: a client that stopped reading would hold that much before
        // the write timeout even starts.
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(limits.send_buffer_bytes);
    }
    let mut buf = Vec::new();
    let first = tokio::select! {
        next = head::read(&mut stream, &mut buf, limits.max_header_bytes, limits.header_read_timeout) => next,
        _ = closing.cancelled() => return None,
    };
    // Boxed: a publish's state (and hyper's) is large, and an unboxed branch would make
    // every connection's opening, subscriptions included, reserve room for it.
    match first {
        Head::Subscribe(req) => {
            // A stream lives for hours: it must not keep the head buffer.
            drop(buf);
            direct::open_subscription(state, stream, req, peer).await
        }
        other => {
            Box::pin(serve_requests(
                state, stream, buf, other, peer, limits, closing,
            ))
            .await;
            None
        }
    }
}

/// The requests of a connection that did not start with an event stream: plain publishes
/// here, one after another, until the first request the lean path leaves to hyper.
async fn serve_requests(
    state: Arc<AppState>,
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    mut next: Head,
    peer: SocketAddr,
    limits: ConnLimits,
    closing: CancellationToken,
) {
    loop {
        match next {
            Head::Subscribe(req) => {
                drop(buf);
                return direct::serve_subscription(state, stream, req, peer).await;
            }
            Head::Publish(head) => {
                let last = closing.is_cancelled();
                // A draining server answers one more request, not a pipelined run; and
                // with nothing after this request there is no run to look for.
                let followed = buf.len() > head.len + head.content_length;
                let run = if last || !followed {
                    Vec::new()
                } else {
                    head::complete_publishes(&buf, &head, limits.max_header_bytes, MAX_PIPELINED)
                };
                let after = if run.len() > 1 {
                    direct_publish::serve_pipelined(&state, &mut stream, &mut buf, run).await
                } else {
                    direct_publish::serve(&state, &mut stream, &mut buf, head, last).await
                };
                if after == After::Close {
                    return;
                }
            }
            Head::Other => {
                let timeouts = state.hub.metrics().write_timeouts.clone();
                let service = service_fn(move |req| http::serve_public(state.clone(), req, peer));
                let io = Prefixed::new(buf, stream);
                return serve_http(io, service, limits, timeouts, closing).await;
            }
            Head::TooLarge => return direct::reject_too_large(stream).await,
            Head::Gone => return,
        }
        next = tokio::select! {
            next = head::read(&mut stream, &mut buf, limits.max_header_bytes, limits.header_read_timeout) => next,
            _ = closing.cancelled() => return,
        };
    }
}

/// Serve a connection with hyper's HTTP/1.1, shutting it down gracefully on `closing`.
async fn serve_http<I, S>(
    io: I,
    service: S,
    limits: ConnLimits,
    write_timeouts: IntCounter,
    closing: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = http::response::Body> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = WriteTimeout::new(io, limits.write_timeout, write_timeouts);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = closing.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
    }
}
