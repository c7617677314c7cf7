//! Logging: a `tracing` subscriber in text or JSON, filtered by `telemetry.log_level`.

use tracing_subscriber::EnvFilter;

use crate::config::TelemetryConfig;

/// Install the global subscriber. `RUST_LOG`, when set, overrides `telemetry.log_level`.
pub fn init(config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second init (tests start several servers in one process) keeps the first.
    let _ = if config.log_format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
