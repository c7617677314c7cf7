//! Group commit for publishes: one script call at a time, and the requests that arrive
//! while it is in flight travel together in the next one.
//!
//! Why: one script call costs Redis ~10-25 µs of fixed work (script lookup, argument
//! conversion, the Lua call, the time and sequence keys, the per-channel HMGETs, HSETs,
//! ZADD and XTRIM, the PUBLISH: ~123k instructions for a call of 4 events on one channel
//! with the node's own IDs, against ~3.5k per event in a call of 1,000;
//! `bench/lua_cost.py --layout prepared --callgrind`) and the node a command round trip,
//! whatever the number of events in it. Publishers on many connections therefore queue
//! here, and one call carries everything queued, up to `MAX_GROUP_EVENTS`. One call at a
//! time lets the groups grow with the load (measured with herald and Redis on one core,
//! 8 publishers: groups of ~4 and 28k publishes/s, against groups of ~1.4 and 20k/s with
//! four calls in flight), and a `WAIT` for replica acks (which holds back every later
//! command on its connection) never queues calls behind it. Each request's events stay
//! consecutive and atomic (the script is), each caller gets its own IDs, and a failed
//! call fails every request in it: nothing is answered 200 unless Redis took it (and,
//! with `replica_acks`, that many replicas too).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ::redis::{ErrorKind, ServerErrorKind};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::RedisBackend;
use crate::backend::BackendError;

/// Events in one script call (a request is never split, so one may exceed it alone).
const MAX_GROUP_EVENTS: usize = 1000;
/// Requests waiting for a call; past it, publishers wait to queue (backpressure).
pub(super) const QUEUE: usize = 4096;

/// One publish request: `(channel, encoding without the id line)` per event.
pub(super) struct Request {
    pub events: Vec<(String, Bytes)>,
    pub reply: oneshot::Sender<Result<Vec<u64>, BackendError>>,
}

pub(super) async fn run(
    backend: Arc<RedisBackend>,
    mut queue: mpsc::Receiver<Request>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            request = queue.recv() => match request {
                Some(request) => request,
                None => return,
            },
            _ = stop.cancelled() => return,
        };
        let mut events = first.events.len();
        let mut group = vec![first];
        while events < MAX_GROUP_EVENTS {
            match queue.try_recv() {
                Ok(request) => {
                    events += request.events.len();
                    group.push(request);
                }
                Err(_) => break,
            }
        }
        commit(&backend, group).await;
    }
}

async fn commit(backend: &RedisBackend, group: Vec<Request>) {
    let events: Vec<&(String, Bytes)> = group.iter().flat_map(|r| &r.events).collect();
    match backend.run_publish_script(&events).await {
        Ok(ids) => {
            let mut ids = ids.into_iter();
            for request in group {
                let mine: Vec<u64> = ids.by_ref().take(request.events.len()).collect();
                let answer = if mine.len() == request.events.len() {
                    Ok(mine)
                } else {
                    Err(BackendError::Unavailable("publish: short answer".into()))
                };
                let _ = request.reply.send(answer);
            }
        }
        Err(e) => {
            for request in group {
                let _ = request.reply.send(Err(e.clone()));
            }
        }
    }
}

impl RedisBackend {
    /// The events, in order, published in one script call; their IDs. The node proposes
    /// the IDs and builds the stream entries and the pub/sub message itself
    /// (`PUBLISH_PREPARED`: Redis then only moves bytes); if another node took IDs since
    /// or the clocks disagree, Redis refuses them untouched and the events go through the
    /// script that assigns IDs and encodes in Lua (`PUBLISH`).
    async fn run_publish_script(
        &self,
        events: &[&(String, Bytes)],
    ) -> Result<Vec<u64>, BackendError> {
        let mut call = self.invocation(&self.scripts.publish_prepared);
        let first = self.propose_first();
        let prepared = Prepared::new(events, first);
        for (channel, _) in &prepared.channels {
            self.add_channel_keys(&mut call, channel);
        }
        self.add_limits(&mut call);
        call.arg(first).arg(events.len()).arg(&prepared.message);
        for (channel, entry) in &prepared.channels {
            call.arg(*channel)
                .arg(&entry.encodings)
                .arg(entry.events)
                .arg(entry.last);
        }
        let answer = match self.invoke_publish(&call).await? {
            // {epoch, 0, last}: refused, nothing written.
            (answer, _) if answer.len() == 3 && answer[1] == 0 => {
                self.metrics.backend_publish_fallbacks.inc();
                self.note_last(answer[2]);
                self.run_lua_publish(events).await?
            }
            answer => answer,
        };
        self.check_publish_answer(answer, events.len())
    }

    /// The publish script that assigns the IDs and encodes in Lua.
    async fn run_lua_publish(
        &self,
        events: &[&(String, Bytes)],
    ) -> Result<(Vec<u64>, Option<u64>), BackendError> {
        let mut call = self.invocation(&self.scripts.publish);
        let mut channels = HashSet::with_capacity(events.len());
        for (channel, _) in events {
            if channels.insert(channel.as_str()) {
                self.add_channel_keys(&mut call, channel);
            }
        }
        self.add_limits(&mut call);
        for (channel, body) in events {
            call.arg(channel).arg(body.as_ref());
        }
        self.invoke_publish(&call).await
    }

    /// The IDs to propose for the next call: after every ID this node knows of, and
    /// not before the clock (IDs are microseconds since the Unix epoch).
    fn propose_first(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let known = self
            .hub
            .horizon()
            .max(self.last_published.load(Ordering::Acquire));
        now.max(known + 1)
    }

