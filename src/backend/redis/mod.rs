//! The Redis backend: IDs, history and fan-out shared by every node.
//!
//! A node holds two Redis connections whatever its number of streams and channels: a
//! multiplexed command connection (publishes, history loads, barriers; concurrent
//! requests are pipelined on it) and one pub/sub connection on which every event arrives
//! once ([`reader`]); a third carries publishes when they wait for replicas
//! (`replica_acks`). They go to the primary, which Sentinel may move ([`primary`]).
//! The data layout and the scripts are in [`scripts`].
//!
//! A subscribe on a channel the node does not follow yet loads its history into the hub
//! (see `hub::mirror`): one script call and one barrier round trip, then the stream is
//! served from the node's ring like with the memory backend, and so are later resumes.

mod announcements;
mod primary;
mod publisher;
mod reader;
mod scripts;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::{ErrorKind, ServerErrorKind, Value};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::BackendError;
use crate::config::{redact_url_password, Config};
use crate::hub::{FollowStatus, Hub, HubError, NewEvent, Retained, Subscription};
use crate::metrics::Metrics;
use crate::sse;
use primary::Primary;
use scripts::{Keys, Scripts};

/// Channels per history-load script call: a catch-up of many channels is split so that
/// no single script holds Redis for long.
const LOAD_CHUNK: usize = 256;
/// Idle streams deleted per sweep call.
const SWEEP_LIMIT: usize = 1000;

struct Settings {
    command_timeout: Duration,
    connect_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    health_interval: Duration,
    sweep_interval: Duration,
    /// `history.*`, live: a reload changes them (`reconfigure`).
    max_events: AtomicU64,
    max_age_us: AtomicU64,
    /// Replicas that must have a publish before it is answered (0: off).
    replica_acks: u32,
    replica_ack_timeout: Duration,
}

pub struct RedisBackend {
    /// Where commands and pub/sub go; follows Sentinel failovers.
    primary: Arc<Primary>,
    keys: Keys,
    scripts: Scripts,
    /// This node's name in barriers, so it recognises its own.
    node: String,
    /// The last barrier number handed out.
    barriers: AtomicU64,
    /// The newest own barrier the reader has met.
    barrier_seen: tokio::sync::watch::Sender<u64>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    settings: Settings,
    /// The pub/sub connection is subscribed and its last probe came back in time.
    up: AtomicBool,
    /// Redis answered at least once since the start (readiness).
    reached: AtomicBool,
    /// The URL with its password masked (and the master name with Sentinel), for logs.
    display_url: String,
    /// The newest ID this node's publishes were given (for the next proposal).
    last_published: AtomicU64,
    /// Publishes waiting for the group commit (see `publisher`).
    publish_queue: tokio::sync::mpsc::Sender<publisher::Request>,
    /// The other end, until `spawn_tasks` hands it to the publisher task.
    publish_requests: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<publisher::Request>>>,
}

