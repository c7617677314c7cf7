//! Typed settings: embedded defaults < TOML file < `HERALD_*` environment, validated
//! before anything binds, with errors that name the offending key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod duration;

/// The defaults, embedded in the binary so `herald` runs with no file at all.
/// `deploy/herald.toml` documents the same keys; a test keeps the two in step.
pub const DEFAULTS_TOML: &str = include_str!("../defaults.toml");

/// Prefix of environment overrides: `HERALD_SSE__HEARTBEAT_INTERVAL=30s` sets
/// `sse.heartbeat_interval` (`__` separates a section from its key).
pub const ENV_PREFIX: &str = "HERALD";
/// Most `telemetry.metrics_channel_groups` patterns: each is a series per metric.
pub const MAX_CHANNEL_GROUPS: usize = 50;

/// A configuration that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or parsed into the typed settings.
    #[error("{0}")]
    Load(String),
    /// A value parsed but is out of range or inconsistent.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub sse: SseConfig,
    pub history: HistoryConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub backend: BackendConfig,
    pub telemetry: TelemetryConfig,
    pub shutdown: ShutdownConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Public listener: subscriptions, publishing, the demo page.
    pub listen: SocketAddr,
    /// Operator listener: metrics, health, stats; never exposed through nginx.
    pub admin_listen: SocketAddr,
    /// Serve the demo console at `/` and the demo apps under `/demo/` on the public
    /// listener (`herald --demo` turns them on too).
    pub demo_page: bool,
    /// Peers whose `X-Forwarded-For` / `X-Real-IP` name the client (CIDR list).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Browser origins allowed to call the public listener cross-origin (exact match).
    pub cors_allowed_origins: Vec<String>,
    /// Accept queue length of both listeners (the kernel caps it at net.core.somaxconn).
    pub listen_backlog: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseConfig {
    /// How often an idle stream gets a keep-alive, so proxies do not cut it.
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// When non-empty, heartbeats are events of this type instead of `: ping` comments,
    /// so browser code (which never sees comments) can run a watchdog.
    pub heartbeat_event: String,
    /// Reconnection delay sent as the `retry:` line that opens each stream.
    #[serde(with = "duration")]
    pub retry: Duration,
    /// Event type sent when a resume cannot be served from history.
    pub reset_event: String,
    /// A channel wakes its subscribers at most once per window; events published inside
    /// it go out together at its end. Zero sends every publish at once.
    #[serde(with = "duration")]
    pub coalesce_window: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Events retained per channel for `Last-Event-ID` resume.
    pub max_events: usize,
    /// Events older than this are dropped from history.
    #[serde(with = "duration")]
    pub max_age: Duration,
    /// How often aged events and empty channels are swept.
    #[serde(with = "duration")]
    pub sweep_interval: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open event streams on the node (503 beyond).
    pub max_connections: usize,
    /// Open event streams per client IP (429 beyond).
    pub max_connections_per_ip: usize,
    /// Subscribers of one channel (503 beyond).
    pub max_subscribers_per_channel: usize,
    /// New streams per second per client IP, against reconnect storms; 0 is off.
    pub new_streams_per_ip_per_second: f64,
    /// New streams an IP may open at once before the rate applies.
    pub new_streams_burst_per_ip: u32,
    /// `Retry-After` sent with 503 refusals.
    #[serde(with = "duration")]
    pub retry_after: Duration,
    /// Kernel send buffer of each public connection (SO_SNDBUF); 0 keeps the kernel's.
    pub send_buffer_bytes: usize,
    /// A write that makes no progress for this long ends the connection.
    #[serde(with = "duration")]
    pub write_timeout: Duration,
    /// Largest request head (request line + headers), in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Streams are ended after this long (with a `retry:` hint) so load rebalances; 0s is off.
    #[serde(with = "duration")]
    pub max_connection_lifetime: Duration,
    /// Random spread added to `max_connection_lifetime`, as a fraction of it (0..=1).
    pub connection_lifetime_jitter: f64,
    /// Channels the node holds at once; publishing to a new channel beyond it gets 503.
    pub max_channels: usize,
    /// Channels one subscription may name.
    pub max_channels_per_subscription: usize,
    /// Longest channel name, in bytes.
    pub max_channel_name_length: usize,
    /// Longest event type, in bytes.
    pub max_event_type_length: usize,
    /// Largest publish request body, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Largest single encoded event, in bytes.
    pub max_event_bytes: usize,
    /// Most events in one batch publish.
    pub max_batch_events: usize,
    /// Events a subscriber may have pending before it is disconnected as too slow
    /// (the channel buffer is at least this long).
    pub subscriber_queue_events: usize,
    /// Unread bytes a subscriber may have pending before it is disconnected as too slow.
    pub subscriber_queue_bytes: usize,
    /// A publish body that has not fully arrived by then gets 408 (slow POST).
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// A request whose headers have not arrived by then is closed (slowloris).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer keys accepted for `POST /publish` on every channel.
    pub publish_keys: Vec<String>,
    /// Bearer keys limited to channel patterns.
    pub scoped_publish_keys: Vec<ScopedKeyConfig>,
    /// Channel patterns whose subscribers must present a token or ticket.
    pub private_channels: Vec<String>,
    /// Cookie that may carry a subscriber JWT (EventSource cannot set headers).
    pub cookie_name: String,
    /// How long a ticket from `POST /tickets` stays valid.
    #[serde(with = "duration")]
    pub ticket_ttl: Duration,
    /// Unused tickets held at once (503 beyond).
    pub max_tickets: usize,
    pub jwt: JwtConfig,
}

