//! The rules that tie the kit's files to herald's configuration, in one test: nginx's
//! read timeout against the heartbeat, its keep-alive against herald's header timeout,
//! body sizes, per-IP limits against herald's, worker_shutdown_timeout against
//! /publish's timeout, trusted proxies against nginx's address, grace periods against the
//! drain, and every metric a dashboard or alert names exported by a real herald (memory
//! and Redis). `systemd-analyze verify` checks the unit. Compose and Kubernetes are
//! checked against the files they name in tests/deploy_manifests.rs.

mod common;
mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use common::{get_text, HeraldProcess, TestServer};
use herald::config::Config;
use serde_yaml::Value;
use support::kit::{
    block, configmap_toml, directive, directives, herald_config_from, load, nginx_size, nginx_time,
    parameter, read, text, yaml, yaml_documents, Rules,
};
use support::redis::{RedisOptions, RedisServer};
use support::{herald_config, repo_path, require_tool};

/// Every herald configuration the kit ships for running behind nginx or an ingress,
/// as herald loads it: (where it comes from, config).
fn shipped_herald_configs() -> Vec<(&'static str, Config)> {
    vec![
        ("the defaults", herald_config("")),
        (
            "deploy/herald.toml",
            load("deploy/herald.toml", &repo_path("deploy/herald.toml")),
        ),
        (
            "deploy/compose-herald.toml",
            load(
                "deploy/compose-herald.toml",
                &repo_path("deploy/compose-herald.toml"),
            ),
        ),
        (
            "the ConfigMap",
            herald_config_from("the ConfigMap", &configmap_toml()),
        ),
    ]
}

/// Sample names (`name` before `{` or the value) in a Prometheus text exposition.
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(String::from))
        .collect()
}

