//! Reading the kit's files the way nginx, Compose and Kubernetes do, for the cross-file
//! rules of tests/deploy_kit.rs: nginx directives and blocks, nginx times and sizes,
//! YAML documents (merge keys applied), herald configurations loaded as herald loads them,
//! and a collector of broken rules.
#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::time::Duration;

use herald::config::Config;

use super::repo_path;

pub fn read(relative: &str) -> String {
    fs::read_to_string(repo_path(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// nginx text without comments (nothing in the kit quotes a `#`).
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The body of the block opened by `header` (e.g. `location = /events`), up to its
/// matching brace; panics if it is not there exactly once.
pub fn block(text: &str, header: &str) -> String {
    let text = uncommented(text);
    let open = format!("{header} {{");
    assert_eq!(text.matches(&open).count(), 1, "one `{open}` block");
    let start = text.find(&open).unwrap() + open.len();
    let mut depth = 1;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return text[start..start + i].to_string();
        }
    }
    panic!("`{open}` is not closed");
}

/// The arguments of every `name ...;` statement in `text`, nested blocks included.
pub fn directives(text: &str, name: &str) -> Vec<Vec<String>> {
    uncommented(text)
        .replace(['{', '}'], ";")
        .split(';')
        .filter_map(|statement| {
            let mut words = statement.split_whitespace();
            (words.next() == Some(name)).then(|| words.map(String::from).collect())
        })
        .collect()
}

/// The single argument of the one `name` statement in `text`.
pub fn directive(text: &str, name: &str) -> String {
    let all = directives(text, name);
    assert_eq!(all.len(), 1, "one `{name}` in:\n{text}");
    assert_eq!(
        all[0].len(),
        1,
        "`{name}` takes one argument here: {:?}",
        all[0]
    );
    all[0][0].clone()
}

/// An nginx time (`300s`, `5s`, `1m`, `500ms`, `1h`; a bare number is seconds).
pub fn nginx_time(value: &str) -> Duration {
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("nginx time {value:?}"));
    match &value[digits.len()..] {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(60 * n),
        "h" => Duration::from_secs(3600 * n),
        unit => panic!("nginx time unit {unit:?} in {value:?}"),
    }
}

/// An nginx size (`1m`, `64k`, bytes).
pub fn nginx_size(value: &str) -> usize {
    let lower = value.to_ascii_lowercase();
    let (digits, factor) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower.as_str(), 1),
    };
    digits
        .parse::<usize>()
        .unwrap_or_else(|_| panic!("nginx size {value:?}"))
        * factor
}

/// `name=value` among a directive's arguments (`burst=256`, `rate=20r/s`).
pub fn parameter<'a>(arguments: &'a [String], name: &str) -> &'a str {
    arguments
        .iter()
        .find_map(|a| a.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {arguments:?}"))
}

/// Every YAML document of a file, with merge keys (`<<: *anchor`) applied as Compose does.
pub fn yaml_documents(relative: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(&read(relative))
        .map(|document| {
            let mut value = serde_yaml::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{relative} is not YAML: {e}"));
            value
                .apply_merge()
                .unwrap_or_else(|e| panic!("{relative}: {e}"));
            value
        })
        .collect()
}

pub fn yaml(relative: &str) -> serde_yaml::Value {
    let mut documents = yaml_documents(relative);
    assert_eq!(documents.len(), 1, "{relative} holds one document");
    documents.remove(0)
}

/// A YAML string (or number) as text.
pub fn text(value: &serde_yaml::Value) -> String {
    match value {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// herald's configuration from TOML text, loaded as `herald --config` loads it
/// (over the embedded defaults, validated), no environment.
pub fn herald_config_from(origin: &str, toml: &str) -> Config {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("herald.toml");
    fs::write(&file, toml).unwrap();
    load(origin, &file)
}

pub fn load(origin: &str, file: &Path) -> Config {
    Config::load_with_env(Some(file), Vec::new())
        .unwrap_or_else(|e| panic!("herald refuses {origin}: {e}"))
}

/// Every violation, so that one run names them all.
#[derive(Default)]
pub struct Rules(Vec<String>);

impl Rules {
    pub fn check(&mut self, ok: bool, rule: impl Into<String>) {
        if !ok {
            self.0.push(rule.into());
        }
    }

    pub fn assert_all_hold(self) {
        assert!(
            self.0.is_empty(),
            "broken rules:\n- {}",
            self.0.join("\n- ")
        );
    }
}

/// The herald.toml the Kubernetes ConfigMap carries.
pub fn configmap_toml() -> String {
    let map = yaml("deploy/kubernetes/configmap.yaml");
    text(&map["data"]["herald.toml"])
}
