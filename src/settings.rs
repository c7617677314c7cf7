//! The settings in force: one validated snapshot of the configuration and every object
//! built from it, handed out from one place and swapped whole on reload.
//!
//! Why: a reload is only safe if what runs is what was validated. [`Settings::build`] is
//! the one place that turns a [`Config`] into live objects (the JWT verifier, the
//! authorizer, the stream, hub, admission and connection limits); it fails, naming the
//! key, or yields a snapshot that cannot fail later. Nothing fails open: a JWT key that
//! cannot be read refuses the start, or keeps the old snapshot on reload.
//!
//! Handlers read [`LiveSettings::load`] once per request; open streams read it when their
//! timers fire. Stateful parts (the hub's rings, the per-IP admission table, tickets) keep
//! their state and take their limits from the current snapshot.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use bytes::Bytes;
use wildmatch::WildMatch;

use crate::auth::{Authorizer, JwtVerifier};
use crate::config::{Config, ConfigError};
use crate::http::stream::StreamSettings;
use crate::hub::HubSettings;
use crate::limits::AdmissionLimits;
use crate::publish::PublishLimits;

/// Per-connection protections, from `limits.*`, read when a connection is accepted.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub send_buffer_bytes: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub write_timeout: Duration,
}

/// One validated configuration and the objects built from it.
pub struct Settings {
    pub config: Config,
    pub auth: Authorizer,
    pub hub: HubSettings,
    pub stream: StreamSettings,
    pub admission: AdmissionLimits,
    pub publish: PublishLimits,
    pub conn: ConnLimits,
    /// Opening bytes of every stream (`retry:` and a comment).
    pub preamble: Bytes,
    /// `telemetry.metrics_channel_groups`, compiled.
    pub channel_groups: Vec<WildMatch>,
    /// The demo console and apps are served: `server.demo_page`, or `herald --demo`.
    pub demo_page: bool,
}

impl Settings {
    /// Everything `config` describes, or the first key that cannot be made to work.
    pub fn build(config: Config, demo: bool) -> Result<Self, ConfigError> {
        let jwt = JwtVerifier::from_config(&config.auth.jwt)
            .map_err(|(key, reason)| ConfigError::Invalid { key, reason })?;
        let heartbeat = if config.sse.heartbeat_event.is_empty() {
            crate::sse::comment("ping")
        } else {
            crate::sse::encode(&crate::sse::Event {
                id: None,
                event: Some(&config.sse.heartbeat_event),
                data: "",
                retry: None,
            })
        };
        let limits = &config.limits;
        Ok(Self {
            demo_page: config.server.demo_page || demo,
            auth: Authorizer::new(&config.auth, jwt, demo),
            hub: HubSettings::from_config(&config),
            stream: StreamSettings {
                heartbeat_interval: config.sse.heartbeat_interval,
                heartbeat,
                retry: config.sse.retry,
                max_lifetime: limits.max_connection_lifetime,
                lifetime_jitter: limits.connection_lifetime_jitter,
                drain_spread: config.shutdown.drain_timeout.mul_f64(0.7),
            },
            admission: AdmissionLimits {
                max_connections: limits.max_connections,
                max_connections_per_ip: limits.max_connections_per_ip,
                new_streams_per_ip_per_second: limits.new_streams_per_ip_per_second,
                new_streams_burst_per_ip: f64::from(limits.new_streams_burst_per_ip),
                retry_after: limits.retry_after,
            },
            publish: PublishLimits {
                max_channel_name_length: limits.max_channel_name_length,
                max_event_type_length: limits.max_event_type_length,
                max_event_bytes: limits.max_event_bytes,
                max_batch_events: limits.max_batch_events,
            },
            conn: ConnLimits {
                send_buffer_bytes: limits.send_buffer_bytes,
                header_read_timeout: limits.header_read_timeout,
                max_header_bytes: limits.max_header_bytes,
                write_timeout: limits.write_timeout,
            },
            preamble: crate::sse::stream_preamble(config.sse.retry.as_millis() as u64),
            channel_groups: config
                .telemetry
                .metrics_channel_groups
                .iter()
                .map(|p| WildMatch::new(p))
                .collect(),
            config,
        })
    }
}

/// The current [`Settings`], replaced whole by a reload.
pub struct LiveSettings(ArcSwap<Settings>);

impl LiveSettings {
    pub fn new(settings: Settings) -> Self {
        Self(ArcSwap::from_pointee(settings))
    }

    /// The snapshot in force now, for a moment (no await while holding it).
    pub fn load(&self) -> Guard<Arc<Settings>> {
        self.0.load()
    }

    /// The snapshot in force now, to keep across awaits (a request's whole life).
    pub fn current(&self) -> Arc<Settings> {
        self.0.load_full()
    }

    pub fn store(&self, settings: Settings) {
        self.0.store(Arc::new(settings));
    }
}
