//! The SSE encoder against the WHATWG parsing algorithm: a parser written from the spec
//! (tests/common/sse_parser.rs) and one we did not write (`eventsource-stream`) must both
//! read back exactly the event that was encoded, whatever the data holds.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use common::sse_parser::{Event as Parsed, Item, Parser};
use common::*;
use eventsource_stream::Eventsource;
use futures_util::{FutureExt, StreamExt};
use herald::sse::{self, Event};
use proptest::prelude::*;

/// An event as the property tests generate it (owned; `sse::Event` borrows).
#[derive(Debug, Clone)]
struct Input {
    id: Option<String>,
    event: Option<String>,
    data: String,
    retry: Option<u64>,
}

impl Input {
    fn as_event(&self) -> Event<'_> {
        Event {
            id: self.id.as_deref(),
            event: self.event.as_deref(),
            data: &self.data,
            retry: self.retry,
        }
    }
}

/// SSE carries line breaks in data as separate `data:` lines, which a reader joins with
/// LF: CRLF and CR come back as LF. Everything else must come back unchanged.
fn lf_normalised(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

/// What a spec-conforming reader must report for `input`, given the ID buffer before it.
fn expected(input: &Input, previous_id: &str) -> Parsed {
    Parsed {
        event_type: match input.event.as_deref() {
            None | Some("") => "message".to_string(),
            Some(t) => t.to_string(),
        },
        data: lf_normalised(&input.data),
        last_event_id: input.id.clone().unwrap_or_else(|| previous_id.to_string()),
    }
}

/// Feed `bytes` to eventsource-stream in the given chunks and collect its events.
fn third_party_parse(chunks: Vec<Vec<u8>>) -> Vec<eventsource_stream::Event> {
    futures_util::stream::iter(chunks.into_iter().map(Ok::<_, Infallible>))
        .eventsource()
        .map(|r| r.expect("eventsource-stream accepts the bytes"))
        .collect::<Vec<_>>()
        .now_or_never()
        .expect("an in-memory stream is always ready")
}

/// Split `bytes` at the given cut points (any byte offset, even inside a UTF-8 sequence).
fn chunked(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

fn parse_chunks(chunks: &[Vec<u8>]) -> (Vec<Item>, Option<u64>) {
    let mut p = Parser::new();
    let mut items = Vec::new();
    for c in chunks {
        p.feed(c);
        while let Some(item) = p.next_item() {
            items.push(item);
        }
    }
    (items, p.reconnection_time)
}

fn data_strategy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\r".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("\n\r".to_string()),
        Just(" ".to_string()),
        Just(":".to_string()),
        Just("data: x".to_string()),
        Just("id: 9".to_string()),
        Just("é🦀中".to_string()),
        Just("\u{feff}".to_string()),
        "[a-z ]{0,6}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

/// Event types and IDs: single-line text (no CR, LF or NUL), sometimes with leading spaces.
fn field_strategy() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        "[^\r\n\u{0}]{0,10}",
        "[ ]{1,3}[a-z:]{0,5}",
        Just(String::new()),
    ])
}

