//! The demo apps: four pages that show what herald is for, and the two server-side parts
//! they need. All of it is served on the public listener only while `server.demo_page` is
//! on (404 otherwise), like the console page at `/`.
//!
//! - `/demo/chat` and `/demo/feed` are static pages: they publish through `POST /publish`
//!   like any app, so sending needs `herald --demo` (or a publish key).
//! - `/demo/tasks`: `POST` starts a simulated job on the server that reports its progress
//!   as events ([`tasks`]).
//! - `/demo/broker`: the node's own figures, published once a second on
//!   [`broker::CHANNEL`] while that channel has subscribers on the node ([`broker`]).
//!
//! Jobs and the figures publisher are tasks of [`Demo`]; the drain stops them before the
//! hub closes ([`Demo::stop`]).

pub mod broker;
pub mod tasks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::response::{self, Body, Response};
use crate::http::AppState;

/// A page or stylesheet of the demo apps, embedded in the binary.
struct Page {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";

const PAGES: &[Page] = &[
    Page {
        path: "/demo/chat",
        content_type: HTML,
        body: include_str!("pages/chat.html"),
    },
    Page {
        path: "/demo/tasks",
        content_type: HTML,
        body: include_str!("pages/tasks.html"),
    },
    Page {
        path: "/demo/feed",
        content_type: HTML,
        body: include_str!("pages/feed.html"),
    },
    Page {
        path: "/demo/broker",
        content_type: HTML,
        body: include_str!("pages/broker.html"),
    },
    // The look the four pages share with the console page (the same CSS variables).
    Page {
        path: "/demo/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("pages/style.css"),
    },
    // The few lines of script the four pages share (the state badge, the notice).
    Page {
        path: "/demo/page.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("pages/page.js"),
    },
];

/// The demo apps' running parts on one node.
pub struct Demo {
    /// Running jobs and the figures publisher, waited for (briefly) at the drain.
    tasks: TaskTracker,
    /// Cancelled when the drain starts: jobs and the publisher stop.
    stop: CancellationToken,
    /// One permit per running job: at most [`tasks::MAX_RUNNING`].
    jobs: Arc<Semaphore>,
    /// Names this node in its broker figures: several nodes on one Redis publish on the
    /// same channel, and the page keeps to one of them.
    node: String,
}

impl Default for Demo {
    fn default() -> Self {
        Self::new()
    }
}

impl Demo {
    pub fn new() -> Self {
        Self {
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            jobs: Arc::new(Semaphore::new(tasks::MAX_RUNNING)),
            node: format!("{:06x}", rand::random::<u32>() & 0xff_ffff),
        }
    }

    /// Start the figures publisher; `server::run` calls it once. It runs whether or not
    /// the demo page is on (a reload may turn it on) and publishes only while it is.
    pub fn start(state: &Arc<AppState>) {
        let demo = &state.demo;
        demo.tasks
            .spawn(broker::run(state.clone(), demo.stop.clone()));
    }

    /// The drain: every job and the publisher are told to stop (a job publishes its
    /// `cancelled` event), and waited for at most `wait`. Called before the hub closes,
    /// so those last events are still accepted: into the history, and to other nodes on
    /// Redis. This node's own streams get them only if they write them before the hub
    /// closes, since a closing hub hands its streams nothing more.
    pub async fn stop(&self, wait: Duration) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(wait, self.tasks.wait()).await.is_err() {
            tracing::warn!("demo jobs did not stop in time; the drain goes on");
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }
}

/// Any request under `/demo/` on the public listener.
pub async fn serve<B>(state: &Arc<AppState>, req: &Request<B>) -> Response<Body> {
    // Read per request: `server.demo_page` applies at once on reload.
    if !state.settings().demo_page {
        return response::not_found();
    }
    let path = req.uri().path();
    let Some(page) = PAGES.iter().find(|p| p.path == path) else {
        return response::not_found();
    };
    match *req.method() {
        Method::GET | Method::HEAD => response::full(
            StatusCode::OK,
            page.content_type,
            Bytes::from_static(page.body.as_bytes()),
        ),
        Method::POST if path == "/demo/tasks" => tasks::start(state).await,
        _ if path == "/demo/tasks" => response::method_not_allowed("GET, HEAD, POST"),
        _ => response::method_not_allowed("GET, HEAD"),
    }
}
