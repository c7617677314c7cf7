//! Parsing and validating a publish request body (JSON object, JSON array, or form) into
//! events. Pure: the HTTP handler reads the body, this decides what it means.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::hub::NewEvent;
use crate::validate;

/// The limits that shape a valid publish.
#[derive(Debug, Clone)]
pub struct PublishLimits {
    pub max_channel_name_length: usize,
    pub max_event_type_length: usize,
    pub max_event_bytes: usize,
    pub max_batch_events: usize,
}

/// Why a publish was refused. `code` is stable for clients; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PublishError {
    pub kind: PublishErrorKind,
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishErrorKind {
    /// 400
    Invalid,
    /// 413
    TooLarge,
    /// 415
    UnsupportedMediaType,
}

fn invalid(code: &'static str, message: impl Into<String>) -> PublishError {
    PublishError {
        kind: PublishErrorKind::Invalid,
        code,
        message: message.into(),
    }
}

/// The body formats `POST /publish` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Form,
}

impl Format {
    /// From a `Content-Type` header value; parameters such as `charset` are ignored.
    pub fn from_content_type(value: Option<&str>) -> Result<Self, PublishError> {
        let mime = value.and_then(|v| v.split(';').next()).map(str::trim);
        match mime {
            Some(m) if m.eq_ignore_ascii_case("application/json") => Ok(Format::Json),
            Some(m) if m.eq_ignore_ascii_case("application/x-www-form-urlencoded") => {
                Ok(Format::Form)
            }
            other => Err(PublishError {
                kind: PublishErrorKind::UnsupportedMediaType,
                code: "unsupported_media_type",
                message: format!(
                    "Content-Type {} is not supported; use application/json or application/x-www-form-urlencoded",
                    other.map_or("(missing)".to_string(), |m| format!("{:?}", m.to_ascii_lowercase()))
                ),
            }),
        }
    }
}

/// Parse a whole body. A batch is all valid or refused whole.
pub fn parse(
    format: Format,
    body: &[u8],
    limits: &PublishLimits,
) -> Result<Vec<NewEvent>, PublishError> {
    match format {
        Format::Json => parse_json(body, limits),
        Format::Form => parse_form(body, limits).map(|e| vec![e]),
    }
}

fn parse_json(body: &[u8], limits: &PublishLimits) -> Result<Vec<NewEvent>, PublishError> {
    let syntax =
        |e: serde_json::Error| invalid("invalid_json", format!("body is not valid JSON: {e}"));
    // One object, the common case, is read in one pass. Should that fail for a reason other
    // than syntax (say an unknown field), the whole body is then checked, so that broken
    // JSON is always reported as such, whatever comes first in it.
    if body.trim_ascii_start().first() == Some(&b'{') {
        let single = std::str::from_utf8(body)
            .map_err(|e| invalid("invalid_json", format!("body is not valid JSON: {e}")))
            .and_then(|text| json_event(text, limits, ""));
        return match single {
            Err(e) if e.code != "invalid_json" => {
                serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(syntax)?;
                Err(e)
            }
            other => other.map(|event| vec![event]),
        };
    }
    // Validate the syntax of the whole body first; events are then read from their raw
    // text, so repeated keys are refused instead of silently keeping the last one.
    let raw: &RawValue = serde_json::from_slice(body).map_err(syntax)?;
    match raw.get().as_bytes().first() {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(syntax)?;
            if items.is_empty() {
                return Err(invalid("empty_batch", "the batch array is empty"));
            }
            if items.len() > limits.max_batch_events {
                return Err(PublishError {
                    kind: PublishErrorKind::TooLarge,
                    code: "batch_too_large",
                    message: format!(
                        "the batch has {} events; limits.max_batch_events is {}",
                        items.len(),
                        limits.max_batch_events
                    ),
                });
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| json_event(item.get(), limits, &format!("[{i}].")))
                .collect()
        }
        _ => Err(invalid(
            "invalid_json",
            "body must be a JSON object (one event) or an array of objects (a batch)",
        )),
    }
}

/// The fields of one JSON event, as their JSON text. Deriving the reader makes serde refuse
/// unknown and repeated fields; the types are checked by hand so each refusal names its
/// field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonFields<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    channel: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    event: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    retry: Option<&'a RawValue>,
}

