//! Traffic for failover tests: emulated browser EventSources (they reconnect with
//! Last-Event-ID whenever a stream ends), paced publishers that record every outcome, and
//! the check that what arrived is exactly what was acknowledged.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client::{id_of, publish, Next, SseClient, REQUEST_TIMEOUT};
use super::sse_parser::Item;
use super::wait_until;

/// Deadline of every wait here, and how long a client waits for its end marks.
const WAIT: Duration = Duration::from_secs(10);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
}

/// What the test watches while clients and publishers run.
#[derive(Default)]
pub struct Progress {
    /// Streams opened (200 answers), reconnects included.
    pub streams: AtomicUsize,
    /// Clients that have received at least one event (so they resume with an ID).
    pub clients_with_an_event: AtomicUsize,
    pub accepted: AtomicUsize,
    stop_publishing: AtomicBool,
}

/// What one emulated EventSource saw over all its connections.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every event in arrival order: (id, type, data).
    pub events: Vec<(u64, String, String)>,
    /// Streams opened: one more per reconnect.
    pub streams: usize,
    /// Non-200 answers to a (re)connect: a browser's EventSource gives up for good there.
    pub refusals: Vec<u16>,
}

/// The ID of the last event (the end mark) of each channel, once published.
type EndMarks = Option<HashMap<&'static str, u64>>;

/// A browser's EventSource on `channels` at `base`: whenever a stream ends (cleanly or
/// not) it connects again at once, with the ID of the last event it received. It stops
/// once it has the end marks `done` announces, or `WAIT` after the announcement.
async fn event_source(
    base: String,
    channels: Vec<&'static str>,
    progress: Arc<Progress>,
    mut done: watch::Receiver<EndMarks>,
) -> Seen {
    let url = format!("{base}{}", events_path(&channels));
    let http = http();
    let mut seen = Seen::default();
    let mut last_id: Option<u64> = None;
    let mut give_up_at: Option<Instant> = None;
    loop {
        let mut request = http.get(&url);
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let mut stream = SseClient::connect_with(request).await;
        if stream.status == 200 {
            seen.streams += 1;
            progress.streams.fetch_add(1, Ordering::SeqCst);
        } else {
            seen.refusals.push(stream.status.as_u16());
            // Only so as not to spin: a real EventSource would not come back at all.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        loop {
            let target = done
                .borrow()
                .as_ref()
                .map(|marks| channels.iter().map(|c| marks[c]).max().unwrap_or(0));
            if target.is_some() && give_up_at.is_none() {
                give_up_at = Some(Instant::now() + WAIT);
            }
            if target.is_some_and(|t| last_id.is_some_and(|l| l >= t))
                || give_up_at.is_some_and(|at| Instant::now() >= at)
            {
                return seen;
            }
            if stream.status != 200 {
                break;
            }
            tokio::select! {
                next = stream.next(Duration::from_millis(500)) => match next {
                    Next::Item(Item::Event(e)) => {
                        let id = e.last_event_id.parse().expect("every event has a numeric ID");
                        if last_id.is_none() {
                            progress.clients_with_an_event.fetch_add(1, Ordering::SeqCst);
                        }
                        last_id = Some(id);
                        seen.events.push((id, e.event_type, e.data));
                    }
                    Next::Item(Item::Comment(_)) | Next::Timeout => {}
                    Next::End => break,
                },
                _ = done.changed() => {}
            }
        }
    }
}

pub fn events_path(channels: &[&str]) -> String {
    let q: Vec<String> = channels.iter().map(|c| format!("channel={c}")).collect();
    format!("/events?{}", q.join("&"))
}