    fn note_last(&self, id: u64) {
        self.last_published.fetch_max(id, Ordering::AcqRel);
    }

    /// Each channel's keys: its stream and its marks.
    fn add_channel_keys(&self, call: &mut ::redis::ScriptInvocation<'_>, channel: &str) {
        call.key(self.keys.stream(channel))
            .key(self.keys.marks(channel));
    }

    /// The arguments both publish scripts take after the caller's newest ID.
    fn add_limits(&self, call: &mut ::redis::ScriptInvocation<'_>) {
        call.arg(self.max_events())
            .arg(self.max_age_us())
            .arg(&self.keys.events);
    }

    /// Run a publish script (with `WAIT` for replicas when `replica_acks` asks for
    /// them): its answer, and how many replicas acknowledged.
    async fn invoke_publish(
        &self,
        call: &::redis::ScriptInvocation<'_>,
    ) -> Result<(Vec<u64>, Option<u64>), BackendError> {
        if self.settings.replica_acks == 0 {
            let mut conn = self.primary.commands()?;
            let answer = self.timed("publish", call.invoke_async(&mut conn)).await?;
            Ok((answer, None))
        } else {
            let (answer, acks) = self.publish_and_wait(call).await?;
            Ok((answer, Some(acks)))
        }
    }

    /// The IDs of `events` published events from the answer `{epoch, first ID}`, or why
    /// they may not be answered 200.
    fn check_publish_answer(
        &self,
        (answer, acks): (Vec<u64>, Option<u64>),
        events: usize,
    ) -> Result<Vec<u64>, BackendError> {
        // {epoch, first ID}: the events have consecutive IDs from the first.
        let [epoch, first] = answer[..] else {
            return Err(BackendError::Unavailable(
                "publish: unexpected answer".into(),
            ));
        };
        self.hub.rebase(epoch);
        self.note_last(first + events as u64 - 1);
        let wanted = self.settings.replica_acks;
        match acks {
            Some(acks) if acks < u64::from(wanted) => {
                self.metrics.replica_ack_failures.inc();
                let timeout = self.settings.replica_ack_timeout;
                tracing::warn!(
                    acks,
                    wanted,
                    ?timeout,
                    "too few replicas acknowledged a publish"
                );
                Err(BackendError::Unavailable(format!(
                    "publish: {acks} of {wanted} replicas acknowledged within {timeout:?} \
                     (the event was published and may still appear)"
                )))
            }
            _ => Ok((first..).take(events).collect()),
        }
    }

    /// The publish script and `WAIT` for `replica_acks` replicas, pipelined on the
    /// publish connection: a `WAIT` covers every earlier write of its connection, and
    /// in one pipeline nothing can reconnect between the two (a `WAIT` on a fresh
    /// connection would count replicas that never saw the script). Its answer and the
    /// number of replicas that acknowledged.
    async fn publish_and_wait(
        &self,
        call: &::redis::ScriptInvocation<'_>,
    ) -> Result<(Vec<u64>, u64), BackendError> {
        let timeout = self.settings.replica_ack_timeout;
        let mut pipe = ::redis::pipe();
        pipe.invoke_script(call)
            .cmd("WAIT")
            .arg(self.settings.replica_acks)
            .arg(timeout.as_millis() as u64);
        let mut conn = self.primary.publishes()?;
        let run = async {
            match pipe.query_async(&mut conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    call.load_async(&mut conn).await?;
                    pipe.query_async(&mut conn).await
                }
                other => other,
            }
        };
        self.timed_within("publish", self.settings.command_timeout + timeout, run)
            .await
    }
}

/// What `PUBLISH_PREPARED` stores and sends for events with the IDs `first`, `first + 1`,
/// ...: the pub/sub message (`<channel>\n<encoding>` per event, as the Lua script builds
/// it) and per channel, in the order channels first appear, its stream entry.
struct Prepared<'a> {
    message: Vec<u8>,
    channels: Vec<(&'a str, Entry)>,
}

#[derive(Default)]
struct Entry {
    /// The channel's encodings, each with its `id:` line.
    encodings: Vec<u8>,
    events: usize,
    /// The ID of its last event.
    last: u64,
}

impl<'a> Prepared<'a> {
    fn new(events: &[&'a (String, Bytes)], first: u64) -> Self {
        let bytes: usize = events.iter().map(|(c, b)| c.len() + b.len() + 24).sum();
        let mut message = Vec::with_capacity(bytes);
        let mut channels: Vec<(&str, Entry)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut digits = itoa::Buffer::new();
        let mut at = 0;
        for ((channel, body), id) in events.iter().zip(first..) {
            let line = digits.format(id).as_bytes();
            // Runs of one channel are the common case (a batch to one channel): no hash.
            if channels
                .get(at)
                .is_none_or(|(name, _)| *name != channel.as_str())
            {
                at = *index.entry(channel.as_str()).or_insert_with(|| {
                    channels.push((channel.as_str(), Entry::default()));
                    channels.len() - 1
                });
            }
            message.extend_from_slice(channel.as_bytes());
            message.push(b'\n');
            let start = message.len();
            message.extend_from_slice(b"id: ");
            message.extend_from_slice(line);
            message.push(b'\n');
            message.extend_from_slice(body);
            let entry = &mut channels[at].1;
            entry.encodings.extend_from_slice(&message[start..]);
            entry.events += 1;
            entry.last = id;
        }
        Self { message, channels }
    }
}
