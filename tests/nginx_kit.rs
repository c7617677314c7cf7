//! The nginx kit (nginx/) on a real nginx, rendered from the shipped files with test
//! ports only, plus the values a test must shrink to be quick: the per-IP limits answer
//! 429 (and herald's own per-IP limit answers first with the shipped sizes), the TLS
//! server carries several event streams over one HTTP/2 connection, `nginx -s reload`
//! moves open streams to the new workers within `worker_shutdown_timeout` with no event
//! lost or repeated, and the locations snippet serves herald from someone else's site.

mod common;
mod support;

use std::collections::HashSet;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::traffic::{check_deliveries, refusals, Traffic};
use common::{metric, publish_data, wait_for, wait_until, TestServer};
use herald::server::RunOptions;
use support::nginx::{replace_once, Nginx, NginxOptions, LOCATIONS, SITE, UPSTREAM};
use support::{herald_config, Daemon, EventStream};

const WAIT: Duration = Duration::from_secs(10);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
}

/// herald behind a trusting nginx: per-IP limits on both sides see the client address.
async fn herald(extra: &str) -> TestServer {
    let toml = format!(
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
         [sse]\nheartbeat_interval = \"1s\"\n{extra}"
    );
    TestServer::start(herald_config(&toml)).await
}

/// GET /events through nginx; the response, whatever its status.
async fn open(url: &str) -> reqwest::Response {
    tokio::time::timeout(WAIT, client().get(url).send())
        .await
        .expect("response headers in time")
        .expect("GET /events through nginx")
}

async fn open_ok(url: &str) -> EventStream {
    let resp = open(url).await;
    assert_eq!(resp.status(), 200, "GET {url}");
    let mut stream = EventStream::new(resp);
    stream
        .read_until("retry: 3000", WAIT)
        .await
        .expect("the stream opens with its preamble");
    stream
}

