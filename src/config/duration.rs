//! Durations in config files: read in any humantime form (`2m`, `120s`, `250ms`), written
//! by `herald check-config` in whole seconds where they are whole (`"120s"`, else `"250ms"`),
//! the unit the README and the nginx comments use, so a heartbeat compares with
//! `proxy_read_timeout 300s` at a glance.

use std::time::Duration;

use serde::{Deserializer, Serializer};

pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&render(*value))
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    humantime_serde::deserialize(deserializer)
}

/// `"120s"`, `"250ms"`; sub-millisecond values fall back to humantime's form.
pub fn render(value: Duration) -> String {
    if value.subsec_nanos() == 0 {
        format!("{}s", value.as_secs())
    } else if value.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", value.as_millis())
    } else {
        humantime::format_duration(value).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_stay_seconds() {
        assert_eq!(render(Duration::from_secs(120)), "120s");
        assert_eq!(render(Duration::from_secs(3600)), "3600s");
        assert_eq!(render(Duration::ZERO), "0s");
        assert_eq!(render(Duration::from_millis(250)), "250ms");
        assert_eq!(render(Duration::from_millis(1500)), "1500ms");
        assert_eq!(render(Duration::from_micros(1500)), "1ms 500us");
    }
}