/// A field that is present is `Some`, `null` included (plain `Option` would read `null`
/// as missing); only a missing field is `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A JSON string's value, or `None` for any other JSON value.
fn json_string(raw: &RawValue) -> Option<String> {
    raw.get()
        .starts_with('"')
        .then(|| serde_json::from_str(raw.get()).ok())
        .flatten()
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// One JSON event object.
fn json_event(item: &str, limits: &PublishLimits, at: &str) -> Result<NewEvent, PublishError> {
    if !item.starts_with('{') {
        return Err(invalid(
            "invalid_event",
            format!("{at}: each event must be a JSON object"),
        ));
    }
    let fields: JsonFields = serde_json::from_str(item).map_err(|e| match e.classify() {
        // Nesting beyond serde_json's recursion limit surfaces here, not in the first pass.
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            invalid("invalid_json", format!("body is not valid JSON: {at}{e}"))
        }
        _ => invalid(
            "invalid_event",
            format!("{at}{e} (fields: channel, event, data, retry; IDs are assigned by herald)"),
        ),
    })?;
    let Some(channel) = fields.channel else {
        return Err(invalid(
            "missing_channel",
            format!("{at}channel: missing field"),
        ));
    };
    let channel = json_string(channel)
        .ok_or_else(|| invalid("invalid_channel", format!("{at}channel: must be a string")))?;
    let event = match fields.event {
        None => None,
        Some(raw) if is_null(raw) => None,
        Some(raw) => Some(json_string(raw).ok_or_else(|| {
            invalid("invalid_event_type", format!("{at}event: must be a string"))
        })?),
    };
    let Some(data) = fields.data else {
        return Err(invalid("missing_data", format!("{at}data: missing field")));
    };
    // Any other JSON value is published as its compact text (`"data": null` publishes
    // `null`).
    let data = match json_string(data) {
        Some(text) => text,
        None => serde_json::from_str::<Value>(data.get())
            .map_err(|e| invalid("invalid_json", format!("body is not valid JSON: {at}{e}")))?
            .to_string(),
    };
    let retry = match fields.retry {
        None => None,
        Some(raw) if is_null(raw) => None,
        Some(raw) => Some(raw.get().parse::<u64>().map_err(|_| {
            invalid(
                "invalid_retry",
                format!("{at}retry: must be a whole number of milliseconds"),
            )
        })?),
    };
    checked(channel, event, data, retry, limits, at)
}

fn parse_form(body: &[u8], limits: &PublishLimits) -> Result<NewEvent, PublishError> {
    let (mut channel, mut event, mut data, mut retry) = (None, None, None, None);
    for (key, value) in form_urlencoded::parse(body) {
        let slot = match key.as_ref() {
            "channel" => &mut channel,
            "event" => &mut event,
            "data" => &mut data,
            "retry" => &mut retry,
            other => {
                return Err(invalid(
                    "invalid_event",
                    format!("unknown form field {other:?}; expected channel, event, data, retry"),
                ))
            }
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(invalid(
                "invalid_event",
                format!("form field {key:?} is given twice"),
            ));
        }
    }
    let channel = channel.ok_or_else(|| invalid("missing_channel", "missing field `channel`"))?;
    let data = data.ok_or_else(|| invalid("missing_data", "missing field `data`"))?;
    let retry = retry
        .map(|r| {
            r.parse::<u64>().map_err(|_| {
                invalid(
                    "invalid_retry",
                    "retry must be a whole number of milliseconds",
                )
            })
        })
        .transpose()?;
    checked(channel, event, data, retry, limits, "")
}

