//! deploy/'s Compose file and Kubernetes manifests against the files they name: every
//! mounted path exists, every include and every name resolves, and every host, port and
//! path agrees with herald's configuration, nginx's and Prometheus's (promtool checks the
//! Compose Prometheus config with grafana's rules). No container engine or cluster runs
//! here: what they would read is checked instead. The rules that tie nginx's settings to
//! herald's are in tests/deploy_kit.rs.

mod common;
mod support;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_yaml::Value;
use support::kit::{
    block, configmap_toml, directive, directives, herald_config_from, load, read, text, yaml,
    yaml_documents, Rules,
};
use support::{repo_path, require_tool};

/// `HOST:CONTAINER[:ro]` volume entries of a compose service: (host, container).
fn mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_sequence()
        .map(|v| v.iter().map(text).collect::<Vec<_>>())
        .unwrap_or_default()
        .iter()
        .map(|entry| {
            let parts: Vec<&str> = entry.split(':').collect();
            (parts[0].to_string(), parts[1].to_string())
        })
        .collect()
}

#[test]
fn the_compose_file_agrees_with_every_file_it_mounts() {
    let mut rules = Rules::default();
    let compose = yaml("deploy/docker-compose.yml");
    let services = compose["services"].as_mapping().unwrap();
    let name = |k: &Value| text(k);
    let service_names: BTreeSet<String> = services.keys().map(name).collect();
    let volumes: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(name)
        .collect();
    let mut mounted: HashMap<(String, String), String> = HashMap::new();
    for (key, service) in services {
        for (host, container) in mounts(service) {
            if host.starts_with('.') {
                let path = repo_path("deploy").join(&host);
                rules.check(path.exists(), format!("{}: {host} exists", name(key)));
            } else {
                rules.check(
                    volumes.contains(&host),
                    format!("volume {host} is declared"),
                );
            }
            mounted.insert((name(key), container), host);
        }
    }
    let host_of = |service: &str, container: &str| {
        mounted
            .get(&(service.to_string(), container.to_string()))
            .cloned()
    };

    // The herald nodes: the compose config, on the compose Redis.
    let nodes: Vec<String> = services
        .iter()
        .filter(|(_, s)| s["image"] == "herald:local")
        .map(|(k, _)| name(k))
        .collect();
    rules.check(nodes.len() == 2, format!("two herald nodes: {nodes:?}"));
    let config = load("compose", &repo_path("deploy/compose-herald.toml"));
    for node in &nodes {
        let command = &services[node.as_str()]["command"];
        let file = text(&command[1]);
        rules.check(
            host_of(node, &file).as_deref() == Some("./compose-herald.toml"),
            format!("{node} reads compose-herald.toml at {file}"),
        );
    }
    rules.check(
        config.backend.kind == "redis",
        "the nodes use the Redis backend",
    );
    let redis_url = url::Url::parse(&config.backend.redis.url).unwrap();
    rules.check(
        redis_url
            .host_str()
            .is_some_and(|h| service_names.contains(h))
            && redis_url.port_or_known_default() == Some(6379),
        format!("backend.redis.url {redis_url} names the compose Redis"),
    );

    // nginx: its main config and every include resolve to mounted files, the compose
    // upstream is the shipped one with the nodes' public addresses.
    let nginx_mounts: Vec<(String, String)> = mounts(&services["nginx"]);
    let resolves = |path: &str| {
        nginx_mounts
            .iter()
            .any(|(_, c)| path == c || path.starts_with(&format!("{c}/")))
    };
    let nginx_conf = host_of("nginx", "/etc/nginx/nginx.conf").expect("nginx.conf is mounted");
    let mut files = vec![("/etc/nginx/nginx.conf".to_string(), nginx_conf)];
    while let Some((container, host)) = files.pop() {
        let text = std::fs::read_to_string(repo_path("deploy").join(&host)).unwrap();
        for include in directives(&text, "include") {
            let path = if include[0].starts_with('/') {
                include[0].clone()
            } else {
                format!("/etc/nginx/{}", include[0])
            };
            rules.check(
                resolves(&path),
                format!("{container} includes {path}, which is mounted"),
            );
            let source = nginx_mounts.iter().find_map(|(h, c)| {
                path.strip_prefix(c.as_str())
                    .map(|rest| format!("{h}{rest}"))
            });
            if let Some(source) = source {
                files.push((path, source));
            }
        }
    }
    let public_port = config.server.listen.port();
    let admin_port = config.server.admin_listen.port();
    let expected: String = nodes
        .iter()
        .map(|n| format!("    server {n}:{public_port} max_fails=0;\n"))
        .collect();
    let shipped = read("nginx/herald-upstream.conf").replacen(
        "    server 127.0.0.1:8080 max_fails=0;\n",
        &expected,
        1,
    );
    let compose_upstream = read("deploy/compose-nginx-upstream.conf");
    let (header, rest) = compose_upstream
        .split_at(compose_upstream.len() - shipped.len().min(compose_upstream.len()));
    rules.check(
        rest == shipped && header.lines().all(|l| l.starts_with('#')),
        "compose-nginx-upstream.conf is nginx/herald-upstream.conf with one server line per node",
    );
    let published = text(&services["nginx"]["ports"][0]);
    let listen = directive(&block(&read("nginx/herald.conf"), "server"), "listen");
    rules.check(
        published.ends_with(&format!(":{listen}")),
        format!("nginx publishes its listen port {listen}: {published}"),
    );

    // The image's environment beats the file: it must say what the file says, and its
    // HEALTHCHECK (which `depends_on: service_healthy` waits for) must ask the admin port.
    let dockerfile = read("deploy/Dockerfile");
    let env = |key: &str| {
        let value = dockerfile
            .split(&format!("{key}="))
            .nth(1)
            .unwrap_or_else(|| panic!("{key} in the Dockerfile"));
        value.split_whitespace().next().unwrap().to_string()
    };
    for (origin, c) in [
        ("compose-herald.toml", &config),
        (
            "the ConfigMap",
            &herald_config_from("the ConfigMap", &configmap_toml()),
        ),
    ] {
        rules.check(
            env("HERALD_SERVER__LISTEN") == c.server.listen.to_string()
                && env("HERALD_SERVER__ADMIN_LISTEN") == c.server.admin_listen.to_string(),
            format!("the image's HERALD_SERVER__* agree with {origin}"),
        );
    }
    rules.check(
        dockerfile.contains(&format!("/dev/tcp/127.0.0.1/{admin_port} "))
            && dockerfile.contains("GET /readyz"),
        format!("the image's HEALTHCHECK asks /readyz on the admin port {admin_port}"),
    );
    rules.check(
        services["nginx"]["depends_on"]
            .as_mapping()
            .is_some_and(|m| {
                nodes
                    .iter()
                    .all(|n| m[n.as_str()]["condition"] == "service_healthy")
            }),
        "nginx waits for every node's HEALTHCHECK",
    );

    // Prometheus scrapes every node's admin port and loads the alert rules.
    let prometheus = yaml("deploy/compose-prometheus.yml");
    let targets: Vec<String> = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    let expected: Vec<String> = nodes.iter().map(|n| format!("{n}:{admin_port}")).collect();
    rules.check(
        targets == expected,
        format!("Prometheus targets {targets:?} = {expected:?}"),
    );
    rules.check(
        prometheus["scrape_configs"][0]["job_name"] == "herald",
        "job name herald",
    );
    rules.check(
        host_of("prometheus", "/etc/prometheus/prometheus.yml").as_deref()
            == Some("./compose-prometheus.yml")
            && host_of("prometheus", "/etc/prometheus/alerts.yml").as_deref()
                == Some("../grafana/prometheus/alerts.yml")
            && prometheus["rule_files"][0] == "alerts.yml",
        "Prometheus loads compose-prometheus.yml and grafana's alerts.yml beside it",
    );

    // Grafana: the data source is the compose Prometheus, the dashboards are where the
    // provider reads them.
    let datasource = yaml("grafana/provisioning/datasources/prometheus.yaml");
    let ds = url::Url::parse(&text(&datasource["datasources"][0]["url"])).unwrap();
    let prometheus_port = text(&services["prometheus"]["ports"][0]);
    rules.check(
        ds.host_str() == Some("prometheus")
            && prometheus_port.ends_with(&format!(":{}", ds.port().unwrap())),
        format!("the Grafana data source {ds} is the compose Prometheus ({prometheus_port})"),
    );
    let provider = yaml("grafana/provisioning/dashboards/herald.yaml");
    let path = text(&provider["providers"][0]["options"]["path"]);
    rules.check(
        host_of("grafana", &path).as_deref() == Some("../grafana/dashboards"),
        format!("grafana/dashboards is mounted at the provider's path {path}"),
    );
    rules.assert_all_hold();
}

