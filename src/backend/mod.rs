//! Where a published event goes and where a subscription reads from: the one seam between
//! the HTTP layer and the two backends.
//!
//! - `memory` (the default): the hub owns IDs and history; a publish is one call into it.
//! - `redis`: Redis owns IDs and history, so any number of nodes are one broker. A publish
//!   is one script in Redis; every node, the publishing one included, receives the event
//!   on pub/sub and hands it to its hub, which mirrors the channels its subscribers read.
//!
//! The flow of one event, either way: `POST /publish` -> [`Backend::publish`] -> (Redis
//! script -> pub/sub -> `redis::reader`) -> `Hub` ring -> every subscriber's cursor.

pub mod redis;

use std::sync::Arc;

use crate::config::Config;
use crate::hub::{Hub, HubError, NewEvent, Subscription};
use crate::metrics::Metrics;
use tokio_util::sync::CancellationToken;

/// Why a publish or a subscribe could not be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The backend cannot be reached, or did not answer in time. Unreachable: nothing was
    /// published. No answer in time: Redis may still have run the script. Too few
    /// replicas acknowledged (`replica_acks`): it was published, and may still appear.
    #[error("the backend is unavailable: {0}")]
    Unavailable(String),
}

pub enum Backend {
    Memory,
    Redis(Arc<redis::RedisBackend>),
}

impl Backend {
    /// The backend `config` names; for Redis, its connections and tasks start here and
    /// run until `stop`. Never fails: an unreachable Redis is retried in the background
    /// (see [`Backend::is_ready`]).
    pub fn start(
        config: &Config,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Result<Self, String> {
        match config.backend.kind.as_str() {
            "redis" => {
                let backend = redis::RedisBackend::new(config, hub, metrics)?;
                backend.clone().spawn_tasks(stop);
                Ok(Backend::Redis(backend))
            }
            _ => {
                metrics.backend_up.set(1);
                Ok(Backend::Memory)
            }
        }
    }

    /// Publish a batch atomically; the IDs in batch order.
    pub async fn publish(&self, hub: &Hub, batch: &[NewEvent]) -> Result<Vec<u64>, BackendError> {
        match self {
            Backend::Memory => Ok(hub.publish(batch)?),
            Backend::Redis(redis) => redis.publish(batch).await,
        }
    }

    /// Open a subscription; with Redis, the channels are followed first.
    pub async fn subscribe(
        &self,
        hub: &Arc<Hub>,
        names: &[String],
        last_event_id: Option<&str>,
    ) -> Result<Subscription, BackendError> {
        match self {
            Backend::Memory => Ok(hub.subscribe(names, last_event_id)?),
            Backend::Redis(redis) => redis.subscribe(names, last_event_id).await,
        }
    }

    /// False until a Redis backend has been reached once; `/readyz` waits for it. A
    /// backend lost later leaves the node ready: see `admin::readyz`.
    pub fn is_ready(&self) -> bool {
        match self {
            Backend::Memory => true,
            Backend::Redis(redis) => redis.reached_once(),
        }
    }

    /// `"up"` or `"down"` for `/readyz` and `/stats`.
    pub fn status(&self) -> &'static str {
        match self {
            Backend::Memory => "up",
            Backend::Redis(redis) if redis.is_up() => "up",
            Backend::Redis(_) => "down",
        }
    }

    /// Apply what a reloaded config may change in the backend (Redis: history limits).
    pub fn reconfigure(&self, config: &Config) {
        if let Backend::Redis(redis) = self {
            redis.reconfigure(config);
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis(_) => "redis",
        }
    }
}
