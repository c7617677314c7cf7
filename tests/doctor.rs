//! `herald doctor` (the real binary) against a real nginx in front of a real herald: the
//! shipped nginx config passes every check, and each deliberately broken variant is named
//! with its fix.

mod common;
mod support;

use std::process::Command;

use common::HeraldProcess;
use support::nginx::{replace_once, Nginx, NginxOptions};

const KEY: &str = "pk-doctor-0123456789abcdef";
/// Where the shipped kit keeps the events location and the shared proxy settings.
const LOCATIONS: &str = "snippets/herald-locations.conf";
const PROXY: &str = "snippets/herald-proxy.conf";

/// herald with a short heartbeat (so an idle check can outlast it), behind nginx rendered
/// from the shipped kit (its TLS server too, with `tls`), with `edits` applied: `(file,
/// from, to)`, each `from` found exactly once in that file.
fn path(read_timeout: &str, tls: bool, edits: &[(&str, &str, &str)]) -> (HeraldProcess, Nginx) {
    let herald = HeraldProcess::spawn(
        &format!("[sse]\nheartbeat_interval = \"3s\"\n[auth]\npublish_keys = [\"{KEY}\"]\n"),
        &[],
    );
    let mut options = NginxOptions::new(&[herald.public], read_timeout);
    options.tls = tls;
    let nginx = Nginx::start_kit(&options, |file, mut text| {
        for (target, from, to) in edits {
            if file == *target {
                text = replace_once(file, &text, from, to);
            }
        }
        text
    });
    (herald, nginx)
}

/// `herald doctor URL` (publishing through the same nginx, idle for 2 s): its exit code
/// and output.
fn doctor(nginx: &Nginx, url: &str) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .arg("doctor")
        .arg(url)
        .arg("--publish-url")
        .arg(nginx.url("/publish"))
        .arg("--key")
        .arg(KEY)
        .arg("--idle")
        .arg("2");
    if let Some(ca) = &nginx.ca_file {
        command.arg("--ca-file").arg(ca);
    }
    let out = command.output().expect("run herald doctor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The check named `check` failed, and its fix names `directive`; no other check did.
fn assert_named(code: i32, out: &str, check: &str, directive: &str) {
    assert_eq!(code, 1, "doctor exits 1 on a failed check:\n{out}");
    let failed: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        failed
            .iter()
            .any(|l| l.starts_with(&format!("FAIL  {check}:"))),
        "{check} not named:\n{out}"
    );
    let fix = out
        .lines()
        .skip_while(|l| !l.starts_with(&format!("FAIL  {check}:")))
        .nth(1)
        .unwrap_or_default();
    assert!(
        fix.contains("fix:") && fix.contains(directive),
        "the fix for {check} names {directive}:\n{out}"
    );
}

#[test]
fn the_shipped_config_passes_every_check() {
    let (_herald, nginx) = path("10s", false, &[]);
    let (code, out) = doctor(&nginx, &nginx.url("/events"));
    assert_eq!(code, 0, "{out}\n{}", nginx.logs());
    assert!(!out.contains("FAIL"), "{out}");
    for check in [
        "PASS  stream opens at once",
        "PASS  status",
        "PASS  content type",
        "PASS  no caching",
        "PASS  no compression",
        "PASS  HTTP/1.1 to herald",
        "PASS  first bytes at once",
        "PASS  Last-Event-ID reaches herald",
        "PASS  events arrive promptly, one by one",
        "PASS  idle stream kept",
    ] {
        assert!(out.contains(check), "{check} missing:\n{out}");
    }
}

#[test]
fn the_shipped_tls_server_offers_http_2() {
    let (_herald, nginx) = path("10s", true, &[]);
    let (code, out) = doctor(&nginx, &nginx.tls_url("/events"));
    assert_eq!(code, 0, "{out}\n{}", nginx.logs());
    assert!(out.contains("PASS  HTTP/2: HTTP/2.0"), "{out}");
}

#[test]
fn tls_without_http_2_is_named() {
    let (_herald, nginx) = path(
        "10s",
        true,
        &[("herald-tls.conf", " ssl http2;\n", " ssl;\n")],
    );
    let (code, out) = doctor(&nginx, &nginx.tls_url("/events"));
    assert_named(code, &out, "HTTP/2", "http2");
}

#[test]
fn buffering_is_named() {
    // The classic broken setup. Buffering alone does not hold a chunked HTTP/1.1 stream
    // back (nginx passes each chunk on), and herald's X-Accel-Buffering: no would win over
    // proxy_buffering on: so buffering on, that header ignored, and nginx's default
    // HTTP/1.0 upstream, whose body has no chunks to pass on.
    let (_herald, nginx) = path(
        "10s",
        false,
        &[
            (
                LOCATIONS,
                "proxy_buffering off;",
                "proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;",
            ),
            (PROXY, "proxy_http_version 1.1;", "proxy_http_version 1.0;"),
        ],
    );
    let (code, out) = doctor(&nginx, &nginx.url("/events"));
    // nginx holds even the response head until its buffer fills.
    assert_named(code, &out, "stream opens at once", "proxy_buffering off");
}

#[test]
fn gzip_on_the_stream_is_named() {
    let (_herald, nginx) = path(
        "10s",
        false,
        &[(
            LOCATIONS,
            "gzip off;",
            "gzip on; gzip_types text/event-stream; gzip_min_length 1;",
        )],
    );
    let (code, out) = doctor(&nginx, &nginx.url("/events"));
    assert_named(code, &out, "no compression", "gzip off");
}

#[test]
fn a_read_timeout_below_the_heartbeat_is_named() {
    // herald's heartbeat is 3 s; nginx gives up on a silent upstream after 1 s.
    let (_herald, nginx) = path("1s", false, &[]);
    let (code, out) = doctor(&nginx, &nginx.url("/events"));
    assert_named(code, &out, "idle stream kept", "proxy_read_timeout");
}

#[test]
fn an_http_1_0_upstream_is_named() {
    let (_herald, nginx) = path(
        "10s",
        false,
        &[(PROXY, "proxy_http_version 1.1;", "proxy_http_version 1.0;")],
    );
    let (code, out) = doctor(&nginx, &nginx.url("/events"));
    assert_named(code, &out, "HTTP/1.1 to herald", "proxy_http_version 1.1");
}
