//! Where the primary is: the one Redis of `url`, or the one Redis Sentinel names, and
//! the connections to it.
//!
//! A `ConnectionManager` is bound to one address, so the command connection and the
//! client the pub/sub reader connects with are kept here and replaced together when the
//! primary moves. With Sentinel, [`Primary::refresh`] asks every sentinel at once for the
//! primary of `master_name`, takes the view with the newest configuration epoch, and
//! follows it only once that address itself says `ROLE` master: a sentinel that has not
//! seen the failover yet, or an old primary back as a replica, is not followed. Refreshes come from whoever loses the primary: every
//! pub/sub connect attempt (so a failover looks like a reconnect to a new address, with
//! its catch-up) and any command failing on a connection error, a timeout or `READONLY`.
//! A move bumps [`Primary::moved`], which makes the reader leave the old address at once.
//! Sentinel's own announcement of a failover is listened to in [`super::announcements`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{AsyncConnectionConfig, Client, Value};

use futures_util::StreamExt;

use crate::backend::BackendError;
use crate::config::{parse_host_port, RedisConfig};
use crate::metrics::Metrics;

/// How long the slower sentinels still get once a majority has answered.
const STRAGGLER_GRACE: Duration = Duration::from_millis(100);

/// The primary followed now.
#[derive(Clone)]
pub(super) struct Current {
    /// `host:port`, for logs and the `herald_backend_primary` label.
    pub address: String,
    /// Opens the pub/sub connection.
    pub client: Client,
    /// Multiplexed: history loads, barriers, sweeps, and publishes without replica acks.
    pub commands: ConnectionManager,
    /// Publishes followed by `WAIT`: their own connection, since a client blocked in
    /// `WAIT` holds back every later command on its connection (probes included).
    pub publishes: ConnectionManager,
}

pub(super) struct Primary {
    /// The configured URL: scheme, credentials and database (and, without Sentinel, the
    /// address).
    url: url::Url,
    tls_root: Option<Vec<u8>>,
    sentinels: Vec<(String, u16)>,
    master_name: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// The longest answer a command connection waits for (a `WAIT` included).
    response_timeout: Duration,
    backoff: (Duration, Duration),
    /// A separate publish connection is opened only when publishes wait for replicas.
    separate_publishes: bool,
    current: Mutex<Option<Current>>,
    /// One refresh at a time; error-triggered ones skip when one is under way.
    refreshing: tokio::sync::Mutex<()>,
    /// When the last error-triggered refresh started: at most one per `backoff.0`.
    last_triggered: Mutex<Option<Instant>>,
    /// Bumped on every move of the primary.
    moved: tokio::sync::watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

impl Primary {
    pub fn new(redis: &RedisConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let url = url::Url::parse(&redis.url).map_err(|e| format!("backend.redis.url: {e}"))?;
        let tls_root = if redis.tls_ca_file.is_empty() {
            None
        } else {
            Some(
                std::fs::read(&redis.tls_ca_file)
                    .map_err(|e| format!("backend.redis.tls_ca_file: {e}"))?,
            )
        };
        let sentinels = redis
            .sentinels
            .iter()
            .map(|s| parse_host_port(s).ok_or_else(|| format!("backend.redis.sentinels: {s:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        let ack_wait = if redis.replica_acks > 0 {
            redis.replica_ack_timeout
        } else {
            Duration::ZERO
        };
        let primary = Self {
            url,
            tls_root,
            sentinels,
            master_name: redis.master_name.clone(),
            connect_timeout: redis.connect_timeout,
            command_timeout: redis.command_timeout,
            response_timeout: redis.command_timeout + ack_wait,
            backoff: (redis.reconnect_backoff_min, redis.reconnect_backoff_max),
            separate_publishes: redis.replica_acks > 0,
            current: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            last_triggered: Mutex::new(None),
            moved: tokio::sync::watch::Sender::new(0),
            metrics,
        };
        if primary.sentinels.is_empty() {
            // No Sentinel: the URL is the primary, for good.
            let address = match (primary.url.host_str(), primary.url.port()) {
                (Some(host), Some(port)) => format!("{host}:{port}"),
                (Some(host), None) => format!("{host}:6379"),
                _ => String::new(),
            };
            primary
                .metrics
                .backend_primary
                .with_label_values(&[&address])
                .set(1);
            let current = primary.connect(primary.url.as_str(), address)?;
            *primary.lock() = Some(current);
        }
        Ok(primary)
    }

    pub fn uses_sentinel(&self) -> bool {
        !self.sentinels.is_empty()
    }

    /// `redis://host:port/` of each sentinel, in the configured order.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(host, port)| format!("redis://{}/", join_host_port(host, *port)))
            .collect()
    }

    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// `(connect_timeout, command_timeout)`.
    pub fn timeouts(&self) -> (Duration, Duration) {
        (self.connect_timeout, self.command_timeout)
    }

    /// `(reconnect_backoff_min, reconnect_backoff_max)`.
    pub fn backoff(&self) -> (Duration, Duration) {
        self.backoff
    }

    /// The primary followed now; `None` until Sentinel named one.
    pub fn current(&self) -> Option<Current> {
        self.lock().clone()
    }

    pub fn commands(self: &Arc<Self>) -> Result<ConnectionManager, BackendError> {
        self.known(|c| c.commands.clone())
    }

    pub fn publishes(self: &Arc<Self>) -> Result<ConnectionManager, BackendError> {
        self.known(|c| c.publishes.clone())
    }

    /// `pick` of the current primary (only what the caller needs is cloned: this runs for
    /// every command).
    fn known<T>(self: &Arc<Self>, pick: impl FnOnce(&Current) -> T) -> Result<T, BackendError> {
        let picked = self.lock().as_ref().map(pick);
        picked.ok_or_else(|| {
            self.refresh_soon();
            BackendError::Unavailable("no redis primary known yet (no sentinel named one)".into())
        })
    }

    /// Changes each time the primary moves.
    pub fn moved(&self) -> tokio::sync::watch::Receiver<u64> {
        self.moved.subscribe()
    }

    /// A command lost the primary: refresh in the background, unless one is under way or
    /// one started within `reconnect_backoff_min` (a flood of failing publishes must not
    /// become a flood of Sentinel queries).
    pub fn refresh_soon(self: &Arc<Self>) {
        if !self.uses_sentinel() {
            return;
        }
        {
            let mut last = self
                .last_triggered
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < self.backoff.0) {
                return;
            }
            *last = Some(Instant::now());
        }
        let primary = self.clone();
        tokio::spawn(async move {
            let Ok(_one) = primary.refreshing.try_lock() else {
                return;
            };
            if let Err(e) = primary.resolve_and_follow().await {
                tracing::warn!(master = %primary.master_name, error = %e, "no primary found");
            }
        });
    }

