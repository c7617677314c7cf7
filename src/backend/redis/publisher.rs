//! Group commit for publishes: one script call at a time, and the requests that arrive
//! while it is in flight travel together in the next one.
//!
//! Why: one script call costs Redis ~15-25 µs of fixed work (script lookup, argument
//! conversion, the Lua call, the time and sequence keys, the per-channel HMGET, HSET,
//! ZADD and XTRIM, the PUBLISH: ~225k instructions for a call of 4 events on one channel,
//! against ~27k per event in a call of 100; `bench/lua_cost.py --callgrind`) and the
//! node a command round trip, whatever the number of events in it. Publishers on many
//! connections therefore queue here, and one call carries everything queued, up to `MAX_GROUP_EVENTS`. One call
//! at a time lets the groups grow with the load (measured with herald and Redis on one
//! core, 8 publishers: groups of ~4 and 28k publishes/s, against groups of ~1.4 and 20k/s
//! with four calls in flight), and a `WAIT` for replica acks (which holds back every
//! later command on its connection) never queues calls behind it. Each request's events stay consecutive and
//! atomic (the script is), each caller gets its own IDs, and a failed call fails every
//! request in it: nothing is answered 200 unless Redis took it (and, with
//! `replica_acks`, that many replicas too).

use std::collections::HashSet;
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
    /// The publish script over `events`, in order; their IDs.
    async fn run_publish_script(
        &self,
        events: &[&(String, Bytes)],
    ) -> Result<Vec<u64>, BackendError> {
        let keys = &self.keys;
        let mut call = self.invocation(&self.scripts.publish);
        // Each channel's stream and marks once, in the order the channels first appear.
        let mut channels = HashSet::with_capacity(events.len());
        for (channel, _) in events {
            if channels.insert(channel.as_str()) {
                call.key(keys.stream(channel)).key(keys.marks(channel));
            }
        }
        call.arg(self.max_events())
            .arg(self.max_age_us())
            .arg(&keys.events);
        for (channel, body) in events {
            call.arg(channel).arg(body.as_ref());
        }
        let (answer, acks) = if self.settings.replica_acks == 0 {
            let mut conn = self.primary.commands()?;
            let answer = self.timed("publish", call.invoke_async(&mut conn)).await?;
            (answer, None)
        } else {
            let (answer, acks) = self.publish_and_wait(&call).await?;
            (answer, Some(acks))
        };
        // {epoch, first ID}: the events have consecutive IDs from the first.
        let [epoch, first] = answer[..] else {
            return Err(BackendError::Unavailable(
                "publish: unexpected answer".into(),
            ));
        };
        self.hub.rebase(epoch);
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
            _ => Ok((first..).take(events.len()).collect()),
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
