//! OpenTelemetry trace export: the real `herald` binary exports spans over OTLP/HTTP
//! (protobuf) to a minimal receiver started here on loopback, which decodes the wire
//! format with `opentelemetry-proto`. Checks span names, `service.name`, the channel
//! attribute, the flush on SIGTERM, and that no credential or query string leaks.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald::config::Config;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::task::JoinHandle;

const PUBLISH_KEY: &str = "otel-test-publish-key-7f3a9c21";
const SUBSCRIBER_BEARER: &str = "subscriber-bearer-secret-5e1d";
const QUERY_MARKER: &str = "query-marker-b8c4";
const CHANNEL: &str = "otel-news";

/// One POST the receiver got: where it went, its body as sent and as decoded.
struct Export {
    path: String,
    content_type: String,
    raw: Bytes,
    decoded: Option<ExportTraceServiceRequest>,
}

/// A minimal OTLP/HTTP receiver on 127.0.0.1:0; stopped on drop.
struct Receiver {
    addr: SocketAddr,
    exports: Arc<Mutex<Vec<Export>>>,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let exports = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let exports = exports.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let exports = exports.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let exports = exports.clone();
                            async move { Ok::<_, hyper::Error>(receive(req, &exports).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Self {
            addr,
            exports,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    fn spans(&self) -> Vec<(String, Span)> {
        let exports = self.exports.lock().unwrap();
        let mut out = Vec::new();
        for export in exports.iter() {
            let Some(decoded) = &export.decoded else {
                continue;
            };
            for rs in &decoded.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| attr(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push((service.clone(), span.clone()));
                    }
                }
            }
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(req: Request<Incoming>, exports: &Mutex<Vec<Export>>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let post = req.method() == http::Method::POST;
    let raw = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let decoded = ExportTraceServiceRequest::decode(raw.clone()).ok();
    let ok = post && path == "/v1/traces" && decoded.is_some();
    exports.lock().unwrap().push(Export {
        path,
        content_type,
        raw,
        decoded,
    });
    let (status, body) = if ok {
        (200, ExportTraceServiceResponse::default().encode_to_vec())
    } else {
        (400, Vec::new())
    };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// An attribute's value.
fn value<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()
}

/// A string attribute.
fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match value(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// An integer attribute.
fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match value(attrs, key)? {
        any_value::Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_subscribe_spans_reach_an_otlp_receiver() {
    let receiver = Receiver::start().await;
    let mut herald = HeraldProcess::spawn(
        &format!(
            "[telemetry]\nlog_format = \"json\"\nlog_level = \"info\"\n\
             otlp_endpoint = \"{}\"\nservice_name = \"herald\"\nsample_ratio = 1.0\n\
             [auth]\npublish_keys = [\"{PUBLISH_KEY}\"]\n\
             [shutdown]\ndrain_timeout = \"2s\"\n",
            receiver.endpoint()
        ),
        &[],
    );
    let client = reqwest::Client::new();

    // Open a subscription carrying a bearer and a query parameter that must not leak.
    let mut stream = SseClient::connect_with(
        client
            .get(herald.url(&format!("/events?channel={CHANNEL}&_={QUERY_MARKER}")))
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {SUBSCRIBER_BEARER}"),
            ),
    )
    .await;
    assert_eq!(stream.status, 200);
    stream.expect_preamble().await;

    let (status, answer) = send_json(
        client
            .post(herald.url("/publish"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {PUBLISH_KEY}"),
            )
            .body(serde_json::json!({ "channel": CHANNEL, "data": "hello" }).to_string()),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let event = stream.next_event(REQUEST_TIMEOUT).await;
    assert_eq!(event.data, "hello");
    drop(stream);

    // SIGTERM: herald drains, then flushes queued spans before exiting.
    herald.terminate();
    let exit = herald.wait_exit_async(Duration::from_secs(15)).await;
    // The reader thread may not have taken the last lines yet: read stderr to its end.
    let complete = exit.is_some() && herald.wait_stderr_closed(Duration::from_secs(5)).await;
    let stderr = herald.stderr_text();
    assert!(
        exit.is_some_and(|s| s.success()),
        "herald exit {exit:?}; stderr:\n{stderr}"
    );
    assert!(complete, "stderr never reached its end; so far:\n{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("no reactor"),
        "{stderr}"
    );

    // The flush completed before exit, so the spans are here; the deadline only
    // covers the receiver task storing the last body.
    let names = |spans: &[(String, Span)]| -> Vec<String> {
        spans.iter().map(|(_, s)| s.name.clone()).collect()
    };
    let found = wait_until(Duration::from_secs(5), || {
        let n = names(&receiver.spans());
        n.iter().any(|n| n == "publish") && n.iter().any(|n| n == "subscribe")
    })
    .await;
    let spans = receiver.spans();
    assert!(found, "spans received: {:?}", names(&spans));

    for (service, _) in &spans {
        assert_eq!(service, "herald", "service.name");
    }
    let publish = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "publish")
        .unwrap();
    assert_eq!(
        attr(&publish.attributes, "channel").as_deref(),
        Some(CHANNEL)
    );
    assert_eq!(int_attr(&publish.attributes, "events"), Some(1));
    let subscribe = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "subscribe")
        .unwrap();
    assert_eq!(
        attr(&subscribe.attributes, "channel").as_deref(),
        Some(CHANNEL)
    );
    assert_eq!(int_attr(&subscribe.attributes, "channels"), Some(1));

    let exports = receiver.exports.lock().unwrap();
    for export in exports.iter() {
        assert_eq!(export.path, "/v1/traces");
        assert_eq!(export.content_type, "application/x-protobuf");
        assert!(export.decoded.is_some(), "undecodable OTLP body");
        // The bytes on the wire, not only the decoded attributes, carry no secret.
        for secret in [PUBLISH_KEY, SUBSCRIBER_BEARER, QUERY_MARKER] {
            assert!(
                !export
                    .raw
                    .windows(secret.len())
                    .any(|w| w == secret.as_bytes()),
                "{secret:?} was exported: {:?}",
                export.decoded
            );
        }
    }
}

#[test]
fn telemetry_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = Config::load_with_env(None, Vec::new()).unwrap();
    assert!(
        defaults.telemetry.otlp_endpoint.is_empty(),
        "export off by default"
    );
    assert_eq!(defaults.telemetry.service_name, "herald");
    assert_eq!(defaults.telemetry.sample_ratio, 0.1);
    let cases = [
        (
            "otlp_endpoint = \"collector:4318\"",
            "telemetry.otlp_endpoint",
        ),
        (
            "otlp_endpoint = \"http://127.0.0.1:4318\"",
            "telemetry.otlp_endpoint",
        ),
        (
            "otlp_endpoint = \"https://collector.example.com/v1/traces\"",
            "telemetry.otlp_endpoint",
        ),
        ("sample_ratio = 1.5", "telemetry.sample_ratio"),
        ("sample_ratio = -0.1", "telemetry.sample_ratio"),
        ("service_name = \" \"", "telemetry.service_name"),
    ];
    for (line, key) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, format!("[telemetry]\n{line}\n")).unwrap();
        let err = Config::load_with_env(Some(&file), Vec::new()).unwrap_err();
        assert!(err.to_string().contains(key), "{line}: {err}");
    }
    let file = dir.path().join("good.toml");
    std::fs::write(
        &file,
        "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\nsample_ratio = 1.0\n",
    )
    .unwrap();
    Config::load_with_env(Some(&file), Vec::new()).unwrap();
}
