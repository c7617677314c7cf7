//! A real nginx for a test, configured from the shipped kit in nginx/ (herald-main.conf,
//! herald-upstream.conf, herald.conf, optionally herald-tls.conf, and the snippets) with
//! only its production addresses, timeouts and certificate paths replaced: one herald or
//! several in the upstream, free loopback ports, everything it writes in a temp dir,
//! stopped by its pid on drop.
#![allow(dead_code)]

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{children_of, free_port, repo_path, require_tool, write_certificates, Daemon};

pub const NGINX: &str = "/usr/sbin/nginx";

/// The start of the upstream `server` line of nginx/herald-upstream.conf; its parameters
/// follow.
const UPSTREAM_SERVER: &str = "    server 127.0.0.1:8080";

/// The shipped files, by their path under nginx/, which is also where nginx finds them
/// in the test's prefix (herald.conf includes `snippets/...` relative to it, as
/// /etc/nginx does).
pub const MAIN: &str = "herald-main.conf";
pub const UPSTREAM: &str = "herald-upstream.conf";
pub const SITE: &str = "herald.conf";
pub const TLS_SITE: &str = "herald-tls.conf";
pub const LOCATIONS: &str = "snippets/herald-locations.conf";
pub const PROXY: &str = "snippets/herald-proxy.conf";

/// The access log format of every test nginx: who served a request (worker pid), on
/// which client connection, the protocol and the status.
pub const ACCESS_LOG_FORMAT: &str =
    "$pid $connection $connection_requests $server_protocol $status \"$request\"";

/// How a test's nginx is rendered from the kit.
#[derive(Clone, Debug)]
pub struct NginxOptions {
    /// One upstream `server` line per node, in this order.
    pub upstreams: Vec<SocketAddr>,
    /// `proxy_read_timeout` of `/events` (shipped: 300s).
    pub read_timeout: String,
    /// `worker_shutdown_timeout` (shipped: 30s); short so a stop never waits for streams.
    pub worker_shutdown_timeout: String,
    /// Also serve herald-tls.conf, with a certificate made for the test.
    pub tls: bool,
}

impl NginxOptions {
    pub fn new(upstreams: &[SocketAddr], read_timeout: &str) -> Self {
        assert!(
            !upstreams.is_empty(),
            "an upstream needs at least one server"
        );
        Self {
            upstreams: upstreams.to_vec(),
            read_timeout: read_timeout.to_string(),
            worker_shutdown_timeout: "1s".to_string(),
            tls: false,
        }
    }
}

/// `text` with `from` replaced by `to`, where `from` must occur exactly once in `file`:
/// drift in a shipped file fails here loudly instead of testing something else.
pub fn replace_once(file: &str, text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "nginx/{file} must contain {from:?} exactly once (the test substitutes it)"
    );
    text.replacen(from, to, 1)
}

fn shipped(file: &str) -> String {
    fs::read_to_string(repo_path(&format!("nginx/{file}")))
        .unwrap_or_else(|e| panic!("nginx/{file}: {e}"))
}

/// The upstream `server` line once per node, each with the shipped line's parameters.
fn upstream_config(upstreams: &[SocketAddr]) -> String {
    let conf = shipped(UPSTREAM);
    let lines: Vec<&str> = conf
        .lines()
        .filter(|l| {
            l.starts_with(&format!("{UPSTREAM_SERVER} "))
                || l.starts_with(&format!("{UPSTREAM_SERVER};"))
        })
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "nginx/{UPSTREAM} must have one line starting {UPSTREAM_SERVER:?} (the test substitutes it)"
    );
    let line = format!("{}\n", lines[0]);
    let parameters = &line[UPSTREAM_SERVER.len()..];
    let servers: String = upstreams
        .iter()
        .map(|addr| format!("    server {addr}{parameters}"))
        .collect();
    replace_once(UPSTREAM, &conf, &line, &servers)
}

/// Every file of the kit a test nginx loads, rendered: (path under the prefix, text).
/// `port` and `tls` (port, certificate, key) are where it listens.
pub fn render_kit(
    options: &NginxOptions,
    port: u16,
    tls: Option<(u16, &Path, &Path)>,
) -> Vec<(&'static str, String)> {
    let mut files = vec![
        (
            MAIN,
            replace_once(
                MAIN,
                &shipped(MAIN),
                "worker_shutdown_timeout 30s;",
                &format!(
                    "worker_shutdown_timeout {};",
                    options.worker_shutdown_timeout
                ),
            ),
        ),
        (UPSTREAM, upstream_config(&options.upstreams)),
        (
            SITE,
            replace_once(
                SITE,
                &shipped(SITE),
                "    listen 80;\n",
                &format!("    listen 127.0.0.1:{port};\n"),
            ),
        ),
        (
            LOCATIONS,
            replace_once(
                LOCATIONS,
                &shipped(LOCATIONS),
                "proxy_read_timeout 300s;",
                &format!("proxy_read_timeout {};", options.read_timeout),
            ),
        ),
        (PROXY, shipped(PROXY)),
    ];
    if let Some((tls_port, cert, key)) = tls {
        let mut conf = shipped(TLS_SITE);
        for (from, to) in [
            (
                "    listen 443 ssl http2;\n".to_string(),
                format!("    listen 127.0.0.1:{tls_port} ssl http2;\n"),
            ),
            (
                "/etc/ssl/herald/fullchain.pem;".to_string(),
                format!("{};", cert.display()),
            ),
            (
                "/etc/ssl/herald/privkey.pem;".to_string(),
                format!("{};", key.display()),
            ),
        ] {
            conf = replace_once(TLS_SITE, &conf, &from, &to);
        }
        files.push((TLS_SITE, conf));
    }
    files
}

