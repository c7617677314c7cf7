//! Properties of the publish parser and the SSE encoder under hostile input: parsing never
//! panics, whatever it accepts obeys the event rules, and every accepted event goes on the
//! wire as exactly one event that a spec parser reads back unchanged (no injected fields,
//! no extra events).

#[allow(dead_code)]
#[path = "common/sse_parser.rs"]
mod sse_parser;

use herald::hub::NewEvent;
use herald::publish::{self, Format, PublishLimits};
use herald::sse::{self, Event};
use herald::validate;
use proptest::prelude::*;
use serde_json::{Map, Number, Value};
use sse_parser::{Item, Parser};

fn small_limits() -> PublishLimits {
    PublishLimits {
        max_channel_name_length: 16,
        max_event_type_length: 8,
        max_event_bytes: 64,
        max_batch_events: 3,
    }
}

fn default_limits() -> PublishLimits {
    let c = herald::config::Config::default();
    PublishLimits {
        max_channel_name_length: c.limits.max_channel_name_length,
        max_event_type_length: c.limits.max_event_type_length,
        max_event_bytes: c.limits.max_event_bytes,
        max_batch_events: c.limits.max_batch_events,
    }
}

fn limits() -> impl Strategy<Value = PublishLimits> {
    prop_oneof![Just(small_limits()), Just(default_limits())]
}

/// SSE carries line breaks in data as separate `data:` lines joined with LF on reading:
/// CRLF and CR come back as LF.
fn lf_normalised(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

/// Characters that break or bend SSE framing, JSON, URLs, or Unicode handling.
fn hostile_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::sample::select(vec![
            '\r', '\n', '\0', ':', ' ', '\t', '\u{b}', '\u{c}', '\u{7f}', '\u{85}', '\u{2028}',
            '\u{2029}', '\u{feff}', '\u{fffd}', '"', '\\', '%', '&', '=', '+', '\u{1b}', 'é',
            '\u{1F600}', '\u{202e}', '\u{0}',
        ]),
        4 => prop::sample::select(
            "abcxyzABC0129_-.:/@".chars().collect::<Vec<_>>()
        ),
        1 => any::<char>(),
    ]
}

fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(hostile_char(), 0..24).prop_map(String::from_iter),
        1 => "[a-z][a-z0-9:_-]{0,20}",
        1 => any::<String>(),
        1 => prop::sample::select(vec![
            "", "message", "event: x", "data: y", "id: 1", "retry: 1", "\r\n\r\n",
            "x\r\nevent: evil\r\nid: 666\r\n\r\ndata: injected", ": comment", "\u{feff}data: x",
        ])
        .prop_map(String::from),
    ]
}

/// Numbers at and beyond every boundary the parser cares about.
fn hostile_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        prop::sample::select(vec![
            0u64,
            1,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            u64::MAX,
        ])
        .prop_map(Value::from),
    ]
}

fn hostile_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        hostile_number(),
        hostile_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(hostile_string(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Hostile text that is still legal event data (anything but NUL).
fn legal_data() -> impl Strategy<Value = String> {
    hostile_string().prop_map(|s| s.replace('\0', "\u{2400}"))
}

/// Hostile text that is still a legal event type (no control characters).
fn legal_type() -> impl Strategy<Value = String> {
    hostile_string().prop_map(|s| s.chars().filter(|c| !c.is_control()).take(8).collect())
}

/// Mostly a legal value from `valid`, sometimes hostile text, sometimes the wrong type.
fn field(valid: BoxedStrategy<String>) -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => valid.prop_map(Value::String),
        1 => hostile_string().prop_map(Value::String),
        1 => hostile_value(),
    ]
}

fn channel_name() -> BoxedStrategy<String> {
    "[a-zA-Z0-9:_./@-]{1,20}".boxed()
}

/// An event object: right field names with hostile contents, sometimes a field missing,
/// sometimes an extra one.
fn event_object() -> impl Strategy<Value = Value> {
    (
        prop::option::weighted(0.97, field(channel_name())),
        prop::option::weighted(0.5, field(legal_type().boxed())),
        prop::option::weighted(0.97, field(legal_data().boxed())),
        prop::option::weighted(0.2, prop_oneof![hostile_number(), hostile_value()]),
        prop::option::weighted(0.05, (hostile_string(), hostile_value())),
    )
        .prop_map(|(channel, event, data, retry, extra)| {
            let mut m = Map::new();
            let fields = [
                ("channel", channel),
                ("event", event),
                ("data", data),
                ("retry", retry),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            }
            if let Some((k, v)) = extra {
                m.insert(k, v);
            }
            Value::Object(m)
        })
}

