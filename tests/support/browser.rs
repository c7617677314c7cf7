//! A real headless Chromium for tests: `tests/browser/driver.mjs` (playwright-core over
//! Debian's /usr/bin/chromium) runs as a child, and [`Browser`] sends it one command at a
//! time (open a tab, evaluate or wait for an expression, take a screenshot) and reads its
//! answer. Every tab shares one fresh profile in a temp dir, like a user's tabs of one
//! browser. Dropping the browser ends the script and every Chromium process of its profile.
//!
//! Needs /usr/bin/chromium, node and tests/browser/node_modules (`make test` installs
//! them): missing pieces fail the test with that advice; it never skips.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{repo_path, send_signal};

const CHROMIUM: &str = "/usr/bin/chromium";
const INSTALL_ADVICE: &str = "run scripts/install-test-deps.sh (as root), then `npm ci` in \
     tests/browser (`make test` does both)";
/// A command's answer beyond its own wait: browser start, page loads, screenshots.
const ANSWER_SLACK: Duration = Duration::from_secs(30);

/// A tab, by its number in the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tab(u64);

pub struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    answers: mpsc::Receiver<String>,
    /// The profile's parent: every Chromium process of this browser names it.
    scratch: tempfile::TempDir,
}

impl Browser {
    /// Start the driver and its Chromium; returns once the browser is up.
    pub async fn launch() -> Self {
        preflight();
        let scratch = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new("node")
            .arg(repo_path("tests/browser/driver.mjs"))
            .env("HERALD_BROWSER_PROFILE", scratch.path().join("profile"))
            .env("XDG_CONFIG_HOME", scratch.path().join("xdg-config"))
            .env("XDG_CACHE_HOME", scratch.path().join("xdg-cache"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node: {e}; {INSTALL_ADVICE}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, answers) = mpsc::channel(16);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        let mut browser = Self {
            stdin: child.stdin.take(),
            child,
            answers,
            scratch,
        };
        let ready = browser.answer("start", ANSWER_SLACK).await;
        assert_eq!(ready, json!("ready"), "the driver's first line");
        browser
    }

    /// A new tab showing `url` (loaded: its module scripts have run).
    pub async fn open(&mut self, url: &str) -> Tab {
        let value = self
            .call(json!({ "op": "open", "url": url }), ANSWER_SLACK)
            .await;
        Tab(value.as_u64().expect("a tab number"))
    }

    /// The JSON value of the JavaScript expression `expr` in `tab`. Fails the test if the
    /// page has had a script error.
    pub async fn eval(&mut self, tab: Tab, expr: &str) -> Value {
        let command = json!({ "op": "eval", "page": tab.0, "expr": expr });
        self.call(command, ANSWER_SLACK).await
    }

    /// The first truthy value of `expr` in `tab`, polled every 50 ms; fails the test with
    /// `what` if none comes within `limit`.
    pub async fn wait(&mut self, tab: Tab, expr: &str, limit: Duration, what: &str) -> Value {
        let ms = limit.as_millis() as u64;
        let command = json!({ "op": "wait", "page": tab.0, "expr": expr, "ms": ms });
        match self.try_call(command, limit + ANSWER_SLACK).await {
            Ok(value) => value,
            Err(e) => panic!("tab {}: {what}: not within {limit:?} ({e})", tab.0),
        }
    }

    /// Type `value` into the field `selector` of `tab`, as a user would.
    pub async fn fill(&mut self, tab: Tab, selector: &str, value: &str) {
        let command = json!({ "op": "fill", "page": tab.0, "selector": selector, "value": value });
        self.call(command, ANSWER_SLACK).await;
    }

    /// Click the element `selector` of `tab`.
    pub async fn click(&mut self, tab: Tab, selector: &str) {
        let command = json!({ "op": "click", "page": tab.0, "selector": selector });
        self.call(command, ANSWER_SLACK).await;
    }

    /// A full-page PNG of `tab` at `path`.
    pub async fn screenshot(&mut self, tab: Tab, path: &Path) {
        let command = json!({ "op": "screenshot", "page": tab.0, "path": path });
        self.call(command, ANSWER_SLACK).await;
        assert!(path.is_file(), "no screenshot at {}", path.display());
    }

    /// Close `tab`, as a user closing it (its Web Locks are released).
    pub async fn close(&mut self, tab: Tab) {
        self.call(json!({ "op": "close", "page": tab.0 }), ANSWER_SLACK)
            .await;
    }

    async fn call(&mut self, command: Value, limit: Duration) -> Value {
        let op = command["op"].clone();
        self.try_call(command, limit)
            .await
            .unwrap_or_else(|e| panic!("browser {op}: {e}"))
    }

    async fn try_call(&mut self, command: Value, limit: Duration) -> Result<Value, String> {
        let stdin = self.stdin.as_mut().expect("the driver's stdin");
        writeln!(stdin, "{command}").expect("write to the driver");
        stdin.flush().expect("flush to the driver");
        let answer: Value = serde_json::from_str(&self.line(limit).await)
            .unwrap_or_else(|e| panic!("the driver answered something else: {e}"));
        if answer["ok"] == json!(true) {
            Ok(answer["value"].clone())
        } else {
            Err(answer["error"]
                .as_str()
                .unwrap_or("no error text")
                .to_string())
        }
    }

    async fn answer(&mut self, what: &str, limit: Duration) -> Value {
        let line = self.line(limit).await;
        let answer: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the driver's {what}: {e}: {line}"));
        answer["value"].clone()
    }

    async fn line(&mut self, limit: Duration) -> String {
        match tokio::time::timeout(limit, self.answers.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "the browser driver exited ({:?}); its log is above",
                self.child.try_wait()
            ),
            Err(_) => panic!("the browser driver gave no answer within {limit:?}"),
        }
    }

    /// Wait up to `limit` for the driver to exit.
    fn wait_exit(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Close the browser the way a test ends; returns the Chromium processes of this
    /// browser that outlived the driver (none, unless it failed to close them), after
    /// killing them.
    pub fn quit(mut self) -> Vec<u32> {
        self.stop()
    }

    fn stop(&mut self) -> Vec<u32> {
        // End of stdin: the driver closes the browser and exits.
        self.stdin.take();
        if !self.wait_exit(Duration::from_secs(5)) {
            send_signal(self.child.id(), "TERM");
            if !self.wait_exit(Duration::from_secs(5)) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // Whatever the driver left behind (it was killed, or its close timed out).
        let outlived = processes_naming(self.scratch.path());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = processes_naming(self.scratch.path());
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                send_signal(pid, "KILL");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        outlived
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Fail (never skip) with the install advice when the browser cannot run here.
fn preflight() {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: {INSTALL_ADVICE}"
    );
    assert!(
        repo_path("tests/browser/node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: {INSTALL_ADVICE}"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: {INSTALL_ADVICE}"
    );
}

/// Processes whose command line names `dir` (a browser's Chromium and its helpers: the
/// profile and the crash handler's database live there).
fn processes_naming(dir: &Path) -> Vec<u32> {
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

/// Where a test keeps the screenshot named `name`: `HERALD_SCREENSHOTS` (a directory) when
/// set, so a person can look at them, else `scratch`.
pub fn screenshot_path(scratch: &Path, name: &str) -> PathBuf {
    let dir = std::env::var_os("HERALD_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| scratch.to_path_buf());
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir.join(format!("{name}.png"))
}