#[test]
fn compose_prometheus_config_and_rules_pass_promtool() {
    let promtool = require_tool("/usr/bin/promtool");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        read("deploy/compose-prometheus.yml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("alerts.yml"),
        read("grafana/prometheus/alerts.yml"),
    )
    .unwrap();
    let out = Command::new(promtool)
        .arg("check")
        .arg("config")
        .arg(dir.path().join("prometheus.yml"))
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_kubernetes_manifests_agree_with_the_configmap() {
    let mut rules = Rules::default();
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(repo_path("deploy/kubernetes"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    rules.check(
        listed == present,
        format!("kustomization lists every manifest: {listed:?} vs {present:?}"),
    );
    let mut kinds: HashMap<(String, String), Value> = HashMap::new();
    for file in &present {
        for document in yaml_documents(&format!("deploy/kubernetes/{file}")) {
            let key = (text(&document["kind"]), text(&document["metadata"]["name"]));
            kinds.insert(key, document);
        }
    }
    let get = |kind: &str, name: &str| {
        kinds
            .get(&(kind.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("{kind} {name}"))
    };
    let config = herald_config_from("the ConfigMap", &configmap_toml());
    let deployment = get("Deployment", "herald");
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let port_of = |n: &str| {
        container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .map(|p| p["containerPort"].as_u64().unwrap() as u16)
    };
    rules.check(
        port_of("http") == Some(config.server.listen.port()),
        "container port http = server.listen",
    );
    rules.check(
        port_of("admin") == Some(config.server.admin_listen.port()),
        "container port admin = server.admin_listen",
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        rules.check(
            get["path"] == path && get["port"] == "admin",
            format!("{probe}: GET {path} on the admin port"),
        );
    }
    rules.check(
        text(&pod["metadata"]["annotations"]["prometheus.io/port"])
            == config.server.admin_listen.port().to_string(),
        "Prometheus scrapes the admin port",
    );
    // The config: herald reads the ConfigMap's key, mounted as a directory (a subPath
    // mount never sees updates, so neither SIGHUP nor the kubelet could refresh it).
    let args: Vec<String> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    let mount = &container["volumeMounts"][0];
    let volume = &pod["spec"]["volumes"][0];
    rules.check(
        args == [
            "--config",
            &format!("{}/herald.toml", text(&mount["mountPath"])),
        ] && mount["subPath"].is_null()
            && volume["name"] == mount["name"]
            && volume["configMap"]["name"] == "herald-config",
        "herald reads herald.toml from the mounted ConfigMap herald-config (no subPath)",
    );
    // Several replicas only on a shared backend; the PDB keeps one of them.
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap();
    rules.check(
        config.backend.kind == "redis" || replicas == 1,
        "several replicas need backend.kind = redis",
    );
    let pdb = get("PodDisruptionBudget", "herald");
    rules.check(
        pdb["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]
            && pdb["spec"]["minAvailable"]
                .as_u64()
                .is_some_and(|m| m < replicas),
        "the PodDisruptionBudget selects the pods and lets one go at a time",
    );
    let redis_url = url::Url::parse(&config.backend.redis.url).unwrap();
    let redis_service = get("Service", redis_url.host_str().unwrap());
    rules.check(
        redis_service["spec"]["ports"][0]["port"].as_u64()
            == redis_url.port_or_known_default().map(u64::from),
        "backend.redis.url names the Redis Service and its port",
    );
    let service = get("Service", "herald");
    rules.check(
        service["spec"]["ports"].as_sequence().unwrap().len() == 1
            && service["spec"]["ports"][0]["targetPort"] == "http",
        "the Service exposes the public port only",
    );
    let policy = get("NetworkPolicy", "herald");
    let ports: Vec<u64> = policy["spec"]["ingress"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r["ports"][0]["port"].as_u64().unwrap())
        .collect();
    rules.check(
        ports
            == [
                u64::from(config.server.listen.port()),
                u64::from(config.server.admin_listen.port()),
            ],
        format!("the NetworkPolicy opens the public and admin ports: {ports:?}"),
    );
    rules.assert_all_hold();
}