/// A JSON body: one event, a batch, any value, or an event buried in deep nesting;
/// serialised, then sometimes edited as text in ways serde_json values cannot express.
fn json_body() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        6 => event_object(),
        3 => prop::collection::vec(event_object(), 0..5).prop_map(Value::Array),
        1 => hostile_value(),
    ];
    let text = (value, 0usize..1000).prop_map(|(v, depth)| {
        let inner = v.to_string();
        if depth < 960 {
            inner
        } else {
            // Around and beyond serde_json's recursion limit.
            let depth = (depth - 960) * 10;
            format!("{}{}{}", "[".repeat(depth), inner, "]".repeat(depth))
        }
    });
    let splice = prop_oneof![
        6 => Just(""),
        1 => prop::sample::select(vec![
            r#","retry":1e999"#,
            r#","retry":-0"#,
            r#","retry":18446744073709551616"#,
            r#","channel":"dup""#,
            r#","data":"dup""#,
            r#","event":"a\r\nb""#,
            r#","data":"\ud800""#,
            ",\"data\":\"raw\nbreak\"",
            ",\"data\":\"nul\u{0}\"",
        ]),
    ];
    (text, splice, any::<prop::sample::Index>()).prop_map(|(text, splice, at)| {
        // Splice the fragment before a closing brace, when there is one.
        let mut bytes = text.into_bytes();
        let braces: Vec<usize> = bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'}')
            .map(|(i, _)| i)
            .collect();
        if !splice.is_empty() && !braces.is_empty() {
            let i = braces[at.index(braces.len())];
            bytes.splice(i..i, splice.bytes());
        }
        bytes
    })
}

/// A form body: the known fields with hostile values, sometimes missing, repeated or
/// joined by unknown ones; percent-encoded, or written raw.
fn form_body() -> impl Strategy<Value = Vec<u8>> {
    let odd_value = prop::sample::select(vec![
        "1e999",
        "-1",
        "4294967296",
        "18446744073709551616",
        "%FF%FE",
        "%0d%0a",
        "%00",
        "%",
        "%%",
        "+",
    ])
    .prop_map(String::from);
    let value = |valid: BoxedStrategy<String>| {
        prop_oneof![
            8 => valid,
            1 => hostile_string(),
            1 => odd_value.clone(),
        ]
    };
    (
        prop::option::weighted(0.97, value(channel_name())),
        prop::option::weighted(0.5, value(legal_type().boxed())),
        prop::option::weighted(0.97, value(legal_data().boxed())),
        prop::option::weighted(0.2, value("[0-9]{1,12}".boxed())),
        prop::collection::vec((hostile_string(), hostile_string()), 0..2),
        prop::option::weighted(0.1, hostile_string()),
        any::<bool>(),
    )
        .prop_map(|(channel, event, data, retry, extra, repeated, raw)| {
            let mut pairs: Vec<(String, String)> = Vec::new();
            for (k, v) in [
                ("channel", channel),
                ("event", event),
                ("data", data),
                ("retry", retry),
            ] {
                if let Some(v) = v {
                    pairs.push((k.into(), v));
                }
            }
            if let Some(v) = repeated {
                pairs.push(("channel".into(), v));
            }
            if !extra.is_empty() && raw {
                pairs.extend(extra);
            }
            if raw {
                pairs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}&"))
                    .collect::<String>()
                    .into_bytes()
            } else {
                let mut s = form_urlencoded::Serializer::new(String::new());
                for (k, v) in &pairs {
                    s.append_pair(k, v);
                }
                s.finish().into_bytes()
            }
        })
}

/// Everything that must hold of what the parser accepted, including the wire round trip.
fn check_accepted(
    format: Format,
    events: &[NewEvent],
    limits: &PublishLimits,
    id: u64,
) -> Result<(), TestCaseError> {
    prop_assert!(!events.is_empty());
    prop_assert!(events.len() <= limits.max_batch_events);
    if format == Format::Form {
        prop_assert_eq!(events.len(), 1);
    }
    for (i, e) in events.iter().enumerate() {
        prop_assert!(
            validate::channel(&e.channel, limits.max_channel_name_length).is_ok(),
            "channel {:?}",
            e.channel
        );
        if let Some(kind) = &e.event {
            prop_assert!(!kind.is_empty(), "empty event types are dropped");
            prop_assert!(!kind.chars().any(char::is_control), "event {:?}", kind);
            prop_assert!(kind.len() <= limits.max_event_type_length);
        }
        prop_assert!(!e.data.contains('\0'), "data {:?}", e.data);
        prop_assert!(e.retry.is_none_or(|r| r <= u64::from(u32::MAX)));
        prop_assert!(
            e.data.len() + e.event.as_ref().map_or(0, String::len) <= limits.max_event_bytes
        );

        let id = (id + i as u64).to_string();
        let wire = sse::encode(&Event {
            id: Some(&id),
            event: e.event.as_deref(),
            data: &e.data,
            retry: e.retry,
        });
        let (items, reconnection) = Parser::parse_all(&wire);
        prop_assert_eq!(
            items.len(),
            1,
            "one item from {:?}",
            String::from_utf8_lossy(&wire)
        );
        let Item::Event(parsed) = &items[0] else {
            return Err(TestCaseError::fail(format!("not an event: {:?}", items[0])));
        };
        prop_assert_eq!(
            parsed.event_type.as_str(),
            e.event.as_deref().unwrap_or("message")
        );
        prop_assert_eq!(&parsed.data, &lf_normalised(&e.data));
        prop_assert_eq!(&parsed.last_event_id, &id);
        prop_assert_eq!(reconnection, e.retry);
    }
    Ok(())
}

