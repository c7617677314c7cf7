//! The monitoring kit against real tools: promtool checks and unit-tests the alert rules,
//! a real Prometheus scrapes an in-process herald and evaluates every dashboard query and
//! alert rule, and the dashboard JSON is checked for provisioning-safe data sources.

mod common;
mod support;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::Value;
use support::{free_port, herald_config, poll_until, repo_path, require_tool, Daemon, EventStream};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
const DATASOURCE: &str = "${datasource}";

fn promtool(args: &[&str]) -> String {
    require_tool(PROMTOOL);
    let out = Command::new(PROMTOOL)
        .args(args)
        .current_dir(repo_path("grafana/prometheus"))
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_and_example_config_pass_promtool_check() {
    let rules = promtool(&["check", "rules", "alerts.yml"]);
    assert!(rules.contains("SUCCESS"), "{rules}");
    let config = promtool(&["check", "config", "prometheus.yml"]);
    assert!(config.contains("SUCCESS"), "{config}");
}

#[test]
fn alert_rules_fire_on_synthetic_series() {
    let out = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    // The unit tests must expect real firing alerts, not only silence: collect the
    // alert names that have an expected alert with labels.
    let text = fs::read_to_string(repo_path("grafana/prometheus/alerts_test.yml")).unwrap();
    let mut firing = std::collections::BTreeSet::new();
    let mut current = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim().to_string());
        } else if line.starts_with("- exp_labels:") {
            firing.extend(current.clone());
        }
    }
    assert!(
        firing.len() >= 2,
        "alerts_test.yml proves too few alerts fire: {firing:?}"
    );
}

fn dashboard() -> (String, Value) {
    let text = fs::read_to_string(repo_path("grafana/dashboards/herald.json")).unwrap();
    let json = serde_json::from_str(&text).expect("dashboard is valid JSON");
    (text, json)
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        all.push(p);
        if let Some(nested) = p["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

/// Every PromQL expression in the dashboard: panel targets and the variables' queries.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            queries.push((title, t["expr"].as_str().expect("target expr").to_string()));
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .expect("variable query");
            queries.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    queries
}

#[test]
fn dashboard_takes_its_datasource_from_the_variable() {
    let (text, dash) = dashboard();
    assert!(
        !text.contains("${DS_"),
        "Grafana provisioning never fills ${{DS_...}}"
    );
    assert!(dash.get("__inputs").is_none() && dash.get("__requires").is_none());
    let wanted = serde_json::json!({ "type": "prometheus", "uid": DATASOURCE });
    let vars = dash["templating"]["list"].as_array().unwrap();
    let ds_var = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a `datasource` template variable");
    assert_eq!(ds_var["type"], "datasource");
    assert_eq!(ds_var["query"], "prometheus");
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"], wanted, "variable {}", v["name"]);
    }
    let all = panels(&dash);
    let mut ids = std::collections::HashSet::new();
    for p in &all {
        let title = &p["title"];
        assert_eq!(p["datasource"], wanted, "panel {title}");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        assert!(
            p["gridPos"]["w"].as_u64().is_some(),
            "panel {title} has a gridPos"
        );
        if p["type"] != "row" {
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "panel {title} has queries");
            for t in targets {
                assert_eq!(t["datasource"], wanted, "a target of panel {title}");
            }
        }
    }
    // Connection counts come first.
    let first = all.iter().find(|p| p["type"] != "row").unwrap();
    assert_eq!(first["title"], "Open streams");
    let exprs: String = dashboard_queries(&dash)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    for metric in [
        "herald_connections_open",
        "herald_connections_total",
        "herald_disconnects_total",
        "herald_events_published_total",
        "herald_events_delivered_total",
        "herald_heartbeats_sent_total",
        "herald_resume_resets_total",
        "herald_publish_rejected_total",
        "herald_requests_rejected_total",
        "herald_channels",
        "herald_connections_limit",
        "herald_stream_duration_seconds",
        "herald_delivery_latency_seconds",
        "herald_publish_duration_seconds",
        "herald_resume_replayed_events",
        "herald_stream_bytes_total",
        "herald_write_timeouts_total",
        "herald_accept_errors_total",
        "herald_channel_group_subscribers",
        "herald_build_info",
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "herald_backend_up",
        "herald_redis_command_duration_seconds",
        "herald_backend_errors_total",
        "herald_backend_reconnects_total",
        "herald_backend_caught_up_events_total",
        "herald_config_last_reload_successful",
        "herald_config_reloads_total",
        "herald_backend_primary",
        "herald_backend_failovers_total",
        "herald_backend_primary_changed_timestamp_seconds",
        "herald_backend_replica_ack_failures_total",
    ] {
        assert!(exprs.contains(metric), "no panel shows {metric}");
    }
}

