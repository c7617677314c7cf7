//! Live reload: on SIGHUP the config file and the environment are read again, validated
//! and built into a new [`Settings`], which replaces the old one whole, or not at all.
//!
//! Nothing is dropped: open streams stay open and follow what applies to them (see the
//! README's "Live reload" for what each key does on reload). Keys a running process
//! cannot change (its listeners, the backend, trace export) keep their old values, each
//! named in a warning that a restart is needed. An invalid file is logged naming the key,
//! and the old settings stay in force.

use std::path::PathBuf;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::http::AppState;
use crate::settings::Settings;
use crate::telemetry::LogFilter;

/// Where a reload reads from, and what it may change outside the settings.
#[derive(Clone, Default)]
pub struct Source {
    /// `--config`: the file read at the start, read again (with the environment).
    pub path: Option<PathBuf>,
    /// Applies `telemetry.log_level`; `None` when `RUST_LOG` decides.
    pub log_filter: Option<LogFilter>,
}

/// SIGHUP, caught from now on (installed before the node reports ready, so a reload
/// sent to a ready node is never lost nor fatal).
pub fn hangups() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP: reload is off");
            None
        }
    }
}

/// Reload on every SIGHUP of `hangups` until `stop`.
pub async fn on_hangup(
    state: std::sync::Arc<AppState>,
    mut hangups: tokio::signal::unix::Signal,
    source: Source,
    demo: bool,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = hangups.recv() => { let _ = reload(&state, &source, demo); }
            _ = stop.cancelled() => return,
        }
    }
}

/// Read, validate and apply the configuration of `source`; on error the old one stays.
pub fn reload(state: &AppState, source: &Source, demo: bool) -> Result<(), ConfigError> {
    let metrics = state.hub.metrics();
    let old = state.live.current();
    // Restart-only keys are put back before validation: a value there that would not
    // validate (it is not applied anyway) must not refuse the rest of the file.
    let built = Config::read(source.path.as_deref(), std::env::vars())
        .map(|new| keep_restart_only(&old.config, new))
        .and_then(Config::validated)
        .and_then(|new| Settings::build(new, demo));
    let new = match built {
        Ok(new) => new,
        Err(e) => {
            tracing::error!(error = %e, "config reload failed; the previous config stays in force");
            metrics.config_reload_failed();
            return Err(e);
        }
    };
    let changed = changed_sections(&old.config, &new.config);
    if let Some(filter) = &source.log_filter {
        if let Err(e) = filter.set(&new.config.telemetry.log_level) {
            tracing::warn!(error = %e, "telemetry.log_level not applied");
        }
    }
    metrics
        .connections_limit
        .set(new.config.limits.max_connections as i64);
    let groups_changed =
        new.config.telemetry.metrics_channel_groups != old.config.telemetry.metrics_channel_groups;
    state.backend.reconfigure(&new.config);
    let hub = new.hub.clone();
    state.live.store(new);
    // After the store: a scrape from now on sets the new groups only.
    if groups_changed {
        metrics.group_subscribers.reset();
        metrics.group_channels.reset();
    }
    // Last: it wakes every open stream, which then reads the new settings.
    state.hub.reconfigure(hub);
    metrics.config_applied(true);
    tracing::info!(changed = ?changed, "config reloaded");
    Ok(())
}

/// Equal as configured (through their serialized form: every section is `Serialize`).
fn same<T: Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// `new`, with the keys that only a restart can change put back as in `old`.
fn keep_restart_only(old: &Config, mut new: Config) -> Config {
    fn keep<T: Serialize + Clone>(key: &str, old: &T, new: &mut T) {
        if !same(old, new) {
            tracing::warn!(
                key,
                "changed in the config, but needs a restart: kept as it was"
            );
            *new = old.clone();
        }
    }
    // The key a warning names is the field's own path.
    macro_rules! keep {
        ($($field:ident).+) => {
            keep(stringify!($($field).+), &old.$($field).+, &mut new.$($field).+)
        };
    }
    keep!(server.listen);
    keep!(server.admin_listen);
    keep!(server.listen_backlog);
    keep!(backend);
    keep!(telemetry.log_format);
    keep!(telemetry.otlp_endpoint);
    keep!(telemetry.service_name);
    keep!(telemetry.sample_ratio);
    new
}

/// The sections whose values differ, for the log line (never the values: keys).
fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let pairs = [
        ("server", same(&old.server, &new.server)),
        ("sse", same(&old.sse, &new.sse)),
        ("history", same(&old.history, &new.history)),
        ("limits", same(&old.limits, &new.limits)),
        ("auth", same(&old.auth, &new.auth)),
        ("telemetry", same(&old.telemetry, &new.telemetry)),
        ("shutdown", same(&old.shutdown, &new.shutdown)),
    ];
    pairs
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(name, _)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load_with_env(Some(&path), std::iter::empty()).unwrap()
    }

    #[test]
    fn restart_only_keys_keep_their_old_values() {
        let old = config("[server]\nlisten = \"127.0.0.1:1000\"\n");
        let new = config(
            "[server]\nlisten = \"127.0.0.1:2000\"\n[sse]\nheartbeat_interval = \"5s\"\n\
             [backend]\nkind = \"redis\"\n",
        );
        let kept = keep_restart_only(&old, new);
        assert_eq!(kept.server.listen, old.server.listen);
        assert_eq!(kept.backend.kind, old.backend.kind);
        assert_eq!(
            kept.sse.heartbeat_interval,
            std::time::Duration::from_secs(5),
            "a live key changes"
        );
        assert_eq!(changed_sections(&old, &kept), ["sse"]);
    }
}
