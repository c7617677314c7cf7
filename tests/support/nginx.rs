//! A real nginx for a test, configured from nginx/herald.conf with its production upstream,
//! listen port and /events read timeout replaced: one herald or several in the upstream,
//! a free loopback port, everything it writes in a temp dir, stopped by its pid on drop.
#![allow(dead_code)]

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, repo_path, require_tool, Daemon};

pub const NGINX: &str = "/usr/sbin/nginx";

/// The start of the upstream `server` line of nginx/herald.conf; its parameters follow.
const UPSTREAM_SERVER: &str = "    server 127.0.0.1:8080";

/// herald.conf with its production addresses and timeout replaced for a test: the
/// upstream `server` line once per node of `upstreams`, in that order, each with the
/// parameters the shipped line has. Every replaced line must be present exactly once, so
/// drift in the file fails here loudly.
pub fn site_config(upstreams: &[SocketAddr], port: u16, read_timeout: &str) -> String {
    assert!(
        !upstreams.is_empty(),
        "an upstream needs at least one server"
    );
    let mut conf = fs::read_to_string(repo_path("nginx/herald.conf")).expect("nginx/herald.conf");
    let shipped: Vec<&str> = conf
        .lines()
        .filter(|l| {
            l.starts_with(&format!("{UPSTREAM_SERVER} "))
                || l.starts_with(&format!("{UPSTREAM_SERVER};"))
        })
        .collect();
    assert_eq!(
        shipped.len(),
        1,
        "nginx/herald.conf must have one line starting {UPSTREAM_SERVER:?} (the test substitutes it)"
    );
    let shipped = format!("{}\n", shipped[0]);
    let parameters = &shipped[UPSTREAM_SERVER.len()..];
    let servers: String = upstreams
        .iter()
        .map(|addr| format!("    server {addr}{parameters}"))
        .collect();
    for (from, to) in [
        (shipped.as_str(), servers),
        (
            "    listen 80;\n",
            format!("    listen 127.0.0.1:{port};\n"),
        ),
        (
            "proxy_read_timeout 300s;",
            format!("proxy_read_timeout {read_timeout};"),
        ),
    ] {
        assert_eq!(
            conf.matches(from).count(),
            1,
            "nginx/herald.conf must contain {from:?} exactly once (the test substitutes it)"
        );
        conf = conf.replacen(from, &to, 1);
    }
    conf
}

/// The main nginx.conf around the site: everything nginx writes stays in `dir`.
fn main_config(dir: &Path) -> String {
    let d = dir.display();
    // As root, nginx would switch its workers to `nobody`, who cannot use the temp dir.
    let uid = output_of("id", &["-u"]);
    let user = if uid == "0" {
        format!(
            "user {} {};\n",
            output_of("id", &["-un"]),
            output_of("id", &["-gn"])
        )
    } else {
        String::new()
    };
    // worker_connections: a proxied stream holds two (client and upstream); room for a
    // few hundred streams, the publishers and the upstream keepalive cache.
    format!(
        "{user}worker_processes 1;\n\
         worker_shutdown_timeout 1s;\n\
         error_log {d}/error.log info;\n\
         lock_file {d}/nginx.lock;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20   access_log {d}/access.log;\n\
         \x20   client_body_temp_path {d}/client_body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   include {d}/herald.conf;\n\
         }}\n"
    )
}

fn output_of(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// nginx (master and one worker) on a free loopback port, stopped by pid on drop.
pub struct Nginx {
    daemon: Daemon,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx in front of one herald.
    pub fn start(upstream: SocketAddr, read_timeout: &str) -> Self {
        Self::start_with(upstream, read_timeout, |site| site)
    }

    /// As [`Nginx::start`], with the generated site passed through `edit` first.
    pub fn start_with(
        upstream: SocketAddr,
        read_timeout: &str,
        edit: impl Fn(String) -> String,
    ) -> Self {
        Self::start_with_upstreams(&[upstream], read_timeout, edit)
    }

    /// nginx with every node of `upstreams` in herald.conf's upstream (one `server` line
    /// each, nginx's default round robin), the generated site passed through `edit` first.
    pub fn start_with_upstreams(
        upstreams: &[SocketAddr],
        read_timeout: &str,
        edit: impl Fn(String) -> String,
    ) -> Self {
        require_tool(NGINX);
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("nginx.conf"), main_config(dir.path())).unwrap();
        let pid_file = dir.path().join("nginx.pid");
        let globals = |daemon: bool| {
            let d = if daemon { "daemon off; " } else { "" };
            format!("{d}pid {};", pid_file.display())
        };
        for attempt in 1..=5 {
            let port = free_port();
            let site = edit(site_config(upstreams, port, read_timeout));
            fs::write(dir.path().join("herald.conf"), &site).unwrap();
            let check = Command::new(NGINX)
                .arg("-t")
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .arg("-g")
                .arg(globals(false))
                .output()
                .expect("run nginx -t");
            assert!(
                check.status.success(),
                "nginx -t rejects the config:\n{}\n--- herald.conf ---\n{site}",
                String::from_utf8_lossy(&check.stderr)
            );
            let stderr = fs::File::create(dir.path().join("stderr.log")).unwrap();
            let mut command = Command::new(NGINX);
            command
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .arg("-g")
                .arg(globals(true))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr);
            // SIGTERM: fast shutdown; workers close open streams instead of waiting for them.
            let mut daemon = Daemon::spawn("nginx", command, "TERM");
            // The pid file is written after every listening socket is bound.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let pid = fs::read_to_string(&pid_file).unwrap_or_default();
                if pid.trim() == daemon.pid().to_string() {
                    return Self { daemon, port, dir };
                }
                if let Some(status) = daemon.exited() {
                    let logs = logs(dir.path());
                    if logs.contains("Address already in use") && attempt < 5 {
                        break;
                    }
                    panic!("nginx exited ({status}) at start:\n{logs}");
                }
                assert!(
                    Instant::now() < deadline,
                    "nginx did not start within 10 s:\n{}",
                    logs(dir.path())
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            daemon.stop();
        }
        unreachable!("every attempt returns or panics")
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path_and_query)
    }

    /// nginx's stderr and error log so far, for failure messages.
    pub fn logs(&self) -> String {
        logs(self.dir.path())
    }

    /// The access log so far: one line per request, with its status.
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.daemon.stop();
    }
}

fn logs(dir: &Path) -> String {
    ["stderr.log", "error.log"]
        .iter()
        .map(|f| {
            let text = fs::read_to_string(dir.join(f)).unwrap_or_default();
            format!("--- {f} ---\n{text}")
        })
        .collect()
}