/// Grafana's variables replaced as Grafana would for a 1 s scrape interval; a
/// `label_values(expr, label)` query becomes its series expression.
fn as_promql(query: &str) -> String {
    let mut q = query.trim().to_string();
    if let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
    {
        q = inner
            .rsplit_once(',')
            .map_or(inner, |(e, _)| e)
            .trim()
            .to_string();
    }
    for (var, value) in [
        ("$__rate_interval", "4s"),
        ("$__interval", "1s"),
        ("$__range", "5m"),
        ("${job}", "herald"),
        ("$job", "herald"),
        ("${instance}", ".*"),
        ("$instance", ".*"),
    ] {
        q = q.replace(var, value);
    }
    assert!(!q.contains('$'), "unknown Grafana variable in {query:?}");
    q
}

/// Prometheus on a free loopback port, scraping one target every second with the
/// alert rules loaded; stopped by pid on drop.
struct Prometheus {
    daemon: Daemon,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(targets: &[SocketAddr]) -> Self {
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let targets = targets.join(", ");
        require_tool(PROMETHEUS);
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        let rules = repo_path("grafana/prometheus/alerts.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: herald\n    static_configs:\n      - targets: [{targets}]\n",
                rules.display()
            ),
        )
        .unwrap();
        for attempt in 1..=5 {
            let port = free_port();
            let log = fs::File::create(dir.path().join("prometheus.log")).unwrap();
            let mut command = Command::new(PROMETHEUS);
            command
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            let mut daemon = Daemon::spawn("prometheus", command, "TERM");
            let ready_url = format!("http://127.0.0.1:{port}/-/ready");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let ready = client().get(&ready_url).send().await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    return Self { daemon, port, dir };
                }
                if let Some(status) = daemon.exited() {
                    let log = log_of(dir.path());
                    if log.contains("address already in use") && attempt < 5 {
                        break;
                    }
                    panic!("prometheus exited ({status}) at start:\n{log}");
                }
                assert!(
                    Instant::now() < deadline,
                    "prometheus not ready within 20 s:\n{}",
                    log_of(dir.path())
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            daemon.stop();
        }
        unreachable!("every attempt returns or panics")
    }

    /// `GET /api/v1/<path>`; the parsed body, whatever its status.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let url = format!("http://127.0.0.1:{}/api/v1/{path}", self.port);
        let resp = client()
            .get(url)
            .query(query)
            .send()
            .await
            .expect("prometheus API");
        resp.json().await.expect("prometheus answers JSON")
    }

    async fn query(&self, expr: &str) -> Value {
        self.api("query", &[("query", expr)]).await
    }

    /// The single sample value of an instant query, if it has exactly one.
    async fn scalar(&self, expr: &str) -> Option<f64> {
        let v = self.query(expr).await;
        let result = v["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.daemon.stop();
    }
}

fn log_of(dir: &Path) -> String {
    fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client")
}

/// Every dashboard query against Prometheus: `(panel, expr, answer)`.
async fn run_dashboard_queries(prometheus: &Prometheus) -> Vec<(String, String, Value)> {
    let (_, dash) = dashboard();
    let mut answers = Vec::new();
    for (panel, query) in dashboard_queries(&dash) {
        let expr = as_promql(&query);
        let answer = prometheus.query(&expr).await;
        assert_eq!(
            answer["status"], "success",
            "panel {panel:?}: {expr}\n{answer}"
        );
        answers.push((panel, expr, answer));
    }
    answers
}

