//! `backend.kind = "redis"` behind a real nginx: herald processes over one real
//! redis-server, every node in the upstream of nginx/herald.conf, clients and publishers
//! talking only to nginx. A node that dies, or every node redeployed in turn, costs its
//! subscribers one reconnect (EventSource's, with Last-Event-ID) and nothing else: every
//! acknowledged event arrives once, in ID order, with no reset.

mod common;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::traffic::{check_deliveries, refusals, Seen, Traffic};
use common::{metric, HeraldProcess};
use support::nginx::Nginx;
use support::redis::{RedisOptions, RedisServer};

const CHANNELS: &[&str] = &["alpha", "beta"];
const CLIENTS: usize = 40;
/// Two publishers, one request at a time each, every 5 ms: up to 400 publishes/s.
const PUBLISHERS: usize = 2;
const PACE: Duration = Duration::from_millis(5);
/// `shutdown.drain_timeout` of every node: its streams end within 0.7 of it.
const DRAIN: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(10);

/// A node on `listen` (port 0: any), 1 s heartbeats, a short drain, JSON logs.
fn node_toml(redis: &RedisServer, listen: SocketAddr) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [sse]\nheartbeat_interval = \"1s\"\n\
         [shutdown]\ndrain_timeout = \"{}ms\"\n{}",
        DRAIN.as_millis(),
        redis.backend_toml()
    )
}

fn start_node(redis: &RedisServer) -> HeraldProcess {
    let any_port = "127.0.0.1:0".parse().unwrap();
    HeraldProcess::spawn(&node_toml(redis, any_port), &["--demo"])
}

/// A fresh process on the public address its predecessor had.
async fn restart_node(redis: &RedisServer, public: SocketAddr) -> HeraldProcess {
    HeraldProcess::respawn_on(node_toml(redis, public), &["--demo"], public).await
}

async fn open_streams(node: &HeraldProcess) -> usize {
    metric(&node.admin_url("/metrics"), "herald_connections_open").await as usize
}

/// Each client reads one channel or both (a merged subscription).
fn subscriptions() -> Vec<Vec<&'static str>> {
    let shapes = [vec![CHANNELS[0]], vec![CHANNELS[1]], CHANNELS.to_vec()];
    (0..CLIENTS).map(|i| shapes[i % 3].clone()).collect()
}

/// `CLIENTS` streams through nginx, counted by the nodes and spread over all of them.
async fn connect(nginx: &Nginx, nodes: &[&HeraldProcess]) -> Traffic {
    let traffic = Traffic::connect(&nginx.url(""), CHANNELS, subscriptions()).await;
    let mut spread = Vec::new();
    for node in nodes {
        spread.push(open_streams(node).await);
    }
    assert_eq!(
        spread.iter().sum::<usize>(),
        CLIENTS,
        "the nodes hold every stream: {spread:?}"
    );
    assert!(
        !spread.contains(&0),
        "nginx spreads the streams over every node: {spread:?}"
    );
    traffic
}

/// A (re)connect through nginx never gets a non-200 answer, after which a browser's
/// EventSource would give up for good.
fn assert_no_refusals(seen: &[(Vec<&str>, Seen)], nginx: &Nginx) {
    let by_status = refusals(seen);
    let log = nginx.logs();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("[error]")).collect();
    assert!(
        by_status.is_empty(),
        "(re)connects through nginx answered {by_status:?} (EventSource gives up on those); \
         nginx errors:\n{}",
        errors[..errors.len().min(10)].join("\n")
    );
}

