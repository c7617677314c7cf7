//! A replicated Redis watched by Sentinel, for a test: one primary and two replicas
//! (`redis-server --replicaof`) and three `redis-sentinel` (quorum 2), each process on its
//! own loopback port with its own temp dir, stopped by its pid on drop. Failure detection
//! is quick (`down-after-milliseconds` 1000) so a failover takes seconds, not a minute;
//! not quicker, or a busy machine's pause reads as a death and Sentinel switches again.
#![allow(dead_code)]

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{RedisOptions, RedisServer};
use super::{free_port, require_tool, Daemon};

/// The name the sentinels monitor the primary under.
pub const MASTER_NAME: &str = "herald";
/// Longest wait for the set to form (replicas in sync, sentinels aware of each other).
const FORM: Duration = Duration::from_secs(20);

pub struct Sentinel {
    pub port: u16,
    dir: tempfile::TempDir,
    daemon: Daemon,
}

impl Sentinel {
    /// A sentinel monitoring the primary on `primary_port`; retried on another port if
    /// its port was taken meanwhile.
    fn start(primary_port: u16) -> Self {
        let binary = require_tool("/usr/bin/redis-sentinel");
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            // Sentinel rewrites its file (what it learns: replicas, peers, epochs): its own.
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
                     dir {dir}\nlogfile \"{dir}/sentinel.log\"\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n\
                     sentinel parallel-syncs {MASTER_NAME} 2\n",
                    dir = dir.path().display()
                ),
            )
            .expect("write sentinel.conf");
            let mut command = Command::new(&binary);
            command
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut daemon = Daemon::spawn("redis-sentinel", command, "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut up = false;
            while Instant::now() < deadline && daemon.exited().is_none() {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if up {
                return Self { port, dir, daemon };
            }
        }
        panic!("redis-sentinel did not start on a loopback port");
    }

    /// What this sentinel logged (its view of the failover).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis-cli` against this sentinel; its stdout, if it succeeded.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("/usr/bin/redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The port this sentinel names as the primary's.
    pub fn primary_port(&self) -> Option<u16> {
        let out = self.cli(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME])?;
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// How many `kind` (`replicas`, `sentinels`) this sentinel knows, healthy ones only.
    fn known(&self, kind: &str) -> usize {
        let Some(out) = self.cli(&["SENTINEL", kind, MASTER_NAME]) else {
            return 0;
        };
        // One `flags` field per entry: `slave` or `sentinel`, with `s_down` when down.
        let lines: Vec<&str> = out.lines().collect();
        lines
            .windows(2)
            .filter(|w| w[0] == "flags" && !w[1].contains("down") && !w[1].contains("disconnected"))
            .count()
    }
}

/// One primary, two replicas, three sentinels.
pub struct SentinelSet {
    /// `redis[0]` starts as the primary.
    pub redis: Vec<RedisServer>,
    pub sentinels: Vec<Sentinel>,
}

impl SentinelSet {
    /// Start everything and wait until the set can fail over: both replicas in sync, and
    /// every sentinel knowing both replicas and both other sentinels.
    pub fn start() -> Self {
        let primary = RedisServer::start(RedisOptions::default());
        let replica = || {
            RedisServer::start(RedisOptions {
                replica_of: Some(primary.port),
                ..RedisOptions::default()
            })
        };
        let replicas = [replica(), replica()];
        let mut redis = vec![primary];
        redis.extend(replicas);
        let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(redis[0].port)).collect();
        let set = Self { redis, sentinels };
        let deadline = Instant::now() + FORM;
        loop {
            let synced = set.redis[1..].iter().all(|r| {
                r.cli(&["INFO", "replication"])
                    .is_some_and(|i| i.contains("master_link_status:up"))
            });
            let aware = set
                .sentinels
                .iter()
                .all(|s| s.known("replicas") == 2 && s.known("sentinels") == 2);
            if synced && aware {
                return set;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel set did not form within {FORM:?} (replicas in sync: {synced})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many times the primary was switched: the most `+switch-master` any sentinel
    /// logged (each logs the switches it learnt of).
    pub fn switches(&self) -> usize {
        self.sentinels
            .iter()
            .map(|s| s.log().matches("+switch-master").count())
            .max()
            .unwrap_or(0)
    }

    /// `backend.redis.sentinels` for herald.
    pub fn addresses_toml(&self) -> String {
        let quoted: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("\"{}\"", s.address()))
            .collect();
        format!("[{}]", quoted.join(", "))
    }

    /// The index in `redis` of the server every sentinel names as primary, once they agree
    /// on one that is not `not` and it says it is a primary.
    pub fn agreed_primary(&self, not: Option<usize>) -> Option<usize> {
        let port = self.sentinels[0].primary_port()?;
        if !self
            .sentinels
            .iter()
            .all(|s| s.primary_port() == Some(port))
        {
            return None;
        }
        let at = self.redis.iter().position(|r| r.port == port)?;
        let role = self.redis[at].cli(&["ROLE"])?;
        (Some(at) != not && role.starts_with("master")).then_some(at)
    }
}