/// The sample values of an instant-query answer.
fn values(answer: &Value) -> Vec<f64> {
    answer["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["value"][1].as_str()?.parse().ok())
        .collect()
}

/// Panels whose queries return nothing (`finite`: nothing but NaN or infinities).
fn panels_without_data(answers: &[(String, String, Value)], finite: bool) -> Vec<String> {
    answers
        .iter()
        .filter(|(_, _, answer)| {
            let v = values(answer);
            v.is_empty() || (finite && !v.iter().any(|x| x.is_finite()))
        })
        .map(|(panel, expr, _)| format!("{panel}: {expr}"))
        .collect()
}

/// The `herald_*` and `process_*` metric names in alerts.yml's expressions (a histogram
/// named by its series: `_bucket`, `_count`, `_sum`).
fn metrics_named_by_alert_rules() -> std::collections::BTreeSet<String> {
    let text = fs::read_to_string(repo_path("grafana/prometheus/alerts.yml")).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for start in ["herald_", "process_"] {
            let mut rest = line;
            while let Some(at) = rest.find(start) {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    assert!(
        names.len() > 10,
        "alerts.yml names too few metrics: {names:?}"
    );
    names
}

/// Both kinds of node, so the backend panels have a Redis to show: a memory herald and
/// one on a real redis-server, scraped as two instances of job "herald".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_herald_and_evaluates_the_dashboard_and_alerts() {
    let groups = "[telemetry]\nmetrics_channel_groups = [\"metrics-*\"]\n";
    let memory = TestServer::start(herald_config(groups)).await;
    let redis = support::redis::RedisServer::start(Default::default());
    let on_redis =
        TestServer::start(herald_config(&format!("{groups}{}", redis.backend_toml()))).await;
    let prometheus = Prometheus::start(&[memory.admin, on_redis.admin]).await;

    // A fresh node: every panel has a series from the first scrapes on (labelled series
    // start at 0), once each target has been scraped often enough for a rate().
    let scraped = poll_until(Duration::from_secs(20), || async {
        let v = prometheus
            .query("count_over_time(herald_connections_total{job=\"herald\"}[4s]) >= 3")
            .await;
        (values(&v).len() == 2).then_some(())
    })
    .await;
    assert!(
        scraped.is_some(),
        "both heralds never scraped three times: {}\n{}",
        prometheus.query("herald_connections_total").await,
        log_of(prometheus.dir.path())
    );
    let fresh = run_dashboard_queries(&prometheus).await;
    let empty = panels_without_data(&fresh, false);
    assert!(
        empty.is_empty(),
        "panels with no data on fresh nodes: {empty:#?}"
    );
    // So does every metric an alert rule names (a misspelt one would never fire): on
    // both nodes, but for the Redis primary's, which only a Redis node has.
    for metric in metrics_named_by_alert_rules() {
        let v = prometheus
            .query(&format!(
                "count(count by (instance) ({{__name__=\"{metric}\", job=\"herald\"}}))"
            ))
            .await;
        let nodes = if metric == "herald_backend_primary" {
            1.0
        } else {
            2.0
        };
        assert_eq!(values(&v), [nodes], "{metric}, named by alerts.yml");
    }

    // Open streams straight to the public listeners; each stays open until dropped.
    let streaming = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut streams = Vec::new();
    for (node, channel) in [
        (&memory, "metrics-0"),
        (&memory, "metrics-1"),
        (&memory, "metrics-2"),
        (&on_redis, "metrics-0"),
    ] {
        let request = streaming.get(node.url(&format!("/events?channel={channel}")));
        streams.push((channel, open_stream(request, ": herald\n\n").await));
    }
    let want = streams.len() as f64;
    let seen = poll_until(Duration::from_secs(20), || async {
        let v = prometheus
            .scalar("sum(herald_connections_open{job=\"herald\"})")
            .await;
        (v == Some(want)).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "herald_connections_open never summed to {want} in Prometheus: {}\n{}",
        prometheus.query("herald_connections_open").await,
        log_of(prometheus.dir.path())
    );
    let (_, dash) = dashboard();
    let open_streams = panels(&dash)
        .into_iter()
        .find(|p| p["title"] == "Open streams")
        .map(|p| p["targets"][0]["expr"].as_str().unwrap().to_string())
        .unwrap();
    assert_eq!(
        prometheus.scalar(&as_promql(&open_streams)).await,
        Some(want),
        "the dashboard's selectors match the scraped labels"
    );

    // Live traffic on both nodes until the panels are checked: publishes (delivered to
    // the streams above), refused publishes, and short streams that resume from an ID a
    // few events back (replays, stream lifetimes).
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = tokio::spawn(live_traffic(
        [memory.url(""), on_redis.url("")],
        stop.clone(),
    ));
    let finite = poll_until(Duration::from_secs(30), || async {
        let answers = run_dashboard_queries(&prometheus).await;
        panels_without_data(&answers, true).is_empty().then_some(())
    })
    .await;
    if finite.is_none() {
        let answers = run_dashboard_queries(&prometheus).await;
        panic!(
            "panels without a finite value under live traffic: {:#?}",
            panels_without_data(&answers, true)
        );
    }
    // The streams on the channel published to received it (the traffic is real).
    for (_, stream) in streams.iter_mut().filter(|(c, _)| *c == "metrics-0") {
        stream
            .read_until("data: live", Duration::from_secs(5))
            .await
            .unwrap();
    }

    // Every alert rule was loaded and evaluates without error against real series. A
    // rule's health is that of its last evaluation, which may predate the scrape of our
    // series (or have queried just before it although it finished after): judge the
    // health only after two more rounds, the second of which queried with them present.
    let rules = || async {
        let rules = prometheus.api("rules", &[]).await;
        let all: Vec<Value> = rules["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        (!all.is_empty()).then_some(all)
    };
    let evaluated = |all: &[Value]| -> Vec<String> {
        all.iter()
            .map(|r| r["lastEvaluation"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    // Newer than `than` (rules not listed then were all evaluated since).
    let all_newer = |all: &[Value], than: &[String]| {
        than.is_empty()
            || (all.len() == than.len()
                && evaluated(all)
                    .iter()
                    .zip(than)
                    .all(|(now, then)| now != then))
    };
    let seen_at = evaluated(&rules().await.unwrap_or_default());
    let round = poll_until(Duration::from_secs(10), || async {
        let all = rules().await?;
        all_newer(&all, &seen_at).then(|| evaluated(&all))
    })
    .await;
    let Some(round) = round else {
        panic!(
            "alert rules not evaluated again after the scrape: {seen_at:?} -> {:?}",
            rules().await.map(|all| evaluated(&all))
        );
    };
    let healthy = poll_until(Duration::from_secs(10), || async {
        let all = rules().await?;
        let ok = all_newer(&all, &round) && all.iter().all(|r| r["health"] == "ok");
        ok.then_some(all.len())
    })
    .await;
    assert!(
        healthy.is_some(),
        "alert rules not all healthy: {}",
        prometheus.api("rules", &[]).await
    );

    stop.cancel();
    traffic.await.expect("traffic task");
    drop(streams);
    memory.stop().await;
    on_redis.stop().await;
}

/// Until `stop`: on each node in turn, a publish to `metrics-0`, a refused publish, and
/// every fifth round a stream resuming two events back that is read and dropped.
async fn live_traffic(nodes: [String; 2], stop: tokio_util::sync::CancellationToken) {
    let client = client();
    let mut ids = [Vec::new(), Vec::new()];
    let mut round = 0u64;
    while !stop.is_cancelled() {
        for (node, ids) in nodes.iter().zip(ids.iter_mut()) {
            let publish = format!("{node}/publish");
            let id = common::client::publish_data(&client, &publish, "metrics-0", "live").await;
            ids.push(id);
            let (status, _) =
                common::client::post(&client, &publish, Some("application/json"), "{").await;
            assert_eq!(status, 400, "a malformed publish is refused");
            if round % 5 == 0 && ids.len() > 2 {
                let from = ids[ids.len() - 3].to_string();
                let request = client
                    .get(format!("{node}/events?channel=metrics-0"))
                    .header("Last-Event-ID", from);
                open_stream(request, "data: live").await;
            }
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stream opened with `request`, read until `needle` arrived.
async fn open_stream(request: reqwest::RequestBuilder, needle: &str) -> EventStream {
    let resp = request.send().await.expect("subscribe");
    assert_eq!(resp.status(), 200);
    let mut stream = EventStream::new(resp);
    stream
        .read_until(needle, Duration::from_secs(5))
        .await
        .unwrap();
    stream
}