/// A publish key limited to some channels.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedKeyConfig {
    pub key: String,
    pub channels: Vec<String>,
}

/// JWT verification; an empty `algorithm` turns JWT off.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// `HS256`, `RS256`, `ES256`, or empty (off).
    pub algorithm: String,
    /// HS256 shared secret (at least 32 bytes); prefer `secret_file`.
    pub secret: String,
    pub secret_file: String,
    /// PEM public key for RS256/ES256.
    pub public_key_file: String,
    /// Required `iss`, when non-empty.
    pub issuer: String,
    /// Required `aud`, when non-empty.
    pub audience: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `memory`: one node, everything in process. `redis`: any number of nodes share
    /// IDs, history and fan-out through one Redis.
    pub kind: String,
    pub redis: RedisConfig,
}

/// `backend.redis.*`, read when `backend.kind = "redis"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS.
    pub url: String,
    /// Prefix of every key and pub/sub channel, so several clusters share one Redis.
    pub key_prefix: String,
    /// PEM file of the CA that signed the server's certificate (`rediss://`); empty
    /// uses the system's roots.
    pub tls_ca_file: String,
    /// Longest wait for a TCP (and TLS) connection to Redis.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Longest wait for one command's answer; a publish then gets 503.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// First delay before reconnecting after Redis went away; doubles per failure.
    #[serde(with = "duration")]
    pub reconnect_backoff_min: Duration,
    /// Longest delay between reconnect attempts.
    #[serde(with = "duration")]
    pub reconnect_backoff_max: Duration,
    /// How often the node checks its pub/sub connection end to end (a message it sends
    /// itself must come back within `command_timeout`).
    #[serde(with = "duration")]
    pub health_interval: Duration,
    /// Redis Sentinel addresses (`host:port`), asked in order for the primary of
    /// `master_name`; empty: no Sentinel, `url` names the one Redis. With Sentinel, `url`
    /// still gives the scheme, credentials and database of the data nodes; its host and
    /// port are replaced by the primary's.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// A publish is answered 200 only once this many replicas have it (Redis `WAIT`);
    /// 0 answers as soon as the primary has it. Why: replication is asynchronous, so a
    /// primary that dies can take acknowledged events with it.
    pub replica_acks: u32,
    /// Longest wait for `replica_acks` replicas; fewer by then answers 503 (the event
    /// was published and may still appear).
    #[serde(with = "duration")]
    pub replica_ack_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `tracing` filter directive, e.g. `info` or `herald=debug`.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: String,
    /// OTLP/HTTP (protobuf) traces URL, used verbatim (it must include `/v1/traces`);
    /// empty turns trace export off.
    pub otlp_endpoint: String,
    /// `service.name` of the exported resource, how a tracing backend groups our spans.
    pub service_name: String,
    /// Fraction of traces exported (0..=1): spans cost an export per request, so a
    /// busy broker keeps a sample.
    pub sample_ratio: f64,
    /// Channel name patterns (`*`, `?`) whose subscribers and channels `/metrics` counts
    /// per pattern (`herald_channel_group_*{group}`), the bounded per-channel view: one
    /// series per pattern plus `other`, never one per channel.
    pub metrics_channel_groups: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Longest time between SIGTERM and exit; open streams are ended within it.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self::load(None).expect("embedded defaults are valid")
    }
}

