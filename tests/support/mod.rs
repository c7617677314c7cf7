//! Helpers for tests that run real external servers (nginx, Redis, Prometheus) next to herald:
//! loopback ports, a child process stopped by its pid (and its forked workers) on drop,
//! an incremental reader for event streams, and herald configs built from TOML text.
#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

pub mod browser;
pub mod kit;
pub mod nginx;
pub mod redis;
pub mod sentinel;
use herald::config::Config;

/// The repository root (where Cargo.toml is).
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Panic with the fix when a tool the test needs is not installed. These tests never skip.
pub fn require_tool(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.is_file(),
        "{path} is missing: run scripts/install-test-deps.sh (it installs nginx-light, \
         prometheus with promtool, redis-server, redis-sentinel, chromium, curl and systemd)"
    );
    p
}

/// A loopback port that was free a moment ago. Callers retry on a bind failure, since
/// another process may take it between this call and their bind.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// herald's configuration: embedded defaults, then `toml` (any sections), both listeners
/// on 127.0.0.1:0. Built from text so a test names keys, not struct fields.
pub fn herald_config(toml: &str) -> Config {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("herald.toml");
    fs::write(&file, toml).expect("write herald.toml");
    let mut c = Config::load_with_env(Some(&file), Vec::new())
        .unwrap_or_else(|e| panic!("herald config {toml:?}: {e}"));
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    c
}

/// `(pid, start time)`: a process identity that survives pid reuse.
type ProcId = (u32, u64);

/// Fields of /proc/PID/stat after the command name: (state, ppid, start time).
fn proc_stat(pid: u32) -> Option<(char, u32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    // starttime is field 22 of the full line, index 19 after "pid (comm)".
    let start = fields.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

/// Living (non-zombie) processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| matches!(proc_stat(*p), Some((s, ppid, _)) if ppid == pid && s != 'Z'))
        .collect()
}

fn alive(id: ProcId) -> bool {
    matches!(proc_stat(id.0), Some((s, _, start)) if start == id.1 && s != 'Z')
}

pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// A server process started by a test; stopped by its pid on drop: `stop_signal`, a
/// bounded wait, then SIGKILL for it and for any worker it forked.
pub struct Daemon {
    pub name: &'static str,
    child: Child,
    stop_signal: &'static str,
    stopped: bool,
}

impl Daemon {
    pub fn spawn(name: &'static str, mut command: Command, stop_signal: &'static str) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name,
            child,
            stop_signal,
            stopped: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stop the process and its children; returns once none of them is left.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pid = self.pid();
        let workers: Vec<ProcId> = children_of(pid)
            .into_iter()
            .filter_map(|p| proc_stat(p).map(|(_, _, start)| (p, start)))
            .collect();
        if self.exited().is_none() {
            send_signal(pid, self.stop_signal);
            if !self.wait_exit(Duration::from_secs(5)) {
                eprintln!(
                    "{} (pid {pid}) ignored SIG{}; killing it",
                    self.name, self.stop_signal
                );
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // The master reaps its workers before it exits; these only matter if it was killed.
        let deadline = Instant::now() + Duration::from_secs(2);
        for worker in workers {
            while alive(worker) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if alive(worker) {
                send_signal(worker.0, "KILL");
            }
        }
    }

    fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.exited().is_some()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Poll an async check every 20 ms until it yields a value or `limit` passes.
pub async fn poll_until<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the next read of an event stream gave.
#[derive(Debug)]
pub enum Read {
    Data(Bytes),
    /// The body ended cleanly.
    End,
    /// The body ended with an error (e.g. a proxy cut it).
    Failed(String),
    TimedOut,
}

/// An event-stream response read incrementally; everything received is kept in `text`.
pub struct EventStream {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    /// Every byte received so far, as text.
    pub text: String,
    /// Where the next [`EventStream::read_until`] starts looking.
    cursor: usize,
    pub ended: bool,
}

impl EventStream {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: Box::pin(response.bytes_stream()),
            text: String::new(),
            cursor: 0,
            ended: false,
        }
    }

    /// The next chunk, waiting at most `limit`.
    pub async fn next(&mut self, limit: Duration) -> Read {
        if self.ended {
            return Read::End;
        }
        match tokio::time::timeout(limit, self.body.next()).await {
            Err(_) => Read::TimedOut,
            Ok(None) => {
                self.ended = true;
                Read::End
            }
            Ok(Some(Err(e))) => {
                self.ended = true;
                Read::Failed(e.to_string())
            }
            Ok(Some(Ok(bytes))) => {
                self.text.push_str(&String::from_utf8_lossy(&bytes));
                Read::Data(bytes)
            }
        }
    }

    /// Read until `needle` appears after the previous match; `Err` says what was received
    /// instead when the stream ends or `limit` passes.
    pub async fn read_until(&mut self, needle: &str, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(at) = self.text[self.cursor..].find(needle) {
                self.cursor += at + needle.len();
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Read::Data(_) => {}
                other => {
                    return Err(format!(
                        "no {needle:?} within {limit:?} ({other:?}); received {:?}",
                        self.text
                    ))
                }
            }
        }
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it, written to
/// `dir` as `ca.pem`, `server.pem` and `server.key`; their paths. Distinct subjects
/// (`herald test CA`, `herald test <server>`): with one name on both, OpenSSL (redis-cli)
/// takes the server certificate for a self-signed one and refuses it.
pub fn write_certificates(dir: &Path, server: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "herald test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("herald test {server}"));
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}