/// The main nginx.conf around the kit: everything nginx writes stays in `dir`.
fn main_config(dir: &Path, tls: bool) -> String {
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
    let tls_site = if tls {
        format!("\x20   include {d}/{TLS_SITE};\n")
    } else {
        String::new()
    };
    // worker_connections: a proxied stream holds two (client and upstream); room for a
    // few hundred streams, the publishers and the upstream keepalive cache.
    format!(
        "{user}include {d}/{MAIN};\n\
         worker_processes 1;\n\
         error_log {d}/error.log info;\n\
         lock_file {d}/nginx.lock;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20   log_format kit '{ACCESS_LOG_FORMAT}';\n\
         \x20   access_log {d}/access.log kit;\n\
         \x20   client_body_temp_path {d}/client_body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   include {d}/{UPSTREAM};\n\
         \x20   include {d}/{SITE};\n\
         {tls_site}\
         }}\n"
    )
}

fn output_of(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// nginx (master and one worker) on free loopback ports, stopped by pid on drop.
pub struct Nginx {
    daemon: Daemon,
    pub port: u16,
    /// The herald-tls.conf server's port, when started with `tls`.
    pub tls_port: Option<u16>,
    /// The CA that signed the TLS server's certificate, for clients.
    pub ca_file: Option<PathBuf>,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx in front of one herald.
    pub fn start(upstream: SocketAddr, read_timeout: &str) -> Self {
        Self::start_with(upstream, read_timeout, |site| site)
    }

    /// As [`Nginx::start`], with every generated file passed through `edit` first.
    pub fn start_with(
        upstream: SocketAddr,
        read_timeout: &str,
        edit: impl Fn(String) -> String,
    ) -> Self {
        Self::start_with_upstreams(&[upstream], read_timeout, edit)
    }

    /// nginx with every node of `upstreams` in the kit's upstream (one `server` line
    /// each), every generated file passed through `edit` first.
    pub fn start_with_upstreams(
        upstreams: &[SocketAddr],
        read_timeout: &str,
        edit: impl Fn(String) -> String,
    ) -> Self {
        Self::start_kit(&NginxOptions::new(upstreams, read_timeout), |_, text| {
            edit(text)
        })
    }

    /// nginx rendered from the kit per `options`; `edit(file, text)` sees every rendered
    /// file (named as in nginx/) before it is written.
    pub fn start_kit(options: &NginxOptions, edit: impl Fn(&str, String) -> String) -> Self {
        require_tool(NGINX);
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("snippets")).unwrap();
        let certificates = options.tls.then(|| write_certificates(dir.path(), "nginx"));
        fs::write(
            dir.path().join("nginx.conf"),
            main_config(dir.path(), options.tls),
        )
        .unwrap();
        let pid_file = dir.path().join("nginx.pid");
        for attempt in 1..=5 {
            let port = free_port();
            let tls_port = options.tls.then(free_port);
            let tls = tls_port
                .zip(certificates.as_ref())
                .map(|(p, c)| (p, &*c.1, &*c.2));
            let mut rendered = String::new();
            for (file, text) in render_kit(options, port, tls) {
                let text = edit(file, text);
                fs::write(dir.path().join(file), &text).unwrap();
                rendered.push_str(&format!("--- {file} ---\n{text}"));
            }
            let check = nginx_command(dir.path(), false)
                .arg("-t")
                .output()
                .expect("run nginx -t");
            assert!(
                check.status.success(),
                "nginx -t rejects the config:\n{}\n{rendered}",
                String::from_utf8_lossy(&check.stderr)
            );
            let stderr = fs::File::create(dir.path().join("stderr.log")).unwrap();
            let mut command = nginx_command(dir.path(), true);
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr);
            // SIGTERM: fast shutdown; workers close open streams instead of waiting for them.
            let mut daemon = Daemon::spawn("nginx", command, "TERM");
            // The pid file is written after every listening socket is bound.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let pid = fs::read_to_string(&pid_file).unwrap_or_default();
                // The pid file is written before the master forks its worker: wait for
                // that too, so a test that looks at the workers finds one.
                if pid.trim() == daemon.pid().to_string() && !children_of(daemon.pid()).is_empty() {
                    return Self {
                        daemon,
                        port,
                        tls_port,
                        ca_file: certificates.map(|c| c.0),
                        dir,
                    };
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

    /// The same path on the TLS server (herald-tls.conf).
    pub fn tls_url(&self, path_and_query: &str) -> String {
        let port = self.tls_port.expect("started with tls");
        format!("https://127.0.0.1:{port}{path_and_query}")
    }

    pub fn master_pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The master's living worker processes (old ones still finishing included).
    pub fn workers(&self) -> Vec<u32> {
        let mut workers = children_of(self.master_pid());
        workers.sort_unstable();
        workers
    }

    /// `nginx -s reload`, as an operator runs it: the master re-reads the files in the
    /// prefix, starts new workers and asks the old ones to finish gracefully.
    pub fn reload(&self) {
        let out = nginx_command(self.dir.path(), false)
            .arg("-s")
            .arg("reload")
            .output()
            .expect("run nginx -s reload");
        assert!(
            out.status.success(),
            "nginx -s reload failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// nginx's stderr and error log so far, for failure messages.
    pub fn logs(&self) -> String {
        logs(self.dir.path())
    }

    /// The access log so far: one line per finished request, in [`ACCESS_LOG_FORMAT`].
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

/// nginx with the test's prefix, main config and pid file; `foreground` for the master.
fn nginx_command(dir: &Path, foreground: bool) -> Command {
    let daemon = if foreground { "daemon off; " } else { "" };
    let mut command = Command::new(NGINX);
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-g")
        .arg(format!("{daemon}pid {};", dir.join("nginx.pid").display()));
    command
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