fn input_strategy() -> impl Strategy<Value = Input> {
    (
        field_strategy(),
        field_strategy(),
        data_strategy(),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(id, event, data, retry)| Input {
            id,
            event,
            data,
            retry,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn one_event_round_trips(
        input in input_strategy(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let bytes = sse::encode(&input.as_event());
        let want = expected(&input, "");

        let (items, retry) = parse_chunks(&chunked(&bytes, &cuts));
        prop_assert_eq!(items, vec![Item::Event(want.clone())]);
        prop_assert_eq!(retry, input.retry);

        let theirs = third_party_parse(chunked(&bytes, &cuts));
        prop_assert_eq!(theirs.len(), 1, "eventsource-stream: {:?}", theirs);
        prop_assert_eq!(&theirs[0].event, &want.event_type);
        prop_assert_eq!(&theirs[0].data, &want.data);
        prop_assert_eq!(&theirs[0].id, &want.last_event_id);
        prop_assert_eq!(theirs[0].retry, input.retry.map(Duration::from_millis));
    }

    /// A whole stream as herald writes it: preamble, events, heartbeat comments between
    /// them. Events come out one for one, the ID buffer carrying over as the spec says.
    #[test]
    fn a_stream_of_events_round_trips(
        inputs in prop::collection::vec(input_strategy(), 1..6),
        preamble_retry in 0u64..100_000,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut bytes = sse::stream_preamble(preamble_retry).to_vec();
        let mut want = Vec::new();
        let mut last_id = String::new();
        let mut want_retry = Some(preamble_retry);
        for input in &inputs {
            bytes.extend_from_slice(&sse::encode(&input.as_event()));
            bytes.extend_from_slice(&sse::comment("ping"));
            let e = expected(input, &last_id);
            last_id = e.last_event_id.clone();
            want_retry = input.retry.or(want_retry);
            want.push(Item::Event(e));
            want.push(Item::Comment("ping".to_string()));
        }
        want.insert(0, Item::Comment("herald".to_string()));

        let (items, retry) = parse_chunks(&chunked(&bytes, &cuts));
        prop_assert_eq!(&items, &want);
        prop_assert_eq!(retry, want_retry);

        let theirs = third_party_parse(chunked(&bytes, &cuts));
        let ours: Vec<Parsed> = items
            .into_iter()
            .filter_map(|i| match i { Item::Event(e) => Some(e), Item::Comment(_) => None })
            .collect();
        prop_assert_eq!(theirs.len(), ours.len());
        for (t, o) in theirs.iter().zip(&ours) {
            prop_assert_eq!((&t.event, &t.data, &t.id), (&o.event_type, &o.data, &o.last_event_id));
        }
    }
}

fn enc(id: Option<&str>, event: Option<&str>, data: &str, retry: Option<u64>) -> String {
    String::from_utf8(
        sse::encode(&Event {
            id,
            event,
            data,
            retry,
        })
        .to_vec(),
    )
    .unwrap()
}

/// (id, event, data, retry) and the exact bytes they encode to.
type Case<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
    Option<u64>,
    &'a str,
);

#[test]
fn byte_exact_encodings() {
    let cases: &[Case] = &[
        (None, None, "hello", None, "data: hello\n\n"),
        (None, None, "", None, "data: \n\n"),
        (
            Some("42"),
            Some("score"),
            "{\"a\":1}",
            Some(5000),
            "event: score\nid: 42\nretry: 5000\ndata: {\"a\":1}\n\n",
        ),
        (
            None,
            None,
            "a\r\nb\rc\nd",
            None,
            "data: a\ndata: b\ndata: c\ndata: d\n\n",
        ),
        (None, None, "\n", None, "data: \ndata: \n\n"),
        (None, None, "\r\n\r", None, "data: \ndata: \ndata: \n\n"),
        (None, None, " lead", None, "data:  lead\n\n"),
        (None, None, "é 🦀", None, "data: é 🦀\n\n"),
        (
            None,
            None,
            "x\nevent: evil",
            None,
            "data: x\ndata: event: evil\n\n",
        ),
        (Some(""), Some(""), "x", None, "id: \ndata: x\n\n"),
        (None, Some(" sp"), "x", None, "event:  sp\ndata: x\n\n"),
        (None, None, "x", Some(0), "retry: 0\ndata: x\n\n"),
    ];
    for &(id, event, data, retry, want) in cases {
        assert_eq!(
            enc(id, event, data, retry),
            want,
            "{id:?} {event:?} {data:?}"
        );
    }
    assert_eq!(&sse::comment("ping")[..], b": ping\n\n");
    assert_eq!(
        &sse::stream_preamble(3000)[..],
        b"retry: 3000\n: herald\n\n"
    );
}

/// The spec parser itself, on the spec's own examples and edge cases, so the property
/// tests above rest on a parser that is right.
#[test]
fn reference_parser_follows_the_spec() {
    let ev = |t: &str, d: &str, id: &str| {
        Item::Event(Parsed {
            event_type: t.into(),
            data: d.into(),
            last_event_id: id.into(),
        })
    };
    let (items, _) = Parser::parse_all(b"data: YHOO\ndata: +2\ndata: 10\n\n");
    assert_eq!(items, vec![ev("message", "YHOO\n+2\n10", "")]);
    let (items, _) = Parser::parse_all(
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
    );
    assert_eq!(
        items,
        vec![
            Item::Comment("test stream".into()),
            ev("message", "first event", "1"),
            ev("message", "second event", ""),
            ev("message", " third event", ""),
        ]
    );
    // "data" with no colon is an empty data line; two of them make one LF.
    let (items, _) = Parser::parse_all(b"data\n\ndata\ndata\n\ndata:\n");
    assert_eq!(items, vec![ev("message", "", ""), ev("message", "\n", "")]);
    // CR, LF and CRLF all end lines; a BOM at the start is skipped; unknown fields ignored.
    let (items, retry) =
        Parser::parse_all(b"\xEF\xBB\xBFevent: a\rdata: 1\r\nfoo: bar\nretry: 12x\r\n\nretry: 7\n");
    assert_eq!(items, vec![ev("a", "1", "")]);
    assert_eq!(retry, Some(7));
    // An event type without data is dropped with it; an ID with NUL is ignored.
    let (items, _) = Parser::parse_all(b"event: lost\n\nid: 1\0\ndata: x\n\n");
    assert_eq!(items, vec![ev("message", "x", "")]);
    // An unterminated event at the end of the stream is not dispatched.
    let (items, _) = Parser::parse_all(b"data: x\n");
    assert!(items.is_empty());
}

/// On the wire: headers, preamble, then the event exactly as encoded, with herald's ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_event_bytes_on_the_wire() {
    let server = TestServer::start(quick_config()).await;
    let mut stream = SseClient::connect(&server.url("/events?channel=wire")).await;
    stream.expect_preamble().await;
    assert_eq!(stream.raw, b"retry: 3000\n: herald\n\n");

    let client = reqwest::Client::new();
    let answer = publish(
        &client,
        &server.url("/publish"),
        &serde_json::json!({
            "channel": "wire", "event": "score", "data": "a\r\nb\rc\nd", "retry": 5000
        }),
    )
    .await;
    let id = id_of(&answer);
    let event = stream.next_event(Duration::from_secs(5)).await;
    assert_eq!(event.data, "a\nb\nc\nd");
    let want = format!(
        "retry: 3000\n: herald\n\nevent: score\nid: {id}\nretry: 5000\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    );
    assert_eq!(String::from_utf8_lossy(&stream.raw), want);
    assert_eq!(stream.reconnection_time(), Some(5000));
    server.stop().await;
}