/// Two nodes; one is SIGKILLed while 40 clients stream through nginx and two publishers
/// publish through nginx. The dead node's clients see their streams end, reconnect
/// through nginx with Last-Event-ID and land on the survivor, whose own clients are not
/// disturbed; every accepted event arrives everywhere once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_costs_its_clients_one_reconnect_and_no_event() {
    let redis = RedisServer::start(RedisOptions::default());
    let mut doomed = start_node(&redis);
    let survivor = start_node(&redis);
    let nginx = Nginx::start_with_upstreams(&[doomed.public, survivor.public], "5s", |s| s);
    let mut traffic = connect(&nginx, &[&doomed, &survivor]).await;
    traffic.start_publishing(PUBLISHERS, PACE);
    traffic.wait_accepted(400).await;

    let on_doomed = open_streams(&doomed).await;
    doomed.child.kill().expect("SIGKILL");
    doomed.child.wait().expect("reap the killed node");
    let moved = traffic.wait_streams(CLIENTS + on_doomed).await;
    assert!(
        moved,
        "the {on_doomed} clients of the killed node reconnect through nginx"
    );
    assert_eq!(
        open_streams(&survivor).await,
        CLIENTS,
        "every client streams from the survivor"
    );
    traffic.wait_accepted(400).await;

    let (seen, published) = traffic.finish().await;
    assert_no_refusals(&seen, &nginx);
    let streams: Vec<usize> = seen.iter().map(|(_, s)| s.streams).collect();
    assert!(
        streams.iter().all(|n| *n <= 2) && streams.iter().filter(|n| **n == 2).count() == on_doomed,
        "exactly the {on_doomed} clients of the killed node reconnected, once each: {streams:?}"
    );
    let arrived = check_deliveries(&seen, &published, true);
    eprintln!(
        "killed node held {on_doomed} of {CLIENTS} streams; {} publishes accepted, {} failed \
         ({arrived} of those arrived all the same): {:?}",
        published.accepted.len(),
        published.failed.len(),
        published.failed
    );
}

/// A deploy: three nodes, each in turn SIGTERMed (graceful drain), waited for and started
/// again on its port, while 40 clients stream through nginx and two publishers publish
/// through nginx. Each node's streams end themselves within its drain window and it exits
/// 0; the clients follow from node to node with no reset, nothing lost, nothing twice; a
/// publish that failed (a draining node's 503, or nginx racing a keep-alive connection
/// closing) never arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_loses_nothing_and_resets_nobody() {
    let redis = RedisServer::start(RedisOptions::default());
    let mut nodes: Vec<HeraldProcess> = (0..3).map(|_| start_node(&redis)).collect();
    let upstreams: Vec<SocketAddr> = nodes.iter().map(|n| n.public).collect();
    let nginx = Nginx::start_with_upstreams(&upstreams, "5s", |site| site);
    let mut traffic = connect(&nginx, &nodes.iter().collect::<Vec<_>>()).await;
    traffic.start_publishing(PUBLISHERS, PACE);
    traffic.wait_accepted(200).await;

    let started = Instant::now();
    for (i, node) in nodes.iter_mut().enumerate() {
        let streams_before = traffic.streams();
        let on_node = open_streams(node).await;
        node.terminate();
        let limit = DRAIN + Duration::from_secs(3);
        let status = node.wait_exit_async(limit).await;
        assert!(node.wait_stderr_closed(WAIT).await, "node {i}'s log ends");
        let log = node.stderr_text();
        assert!(
            status.is_some_and(|s| s.success()),
            "node {i} exits 0 within {limit:?} of SIGTERM: {status:?}\n{log}"
        );
        assert!(
            !log.contains("drain timeout reached"),
            "node {i}'s streams ended themselves within the drain window:\n{log}"
        );
        let moved = traffic.wait_streams(streams_before + on_node).await;
        assert!(
            moved,
            "the {on_node} clients of node {i} reconnect through nginx"
        );
        *node = restart_node(&redis, upstreams[i]).await;
        // Load on the new set of nodes before the next one goes.
        traffic.wait_accepted(200).await;
    }
    let deploy = started.elapsed();
    let mut spread = Vec::new();
    for node in &nodes {
        spread.push(open_streams(node).await);
    }
    assert_eq!(
        spread.iter().sum::<usize>(),
        CLIENTS,
        "every client streams from a restarted node: {spread:?}"
    );

    let (seen, published) = traffic.finish().await;
    assert_no_refusals(&seen, &nginx);
    check_deliveries(&seen, &published, false);
    let reconnects: usize = seen.iter().map(|(_, s)| s.streams - 1).sum();
    eprintln!(
        "rolling restart took {deploy:?}; {reconnects} reconnects; streams at the end \
         {spread:?}; {} publishes accepted, {} failed: {:?}",
        published.accepted.len(),
        published.failed.len(),
        published.failed
    );
}