    /// Ask the sentinels where the primary is and follow it; without Sentinel, nothing
    /// to do. An error says why no sentinel named a confirmed primary.
    pub async fn refresh(&self) -> Result<(), String> {
        if !self.uses_sentinel() {
            return Ok(());
        }
        let _one = self.refreshing.lock().await;
        self.resolve_and_follow().await
    }

    async fn resolve_and_follow(&self) -> Result<(), String> {
        let (mut answers, mut reasons) = self.ask_sentinels().await;
        // Only the newest configuration counts: a sentinel that missed the failover
        // still names the old primary under an older epoch, and falling back to it when
        // the new one does not answer at once would re-follow a demoted (or isolated)
        // primary.
        let newest = answers.iter().map(|a| a.epoch).max();
        answers.retain(|a| Some(a.epoch) == newest);
        let followed = self.current().map(|c| c.address);
        for answer in answers {
            let address = join_host_port(&answer.host, answer.port);
            if followed.as_deref() == Some(address.as_str()) {
                return Ok(()); // still there (ROLE was checked when it was followed)
            }
            let mut url = self.url.clone();
            if url.set_host(Some(&bracketed(&answer.host))).is_err()
                || url.set_port(Some(answer.port)).is_err()
            {
                reasons.push(format!("unusable address {address}"));
                continue;
            }
            match self.confirm_master(url.as_str()).await {
                Ok(()) => return self.follow(url.as_str(), address),
                Err(e) => reasons.push(format!("{address}: {e}")),
            }
        }
        self.metrics
            .backend_errors
            .with_label_values(&["sentinel"])
            .inc();
        if reasons.is_empty() {
            reasons.push("no sentinel answered".into());
        }
        Err(reasons.join("; "))
    }

    /// Every sentinel's view, asked all at once; the reasons of those that gave none.
    /// Once a majority has answered, the others get `STRAGGLER_GRACE` more: a sentinel
    /// that is unreachable by timeout must not hold every refresh for `connect_timeout`,
    /// yet one that answers a moment later may be the only one to know of the failover.
    async fn ask_sentinels(&self) -> (Vec<SentinelView>, Vec<String>) {
        let mut pending: futures_util::stream::FuturesUnordered<_> = self
            .sentinels
            .iter()
            .map(|(host, port)| async move {
                let answer = self.ask_sentinel(host, *port).await;
                (join_host_port(host, *port), answer)
            })
            .collect();
        let majority = self.sentinels.len() / 2 + 1;
        let mut answers = Vec::new();
        let mut reasons = Vec::new();
        let mut grace: Option<tokio::time::Instant> = None;
        loop {
            let next = match grace {
                None => pending.next().await,
                Some(until) => match tokio::time::timeout_at(until, pending.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        reasons.push(format!("{} sentinel(s) too slow", pending.len()));
                        break;
                    }
                },
            };
            let Some((address, answer)) = next else { break };
            match answer {
                Ok(view) => answers.push(view),
                Err(e) => reasons.push(format!("sentinel {address}: {e}")),
            }
            if grace.is_none() && answers.len() >= majority {
                grace = Some(tokio::time::Instant::now() + STRAGGLER_GRACE);
            }
        }
        (answers, reasons)
    }

