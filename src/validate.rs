//! Rules for names that end up inside SSE fields or URLs: channel names and event types.
//! Each check returns a reason a client can read; callers attach the field name.

/// Bytes allowed in a channel name besides ASCII letters and digits.
pub const CHANNEL_PUNCTUATION: &str = "_-.:/@";

/// A channel name: 1..=`max_len` bytes of ASCII letters, digits and [`CHANNEL_PUNCTUATION`].
pub fn channel(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("channel name is empty".into());
    }
    if name.len() > max_len {
        return Err(format!("channel name is longer than {max_len} bytes"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || CHANNEL_PUNCTUATION.contains(*c)))
    {
        return Err(format!(
            "channel name contains {bad:?}; allowed: A-Z a-z 0-9 {CHANNEL_PUNCTUATION}"
        ));
    }
    Ok(())
}

/// An event type: at most `max_len` bytes, no control characters (CR, LF and NUL would
/// break or inject SSE fields; the others have no business in a type name) and no Unicode
/// line or paragraph separator. The SSE spec splits lines only on CR and LF, but clients
/// that split on every Unicode line break (Python's `str.splitlines()`) would see U+2028,
/// U+2029 or NEL (U+0085, a control character) start a new line.
pub fn event_type(value: &str, max_len: usize, allow_empty: bool) -> Result<(), String> {
    if value.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err("event type is empty".into())
        };
    }
    if value.len() > max_len {
        return Err(format!("event type is longer than {max_len} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err("event type contains a control character (CR, LF, NUL, NEL, ...)".into());
    }
    if let Some(bad) = value.chars().find(|c| matches!(c, '\u{2028}' | '\u{2029}')) {
        return Err(format!(
            "event type contains the line break U+{:04X}",
            u32::from(bad)
        ));
    }
    Ok(())
}

/// Event data: any text except NUL (CR and LF are legal and become several `data:` lines).
pub fn data(value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err("data contains a NUL character".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert!(channel("news", 16).is_ok());
        assert!(channel("org:42/room_1.a-b@x", 64).is_ok());
        assert!(channel("", 16).is_err());
        assert!(channel("a b", 16).is_err());
        assert!(channel("a\nb", 16).is_err());
        assert!(channel("é", 16).is_err());
        assert!(channel(&"a".repeat(17), 16).is_err());
    }

    #[test]
    fn event_types() {
        assert!(event_type("score", 64, false).is_ok());
        assert!(event_type("", 64, true).is_ok());
        assert!(event_type("", 64, false).is_err());
        for bad in [
            "a\nb",
            "a\rb",
            "a\0b",
            "a\tb",
            "a\u{85}b",
            "a\u{2028}b",
            "a\u{2029}b",
        ] {
            assert!(event_type(bad, 64, false).is_err(), "{bad:?}");
        }
    }
}
