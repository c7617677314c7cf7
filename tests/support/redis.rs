//! A real `redis-server` for a test: its own loopback port and temp dir (never the system
//! one on 6379), stopped by its pid on drop. It can be killed and started again on the same
//! port and dir, with or without its data, and run with an ACL user or TLS.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, require_tool, send_signal, write_certificates, Daemon};

/// How a test's Redis runs.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// AOF with `appendfsync always`: every acknowledged write survives a SIGKILL.
    pub persistence: bool,
    /// An ACL user (`user`, `password`) allowed everything; the default user is disabled.
    pub acl_user: Option<(String, String)>,
    /// Serve TLS only (`tls-port`), with a certificate made for the test.
    pub tls: bool,
    /// Start as a replica of the Redis on this loopback port (`replicaof`).
    pub replica_of: Option<u16>,
}

pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    options: RedisOptions,
    daemon: Option<Daemon>,
    /// The CA certificate (PEM) clients must trust, when `tls`.
    pub ca_file: Option<PathBuf>,
}

impl RedisServer {
    pub fn start(options: RedisOptions) -> Self {
        require_tool("/usr/bin/redis-server");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = options
            .tls
            .then(|| write_certificates(dir.path(), "redis").0);
        let mut server = Self {
            port: 0,
            dir,
            options,
            daemon: None,
            ca_file,
        };
        // A free port may be taken before redis binds it: try a few.
        for _ in 0..5 {
            server.port = free_port();
            if server.launch() {
                return server;
            }
        }
        panic!("redis-server did not start on a loopback port");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The URL herald is given: `redis://` (or `rediss://`), with the ACL user if any.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls { "rediss" } else { "redis" };
        match &self.options.acl_user {
            Some((user, password)) => {
                format!("{scheme}://{user}:{password}@127.0.0.1:{}/0", self.port)
            }
            None => format!("{scheme}://127.0.0.1:{}/0", self.port),
        }
    }

    /// `[backend]` TOML pointing herald at this server, with quick timeouts.
    pub fn backend_toml(&self) -> String {
        let mut toml = format!(
            "[backend]\nkind = \"redis\"\n[backend.redis]\nurl = \"{}\"\n\
             command_timeout = \"500ms\"\nconnect_timeout = \"500ms\"\n\
             reconnect_backoff_min = \"50ms\"\nreconnect_backoff_max = \"200ms\"\n\
             health_interval = \"200ms\"\n",
            self.url()
        );
        if let Some(ca) = &self.ca_file {
            toml.push_str(&format!("tls_ca_file = \"{}\"\n", ca.display()));
        }
        toml
    }

    fn launch(&mut self) -> bool {
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            self.dir.path().display().to_string(),
            "--save".into(),
            String::new(),
            "--daemonize".into(),
            "no".into(),
            "--protected-mode".into(),
            "no".into(),
        ];
        let port = self.port.to_string();
        if self.options.tls {
            let d = self.dir.path();
            args.extend(
                [
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-cert-file",
                    &d.join("server.pem").display().to_string(),
                    "--tls-key-file",
                    &d.join("server.key").display().to_string(),
                    "--tls-ca-cert-file",
                    &d.join("ca.pem").display().to_string(),
                    "--tls-auth-clients",
                    "no",
                ]
                .map(String::from),
            );
        } else {
            args.extend(["--port".to_string(), port]);
        }
        if let Some(primary) = self.options.replica_of {
            args.extend([
                "--replicaof".to_string(),
                "127.0.0.1".into(),
                primary.to_string(),
            ]);
        }
        if self.options.persistence {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
        } else {
            args.extend(["--appendonly", "no"].map(String::from));
        }
        if let Some((user, password)) = &self.options.acl_user {
            args.extend([
                "--user".to_string(),
                "default".to_string(),
                "off".to_string(),
                "--user".to_string(),
                user.clone(),
                "on".to_string(),
                format!(">{password}"),
                "~*".to_string(),
                "&*".to_string(),
                "+@all".to_string(),
            ]);
        }
        let mut command = Command::new("/usr/bin/redis-server");
        command
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut daemon = Daemon::spawn("redis-server", command, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if daemon.exited().is_some() {
                return false; // most likely the port was taken
            }
            if TcpStream::connect(self.addr()).is_ok() && self.ping() {
                self.daemon = Some(daemon);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server on port {} never answered PING", self.port);
    }

    /// True when `redis-cli PING` answers PONG (TLS and ACL included).
    pub fn ping(&self) -> bool {
        self.cli(&["PING"]).is_some_and(|out| out.trim() == "PONG")
    }

    /// Run `redis-cli` against this server; its stdout, if it succeeded.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let mut command = Command::new("/usr/bin/redis-cli");
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some((user, password)) = &self.options.acl_user {
            command.args(["--user", user, "--pass", password, "--no-auth-warning"]);
        }
        if let Some(ca) = &self.ca_file {
            command.args(["--tls", "--cacert", &ca.display().to_string()]);
        }
        let out = command.args(args).stderr(Stdio::null()).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGKILL: no save, no goodbye; what persistence wrote is all that is left.
    pub fn kill(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            send_signal(daemon.pid(), "KILL");
            daemon.stop();
        }
    }

    /// Start again on the same port, with the data in the dir (`keep_data`) or without.
    pub fn restart(&mut self, keep_data: bool) {
        self.kill();
        if !keep_data {
            for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
                let path = entry.path();
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("appendonly") || name.ends_with(".rdb") {
                    if path.is_dir() {
                        std::fs::remove_dir_all(&path).unwrap();
                    } else {
                        std::fs::remove_file(&path).unwrap();
                    }
                }
            }
        }
        assert!(
            self.launch(),
            "redis-server did not start again on port {}",
            self.port
        );
    }
}