impl RedisBackend {
    pub fn new(config: &Config, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Result<Arc<Self>, String> {
        let redis = &config.backend.redis;
        let mut display_url = redact_url_password(&redis.url);
        if !redis.sentinels.is_empty() {
            display_url = format!(
                "{display_url} (address from sentinels {} for {:?})",
                redis.sentinels.join(","),
                redis.master_name
            );
        }
        let primary = Arc::new(Primary::new(redis, metrics.clone())?);
        let node = format!("{:016x}", rand::random::<u64>());
        let (publish_queue, publish_requests) = tokio::sync::mpsc::channel(publisher::QUEUE);
        metrics.backend_up.set(0);
        metrics.init_redis_series();
        Ok(Arc::new(Self {
            primary,
            keys: Keys::new(&redis.key_prefix),
            scripts: Scripts::new(),
            node,
            barriers: AtomicU64::new(0),
            barrier_seen: tokio::sync::watch::Sender::new(0),
            hub,
            metrics,
            settings: Settings {
                command_timeout: redis.command_timeout,
                connect_timeout: redis.connect_timeout,
                backoff_min: redis.reconnect_backoff_min,
                backoff_max: redis.reconnect_backoff_max,
                health_interval: redis.health_interval,
                sweep_interval: config.history.sweep_interval,
                max_events: AtomicU64::new(config.history.max_events as u64),
                max_age_us: AtomicU64::new(config.history.max_age.as_micros() as u64),
                replica_acks: redis.replica_acks,
                replica_ack_timeout: redis.replica_ack_timeout,
            },
            up: AtomicBool::new(false),
            reached: AtomicBool::new(false),
            display_url,
            last_published: AtomicU64::new(0),
            publish_queue,
            publish_requests: std::sync::Mutex::new(Some(publish_requests)),
        }))
    }

    /// The pub/sub reader and the idle-stream sweeper, until `stop`.
    pub fn spawn_tasks(self: Arc<Self>, stop: CancellationToken) {
        tracing::info!(url = %self.display_url, prefix = %self.keys.prefix, "redis backend");
        tokio::spawn(reader::run(self.clone(), stop.clone()));
        if self.primary.uses_sentinel() {
            tokio::spawn(announcements::run(self.primary.clone(), stop.clone()));
        }
        let requests = self
            .publish_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(requests) = requests {
            tokio::spawn(publisher::run(self.clone(), requests, stop.clone()));
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.settings.sweep_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => { let _ = self.sweep_idle_streams().await; }
                    _ = stop.cancelled() => return,
                }
            }
        });
    }

    /// The history limits of a reloaded config (the rest of `backend.*` needs a restart).
    pub fn reconfigure(&self, config: &Config) {
        let history = &config.history;
        let settings = &self.settings;
        settings
            .max_events
            .store(history.max_events as u64, Ordering::Relaxed);
        settings
            .max_age_us
            .store(history.max_age.as_micros() as u64, Ordering::Relaxed);
    }

    fn max_events(&self) -> u64 {
        self.settings.max_events.load(Ordering::Relaxed)
    }

    fn max_age_us(&self) -> u64 {
        self.settings.max_age_us.load(Ordering::Relaxed)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn reached_once(&self) -> bool {
        self.reached.load(Ordering::Acquire)
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.metrics.backend_up.set(i64::from(up));
        if up {
            self.reached.store(true, Ordering::Release);
        }
    }

    /// One command with the command timeout, timed and counted.
    async fn timed<T>(
        &self,
        command: &'static str,
        call: impl Future<Output = ::redis::RedisResult<T>>,
    ) -> Result<T, BackendError> {
        self.timed_within(command, self.settings.command_timeout, call)
            .await
    }

    /// One command with its own time limit, timed and counted. A failure that may mean
    /// the primary moved (connection lost, no answer, `READONLY`) asks Sentinel again.
    async fn timed_within<T>(
        &self,
        command: &'static str,
        limit: Duration,
        call: impl Future<Output = ::redis::RedisResult<T>>,
    ) -> Result<T, BackendError> {
        let started = Instant::now();
        let result = tokio::time::timeout(limit, call).await;
        self.metrics
            .redis_command_seconds
            .with_label_values(&[command])
            .observe(started.elapsed().as_secs_f64());
        let (kind, message) = match result {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if e.is_timeout() => ("timeout", e.to_string()),
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() => {
                ("connect", e.to_string())
            }
            // A write refused inside a script may come back wrapped in a script error,
            // with READONLY only in its text.
            Ok(Err(e))
                if e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
                    || e.to_string().contains("READONLY") =>
            {
                ("readonly", e.to_string())
            }
            Ok(Err(e)) => ("command", e.to_string()),
            Err(_) => ("timeout", format!("no answer within {limit:?}")),
        };
        self.metrics.backend_errors.with_label_values(&[kind]).inc();
        tracing::warn!(command, kind, error = %message, "redis command failed");
        if kind != "command" {
            self.primary.refresh_soon();
        }
        Err(BackendError::Unavailable(format!("{command}: {message}")))
    }

    /// Publish a batch atomically: IDs, history and fan-out in one script, shared with
    /// whatever other publishes are queued at the time (see `publisher`).
    pub async fn publish(&self, batch: &[NewEvent]) -> Result<Vec<u64>, BackendError> {
        if self.hub.is_closing() {
            return Err(HubError::ShuttingDown.into());
        }
        let events = batch
            .iter()
            .map(|ev| {
                let body = sse::encode(&sse::Event {
                    id: None,
                    event: ev.event.as_deref(),
                    data: &ev.data,
                    retry: ev.retry,
                });
                (ev.channel.clone(), body)
            })
            .collect();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let gone = || BackendError::Unavailable("the publisher task has stopped".into());
        self.publish_queue
            .send(publisher::Request { events, reply })
            .await
            .map_err(|_| gone())?;
        let ids = answer.await.map_err(|_| gone())??;
        self.metrics.events_published.inc_by(ids.len() as u64);
        Ok(ids)
    }

    /// A call of `script` with the six keys and the argument every script starts with.
    fn invocation<'a>(&'a self, script: &'a ::redis::Script) -> ::redis::ScriptInvocation<'a> {
        let keys = &self.keys;
        let mut call = script.prepare_invoke();
        call.key(&keys.seq)
            .key(&keys.epoch)
            .key(&keys.last)
            .key(&keys.removed_floor)
            .key(&keys.active)
            .key(&keys.tally)
            .arg(self.hub.horizon());
        call
    }

    /// Follow `names` (loading what is not followed yet), then subscribe.
    pub async fn subscribe(
        &self,
        names: &[String],
        last_event_id: Option<&str>,
    ) -> Result<Subscription, BackendError> {
        let deadline = Instant::now() + 3 * self.settings.command_timeout;
        let resume_id = last_event_id.and_then(|raw| raw.trim().parse::<u64>().ok());
        // A follow races at most a reconnect or a sweep; a third miss means trouble.
        for _ in 0..3 {
            if self.hub.is_closing() {
                return Err(HubError::ShuttingDown.into());
            }
            let plan = self.hub.begin_follow(names)?;
            if !plan.load.is_empty() {
                let load: Vec<(String, u64)> = plan.load.iter().map(|n| (n.clone(), 0)).collect();
                if let Err(e) = self.load_and_stage(&load).await {
                    self.hub.abort_follow(&plan.load);
                    return Err(e);
                }
            } else if resume_id.is_some_and(|id| id > self.hub.horizon()) {
                // An ID from another node that our reader has not passed yet: once our own
                // barrier is back after a read of Redis's last ID, it has, or the ID was
                // never assigned.
                let barrier = self.load_and_stage(&[]).await?.0;
                self.wait_barrier(barrier, deadline).await?;
            }
            match self.hub.wait_followed(names, deadline).await {
                FollowStatus::Live => {}
                FollowStatus::Missing => continue,
                FollowStatus::Loading => {
                    self.hub.abort_follow(&plan.load);
                    return Err(BackendError::Unavailable(
                        "channel history did not arrive in time".into(),
                    ));
                }
            }
            match self.hub.subscribe(names, last_event_id) {
                Err(HubError::NotFollowed(_)) => continue,
                other => return Ok(other?),
            }
        }
        Err(BackendError::Unavailable(
            "channels were dropped while following them".into(),
        ))
    }

    /// Load the history of each `(channel, after ID)` into the hub's staging area, with
    /// Redis's last ID, and send the barrier that completes them. Returns the barrier and
    /// how many events were loaded.
    async fn load_and_stage(
        &self,
        channels: &[(String, u64)],
    ) -> Result<(u64, usize), BackendError> {
        let barrier = self.next_barrier();
        let mut loaded = 0;
        let mut last_id = 0;
        let chunks: Vec<&[(String, u64)]> = if channels.is_empty() {
            vec![&[]] // still read the epoch
        } else {
            channels.chunks(LOAD_CHUNK).collect()
        };
        for chunk in chunks {
            let keys = &self.keys;
            let mut call = self.invocation(&self.scripts.load);
            for (name, _) in chunk {
                call.key(keys.stream(name));
            }
            call.arg(self.max_events()).arg(self.max_age_us());
            for (name, after) in chunk {
                call.arg(name).arg(*after);
            }
            let mut conn = self.primary.commands()?;
            let answer: Value = self.timed("load", call.invoke_async(&mut conn)).await?;
            let answer = LoadAnswer::parse(answer, chunk.len(), self.max_events() as usize)
                .ok_or_else(|| BackendError::Unavailable("load: unexpected answer".into()))?;
            self.hub.rebase(answer.epoch);
            last_id = last_id.max(answer.last_id);
            for ((name, _), (floor, history)) in chunk.iter().zip(answer.channels) {
                loaded += history.len();
                self.hub.stage(name, history, floor, barrier);
            }
        }
        self.hub.stage_horizon(barrier, last_id);
        self.send_barrier(barrier).await?;
        Ok((barrier, loaded))
    }

    fn next_barrier(&self) -> u64 {
        self.barriers.fetch_add(1, Ordering::AcqRel) + 1
    }

    async fn send_barrier(&self, n: u64) -> Result<(), BackendError> {
        let mut conn = self.primary.commands()?;
        let message = format!("!{}:{n}", self.node);
        let mut publish = ::redis::cmd("PUBLISH");
        publish.arg(&self.keys.events).arg(message);
        self.timed("barrier", publish.query_async::<i64>(&mut conn))
            .await
            .map(drop)
    }

    async fn wait_barrier(&self, n: u64, deadline: Instant) -> Result<(), BackendError> {
        let mut seen = self.barrier_seen.subscribe();
        let until = tokio::time::Instant::from_std(deadline);
        let reached = tokio::time::timeout_at(until, seen.wait_for(|v| *v >= n))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached {
            Ok(())
        } else {
            Err(BackendError::Unavailable(
                "pub/sub did not answer in time".into(),
            ))
        }
    }

    /// A pub/sub message: an event for the hub, or a barrier.
    fn handle_message(&self, payload: &[u8]) -> Option<u64> {
        if let Some(barrier) = payload.strip_prefix(b"!") {
            let text = std::str::from_utf8(barrier).ok()?;
            let (node, n) = text.split_once(':')?;
            if node != self.node {
                return None;
            }
            let n: u64 = n.parse().ok()?;
            self.hub.complete_barrier(n);
            self.barrier_seen.send_if_modified(|seen| {
                let newer = n > *seen;
                *seen = (*seen).max(n);
                newer
            });
            return Some(n);
        }
        // One publish script's events: `<channel>\n<encoding>` each.
        let payload = Bytes::copy_from_slice(payload);
        let mut rest = &payload[..];
        while !rest.is_empty() {
            let newline = memchr::memchr(b'\n', rest)?;
            let channel = std::str::from_utf8(&rest[..newline]).ok()?;
            let event = &rest[newline + 1..];
            let (id, len) = next_event(event)?;
            self.hub
                .apply(channel, id, payload.slice_ref(&event[..len]));
            rest = &event[len..];
        }
        None
    }

    async fn sweep_idle_streams(&self) -> Result<u64, BackendError> {
        let keys = &self.keys;
        let mut call = self.invocation(&self.scripts.sweep);
        call.arg(self.max_age_us())
            .arg(keys.stream(""))
            .arg(SWEEP_LIMIT)
            .arg(keys.marks(""));
        let mut conn = self.primary.commands()?;
        self.timed("sweep", call.invoke_async(&mut conn)).await
    }
}

