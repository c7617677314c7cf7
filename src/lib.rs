//! herald: a hardened Server-Sent Events broker.
//!
//! Publishers `POST /publish` events to channels; browsers subscribe with `EventSource` at
//! `GET /events?channel=...` and resume with `Last-Event-ID`.
//!
//! # Layout
//! - [`config`] — typed settings, file + environment layering, validation naming the key
//! - [`settings`] — the validated snapshot in force and the objects built from it
//! - [`reload`] — SIGHUP: a new snapshot swapped in whole, or the old one kept
//! - [`sse`] — the spec-exact SSE encoder
//! - [`validate`] — rules for channel names, event types and data
//! - [`publish`] — publish bodies (JSON, batch, form) into validated events
//! - [`hub`] — channels, fan-out, history and seamless resume
//! - [`backend`] — memory or Redis behind one seam: where events are published and read
//! - [`auth`] — who may publish and read private channels: keys and JWTs
//! - [`tickets`] — single-use subscribe tickets
//! - [`client_ip`] — the client address behind trusted proxies
//! - [`limits`] — admission of streams: global, per-IP and rate caps
//! - [`write_timeout`] — ending connections whose writes stall
//! - [`http`] — the lean path for streams and publishes, hyper's routers for the rest
//! - [`metrics`] — every Prometheus metric, named in one place
//! - [`server`] — accept loops, sweeper and graceful drain
//! - [`telemetry`] — logs and OpenTelemetry trace export
//! - [`doctor`] — `herald doctor`: checks the proxy path the way a browser sees it
//! - [`demo`] — the demo apps under `/demo/`: pages, simulated jobs, the broker's figures

pub mod auth;
pub mod backend;
pub mod client_ip;
pub mod config;
pub mod demo;
pub mod doctor;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod publish;
pub mod reload;
pub mod server;
pub mod settings;
pub mod sse;
pub mod telemetry;
pub mod tickets;
pub mod validate;
pub mod write_timeout;