fn check_parse(
    format: Format,
    body: &[u8],
    limits: &PublishLimits,
    id: u64,
) -> Result<(), TestCaseError> {
    match publish::parse(format, body, limits) {
        Ok(events) => check_accepted(format, &events, limits, id),
        Err(e) => {
            prop_assert!(!e.code.is_empty());
            prop_assert!(!e.message.is_empty());
            Ok(())
        }
    }
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        source_file: Some(file!()),
        ..ProptestConfig::default()
    }
}

/// Run `check_parse` over `bodies` and return how many were accepted, so each test can
/// show that it reached the wire round trip often enough to mean something.
fn run_parse_property(
    cases: u32,
    format: Format,
    bodies: impl Strategy<Value = Vec<u8>>,
) -> (u32, u32) {
    use std::sync::atomic::{AtomicU32, Ordering};
    let accepted = AtomicU32::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(config(cases));
    let strategy = (bodies, limits(), any::<u64>().prop_map(|i| i / 2));
    let result = runner.run(&strategy, |(body, limits, id)| {
        if publish::parse(format, &body, &limits).is_ok() {
            accepted.fetch_add(1, Ordering::Relaxed);
        }
        check_parse(format, &body, &limits, id)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    (accepted.into_inner(), cases)
}

#[test]
fn arbitrary_bytes_never_panic() {
    run_parse_property(
        3000,
        Format::Json,
        prop::collection::vec(any::<u8>(), 0..512),
    );
    let (accepted, _) = run_parse_property(
        3000,
        Format::Form,
        prop::collection::vec(any::<u8>(), 0..512),
    );
    // Random bytes are rarely a valid form; this property is about not panicking.
    println!("arbitrary bytes as a form: {accepted} accepted");
}

#[test]
fn hostile_json_is_refused_or_safe_on_the_wire() {
    let (accepted, cases) = run_parse_property(3000, Format::Json, json_body());
    println!("hostile JSON: {accepted} of {cases} accepted and round-tripped");
    assert!(
        accepted >= cases / 20,
        "only {accepted} of {cases} accepted"
    );
}

#[test]
fn hostile_forms_are_refused_or_safe_on_the_wire() {
    let (accepted, cases) = run_parse_property(3000, Format::Form, form_body());
    println!("hostile forms: {accepted} of {cases} accepted and round-tripped");
    assert!(
        accepted >= cases / 20,
        "only {accepted} of {cases} accepted"
    );
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn encoding_any_data_dispatches_exactly_one_event(
        data in prop_oneof![any::<String>(), hostile_string()],
        id in prop::option::of(any::<u64>()),
        retry in prop::option::of(any::<u64>()),
    ) {
        let id = id.map(|i| i.to_string());
        let wire = sse::encode(&Event { id: id.as_deref(), event: None, data: &data, retry });
        let (items, _) = Parser::parse_all(&wire);
        let events: Vec<_> = items
            .iter()
            .filter_map(|i| match i { Item::Event(e) => Some(e), Item::Comment(_) => None })
            .collect();
        prop_assert_eq!(events.len(), 1, "{:?}", String::from_utf8_lossy(&wire));
        prop_assert_eq!(items.len(), 1, "no comments either");
        prop_assert_eq!(events[0].event_type.as_str(), "message");
        prop_assert_eq!(&events[0].data, &lf_normalised(&data));
        prop_assert_eq!(events[0].last_event_id.clone(), id.unwrap_or_default());
    }
}

/// A body meant to blow the stack: serde_json's recursion limit refuses it.
#[test]
fn deep_nesting_is_refused_without_overflowing() {
    for open in ["[", "{\"a\":"] {
        let body = open.repeat(100_000);
        let err = publish::parse(Format::Json, body.as_bytes(), &default_limits()).unwrap_err();
        assert_eq!(err.code, "invalid_json");
        let inside = format!(
            r#"{{"channel":"a","data":{}}}"#,
            "[".repeat(10_000) + &"]".repeat(10_000)
        );
        let err = publish::parse(Format::Json, inside.as_bytes(), &default_limits()).unwrap_err();
        assert_eq!(err.code, "invalid_json");
    }
}
