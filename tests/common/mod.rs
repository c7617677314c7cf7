//! Shared test harness: a real herald on loopback port 0, in process or as the binary.
#![allow(dead_code)]

pub mod client;
pub mod sse_parser;
pub mod traffic;

#[allow(unused_imports)]
pub use client::*;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::config::Config;
use herald::server::{self, Listeners, RunOptions};
use herald::settings::Settings;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A configuration for tests: embedded defaults, both listeners on 127.0.0.1:0.
pub fn test_config() -> Config {
    let mut c = Config::load_with_env(None, Vec::new()).expect("defaults load");
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    // The demo console and apps, as with `herald --demo` (off by default).
    c.server.demo_page = true;
    c
}

/// herald running inside the test process; shut down on [`TestServer::stop`] or drop.
pub struct TestServer {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        Self::start_with_options(
            config,
            RunOptions {
                demo: true,
                ..RunOptions::default()
            },
        )
        .await
    }

    pub async fn start_with_options(config: Config, options: RunOptions) -> Self {
        let listeners = Listeners::bind(&config).await.expect("bind loopback");
        let public = listeners.public.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let settings = Settings::build(config, options.demo).expect("settings build");
        let task = tokio::spawn(server::run(settings, options, listeners, async {
            let _ = rx.await;
        }));
        // `run` flips readiness just after it starts serving; wait for it so that tests
        // never race a /readyz that is still (correctly) saying "not yet".
        tokio::task::spawn_blocking(move || wait_ready(admin))
            .await
            .expect("readiness wait");
        Self {
            public,
            admin,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.public, path_and_query)
    }

    pub fn admin_url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.admin, path_and_query)
    }

    /// Signal shutdown and wait until `run` returns.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A config file: `extra_toml` after loopback port-0 listeners and JSON logs, unless it
/// has `[server]` or `[telemetry]` sections of its own.
fn config_text(extra_toml: &str) -> String {
    let mut text = String::new();
    if !extra_toml.contains("[server]") {
        text.push_str("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n");
    }
    if !extra_toml.contains("[telemetry]") {
        text.push_str("[telemetry]\nlog_format = \"json\"\nlog_level = \"info\"\n");
    }
    text.push_str(extra_toml);
    text
}

/// The `herald` binary as a child process, stopped (SIGKILL as a last resort) on drop.
pub struct HeraldProcess {
    pub child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub stderr_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Set by the stderr reader at the end of the pipe: every line is in `stderr_lines`.
    stderr_closed: Arc<AtomicBool>,
}

impl HeraldProcess {
    /// Start `herald --config FILE` where FILE holds `extra_toml` plus loopback port-0
    /// listeners and JSON logs; waits for the "herald listening" line (10 s deadline).
    pub fn spawn(extra_toml: &str, args: &[&str]) -> Self {
        Self::spawn_with_env(extra_toml, args, &[])
    }

    /// [`HeraldProcess::spawn`] with extra environment variables (`HERALD_*` overrides).
    pub fn spawn_with_env(extra_toml: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::try_spawn_with_env(extra_toml, args, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`HeraldProcess::spawn`], but a process that ends (or stays silent) before it
    /// listens is an `Err` with what it wrote, for a caller that retries: a restart on a
    /// fixed port may find the port taken by another socket for a moment.
    pub fn try_spawn(extra_toml: &str, args: &[&str]) -> Result<Self, String> {
        Self::try_spawn_with_env(extra_toml, args, &[])
    }

    /// A fresh process whose `extra_toml` names the public address a previous process had
    /// (`public`), so a proxy's upstream stays as it is. The port was free when that
    /// process exited, but another socket (a client's source port) may hold it for a
    /// moment: a bind failure is retried for up to two seconds, nothing else.
    pub async fn respawn_on(
        extra_toml: String,
        args: &'static [&'static str],
        public: SocketAddr,
    ) -> Self {
        let spawn = move || {
            for _ in 0..40 {
                match Self::try_spawn(&extra_toml, args) {
                    Ok(node) => return node,
                    Err(e) if e.contains("cannot bind server.listen") => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => panic!("restart on {public}: {e}"),
                }
            }
            panic!("{public} stayed taken for two seconds");
        };
        tokio::task::spawn_blocking(spawn).await.expect("restart")
    }

    fn try_spawn_with_env(
        extra_toml: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.toml");
        std::fs::write(&file, config_text(extra_toml)).unwrap();
        let mut child = Command::new(herald_bin())
            .arg("--config")
            .arg(&file)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herald");
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr_closed = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let (lines, closed) = (lines.clone(), stderr_closed.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("herald listening") {
                        let _ = tx.send(line.clone());
                    }
                    lines.lock().unwrap().push(line);
                }
                closed.store(true, Ordering::SeqCst);
            });
        }
        let line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("herald did not start: {:?}", lines.lock().unwrap()));
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        let addr = |k: &str| v["fields"][k].as_str().unwrap().parse().unwrap();
        let process = Self {
            public: addr("public"),
            admin: addr("admin"),
            child,
            dir,
            stderr_lines: lines,
            stderr_closed,
        };
        // Built first, so a panic here still kills the child on drop.
        wait_ready(process.admin);
        Ok(process)
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.public, path_and_query)
    }

    pub fn admin_url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.admin, path_and_query)
    }

    /// Replace the config file with `extra_toml` (and the same listeners and logging as
    /// at the start), for a reload.
    pub fn rewrite_config(&self, extra_toml: &str) {
        let file = self.dir.path().join("herald.toml");
        std::fs::write(file, config_text(extra_toml)).unwrap();
    }

    /// Send SIGHUP (reload).
    pub fn hangup(&self) {
        let _ = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Wait for exit up to `deadline`; returns the exit status if it exited.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// [`HeraldProcess::wait_exit`] without blocking the async runtime.
    pub async fn wait_exit_async(
        &mut self,
        deadline: Duration,
    ) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if start.elapsed() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait up to `deadline` until stderr has been read to its end (the process exited and
    /// the reader thread took its last line); true if it was. Only then is
    /// [`HeraldProcess::stderr_text`] everything the process wrote.
    pub async fn wait_stderr_closed(&self, deadline: Duration) -> bool {
        let closed = self.stderr_closed.clone();
        wait_until(deadline, move || closed.load(Ordering::SeqCst)).await
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr_lines.lock().unwrap().join("\n")
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Wait (10 s deadline) until the admin listener's `/readyz` answers 200.
pub fn wait_ready(admin: SocketAddr) {
    use std::io::{Read, Write};
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(mut s) = std::net::TcpStream::connect(admin) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("herald at {admin} never became ready");
}

pub fn herald_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_herald"))
}

/// Poll `check` until it returns true or `deadline` passes.
pub async fn wait_until(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

/// Poll an async `check` until it returns true or `deadline` passes.
pub async fn wait_for<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check().await
}

/// [`test_config`] with a short drain: streams still open at `stop()` are ended within
/// 0.7 × `shutdown.drain_timeout` (at random moments), so tests stop quickly.
pub fn quick_config() -> Config {
    let mut c = test_config();
    c.shutdown.drain_timeout = Duration::from_millis(500);
    c
}