/// Every `herald_*` and `process_*` metric name in `text` (PromQL in JSON or YAML).
fn metric_names(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    text.split(|c: char| !is_name(c))
        .filter(|w| w.starts_with("herald_") || w.starts_with("process_"))
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cross_file_rule_of_the_kit_holds() {
    let mut rules = Rules::default();
    let locations = read("nginx/snippets/herald-locations.conf");
    let events = block(&locations, "location = /events");
    let publish = block(&locations, "location = /publish");
    let upstream_file = read("nginx/herald-upstream.conf");
    let upstream = block(&upstream_file, "upstream herald_public");
    let read_timeout = nginx_time(&directive(&events, "proxy_read_timeout"));
    let keepalive = nginx_time(&directive(&upstream, "keepalive_timeout"));
    let body = nginx_size(&directive(&publish, "client_max_body_size"));
    let limit_conn = directives(&events, "limit_conn");
    let per_ip_streams: usize = limit_conn[0][1].parse().unwrap();
    let limit_req = &directives(&events, "limit_req")[0];
    let burst: usize = parameter(limit_req, "burst").parse().unwrap();
    let shutdown = nginx_time(&directive(
        &read("nginx/herald-main.conf"),
        "worker_shutdown_timeout",
    ));
    let publish_timeout = nginx_time(&directive(&publish, "proxy_read_timeout"));
    rules.check(
        shutdown >= publish_timeout,
        format!("worker_shutdown_timeout {shutdown:?} >= /publish proxy_read_timeout {publish_timeout:?}"),
    );
    // ingress.yaml: the streams' Ingress and the publishes' Ingress.
    let ingresses: HashMap<String, Value> = yaml_documents("deploy/kubernetes/ingress.yaml")
        .into_iter()
        .map(|d| (text(&d["metadata"]["name"]), d))
        .collect();
    let ingress_annotation = |ingress: &str, k: &str| {
        text(
            &ingresses[ingress]["metadata"]["annotations"]
                [format!("nginx.ingress.kubernetes.io/{k}")],
        )
    };
    let annotation = |k: &str| ingress_annotation("herald", k);

    for (origin, c) in shipped_herald_configs() {
        let heartbeat = c.sse.heartbeat_interval;
        let proxy_read = if origin == "the ConfigMap" {
            nginx_time(&annotation("proxy-read-timeout"))
        } else {
            read_timeout
        };
        rules.check(
            proxy_read >= 2 * heartbeat,
            format!("{origin}: proxy read timeout {proxy_read:?} >= 2 x sse.heartbeat_interval {heartbeat:?}"),
        );
        rules.check(
            keepalive < c.limits.header_read_timeout,
            format!("{origin}: upstream keepalive_timeout {keepalive:?} < limits.header_read_timeout {:?}", c.limits.header_read_timeout),
        );
        let proxy_body = if origin == "the ConfigMap" {
            nginx_size(&ingress_annotation("herald-publish", "proxy-body-size"))
        } else {
            body
        };
        rules.check(
            proxy_body == c.limits.max_body_bytes,
            format!(
                "{origin}: client_max_body_size {proxy_body} = limits.max_body_bytes {}",
                c.limits.max_body_bytes
            ),
        );
        // ingress-nginx: limit-connections, and a burst of limit-rps x limit-burst-multiplier.
        let (per_ip_streams, burst) = if origin == "the ConfigMap" {
            let n = |k: &str| annotation(k).parse::<usize>().unwrap();
            (
                n("limit-connections"),
                n("limit-rps") * n("limit-burst-multiplier"),
            )
        } else {
            (per_ip_streams, burst)
        };
        let per_ip = c.limits.max_connections_per_ip;
        rules.check(
            per_ip_streams >= per_ip,
            format!("{origin}: limit_conn {per_ip_streams} >= limits.max_connections_per_ip {per_ip} (herald refuses first)"),
        );
        rules.check(
            burst >= per_ip,
            format!("{origin}: limit_req burst {burst} >= limits.max_connections_per_ip {per_ip} (a full reconnect passes)"),
        );
    }

    // Trusted proxies cover nginx's address, wherever the kit runs nginx.
    let compose = yaml("deploy/docker-compose.yml");
    let nginx_ip: IpAddr =
        text(&compose["services"]["nginx"]["networks"]["herald"]["ipv4_address"])
            .parse()
            .unwrap();
    let compose_herald = load("compose", &repo_path("deploy/compose-herald.toml"));
    rules.check(
        compose_herald
            .server
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&nginx_ip)),
        format!(
            "compose-herald.toml server.trusted_proxies covers nginx's compose address {nginx_ip}"
        ),
    );
    let k8s = herald_config_from("the ConfigMap", &configmap_toml());
    rules.check(
        !k8s.server.trusted_proxies.is_empty(),
        "the ConfigMap trusts the ingress controller's pod network",
    );

    // Grace periods above the drain.
    let drain = k8s.shutdown.drain_timeout;
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
    let pre_stop = &pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"];
    rules.check(pre_stop[0] == "sleep", "the preStop hook sleeps");
    let pre_stop = Duration::from_secs(text(&pre_stop[1]).parse().unwrap());
    rules.check(
        grace > pre_stop + drain,
        format!("terminationGracePeriodSeconds {grace:?} > preStop {pre_stop:?} + shutdown.drain_timeout {drain:?}"),
    );
    let stop_grace = nginx_time(&text(&compose["services"]["herald-1"]["stop_grace_period"]));
    rules.check(
        stop_grace > compose_herald.shutdown.drain_timeout,
        format!("compose stop_grace_period {stop_grace:?} > drain_timeout"),
    );
    let unit = read("deploy/herald.service");
    let stop_sec = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .unwrap();
    let systemd_drain = load("herald.toml", &repo_path("deploy/herald.toml"))
        .shutdown
        .drain_timeout;
    rules.check(
        nginx_time(stop_sec) > systemd_drain,
        format!("TimeoutStopSec {stop_sec} > drain_timeout {systemd_drain:?}"),
    );

    // Every metric a dashboard panel or an alert rule names is exported: by a memory node
    // and a Redis node (the backend's metrics), fresh, before any traffic.
    let memory = TestServer::start(herald_config("")).await;
    let redis = RedisServer::start(RedisOptions::default());
    let redis_node = HeraldProcess::spawn(&redis.backend_toml(), &[]);
    let mut exported = BTreeSet::new();
    for url in [
        memory.admin_url("/metrics"),
        redis_node.admin_url("/metrics"),
    ] {
        let (status, body) = get_text(&url).await;
        assert_eq!(status, 200, "{url}");
        exported.extend(sample_names(&body));
    }
    for file in [
        "grafana/dashboards/herald.json",
        "grafana/prometheus/alerts.yml",
    ] {
        let named = metric_names(&read(file));
        rules.check(!named.is_empty(), format!("{file} names metrics"));
        for name in named {
            // A histogram's own name (in a description) stands for its _bucket/_sum/_count.
            let histogram = exported.contains(&format!("{name}_bucket"));
            rules.check(
                exported.contains(&name) || histogram,
                format!("{file} names {name}, which herald does not export"),
            );
        }
    }
    memory.stop().await;
    rules.assert_all_hold();
}

#[test]
fn systemd_analyze_verifies_the_unit_and_reload_sends_hup() {
    let analyze = require_tool("/usr/bin/systemd-analyze");
    let unit = read("deploy/herald.service");
    let line = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key}= in the unit"))
    };
    assert_eq!(
        line("ExecReload"),
        "/bin/kill -HUP $MAINPID",
        "reload sends SIGHUP"
    );
    assert!(
        std::path::Path::new("/bin/kill").is_file(),
        "/bin/kill exists"
    );
    assert!(line("ExecStart").starts_with("/usr/local/bin/herald --config "));
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.service");
    let bin = common::herald_bin();
    std::fs::write(
        &file,
        unit.replace("/usr/local/bin/herald", &bin.display().to_string()),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&file)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}