impl Config {
    /// Layer the embedded defaults, the optional file and the environment, then validate.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::read(file, env)?.validated()
    }

    /// Validate, naming the first key at fault.
    pub fn validated(self) -> Result<Self, ConfigError> {
        self.validate()?;
        Ok(self)
    }

    /// The layers read and typed, not validated yet (a reload puts the restart-only keys
    /// back first).
    pub fn read(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                )));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}_")) && k.contains("__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("auth.publish_keys")
                .with_list_parse_key("auth.private_channels")
                .with_list_parse_key("server.trusted_proxies")
                .with_list_parse_key("server.cors_allowed_origins")
                .with_list_parse_key("telemetry.metrics_channel_groups")
                .with_list_parse_key("backend.redis.sentinels")
                .try_parsing(true)
                .source(Some(env)),
        );
        let settings: Config = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                reason: reason.into(),
            }
        }
        if self.server.listen == self.server.admin_listen && self.server.listen.port() != 0 {
            return Err(invalid(
                "server.admin_listen",
                "must differ from server.listen",
            ));
        }
        if self.server.listen_backlog == 0 {
            return Err(invalid("server.listen_backlog", "must be greater than 0"));
        }
        if self.sse.heartbeat_interval < Duration::from_millis(100) {
            return Err(invalid("sse.heartbeat_interval", "must be at least 100ms"));
        }
        if self.sse.coalesce_window > Duration::from_secs(1) {
            return Err(invalid("sse.coalesce_window", "must be at most 1s"));
        }
        if self.sse.retry.as_millis() > u32::MAX as u128 {
            return Err(invalid("sse.retry", "too large"));
        }
        crate::validate::event_type(&self.sse.heartbeat_event, 128, true)
            .map_err(|r| invalid("sse.heartbeat_event", r))?;
        crate::validate::event_type(&self.sse.reset_event, 128, false)
            .map_err(|r| invalid("sse.reset_event", r))?;
        if self.history.max_events > 1_000_000 {
            return Err(invalid("history.max_events", "must be at most 1000000"));
        }
        if self.history.sweep_interval < Duration::from_millis(10) {
            return Err(invalid("history.sweep_interval", "must be at least 10ms"));
        }
        let l = &self.limits;
        let positive: [(&'static str, usize); 13] = [
            ("limits.max_connections", l.max_connections),
            ("limits.max_connections_per_ip", l.max_connections_per_ip),
            (
                "limits.max_subscribers_per_channel",
                l.max_subscribers_per_channel,
            ),
            (
                "limits.new_streams_burst_per_ip",
                l.new_streams_burst_per_ip as usize,
            ),
            ("limits.max_channels", l.max_channels),
            (
                "limits.max_channels_per_subscription",
                l.max_channels_per_subscription,
            ),
            ("limits.max_channel_name_length", l.max_channel_name_length),
            ("limits.max_event_type_length", l.max_event_type_length),
            ("limits.max_body_bytes", l.max_body_bytes),
            ("limits.max_event_bytes", l.max_event_bytes),
            ("limits.max_batch_events", l.max_batch_events),
            ("limits.subscriber_queue_events", l.subscriber_queue_events),
            ("limits.subscriber_queue_bytes", l.subscriber_queue_bytes),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if l.max_channels_per_subscription > 1024 {
            return Err(invalid(
                "limits.max_channels_per_subscription",
                "must be at most 1024",
            ));
        }
        if l.subscriber_queue_events > 1_000_000 {
            return Err(invalid(
                "limits.subscriber_queue_events",
                "must be at most 1000000",
            ));
        }
        if !(l.new_streams_per_ip_per_second >= 0.0 && l.new_streams_per_ip_per_second.is_finite())
        {
            return Err(invalid(
                "limits.new_streams_per_ip_per_second",
                "must be 0 (off) or a positive number",
            ));
        }
        if !(0.0..=1.0).contains(&l.connection_lifetime_jitter) {
            return Err(invalid(
                "limits.connection_lifetime_jitter",
                "must be between 0 and 1",
            ));
        }
        if l.max_header_bytes < 8192 {
            return Err(invalid("limits.max_header_bytes", "must be at least 8192"));
        }
        if l.write_timeout.is_zero() {
            return Err(invalid("limits.write_timeout", "must be greater than 0"));
        }
        if l.body_read_timeout.is_zero() {
            return Err(invalid(
                "limits.body_read_timeout",
                "must be greater than 0",
            ));
        }
        if l.header_read_timeout.is_zero() {
            return Err(invalid(
                "limits.header_read_timeout",
                "must be greater than 0",
            ));
        }
        for (i, key) in self.auth.publish_keys.iter().enumerate() {
            if key.len() < 16 {
                return Err(invalid(
                    "auth.publish_keys",
                    format!("key #{i} is shorter than 16 characters"),
                ));
            }
        }
        for (i, scoped) in self.auth.scoped_publish_keys.iter().enumerate() {
            if scoped.key.len() < 16 {
                return Err(invalid(
                    "auth.scoped_publish_keys",
                    format!("key #{i} is shorter than 16 characters"),
                ));
            }
            if scoped.channels.is_empty() {
                return Err(invalid(
                    "auth.scoped_publish_keys",
                    format!("key #{i} lists no channels"),
                ));
            }
        }
        if !self.auth.private_channels.is_empty() && self.auth.jwt.algorithm.is_empty() {
            return Err(invalid(
                "auth.private_channels",
                "private channels need auth.jwt.algorithm to verify subscriber tokens",
            ));
        }
        // The JWT key itself (files, PEM) is checked where the verifier is built, once:
        // `Settings::build`.
        if self.auth.cookie_name.is_empty()
            || !self
                .auth
                .cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                "auth.cookie_name",
                "must be letters, digits, _ or -",
            ));
        }
        if self.auth.ticket_ttl.is_zero() || self.auth.ticket_ttl > Duration::from_secs(3600) {
            return Err(invalid("auth.ticket_ttl", "must be between 1s and 1h"));
        }
        if self.auth.max_tickets == 0 {
            return Err(invalid("auth.max_tickets", "must be greater than 0"));
        }
        for origin in &self.server.cors_allowed_origins {
            if origin == "*" {
                return Err(invalid(
                    "server.cors_allowed_origins",
                    "\"*\" is not allowed: credentials (cookies) are allowed, so list exact origins",
                ));
            }
            // Echoed verbatim in `Access-Control-Allow-Origin`: no spaces or control characters.
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
                || origin.bytes().any(|b| b.is_ascii_control() || b == b' ')
            {
                return Err(invalid(
                    "server.cors_allowed_origins",
                    format!("{origin:?} is not an origin like \"https://app.example.com\""),
                ));
            }
        }
        match self.backend.kind.as_str() {
            "memory" => {}
            "redis" => self
                .backend
                .redis
                .validate()
                .map_err(|(k, r)| invalid(k, r))?,
            other => {
                return Err(invalid(
                    "backend.kind",
                    format!("unknown backend {other:?} (supported: \"memory\", \"redis\")"),
                ))
            }
        }
        if !matches!(self.telemetry.log_format.as_str(), "text" | "json") {
            return Err(invalid(
                "telemetry.log_format",
                "must be \"text\" or \"json\"",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_level).is_err() {
            return Err(invalid(
                "telemetry.log_level",
                "not a valid filter directive",
            ));
        }
        if !self.telemetry.otlp_endpoint.is_empty() {
            crate::telemetry::check_otlp_endpoint(&self.telemetry.otlp_endpoint)
                .map_err(|r| invalid("telemetry.otlp_endpoint", r))?;
        }
        if self.telemetry.service_name.trim().is_empty() {
            return Err(invalid("telemetry.service_name", "must not be empty"));
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return Err(invalid("telemetry.sample_ratio", "must be between 0 and 1"));
        }
        let groups = &self.telemetry.metrics_channel_groups;
        if groups.len() > MAX_CHANNEL_GROUPS {
            return Err(invalid(
                "telemetry.metrics_channel_groups",
                format!("at most {MAX_CHANNEL_GROUPS} patterns (each is a series)"),
            ));
        }
        for (i, pattern) in groups.iter().enumerate() {
            if pattern.trim().is_empty() || pattern == "other" {
                return Err(invalid(
                    "telemetry.metrics_channel_groups",
                    format!("pattern {i} is empty or \"other\" (the group of the rest)"),
                ));
            }
            if groups[..i].contains(pattern) {
                return Err(invalid(
                    "telemetry.metrics_channel_groups",
                    format!("pattern {pattern:?} is listed twice"),
                ));
            }
        }
        if self.shutdown.drain_timeout.is_zero() {
            return Err(invalid("shutdown.drain_timeout", "must be greater than 0"));
        }
        Ok(())
    }

    /// The effective configuration as TOML, for `herald check-config`.
    /// Publish keys are masked: this output ends up in terminals and tickets.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        let redacted = || "<redacted>".to_string();
        for key in &mut shown.auth.publish_keys {
            *key = redacted();
        }
        for scoped in &mut shown.auth.scoped_publish_keys {
            scoped.key = redacted();
        }
        if !shown.auth.jwt.secret.is_empty() {
            shown.auth.jwt.secret = redacted();
        }
        shown.backend.redis.url = redact_url_password(&shown.backend.redis.url);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

impl RedisConfig {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| ("backend.redis.url", format!("not a URL ({e})")))?;
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err((
                "backend.redis.url",
                "must start with redis:// or rediss://".into(),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(("backend.redis.url", "names no host".into()));
        }
        let db = url.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u16>().is_err() {
            return Err((
                "backend.redis.url",
                format!("database {db:?} is not a number"),
            ));
        }
        if redis::Client::open(self.url.as_str()).is_err() {
            return Err(("backend.redis.url", "not a Redis URL".into()));
        }
        if self.key_prefix.is_empty()
            || self.key_prefix.len() > 64
            || !self.key_prefix.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err((
                "backend.redis.key_prefix",
                "must be 1 to 64 printable ASCII characters without spaces".into(),
            ));
        }
        if !self.tls_ca_file.is_empty() {
            if url.scheme() != "rediss" {
                return Err((
                    "backend.redis.tls_ca_file",
                    "is set but backend.redis.url is not rediss://".into(),
                ));
            }
            if !Path::new(&self.tls_ca_file).is_file() {
                return Err((
                    "backend.redis.tls_ca_file",
                    format!("{} is not a readable file", self.tls_ca_file),
                ));
            }
        }
        for (key, value) in [
            ("backend.redis.connect_timeout", self.connect_timeout),
            ("backend.redis.command_timeout", self.command_timeout),
            (
                "backend.redis.reconnect_backoff_min",
                self.reconnect_backoff_min,
            ),
            ("backend.redis.health_interval", self.health_interval),
        ] {
            if value < Duration::from_millis(1) {
                return Err((key, "must be at least 1ms".into()));
            }
        }
        if self.reconnect_backoff_max < self.reconnect_backoff_min {
            return Err((
                "backend.redis.reconnect_backoff_max",
                "must not be below backend.redis.reconnect_backoff_min".into(),
            ));
        }
        self.validate_replication()
    }

    /// The Sentinel and replica-acknowledgement keys.
    fn validate_replication(&self) -> Result<(), (&'static str, String)> {
        for address in &self.sentinels {
            if parse_host_port(address).is_none() {
                return Err((
                    "backend.redis.sentinels",
                    format!("{address:?} is not host:port"),
                ));
            }
        }
        let name = self.master_name.as_str();
        match (self.sentinels.is_empty(), name.is_empty()) {
            (false, true) => {
                return Err((
                    "backend.redis.master_name",
                    "must be set when backend.redis.sentinels is".into(),
                ))
            }
            (true, false) => {
                return Err((
                    "backend.redis.sentinels",
                    "must list the sentinels when backend.redis.master_name is set".into(),
                ))
            }
            _ => {}
        }
        if name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err((
                "backend.redis.master_name",
                "must be at most 64 printable ASCII characters without spaces".into(),
            ));
        }
        if self.replica_acks > 32 {
            return Err(("backend.redis.replica_acks", "must be at most 32".into()));
        }
        if self.replica_acks > 0 && self.replica_ack_timeout < Duration::from_millis(1) {
            return Err((
                "backend.redis.replica_ack_timeout",
                "must be at least 1ms when backend.redis.replica_acks is set".into(),
            ));
        }
        Ok(())
    }
}