    /// `SENTINEL MASTER <name>` on one sentinel: where it says the primary is, and the
    /// configuration epoch of that view.
    async fn ask_sentinel(&self, host: &str, port: u16) -> Result<SentinelView, String> {
        let url = format!("redis://{}/", join_host_port(host, port));
        let client = Client::open(url).map_err(|e| e.to_string())?;
        let mut conn = self.open(&client).await?;
        let mut ask = ::redis::cmd("SENTINEL");
        ask.arg("MASTER").arg(&self.master_name);
        let flat: Vec<String> =
            tokio::time::timeout(self.command_timeout, ask.query_async(&mut conn))
                .await
                .map_err(|_| "no answer in time".to_string())?
                .map_err(|e| e.to_string())?;
        SentinelView::parse(&flat).ok_or_else(|| format!("unexpected answer {flat:?}"))
    }

    /// The address answers `ROLE` with `master`.
    async fn confirm_master(&self, url: &str) -> Result<(), String> {
        let client = self.client(url)?;
        let mut conn = self.open(&client).await?;
        let role: Vec<Value> = tokio::time::timeout(
            self.command_timeout,
            ::redis::cmd("ROLE").query_async(&mut conn),
        )
        .await
        .map_err(|_| "ROLE: no answer in time".to_string())?
        .map_err(|e| format!("ROLE: {e}"))?;
        match role.first() {
            Some(Value::BulkString(role)) if role == b"master" => Ok(()),
            Some(Value::SimpleString(role)) if role == "master" => Ok(()),
            other => Err(format!("not a primary (ROLE {other:?})")),
        }
    }

    async fn open(&self, client: &Client) -> Result<::redis::aio::MultiplexedConnection, String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        tokio::time::timeout(
            self.connect_timeout + self.command_timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())
    }

    fn follow(&self, url: &str, address: String) -> Result<(), String> {
        let current = self.connect(url, address.clone())?;
        let before = self.lock().replace(current).map(|c| c.address);
        let m = &self.metrics;
        if let Some(before) = &before {
            m.backend_failovers.inc();
            let _ = m.backend_primary.remove_label_values(&[before]);
            tracing::warn!(master = %self.master_name, from = %before, to = %address,
                "following the new redis primary");
        } else {
            tracing::info!(master = %self.master_name, primary = %address,
                "redis primary found through sentinel");
        }
        m.backend_primary.with_label_values(&[&address]).set(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        m.backend_primary_changed.set(now);
        self.moved.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The client and (lazy) command connections for `url`.
    fn connect(&self, url: &str, address: String) -> Result<Current, String> {
        let client = self.client(url)?;
        let manager = || {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(self.response_timeout))
                .set_min_delay(self.backoff.0)
                .set_max_delay(self.backoff.1)
                .set_number_of_retries(2);
            ConnectionManager::new_lazy_with_config(client.clone(), config)
                .map_err(|e| format!("backend.redis.url: {e}"))
        };
        let commands = manager()?;
        let publishes = if self.separate_publishes {
            manager()?
        } else {
            commands.clone()
        };
        Ok(Current {
            address,
            client,
            commands,
            publishes,
        })
    }

    fn client(&self, url: &str) -> Result<Client, String> {
        match &self.tls_root {
            None => Client::open(url),
            Some(root) => Client::build_with_tls(
                url,
                ::redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root.clone()),
                },
            ),
        }
        .map_err(|e| format!("backend.redis.url: {e}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One sentinel's view of the primary.
#[derive(Debug, PartialEq)]
struct SentinelView {
    host: String,
    port: u16,
    epoch: u64,
}

impl SentinelView {
    /// From `SENTINEL MASTER`'s flat `field, value, ...` list.
    fn parse(flat: &[String]) -> Option<Self> {
        let field = |name: &str| {
            flat.chunks(2)
                .find(|pair| pair.first().is_some_and(|f| f == name))
                .and_then(|pair| pair.get(1))
        };
        Some(Self {
            host: field("ip")?.clone(),
            port: field("port")?.parse().ok()?,
            epoch: field("config-epoch")?.parse().ok()?,
        })
    }
}

/// `[v6]` for an IPv6 literal, the host as it is otherwise.
fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    format!("{}:{port}", bracketed(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_view_from_its_flat_answer() {
        let flat: Vec<String> = [
            "name",
            "herald",
            "ip",
            "127.0.0.1",
            "port",
            "6380",
            "flags",
            "master",
            "config-epoch",
            "3",
            "num-slaves",
            "2",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            SentinelView::parse(&flat),
            Some(SentinelView {
                host: "127.0.0.1".into(),
                port: 6380,
                epoch: 3
            })
        );
        assert_eq!(SentinelView::parse(&flat[..6]), None);
    }

    #[test]
    fn addresses_of_both_families() {
        assert_eq!(join_host_port("127.0.0.1", 6380), "127.0.0.1:6380");
        assert_eq!(join_host_port("::1", 6380), "[::1]:6380");
        assert_eq!(join_host_port("redis-a", 6380), "redis-a:6380");
    }
}
