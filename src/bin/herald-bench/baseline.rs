//! `herald-bench baseline`: the naive SSE broker the issue measures herald against —
//! hyper 1.x http1, one tokio broadcast channel per channel name, one body frame per
//! event. Deliberately plain: it is the design herald has to beat, not a product.
//!
//! `POST /pub?id=CHANNEL` (body = the data, as Nchan takes it), `GET /sub?id=CHANNEL`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::broadcast::{self, error::RecvError, Receiver};
use tokio_util::sync::ReusableBoxFuture;

/// Events a subscriber may fall behind before it skips (broadcast's lag).
const CAPACITY: usize = 1024;
const MAX_BODY: usize = 64 * 1024;

#[derive(Default)]
struct Broker {
    channels: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
    next_id: AtomicU64,
}

impl Broker {
    fn sender(&self, channel: &str) -> broadcast::Sender<Bytes> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels
            .entry(channel.to_string())
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .clone()
    }
}

/// Serve on `listen` until the process is killed.
pub fn run(listen: SocketAddr) -> anyhow::Result<()> {
    crate::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(listen))
}

async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    anyhow::ensure!(
        listen.ip().is_loopback(),
        "the baseline listens on loopback only"
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("baseline broker listening on {}", listener.local_addr()?);
    let broker = Arc::new(Broker::default());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                // Out of descriptors, most likely: back off briefly.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let broker = broker.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(broker.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

type ResponseBody = Either<Full<Bytes>, SseBody>;

async fn handle(
    broker: Arc<Broker>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let channel = req
        .uri()
        .query()
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "id"))
        .map(|(_, v)| v.into_owned());
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))));
        *r.status_mut() = status;
        Ok(r)
    };
    let Some(channel) = channel else {
        return text(StatusCode::BAD_REQUEST, "missing id\n");
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/sub") => {
            let rx = broker.sender(&channel).subscribe();
            let mut r = Response::new(Either::Right(SseBody::new(rx)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            Ok(r)
        }
        (&Method::POST, "/pub") => {
            let Ok(body) = Limited::new(req.into_body(), MAX_BODY).collect().await else {
                return text(StatusCode::BAD_REQUEST, "bad body\n");
            };
            let data = body.to_bytes();
            let id = broker.next_id.fetch_add(1, Ordering::Relaxed) + 1;
            let mut event = Vec::with_capacity(data.len() + 32);
            event.extend_from_slice(b"id: ");
            event.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
            event.extend_from_slice(b"\ndata: ");
            event.extend_from_slice(&data);
            event.extend_from_slice(b"\n\n");
            // No subscribers is not an error for a broker.
            let _ = broker.sender(&channel).send(Bytes::from(event));
            text(StatusCode::OK, "ok\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn recv(mut rx: Receiver<Bytes>) -> (Result<Bytes, RecvError>, Receiver<Bytes>) {
    let r = rx.recv().await;
    (r, rx)
}

/// An event stream: a comment, then one frame per broadcast event.
struct SseBody {
    preamble: Option<Bytes>,
    next: ReusableBoxFuture<'static, (Result<Bytes, RecvError>, Receiver<Bytes>)>,
}

impl SseBody {
    fn new(rx: Receiver<Bytes>) -> Self {
        Self {
            preamble: Some(Bytes::from_static(b": baseline\n\n")),
            next: ReusableBoxFuture::new(recv(rx)),
        }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(p) = self.preamble.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        loop {
            let (result, rx) = ready!(self.next.poll(cx));
            self.next.set(recv(rx));
            match result {
                Ok(event) => return Poll::Ready(Some(Ok(Frame::data(event)))),
                // Skipped events show up as gaps in the load tool's count.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return Poll::Ready(None),
            }
        }
    }
}