/// `host:port` (`[v6]:port` too) with a non-zero port; `(host, port)`.
pub fn parse_host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.trim().rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let valid = !host.is_empty() && !host.contains(['/', '@', ' ', '[', ']']);
    valid.then(|| (host.to_string(), port))
}

/// `url` with its password replaced, for logs and `check-config`.
pub fn redact_url_password(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("<redacted>"));
            url.to_string()
        }
        Ok(_) => raw.to_string(),
        // Not a URL: it may still hold a secret, so show none of it.
        Err(_) => "<redacted: not a URL>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.sse.heartbeat_interval, Duration::from_secs(120));
        assert_eq!(c.limits.max_channels_per_subscription, 16);
        assert_eq!(c.sse.reset_event, "reset");
    }

    #[test]
    fn environment_overrides_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.toml");
        std::fs::write(
            &file,
            "[sse]\nheartbeat_interval = \"30s\"\nretry = \"1s\"\n",
        )
        .unwrap();
        let c = Config::load_with_env(
            Some(&file),
            env(&[
                ("HERALD_SSE__HEARTBEAT_INTERVAL", "5s"),
                (
                    "HERALD_AUTH__PUBLISH_KEYS",
                    "aaaaaaaaaaaaaaaa,bbbbbbbbbbbbbbbb",
                ),
                ("HERALD_SERVER__TRUSTED_PROXIES", "127.0.0.1/32,10.0.0.0/8"),
                ("HERALD_UNRELATED", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.sse.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.sse.retry, Duration::from_secs(1));
        assert_eq!(c.auth.publish_keys.len(), 2);
        assert_eq!(c.server.trusted_proxies.len(), 2);
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "[sse]\nheartbeat_interval = \"soon\"\n",
                "sse.heartbeat_interval",
            ),
            (
                "[telemetry]\nmetrics_channel_groups = [\"chat:*\", \"chat:*\"]\n",
                "telemetry.metrics_channel_groups",
            ),
            (
                "[telemetry]\nmetrics_channel_groups = [\"other\"]\n",
                "telemetry.metrics_channel_groups",
            ),
            (
                "[limits]\nmax_batch_events = 0\n",
                "limits.max_batch_events",
            ),
            ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
            ("[history]\nmax_evnts = 3\n", "max_evnts"),
            ("[backend]\nkind = \"etcd\"\n", "backend.kind"),
            (
                "[backend]\nkind = \"redis\"\n[backend.redis]\nurl = \"http://x\"\n",
                "backend.redis.url",
            ),
            (
                "[backend]\nkind = \"redis\"\n[backend.redis]\nurl = \"redis://h/x\"\n",
                "backend.redis.url",
            ),
            (
                "[backend]\nkind = \"redis\"\n[backend.redis]\nkey_prefix = \"a b\"\n",
                "backend.redis.key_prefix",
            ),
            (
                "[backend]\nkind = \"redis\"\n[backend.redis]\ncommand_timeout = \"0s\"\n",
                "backend.redis.command_timeout",
            ),
            (
                "[backend]\nkind = \"redis\"\n[backend.redis]\nreconnect_backoff_max = \"1ms\"\n",
                "backend.redis.reconnect_backoff_max",
            ),
            (
                "[backend]\nkind = \"redis\"\n[backend.redis]\ntls_ca_file = \"/nonexistent\"\n",
                "backend.redis.tls_ca_file",
            ),
            (
                "[backend]\nkind = \"redis\"\n[backend.redis]\nsentinels = [\"127.0.0.1\"]\nmaster_name = \"m\"\n",
                "backend.redis.sentinels",
            ),
            (
                "[backend]\nkind = \"redis\"\n[backend.redis]\nsentinels = [\"h:0\"]\nmaster_name = \"m\"\n",
                "backend.redis.sentinels",
            ),
            (
                "[backend]\nkind = \"redis\"\n[backend.redis]\nsentinels = [\"127.0.0.1:26379\"]\n",
                "backend.redis.master_name",
            ),
            (
                "[backend]\nkind = \"redis\"\n[backend.redis]\nmaster_name = \"m\"\n",
                "backend.redis.sentinels",
            ),
            (
                "[backend]\nkind = \"redis\"\n[backend.redis]\nsentinels = [\"h:1\"]\nmaster_name = \"a b\"\n",
                "backend.redis.master_name",
            ),
            (
                "[backend]\nkind = \"redis\"\n[backend.redis]\nreplica_acks = 33\n",
                "backend.redis.replica_acks",
            ),
            (
                "[backend]\nkind = \"redis\"\n[backend.redis]\nreplica_acks = -1\n",
                "replica_acks",
            ),
            (
                "[backend]\nkind = \"redis\"\n[backend.redis]\nreplica_acks = 1\nreplica_ack_timeout = \"0s\"\n",
                "backend.redis.replica_ack_timeout",
            ),
        ];
        for (text, key) in cases {
            let file = dir.path().join("bad.toml");
            std::fs::write(&file, text).unwrap();
            let err = Config::load_with_env(Some(&file), env(&[])).unwrap_err();
            assert!(err.to_string().contains(key), "{text:?}: {err}");
        }
    }

    #[test]
    fn shipped_example_matches_embedded_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/herald.toml");
        let from_file = Config::load_with_env(Some(&example), env(&[])).unwrap();
        assert_eq!(from_file.to_toml(), Config::default().to_toml());
    }

    #[test]
    fn sentinel_keys_from_the_environment() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("HERALD_BACKEND__KIND", "redis"),
                (
                    "HERALD_BACKEND__REDIS__SENTINELS",
                    "10.0.0.1:26379,[::1]:26380",
                ),
                ("HERALD_BACKEND__REDIS__MASTER_NAME", "herald"),
                ("HERALD_BACKEND__REDIS__REPLICA_ACKS", "1"),
                ("HERALD_BACKEND__REDIS__REPLICA_ACK_TIMEOUT", "250ms"),
            ]),
        )
        .unwrap();
        let redis = &c.backend.redis;
        assert_eq!(redis.sentinels, ["10.0.0.1:26379", "[::1]:26380"]);
        assert_eq!(redis.master_name, "herald");
        assert_eq!(redis.replica_acks, 1);
        assert_eq!(redis.replica_ack_timeout, Duration::from_millis(250));
        // Off by default: one Redis at `url`, answered as soon as the primary has it.
        let d = Config::default();
        assert!(d.backend.redis.sentinels.is_empty());
        assert_eq!(d.backend.redis.replica_acks, 0);
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse_host_port("127.0.0.1:26379"),
            Some(("127.0.0.1".into(), 26379))
        );
        assert_eq!(parse_host_port("[::1]:1"), Some(("::1".into(), 1)));
        assert_eq!(
            parse_host_port("sentinel-a:26379"),
            Some(("sentinel-a".into(), 26379))
        );
        for bad in [
            "", "host", ":26379", "h:0", "h:70000", "h:x", "a@b:1", "[::1:1",
        ] {
            assert_eq!(parse_host_port(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn redis_password_never_shown() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("HERALD_BACKEND__KIND", "redis"),
                (
                    "HERALD_BACKEND__REDIS__URL",
                    "redis://herald:s3cr3t-pw@127.0.0.1:6380/2",
                ),
            ]),
        )
        .unwrap();
        let shown = c.to_toml();
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        assert!(
            shown.contains("redis://herald:%3Credacted%3E@127.0.0.1:6380/2"),
            "{shown}"
        );
        assert_eq!(
            redact_url_password("::not a url s3cr3t"),
            "<redacted: not a URL>"
        );
    }

    #[test]
    fn check_config_speaks_in_seconds() {
        let shown = Config::default().to_toml();
        assert!(shown.contains("heartbeat_interval = \"120s\""), "{shown}");
        assert!(shown.contains("max_age = \"3600s\""), "{shown}");
    }
}
