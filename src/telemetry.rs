//! Telemetry: a `tracing` subscriber that logs in text or JSON (filtered by
//! `telemetry.log_level`) and, when `telemetry.otlp_endpoint` is set, exports herald's
//! spans over OTLP/HTTP (protobuf) through a batch span processor.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::TelemetryConfig;

/// How long shutdown waits for queued spans to reach the collector.
const EXPORT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps trace export alive; shut it down (or drop it) after the server stops so
/// spans still queued are flushed. Holds nothing when export is off.
#[must_use = "dropping the guard shuts trace export down"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    log_filter: Option<LogFilter>,
}

/// Changes the log filter of the installed subscriber (a reload of
/// `telemetry.log_level`). Absent when `RUST_LOG` decides, or when another subscriber
/// was installed first.
#[derive(Clone)]
pub struct LogFilter(reload::Handle<EnvFilter, Registry>);

impl LogFilter {
    /// Apply `level` (validated with the rest of the config).
    pub fn set(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        self.0.reload(filter).map_err(|e| e.to_string())
    }
}

impl TelemetryGuard {
    /// The handle that reloads `telemetry.log_level`, if it may change it.
    pub fn log_filter(&self) -> Option<LogFilter> {
        self.log_filter.clone()
    }

    /// Flush queued spans and stop the exporter, waiting at most a few seconds.
    /// Blocking: from async code use [`TelemetryGuard::shutdown_async`].
    pub fn shutdown(mut self) {
        self.shutdown_provider();
    }

    /// [`TelemetryGuard::shutdown`] on the blocking pool, for async callers: the blocking
    /// HTTP client must not be driven (or dropped) on a runtime worker.
    pub async fn shutdown_async(self) {
        if tokio::task::spawn_blocking(move || self.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("trace export shutdown panicked");
        }
    }

    fn shutdown_provider(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        let shutdown = move || provider.shutdown_with_timeout(EXPORT_SHUTDOWN_TIMEOUT);
        // On a runtime worker (a guard dropped in async code), move off it first.
        let result = if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| s.spawn(shutdown).join())
        } else {
            Ok(shutdown())
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "trace export did not shut down cleanly"),
            Err(_) => tracing::warn!("trace export shutdown panicked"),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown_provider();
    }
}

/// Install the global subscriber. `RUST_LOG`, when set, overrides `telemetry.log_level`
/// for logs; exported spans are herald's own at info and above, whatever the log level.
///
/// Call it outside any async runtime (the exporter builds a blocking HTTP client).
/// A second init (tests start several servers in one process) keeps the first
/// subscriber, and exports nothing from the second.
pub fn init(config: &TelemetryConfig) -> TelemetryGuard {
    let from_env = EnvFilter::try_from_default_env().ok();
    let from_env_set = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&config.log_level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Behind a reload layer so that SIGHUP can change the level (the fmt layer is boxed
    // for the subscriber type `Registry`, which this handle names).
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = if config.log_format == "json" {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let (provider, export_error) = match tracer_provider(config) {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("herald"))
            .with_filter(Targets::new().with_target("herald", LevelFilter::INFO))
    });
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if let Some(e) = export_error {
        tracing::error!(error = %e, "trace export is off: the exporter could not be built");
    } else if installed && provider.is_some() {
        tracing::info!(
            endpoint = %config.otlp_endpoint,
            sample_ratio = config.sample_ratio,
            "exporting traces"
        );
    }
    TelemetryGuard {
        provider: provider.filter(|_| installed),
        log_filter: (installed && !from_env_set).then_some(LogFilter(handle)),
    }
}

/// The provider exporting to `telemetry.otlp_endpoint`, or `None` when it is empty.
fn tracer_provider(
    config: &TelemetryConfig,
) -> Result<Option<SdkTracerProvider>, opentelemetry_otlp::ExporterBuildError> {
    if config.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.otlp_endpoint.clone())
        .build()?;
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build(),
    ))
}

/// Why `url` cannot be the OTLP/HTTP traces endpoint, if it cannot: it must be an
/// absolute `http://` URL with a host and a path (the exporter uses it verbatim, so the
/// path is normally `/v1/traces`).
pub fn check_otlp_endpoint(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{url:?}: https is not supported (no TLS is built in); send to a local \
                 OpenTelemetry Collector over http"
            ))
        }
        _ => {
            return Err(format!(
                "{url:?} is not an http:// URL like \"http://127.0.0.1:4318/v1/traces\""
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} names no host"));
    }
    if matches!(uri.path(), "" | "/") {
        return Err(format!(
            "{url:?} has no path; it is used verbatim, so include /v1/traces"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_otlp_endpoint;

    #[test]
    fn otlp_endpoints() {
        assert!(check_otlp_endpoint("http://127.0.0.1:4318/v1/traces").is_ok());
        assert!(check_otlp_endpoint("http://otel-collector:4318/v1/traces").is_ok());
        for bad in [
            "127.0.0.1:4318/v1/traces",
            "http://127.0.0.1:4318",
            "http://127.0.0.1:4318/",
            "https://collector.example.com/v1/traces",
            "ftp://collector/v1/traces",
            "http:///v1/traces",
            "not a url",
        ] {
            assert!(check_otlp_endpoint(bad).is_err(), "{bad}");
        }
    }
}
