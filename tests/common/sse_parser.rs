//! An SSE parser written from the WHATWG HTML algorithm ("Interpreting an event stream"),
//! independent of herald's encoder, used to check what herald puts on the wire.
//!
//! Incremental: bytes may arrive in any chunking, split anywhere (even inside a CRLF or a
//! UTF-8 sequence). Besides dispatched events it reports comment lines, which the spec
//! ignores but which carry herald's preamble and heartbeats.

use std::collections::VecDeque;

/// A dispatched `MessageEvent`, as a browser's `EventSource` would deliver it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `type`: the `event` field, or `message` when none (or an empty one) was given.
    pub event_type: String,
    pub data: String,
    /// `lastEventId`: the last event ID buffer at dispatch time (it persists across events).
    pub last_event_id: String,
}

/// What one step of the stream produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Event(Event),
    /// A line starting with `:`; the text after the colon, one leading space removed.
    Comment(String),
}

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

#[derive(Default)]
pub struct Parser {
    /// Bytes of the current line (decoded once the line ends; CR and LF are ASCII, so a
    /// line boundary never splits a UTF-8 sequence).
    line: Vec<u8>,
    /// The previous byte was a CR: an LF right after it belongs to the same line break.
    after_cr: bool,
    /// The first bytes of the stream, held until we know whether they are a BOM.
    head: Vec<u8>,
    started: bool,
    data: String,
    event_type: String,
    last_event_id: String,
    /// The stream's reconnection time, set by a valid `retry` field.
    pub reconnection_time: Option<u64>,
    out: VecDeque<Item>,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parse a complete stream; an event not closed by a blank line is discarded.
    pub fn parse_all(bytes: &[u8]) -> (Vec<Item>, Option<u64>) {
        let mut p = Self::new();
        p.feed(bytes);
        let items = p.out.drain(..).collect();
        (items, p.reconnection_time)
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.started {
            // One leading U+FEFF BYTE ORDER MARK is skipped (UTF-8 decode strips it).
            self.head.extend_from_slice(bytes);
            let n = self.head.len().min(3);
            if self.head[..n] == BOM[..n] && self.head.len() < 3 {
                return;
            }
            self.started = true;
            let head = std::mem::take(&mut self.head);
            let rest = head.strip_prefix(&BOM[..]).unwrap_or(&head);
            self.feed_bytes(rest);
            return;
        }
        self.feed_bytes(bytes);
    }

    fn feed_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'\r' => {
                    self.after_cr = true;
                    self.end_line();
                }
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' => self.end_line(),
                _ => {
                    self.after_cr = false;
                    self.line.push(b);
                }
            }
        }
    }

    pub fn next_item(&mut self) -> Option<Item> {
        self.out.pop_front()
    }

    fn end_line(&mut self) {
        let bytes = std::mem::take(&mut self.line);
        let line = String::from_utf8_lossy(&bytes).into_owned();
        if line.is_empty() {
            self.dispatch();
        } else if let Some(comment) = line.strip_prefix(':') {
            let text = comment.strip_prefix(' ').unwrap_or(comment);
            self.out.push_back(Item::Comment(text.to_string()));
        } else if let Some((field, value)) = line.split_once(':') {
            let value = value.strip_prefix(' ').unwrap_or(value);
            self.field(field, value);
        } else {
            self.field(&line, "");
        }
    }

    fn field(&mut self, name: &str, value: &str) {
        match name {
            "event" => self.event_type = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            // An ID containing NUL is ignored.
            "id" if !value.contains('\0') => self.last_event_id = value.to_string(),
            // Digits only (anything else is ignored); a value too large for u64 saturates.
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.reconnection_time = Some(value.parse().unwrap_or(u64::MAX));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        if self.data.ends_with('\n') {
            self.data.pop();
        }
        let event_type = match std::mem::take(&mut self.event_type) {
            t if t.is_empty() => "message".to_string(),
            t => t,
        };
        self.out.push_back(Item::Event(Event {
            event_type,
            data: std::mem::take(&mut self.data),
            last_event_id: self.last_event_id.clone(),
        }));
    }
}