/// The load script's answer: `{epoch, seq, floor, {entry, ...}, floor, {...}, ...}`.
struct LoadAnswer {
    epoch: u64,
    /// Redis's last assigned ID when the script ran.
    last_id: u64,
    /// Per channel: the ID of the newest event before its history, and the history.
    channels: Vec<(u64, Vec<Retained>)>,
}

impl LoadAnswer {
    /// The answer to a load of `channels` channels: each one's entries split into
    /// events, the newest `max_events` of them. (The oldest entry may begin at or below
    /// the ID loaded after: the hub skips what it has.)
    fn parse(value: Value, channels: usize, max_events: usize) -> Option<Self> {
        let Value::Array(items) = value else {
            return None;
        };
        let mut items = items.into_iter();
        let epoch = number(&items.next()?)?;
        let last_id = number(&items.next()?)?;
        let mut out = Vec::with_capacity(channels);
        for _ in 0..channels {
            let mut floor = number(&items.next()?)?;
            let Value::Array(entries) = items.next()? else {
                return None;
            };
            let mut history = Vec::with_capacity(entries.len());
            for entry in entries {
                let Value::BulkString(entry) = entry else {
                    return None;
                };
                let entry = Bytes::from(entry);
                let mut at = 0;
                while at < entry.len() {
                    let (id, len) = next_event(&entry[at..])?;
                    history.push(Retained {
                        id,
                        bytes: entry.slice(at..at + len),
                    });
                    at += len;
                }
            }
            if history.len() > max_events {
                let excess = history.len() - max_events;
                floor = history[excess - 1].id;
                history.drain(..excess);
            }
            out.push((floor, history));
        }
        Some(Self {
            epoch,
            last_id,
            channels: out,
        })
    }
}

/// The first event of `encodings` (complete SSE encodings one after the other, each
/// starting with its `id:` line and ending with its blank line, holding no other: every
/// line has a field name): its ID and its length.
fn next_event(encodings: &[u8]) -> Option<(u64, usize)> {
    static BLANK_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\n\n"));
    let len = BLANK_LINE.find(encodings)? + 2;
    let id = encodings
        .strip_prefix(b"id: ")
        .and_then(|line| line.split(|b| *b == b'\n').next())
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse().ok())?;
    Some((id, len))
}

fn number(value: &Value) -> Option<u64> {
    match value {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}
