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
    async fn start(target: SocketAddr) -> Self {
        require_tool(PROMETHEUS);
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        let rules = repo_path("grafana/prometheus/alerts.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: herald\n    static_configs:\n      - targets: [\"{target}\"]\n",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_herald_and_evaluates_the_dashboard_and_alerts() {
    let herald = TestServer::start(herald_config("")).await;
    let prometheus = Prometheus::start(herald.admin).await;

    // Open streams straight to herald's public listener; each stays open until dropped.
    const STREAMS: usize = 3;
    let streaming = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let resp = streaming
            .get(herald.url(&format!("/events?channel=metrics-{i}")))
            .send()
            .await
            .expect("subscribe");
        assert_eq!(resp.status(), 200);
        let mut stream = EventStream::new(resp);
        stream
            .read_until(": herald\n\n", Duration::from_secs(2))
            .await
            .unwrap();
        streams.push(stream);
    }

    let want = STREAMS as f64;
    let seen = poll_until(Duration::from_secs(20), || async {
        let v = prometheus
            .scalar("herald_connections_open{job=\"herald\"}")
            .await;
        (v == Some(want)).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "herald_connections_open never reached {STREAMS} in Prometheus: {}\n{}",
        prometheus.query("herald_connections_open").await,
        log_of(prometheus.dir.path())
    );
    assert_eq!(prometheus.scalar("up{job=\"herald\"}").await, Some(1.0));

    // Every dashboard query parses and runs; the open-streams panel sees our streams.
    let (_, dash) = dashboard();
    for (panel, query) in dashboard_queries(&dash) {
        let expr = as_promql(&query);
        let answer = prometheus.query(&expr).await;
        assert_eq!(
            answer["status"], "success",
            "panel {panel:?}: {expr}\n{answer}"
        );
    }
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

    drop(streams);
    herald.stop().await;
}