/// The rules every event obeys, whatever format it came in.
fn checked(
    channel: String,
    event: Option<String>,
    data: String,
    retry: Option<u64>,
    limits: &PublishLimits,
    at: &str,
) -> Result<NewEvent, PublishError> {
    validate::channel(&channel, limits.max_channel_name_length)
        .map_err(|r| invalid("invalid_channel", format!("{at}channel: {r}")))?;
    let event = event.filter(|e| !e.is_empty());
    if let Some(kind) = &event {
        validate::event_type(kind, limits.max_event_type_length, false)
            .map_err(|r| invalid("invalid_event_type", format!("{at}event: {r}")))?;
    }
    validate::data(&data).map_err(|r| invalid("invalid_data", format!("{at}data: {r}")))?;
    if let Some(ms) = retry {
        if ms > u64::from(u32::MAX) {
            return Err(invalid(
                "invalid_retry",
                format!("{at}retry: at most {} ms", u32::MAX),
            ));
        }
    }
    let size = data.len() + event.as_ref().map_or(0, String::len);
    if size > limits.max_event_bytes {
        return Err(PublishError {
            kind: PublishErrorKind::TooLarge,
            code: "event_too_large",
            message: format!(
                "{at}data: event is {size} bytes; limits.max_event_bytes is {}",
                limits.max_event_bytes
            ),
        });
    }
    Ok(NewEvent {
        channel,
        event,
        data,
        retry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PublishLimits {
        PublishLimits {
            max_channel_name_length: 32,
            max_event_type_length: 16,
            max_event_bytes: 100,
            max_batch_events: 3,
        }
    }

    fn json(body: &str) -> Result<Vec<NewEvent>, PublishError> {
        parse(Format::Json, body.as_bytes(), &limits())
    }

    #[test]
    fn string_data_is_sent_as_is_other_json_compacted() {
        let e = json(r#"{"channel":"a","data":"x y"}"#).unwrap();
        assert_eq!(e[0].data, "x y");
        let e = json(r#"{"channel":"a","data":{ "k" : [1, 2] }}"#).unwrap();
        assert_eq!(e[0].data, r#"{"k":[1,2]}"#);
    }

    #[test]
    fn batch_is_all_or_nothing() {
        let ok = json(r#"[{"channel":"a","data":"1"},{"channel":"b","data":"2"}]"#).unwrap();
        assert_eq!(ok.len(), 2);
        let err = json(r#"[{"channel":"a","data":"1"},{"channel":"b c","data":"2"}]"#).unwrap_err();
        assert_eq!(err.code, "invalid_channel");
        assert!(err.message.starts_with("[1].channel"), "{}", err.message);
    }

    #[test]
    fn refusals_name_the_problem() {
        let cases = [
            (r#"{"channel":"a"}"#, "missing_data", "data"),
            (r#"{"data":"x"}"#, "missing_channel", "channel"),
            (r#"{"channel":7,"data":"x"}"#, "invalid_channel", "channel"),
            (
                r#"{"channel":"a","data":"x","id":"7"}"#,
                "invalid_event",
                "id",
            ),
            (
                r#"{"channel":"a","data":"x","event":"a\nb"}"#,
                "invalid_event_type",
                "event",
            ),
            (r#"{"channel":"a","data":"x\u0000"}"#, "invalid_data", "NUL"),
            (
                r#"{"channel":"a","data":"x","retry":-1}"#,
                "invalid_retry",
                "retry",
            ),
            (r#"[]"#, "empty_batch", "empty"),
            (r#"42"#, "invalid_json", "object"),
            (r#"[1]"#, "invalid_event", "[0]"),
            (r#"{"#, "invalid_json", "JSON"),
        ];
        for (body, code, mention) in cases {
            let err = json(body).unwrap_err();
            assert_eq!(err.code, code, "{body}");
            assert!(err.message.contains(mention), "{body}: {}", err.message);
        }
    }

    #[test]
    fn sizes() {
        let big = format!(r#"{{"channel":"a","data":"{}"}}"#, "x".repeat(101));
        assert_eq!(json(&big).unwrap_err().kind, PublishErrorKind::TooLarge);
        let batch = r#"[{"channel":"a","data":""},{"channel":"a","data":""},{"channel":"a","data":""},{"channel":"a","data":""}]"#;
        assert_eq!(json(batch).unwrap_err().code, "batch_too_large");
    }

    #[test]
    fn form() {
        let e = parse(
            Format::Form,
            b"channel=news&data=hi+there&event=x&retry=10",
            &limits(),
        )
        .unwrap();
        assert_eq!(
            (e[0].channel.as_str(), e[0].data.as_str()),
            ("news", "hi there")
        );
        assert_eq!(e[0].retry, Some(10));
        for bad in [
            "data=x",
            "channel=a",
            "channel=a&channel=b&data=x",
            "channel=a&data=x&zz=1",
        ] {
            assert!(
                parse(Format::Form, bad.as_bytes(), &limits()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Format::from_content_type(Some("application/json; charset=utf-8")).unwrap(),
            Format::Json
        );
        assert_eq!(
            Format::from_content_type(Some("application/x-www-form-urlencoded")).unwrap(),
            Format::Form
        );
        assert_eq!(
            Format::from_content_type(Some("text/plain"))
                .unwrap_err()
                .kind,
            PublishErrorKind::UnsupportedMediaType
        );
        assert!(Format::from_content_type(None).is_err());
    }
}