async fn open_streams(herald: &TestServer) -> f64 {
    metric(&herald.admin_url("/metrics"), "herald_connections_open").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_limit_conn_answers_429_past_the_open_streams_of_one_address() {
    let herald = herald("").await;
    let options = NginxOptions::new(&[herald.public], "5s");
    let nginx = Nginx::start_kit(&options, |file, text| match file {
        LOCATIONS => replace_once(
            file,
            &text,
            "limit_conn herald_streams_per_ip 512;",
            "limit_conn herald_streams_per_ip 3;",
        ),
        _ => text,
    });
    let url = nginx.url("/events?channel=limited");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(open_ok(&url).await);
    }
    let refused = open(&url).await;
    assert_eq!(refused.status(), 429, "the 4th stream of 127.0.0.1");
    assert!(
        refused.text().await.unwrap().contains("nginx"),
        "the 429 is nginx's, herald never saw the request"
    );
    assert_eq!(open_streams(&herald).await, 3.0);

    // A limit on open streams, not on attempts: one ends, another may open.
    drop(held.pop());
    let herald_ref = &herald;
    let closed = wait_for(
        WAIT,
        || async move { open_streams(herald_ref).await == 2.0 },
    )
    .await;
    assert!(closed, "herald sees the dropped stream end");
    held.push(open_ok(&url).await);
    assert!(nginx
        .logs()
        .contains("limiting connections by zone \"herald_streams_per_ip\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_limit_req_answers_429_past_the_burst_of_new_streams_and_spares_publishes() {
    let herald = herald("").await;
    let options = NginxOptions::new(&[herald.public], "5s");
    // No token comes back during the test: 1 + burst streams pass, the next is refused.
    let nginx = Nginx::start_kit(&options, |file, text| match file {
        UPSTREAM => replace_once(
            file,
            &text,
            "zone=herald_opens_per_ip:10m rate=20r/s;",
            "zone=herald_opens_per_ip:10m rate=1r/m;",
        ),
        LOCATIONS => replace_once(
            file,
            &text,
            "zone=herald_opens_per_ip burst=256 nodelay;",
            "zone=herald_opens_per_ip burst=2 nodelay;",
        ),
        _ => text,
    });
    let url = nginx.url("/events?channel=paced");
    for _ in 0..3 {
        drop(open_ok(&url).await);
    }
    let refused = open(&url).await;
    assert_eq!(refused.status(), 429, "the 4th new stream within the burst");
    assert!(refused.text().await.unwrap().contains("nginx"));
    for n in 0..20 {
        publish_data(&client(), &nginx.url("/publish"), "paced", &format!("p{n}")).await;
    }
    assert!(
        nginx.logs().contains("limiting requests"),
        "{}",
        nginx.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_shipped_sizes_herald_refuses_an_address_first() {
    // nginx/snippets/herald-locations.conf as shipped (limit_conn 512 per IP) in front of
    // a node allowing 2 streams per IP: the 3rd gets herald's 429, which names the limit
    // and carries Retry-After.
    let herald = herald("[limits]\nmax_connections_per_ip = 2\n").await;
    let nginx = Nginx::start(herald.public, "5s");
    let url = nginx.url("/events?channel=mine");
    let _held = [open_ok(&url).await, open_ok(&url).await];
    let refused = open(&url).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"), "Retry-After");
    let body = refused.text().await.unwrap();
    assert!(
        body.contains("max_connections_per_ip"),
        "herald's 429: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_browser_over_http2_several_streams_on_one_tls_connection() {
    let curl = support::require_tool("/usr/bin/curl");
    let version = Command::new(&curl).arg("-V").output().expect("curl -V");
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("HTTP2"),
        "curl without HTTP/2: install Debian's curl (scripts/install-test-deps.sh)"
    );
    let herald = herald("").await;
    let mut options = NginxOptions::new(&[herald.public], "5s");
    options.tls = true;
    let nginx = Nginx::start_kit(&options, |_, text| text);
    let out = tempfile::tempdir().unwrap();
    let channels = ["h2-a", "h2-b", "h2-c"];
    // --parallel without --parallel-immediate: curl waits for the first connection and
    // multiplexes the other transfers on it when the server speaks HTTP/2.
    let mut command = Command::new(&curl);
    command
        .args([
            "--http2",
            "--parallel",
            "--silent",
            "--no-buffer",
            "--cacert",
        ])
        .arg(nginx.ca_file.as_ref().unwrap());
    for channel in channels {
        command
            .arg("-o")
            .arg(out.path().join(channel))
            .arg(nginx.tls_url(&format!("/events?channel={channel}")));
    }
    let stderr = fs::File::create(out.path().join("curl.stderr")).unwrap();
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut curl = Daemon::spawn("curl", command, "TERM");
    let read = |c: &str| fs::read_to_string(out.path().join(c)).unwrap_or_default();
    let opened = wait_until(WAIT, || {
        channels.iter().all(|c| read(c).contains("retry: 3000"))
    })
    .await;
    assert!(
        opened,
        "three streams open over TLS: {:?}; curl: {}; {}",
        channels.map(read),
        read("curl.stderr"),
        nginx.logs()
    );
    assert_eq!(open_streams(&herald).await, 3.0);
    for channel in channels {
        publish_data(
            &client(),
            &nginx.url("/publish"),
            channel,
            &format!("over h2 to {channel}"),
        )
        .await;
    }
    let arrived = wait_until(WAIT, || {
        channels
            .iter()
            .all(|c| read(c).contains(&format!("data: over h2 to {c}\n")))
    })
    .await;
    assert!(
        arrived,
        "every stream has its event: {:?}",
        channels.map(read)
    );

    // nginx logs a request when it ends: end the client, then read who served what.
    curl.stop();
    let log_lines = || -> Vec<String> {
        nginx
            .access_log()
            .lines()
            .filter(|l| l.contains("/events?channel=h2-"))
            .map(String::from)
            .collect()
    };
    assert!(
        wait_until(WAIT, || log_lines().len() == 3).await,
        "{:?}",
        log_lines()
    );
    let lines = log_lines();
    // $pid $connection $connection_requests $server_protocol $status "$request"
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.split(' ').collect()).collect();
    let connections: HashSet<&str> = fields.iter().map(|f| f[1]).collect();
    assert_eq!(connections.len(), 1, "one client connection: {lines:?}");
    assert!(
        fields.iter().all(|f| f[3] == "HTTP/2.0" && f[4] == "200"),
        "every stream was an HTTP/2 200: {lines:?}"
    );
    eprintln!("three event streams over one HTTP/2 connection: {lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_open_streams_to_new_workers_within_worker_shutdown_timeout() {
    const CLIENTS: usize = 12;
    const CHANNELS: &[&str] = &["alpha", "beta"];
    const SHUTDOWN: Duration = Duration::from_secs(3);
    let herald = herald("").await;
    let mut options = NginxOptions::new(&[herald.public], "5s");
    options.worker_shutdown_timeout = format!("{}s", SHUTDOWN.as_secs());
    let nginx = Nginx::start_kit(&options, |_, text| text);
    let old = nginx.workers();
    assert_eq!(old.len(), 1, "one worker before the reload: {old:?}");

    let shapes = [vec![CHANNELS[0]], vec![CHANNELS[1]], CHANNELS.to_vec()];
    let subscriptions = (0..CLIENTS).map(|i| shapes[i % 3].clone()).collect();
    let mut traffic = Traffic::connect(&nginx.url(""), CHANNELS, subscriptions).await;
    traffic.start_publishing(1, Duration::from_millis(10));
    traffic.wait_accepted(50).await;

    let reloaded = Instant::now();
    nginx.reload();
    let started = wait_until(WAIT, || nginx.workers().iter().any(|w| !old.contains(w))).await;
    assert!(
        started,
        "the reload starts a new worker: {:?}",
        nginx.workers()
    );
    assert!(
        old.iter().all(|w| nginx.workers().contains(w)),
        "the old worker stays while it serves open streams"
    );
    let old_gone = wait_until(SHUTDOWN + WAIT, || {
        nginx.workers().iter().all(|w| !old.contains(w))
    })
    .await;
    let lived = reloaded.elapsed();
    assert!(old_gone, "the old worker exits: {:?}", nginx.workers());
    assert!(
        lived >= SHUTDOWN - Duration::from_millis(100)
            && lived <= SHUTDOWN + Duration::from_secs(2),
        "the old worker keeps its streams until worker_shutdown_timeout ({SHUTDOWN:?}), no \
         longer: it lived {lived:?}"
    );
    let new = nginx.workers();
    assert_eq!(new.len(), 1, "only the new worker is left: {new:?}");
    assert!(
        traffic.wait_streams(2 * CLIENTS).await,
        "every client reconnects"
    );
    let herald_ref = &herald;
    let moved = wait_for(WAIT, || async move {
        open_streams(herald_ref).await == CLIENTS as f64
    })
    .await;
    assert!(
        moved,
        "herald holds each client's new stream, and only that"
    );
    traffic.wait_accepted(50).await;

    let (seen, published) = traffic.finish().await;
    assert!(
        refusals(&seen).is_empty(),
        "reconnects refused: {:?}",
        refusals(&seen)
    );
    let streams: Vec<usize> = seen.iter().map(|(_, s)| s.streams).collect();
    assert!(
        streams.iter().all(|n| *n == 2),
        "one reconnect each: {streams:?}"
    );
    check_deliveries(&seen, &published, false);
    // The first stream of every client was served, and ended, by the old worker.
    let cut_by_old: usize = nginx
        .access_log()
        .lines()
        .filter(|l| l.contains("/events?") && l.starts_with(&format!("{} ", old[0])))
        .count();
    assert_eq!(cut_by_old, CLIENTS, "{}", nginx.access_log());
    eprintln!(
        "old worker exited {lived:?} after the reload (worker_shutdown_timeout {SHUTDOWN:?}); \
         {CLIENTS} clients resumed on worker {new:?} with Last-Event-ID; {} events accepted, \
         {} publishes failed {:?}; the old worker ended {cut_by_old} streams",
        published.accepted.len(),
        published.failed.len(),
        published.failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_locations_snippet_serves_herald_from_an_existing_site() {
    // Someone else's server block, with its own root location and server-level proxy
    // headers, including only the snippet.
    let herald = herald("").await;
    let options = NginxOptions::new(&[herald.public], "5s");
    let nginx = Nginx::start_kit(&options, |file, text| match file {
        SITE => {
            let listen = text
                .lines()
                .find(|l| l.trim_start().starts_with("listen 127.0.0.1:"))
                .expect("the rendered listen line")
                .to_string();
            format!(
                "server {{\n{listen}\n    server_name www.example.com;\n\
                 \x20   proxy_set_header X-Site-Header mine;\n\
                 \x20   location / {{ return 200 \"my own site\\n\"; }}\n\
                 \x20   include snippets/herald-locations.conf;\n}}\n"
            )
        }
        _ => text,
    });
    let own = client().get(nginx.url("/elsewhere")).send().await.unwrap();
    assert_eq!(own.text().await.unwrap(), "my own site\n");
    let mut stream = open_ok(&nginx.url("/events?channel=site")).await;
    let id = publish_data(&client(), &nginx.url("/publish"), "site", "via the snippet").await;
    stream
        .read_until(&format!("id: {id}\n"), WAIT)
        .await
        .expect("the event through the snippet");
}

/// What a page needs beyond /events and /publish passes nginx: the herald.js module
/// (revalidated on every load), a ticket for a private channel and the stream it opens,
/// and the demo apps under /demo/ (herald's own 404 when the demo is off, not nginx's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_paths_pass_nginx_herald_js_tickets_and_the_demo_apps() {
    const SECRET: &str = "nginx-kit-ticket-secret-0123456789abcdef";
    // Without --demo (nor server.demo_page, off by default): a production node.
    let config = herald_config(&format!(
        "[auth]\nprivate_channels = [\"private:*\"]\n\
         [auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n"
    ));
    let herald = TestServer::start_with_options(config, RunOptions::default()).await;
    let nginx = Nginx::start_kit(&NginxOptions::new(&[herald.public], "5s"), |_, t| t);

    let module = client().get(nginx.url("/herald.js")).send().await.unwrap();
    assert_eq!(module.status(), 200);
    assert_eq!(module.headers()["cache-control"], "no-cache");
    assert!(module
        .text()
        .await
        .unwrap()
        .contains("export function connect"));

    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "exp": exp, "herald": { "subscribe": ["private:*"] } }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let answer: serde_json::Value = client()
        .post(nginx.url("/tickets"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .expect("a ticket through nginx")
        .json()
        .await
        .unwrap();
    let ticket = answer["ticket"].as_str().expect("a ticket");
    open_ok(&nginx.url(&format!("/events?channel=private:a&ticket={ticket}"))).await;

    // herald without the demo answers /demo/ itself, with its JSON 404.
    let demo = client().get(nginx.url("/demo/chat")).send().await.unwrap();
    assert_eq!(demo.status(), 404);
    assert_eq!(demo.headers()["content-type"], "application/json");
}