#[derive(Debug, Default)]
pub struct Published {
    /// Answered 200: (id, channel, data).
    pub accepted: Vec<(u64, &'static str, String)>,
    /// Anything else (a status or an error): (channel, data, why).
    pub failed: Vec<(&'static str, String, String)>,
}

/// One request at a time, every `pace`, cycling through `channels`, until stopped; every
/// data is unique (`p<tag>-<n>`).
async fn publisher(
    url: String,
    tag: usize,
    channels: &'static [&'static str],
    pace: Duration,
    progress: Arc<Progress>,
) -> Published {
    let http = http();
    let mut out = Published::default();
    let mut tick = tokio::time::interval(pace);
    for n in 0.. {
        if progress.stop_publishing.load(Ordering::SeqCst) {
            break;
        }
        tick.tick().await;
        let channel = channels[n % channels.len()];
        let data = format!("p{tag}-{n}");
        let body = json!({ "channel": channel, "data": data });
        let sent = tokio::time::timeout(REQUEST_TIMEOUT, http.post(&url).json(&body).send()).await;
        let why = match sent {
            Ok(Ok(resp)) if resp.status() == 200 => {
                let answer: serde_json::Value = resp.json().await.expect("publish answer is JSON");
                out.accepted.push((id_of(&answer), channel, data));
                progress.accepted.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            Ok(Ok(resp)) => format!("status {}", resp.status()),
            Ok(Err(e)) => format!("error {e}"),
            Err(_) => "no answer within the deadline".to_string(),
        };
        out.failed.push((channel, data, why));
    }
    out
}

/// Emulated EventSources and publishers against one base URL (a proxy or a node).
pub struct Traffic {
    pub progress: Arc<Progress>,
    base: String,
    channels: &'static [&'static str],
    done: watch::Sender<EndMarks>,
    clients: Vec<(Vec<&'static str>, JoinHandle<Seen>)>,
    publishers: Vec<JoinHandle<Published>>,
}

impl Traffic {
    /// One EventSource per entry of `subscriptions` (channels of `channels`) on `base`;
    /// returns once every one of them has its stream open.
    pub async fn connect(
        base: &str,
        channels: &'static [&'static str],
        subscriptions: Vec<Vec<&'static str>>,
    ) -> Self {
        let progress = Arc::new(Progress::default());
        let (done, done_rx) = watch::channel(None);
        let clients: Vec<_> = subscriptions
            .into_iter()
            .map(|mine| {
                let client =
                    event_source(base.into(), mine.clone(), progress.clone(), done_rx.clone());
                (mine, tokio::spawn(client))
            })
            .collect();
        let n = clients.len();
        let opened = wait_until(WAIT, || progress.streams.load(Ordering::SeqCst) == n).await;
        assert!(opened, "all {n} streams open at {base}");
        Self {
            progress,
            base: base.into(),
            channels,
            done,
            clients,
            publishers: Vec::new(),
        }
    }

    /// `publishers` publishers to `base`/publish, each one request at a time every `pace`.
    pub fn start_publishing(&mut self, publishers: usize, pace: Duration) {
        for tag in 0..publishers {
            let url = format!("{}/publish", self.base);
            let task = publisher(url, tag, self.channels, pace, self.progress.clone());
            self.publishers.push(tokio::spawn(task));
        }
    }

    /// Wait until `n` more publishes were accepted and every client has an event.
    pub async fn wait_accepted(&self, n: usize) {
        let p = &self.progress;
        let (target, clients) = (p.accepted.load(Ordering::SeqCst) + n, self.clients.len());
        let reached = wait_until(WAIT, || {
            p.accepted.load(Ordering::SeqCst) >= target
                && p.clients_with_an_event.load(Ordering::SeqCst) == clients
        })
        .await;
        assert!(
            reached,
            "{n} more publishes accepted, an event at every client"
        );
    }

    /// Wait until `n` streams were opened in all (reconnects included).
    pub async fn wait_streams(&self, n: usize) -> bool {
        let p = &self.progress;
        wait_until(WAIT, || p.streams.load(Ordering::SeqCst) >= n).await
    }

    pub fn streams(&self) -> usize {
        self.progress.streams.load(Ordering::SeqCst)
    }

    /// Stop the publishers, publish one last event per channel (the end mark each client
    /// waits for), and collect what everyone saw.
    pub async fn finish(self) -> (Vec<(Vec<&'static str>, Seen)>, Published) {
        self.progress.stop_publishing.store(true, Ordering::SeqCst);
        let mut published = Published::default();
        for task in self.publishers {
            let p = task.await.expect("publisher");
            published.accepted.extend(p.accepted);
            published.failed.extend(p.failed);
        }
        let batch: Vec<_> = self
            .channels
            .iter()
            .map(|c| json!({ "channel": c, "data": format!("end-{c}") }))
            .collect();
        let url = format!("{}/publish", self.base);
        let answer = publish(&http(), &url, &json!(batch)).await;
        let mut marks = HashMap::new();
        let ids = answer["events"].as_array().expect("a batch answer");
        for (event, channel) in ids.iter().zip(self.channels) {
            published
                .accepted
                .push((id_of(event), channel, format!("end-{channel}")));
            marks.insert(*channel, id_of(event));
        }
        self.done.send_replace(Some(marks));
        let mut seen = Vec::new();
        for (channels, task) in self.clients {
            seen.push((channels, task.await.expect("client")));
        }
        (seen, published)
    }
}

/// Non-200 answers to (re)connects, as status -> count.
pub fn refusals(seen: &[(Vec<&str>, Seen)]) -> HashMap<u16, usize> {
    let mut by_status = HashMap::new();
    for status in seen.iter().flat_map(|(_, s)| &s.refusals) {
        *by_status.entry(*status).or_default() += 1;
    }
    by_status
}

/// The guarantees, client by client: no reset; IDs strictly increasing (nothing twice,
/// nothing out of order); every acknowledged event of its channels, with the ID its
/// publisher was answered; nothing that nobody published. An event whose publish failed
/// never arrives, except where `unacknowledged_may_arrive`: a node SIGKILLed mid-publish
/// may have run the publish in the backend and died before answering; such an event is
/// then in the one broker, so it arrives at every client of its channel or at none.
/// Returns how many unacknowledged events arrived.
pub fn check_deliveries(
    seen: &[(Vec<&str>, Seen)],
    published: &Published,
    unacknowledged_may_arrive: bool,
) -> usize {
    let accepted: HashMap<&str, (u64, &str)> = published
        .accepted
        .iter()
        .map(|(id, channel, data)| (data.as_str(), (*id, *channel)))
        .collect();
    let ids: HashSet<u64> = published.accepted.iter().map(|(id, ..)| *id).collect();
    let n = published.accepted.len();
    assert_eq!(ids.len(), n, "every accepted publish has its own ID");
    let failed: HashMap<&str, &str> = published
        .failed
        .iter()
        .map(|(c, d, _)| (d.as_str(), *c))
        .collect();
    let mut unacknowledged: HashMap<&str, usize> = HashMap::new();
    for (i, (channels, s)) in seen.iter().enumerate() {
        let who = format!(
            "client {i} ({}, {} streams)",
            events_path(channels),
            s.streams
        );
        let resets: Vec<_> = s.events.iter().filter(|(_, t, _)| t == "reset").collect();
        assert!(resets.is_empty(), "{who} received reset events: {resets:?}");
        if let Some(w) = s.events.windows(2).find(|w| w[1].0 <= w[0].0) {
            panic!(
                "{who}: event {} after {}: twice or out of order",
                w[1].0, w[0].0
            );
        }
        let mut got = Vec::new();
        for (id, _, data) in &s.events {
            let channel = if let Some((expected, channel)) = accepted.get(data.as_str()) {
                assert_eq!(
                    id, expected,
                    "{who}: {data:?} arrives with the ID its publish got"
                );
                got.push(*id);
                channel
            } else if let Some(channel) = failed.get(data.as_str()) {
                assert!(
                    unacknowledged_may_arrive,
                    "{who}: {data:?} (id {id}) arrived, but its publish was not accepted"
                );
                *unacknowledged.entry(data).or_default() += 1;
                channel
            } else {
                panic!("{who}: {data:?} (id {id}) arrived, but nobody published it");
            };
            assert!(
                channels.contains(channel),
                "{who}: {data:?} is from {channel}"
            );
        }
        let mut expected: Vec<u64> = published
            .accepted
            .iter()
            .filter(|(_, c, _)| channels.contains(c))
            .map(|(id, ..)| *id)
            .collect();
        expected.sort_unstable();
        let arrived: HashSet<u64> = got.iter().copied().collect();
        let missing: Vec<u64> = expected
            .iter()
            .filter(|id| !arrived.contains(id))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "{who} lost {} of {} accepted events, first {:?}; refusals {:?}",
            missing.len(),
            expected.len(),
            &missing[..missing.len().min(5)],
            s.refusals
        );
        assert_eq!(
            got, expected,
            "{who}: exactly the accepted events, in ID order"
        );
    }
    for (data, arrived) in &unacknowledged {
        let channel = failed[data];
        let subscribed = seen.iter().filter(|(c, _)| c.contains(&channel)).count();
        assert_eq!(
            *arrived, subscribed,
            "{data:?} (its publish failed) arrived at some clients of {channel}, not all"
        );
    }
    unacknowledged.len()
}
