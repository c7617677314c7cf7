//! The demo page in a real browser: herald runs in process on a loopback port, and
//! `tests/browser/demo.test.mjs` drives Debian's headless Chromium (through playwright-core)
//! against it. The page must connect, publish through its form and show the event with its
//! ID and type, then show an event the test publishes over HTTP.
//!
//! Needs /usr/bin/chromium, node and tests/browser/node_modules: `make test` installs them
//! (scripts/install-test-deps.sh, then `npm ci` in tests/browser). Missing pieces fail the
//! test with that advice; it never skips.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::sync::mpsc;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run; the script has its own, shorter, deadlines for every step.
const RUN_DEADLINE: Duration = Duration::from_secs(120);
const INSTALL_ADVICE: &str = "run scripts/install-test-deps.sh (as root), then `npm ci` in \
     tests/browser (`make test` does both)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_shows_published_events_in_chromium() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    preflight(&browser_dir);

    let server = TestServer::start(test_config()).await;
    let scratch = tempfile::tempdir().expect("temp dir");
    let profile = scratch.path().join("profile");
    let screenshot = std::env::var_os("HERALD_DEMO_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| scratch.path().join("demo.png"));
    let mut child = Command::new("node")
        .arg(browser_dir.join("demo.test.mjs"))
        .arg(server.url("/"))
        .env("HERALD_BROWSER_PROFILE", &profile)
        .env("HERALD_DEMO_SCREENSHOT", &screenshot)
        .env("XDG_CONFIG_HOME", scratch.path().join("xdg-config"))
        .env("XDG_CACHE_HOME", scratch.path().join("xdg-cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node: {e}; {INSTALL_ADVICE}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let stdin = child.stdin.take().expect("piped stdin");
    let mut browser = BrowserRun {
        child,
        stdin: Some(stdin),
        scratch: scratch.path().to_path_buf(),
    };

    // The script's stdout, line by line, into the async test.
    let (tx, mut steps) = mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });

    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut server_event_id = None;
    loop {
        let left = RUN_DEADLINE.saturating_sub(started.elapsed());
        let line = match tokio::time::timeout(left, steps.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => break, // the script exited
            Err(_) => panic!("browser run exceeded {RUN_DEADLINE:?}; steps so far: {seen:?}"),
        };
        let step: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("unexpected line from the script ({e}): {line}"));
        let name = step["step"].as_str().unwrap_or_default().to_string();
        eprintln!("browser step: {line}");
        if name == "await-server-event" {
            let event = json!({
                "channel": "demo",
                "event": "server-note",
                "data": "{\"from\":\"the rust side\"}",
            });
            let answer: Value = http
                .post(server.admin_url("/publish"))
                .json(&event)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .expect("publish request")
                .error_for_status()
                .expect("publish accepted")
                .json()
                .await
                .expect("publish answer");
            let id = answer["id"].as_str().expect("answer has an id").to_string();
            browser.send(&json!({ "id": id, "event": event["event"], "data": event["data"] }));
            server_event_id = Some(id);
        }
        seen.push(name);
    }

    let status = browser.wait(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "the browser script failed ({status:?}); steps seen: {seen:?} (its log is above)"
    );
    let expected = [
        "connected",
        "form-event-shown",
        "await-server-event",
        "server-event-shown",
        "done",
    ];
    assert_eq!(seen, expected, "browser steps");
    assert!(server_event_id.is_some());
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );
    eprintln!("screenshot: {}", screenshot.display());

    drop(browser);
    assert!(
        browser_processes(scratch.path()).is_empty(),
        "chromium outlived the test"
    );
    server.stop().await;
}

/// Fail (never skip) with the install advice when the browser test cannot run here.
fn preflight(browser_dir: &Path) {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: {INSTALL_ADVICE}"
    );
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: {INSTALL_ADVICE}"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: {INSTALL_ADVICE}"
    );
}

/// The node script and the Chromium it started: both are gone when this is dropped.
struct BrowserRun {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The run's temp dir: every Chromium process of this run names it on its command line
    /// (`--user-data-dir` and the crash handler's database live there).
    scratch: PathBuf,
}

impl BrowserRun {
    fn send(&mut self, message: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{message}").expect("write to the script");
        stdin.flush().expect("flush to the script");
    }

    /// Wait for the script to exit, up to `deadline`.
    fn wait(&mut self, deadline: Duration) -> Option<ExitStatus> {
        self.stdin.take();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for node") {
                return Some(status);
            }
            if start.elapsed() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BrowserRun {
    fn drop(&mut self) {
        self.stdin.take();
        if self.child.try_wait().ok().flatten().is_none() {
            // SIGTERM first: the script closes its browser on it.
            signal(self.child.id(), "TERM");
            if self.wait(Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // Whatever the script left behind (it was killed, or its close timed out).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = browser_processes(&self.scratch);
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                signal(pid, "KILL");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Processes whose command line names `dir` (this run's Chromium and its helpers).
fn browser_processes(dir: &Path) -> Vec<u32> {
    let needle = format!("{}/", dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}
