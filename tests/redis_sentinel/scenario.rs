//! One failover run: a Sentinel set, two herald nodes with subscribers, a publisher
//! flood, the primary's death; what held and what was measured.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::traffic::{flood, until_end, Attempt};
use crate::common::*;
use crate::support::free_port;
use crate::support::sentinel::{SentinelSet, MASTER_NAME};

/// Longest wait for the failover to be over (Sentinel: 1 s to notice, then an election
/// and the promotion) and for the nodes to publish again.
pub const FAILOVER: Duration = Duration::from_secs(20);
const PUBLISHERS: usize = 4;
const SUBSCRIBERS_PER_NODE: usize = 2;

/// How the primary dies.
#[derive(Clone, Copy)]
pub enum Death {
    /// SIGKILL, nothing else.
    Kill,
    /// Its replication links are cut and it is SIGKILLed `CUT_FOR` later: the replicas,
    /// which authenticate as the default user, are kept out by turning that user off
    /// (herald has a user of its own), so what the primary takes meanwhile never reaches
    /// them, as with replicas lagging at the death.
    CutThenKill,
}

/// herald's ACL user on the data nodes.
pub const HERALD_USER: &str = "herald";
pub const HERALD_PASSWORD: &str = "failover-test-pw";

/// `redis-cli` as herald's user; its stdout, if it succeeded.
fn cli_as_herald(port: u16, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("/usr/bin/redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "--user",
            HERALD_USER,
            "--pass",
            HERALD_PASSWORD,
            "--no-auth-warning",
        ])
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How long the replicas are cut off before the primary dies.
pub const CUT_FOR: Duration = Duration::from_millis(200);

/// How the nodes see the sentinels.
#[derive(Clone, Copy)]
pub enum Sentinels {
    AllUp,
    /// A fourth address, listed first, where nothing listens: a sentinel that is down.
    OneDown,
}

fn node_toml(set: &SentinelSet, replica_acks: u32, sentinels: Sentinels) -> String {
    let mut addresses = set.addresses_toml();
    if let Sentinels::OneDown = sentinels {
        addresses = addresses.replacen('[', &format!("[\"127.0.0.1:{}\", ", free_port()), 1);
    }
    // The URL's host and port are never used: the sentinels name the primary; its
    // credentials are herald's on every data node.
    format!(
        "[backend]\nkind = \"redis\"\n[backend.redis]\n\
         url = \"redis://{HERALD_USER}:{HERALD_PASSWORD}@127.0.0.1/0\"\n\
         sentinels = {}\nmaster_name = \"{MASTER_NAME}\"\n\
         replica_acks = {replica_acks}\nreplica_ack_timeout = \"500ms\"\n\
         command_timeout = \"500ms\"\nconnect_timeout = \"500ms\"\n\
         reconnect_backoff_min = \"50ms\"\nreconnect_backoff_max = \"200ms\"\n\
         health_interval = \"200ms\"\n",
        addresses
    )
}

/// What one run measured.
pub struct Outcome {
    /// From the SIGKILL to the first 200 of a publish sent after it.
    pub recovery: Duration,
    /// From the SIGKILL to both nodes following the new primary (polled: an upper bound).
    pub followed: Duration,
    pub accepted: usize,
    pub refused: usize,
    /// Median time to a 200 before the kill (what waiting for a replica costs).
    pub median_publish: Duration,
    /// Per subscriber: acknowledged publishes it never received.
    pub lost: Vec<usize>,
    /// Acknowledged publishes missing from the new primary's history (a resume from the
    /// first accepted ID on a node started after the failover lacks them).
    pub lost_from_history: usize,
    pub replica_ack_failures: f64,
}

/// Two nodes with subscribers, a publisher flood, the primary SIGKILLed. Checks what
/// holds with or without replica acknowledgement: the nodes follow the new primary (a
/// failover counted for each switch Sentinel made, the new address in
/// `herald_backend_primary`); publishes are accepted
/// again; no ID is handed out twice and each publisher's IDs rise across the switch;
/// every subscriber receives events in strictly rising ID order (so none twice), only
/// published ones (a refused one may appear: it may have been published), and loses
/// only publishes sent before the kill.
pub async fn fail_over_under_load(
    replica_acks: u32,
    sentinels: Sentinels,
    death: Death,
) -> Outcome {
    let mut set = SentinelSet::start();
    for redis in &set.redis {
        let pass = format!(">{HERALD_PASSWORD}");
        let made = redis.cli(&[
            "ACL",
            "SETUSER",
            HERALD_USER,
            "on",
            &pass,
            "~*",
            "&*",
            "+@all",
        ]);
        assert_eq!(
            made.as_deref(),
            Some("OK\n"),
            "ACL SETUSER on {}",
            redis.port
        );
    }
    let toml = node_toml(&set, replica_acks, sentinels);
    let nodes = [
        HeraldProcess::spawn(&toml, &["--demo"]),
        HeraldProcess::spawn(&toml, &["--demo"]),
    ];
    for n in &nodes {
        let up = wait_for(FAILOVER, || async {
            metric(&n.admin_url("/metrics"), "herald_backend_up").await == 1.0
        })
        .await;
        assert!(up, "node {} never reached the primary", n.admin);
    }
    let query = "/events?channel=alpha&channel=beta";
    let mut subscribers = Vec::new();
    for n in &nodes {
        for _ in 0..SUBSCRIBERS_PER_NODE {
            let mut stream = SseClient::connect(&n.url(query)).await;
            assert_eq!(stream.status, 200);
            stream.expect_preamble().await;
            subscribers.push(tokio::spawn(until_end(stream)));
        }
    }

    let (count, accepted) = tokio::sync::watch::channel(0usize);
    let count = std::sync::Arc::new(count);
    let stop = tokio_util::sync::CancellationToken::new();
    let urls: Vec<String> = nodes.iter().map(|n| n.url("/publish")).collect();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|tag| tokio::spawn(flood(tag, urls.clone(), count.clone(), stop.clone())))
        .collect();
    wait_count(&accepted, 300, FAILOVER).await;

    let killing = Instant::now();
    if let Death::CutThenKill = death {
        let primary = &set.redis[0];
        let off = primary.cli(&["ACL", "SETUSER", "default", "off"]);
        assert_eq!(off.as_deref(), Some("OK\n"));
        // Connections already authenticated stay so: the replicas' links until cut.
        let cut = cli_as_herald(primary.port, &["CLIENT", "KILL", "TYPE", "replica"]);
        assert_eq!(cut.as_deref(), Some("2\n"), "two replication links");
        // The scenario itself: the window in which the primary runs ahead of its replicas.
        tokio::time::sleep(CUT_FOR).await;
    }
    set.redis[0].kill();
    // `kill` returns once the process is gone: whatever is sent from here meets a dead
    // primary, whatever was sent before `killing` may have been taken by it.
    let killed = Instant::now();
    let before = *accepted.borrow();
    // Publishing goes on through the switch; once Sentinel has promoted a replica and
    // both nodes follow it, 300 more are accepted.
    // The primary the sentinels agree on now, and both nodes on it: asked again on every
    // poll, since under load Sentinel may switch more than once. The nodes' metrics first
    // and every 50 ms: each look at the sentinels runs five redis-cli, which must not
    // load the machine while Sentinel times the failover.
    let deadline = Instant::now() + FAILOVER;
    loop {
        let mut moved = true;
        for n in &nodes {
            let text = get_text(&n.admin_url("/metrics")).await.1;
            moved &= metric_value(&text, "herald_backend_failovers_total") >= Some(1.0);
        }
        if moved {
            if let Some(at) = set.agreed_primary(Some(0)) {
                let address = format!(
                    "herald_backend_primary{{address=\"127.0.0.1:{}\"}}",
                    set.redis[at].port
                );
                let mut on_it = true;
                for n in &nodes {
                    let text = get_text(&n.admin_url("/metrics")).await.1;
                    on_it &= metric_value(&text, &address) == Some(1.0);
                }
                if on_it {
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the sentinels never agreed on a new primary, or the nodes never followed it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let followed = killed.elapsed();
    wait_count(&accepted, before + 300, FAILOVER).await;
    stop.cancel();
    let mut attempts = Vec::new();
    for p in publishers {
        attempts.push(p.await.expect("publisher task"));
    }
    let client = reqwest::Client::new();
    let end = publish_data(&client, &urls[0], "alpha", "end").await;

    // Each node followed every switch Sentinel made, or several at once.
    let switches = set.switches();
    let mut replica_ack_failures = 0.0;
    for n in &nodes {
        let text = get_text(&n.admin_url("/metrics")).await.1;
        let failovers = metric_value(&text, "herald_backend_failovers_total").unwrap_or(0.0);
        if !(1.0..=switches as f64).contains(&failovers) {
            let moves: Vec<String> = n
                .stderr_text()
                .lines()
                .filter(|l| l.contains("primary") || l.contains("sentinel"))
                .map(String::from)
                .collect();
            let logs: Vec<String> = set.sentinels.iter().map(|s| s.log()).collect();
            panic!(
                "node {} followed {failovers} failovers, Sentinel made {switches}: \
                 {moves:#?}\nsentinels: {logs:#?}",
                n.admin
            );
        }
        replica_ack_failures +=
            metric_value(&text, "herald_backend_replica_ack_failures_total").unwrap_or(0.0);
    }
    if switches > 1 {
        eprintln!("Sentinel switched the primary {switches} times in this run");
    }

    // IDs: each handed out once, rising per publisher, all below the final one.
    let mut published: HashMap<u64, &str> = HashMap::new();
    for (tag, mine) in attempts.iter().enumerate() {
        let ids: Vec<u64> = mine.iter().filter_map(|a| a.id).collect();
        if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
            panic!("publisher {tag}: ID {} then {}", w[0], w[1]);
        }
        for a in mine {
            if let Some(id) = a.id {
                assert!(id < end, "{id} accepted before the end event {end}");
                if let Some(other) = published.insert(id, &a.data) {
                    panic!("ID {id} handed out twice: {other} and {}", a.data);
                }
            }
        }
    }
    let all: Vec<&Attempt> = attempts.iter().flatten().collect();
    let highest_before = all
        .iter()
        .filter(|a| a.answered < killing)
        .filter_map(|a| a.id)
        .max()
        .expect("publishes accepted before the kill");
    let after: Vec<&&Attempt> = all
        .iter()
        .filter(|a| a.sent > killed && a.id.is_some())
        .collect();
    let first_after = after
        .iter()
        .min_by_key(|a| a.answered)
        .expect("a 200 after the kill");
    assert!(
        after.iter().all(|a| a.id > Some(highest_before)),
        "an ID after the failover is not above {highest_before}"
    );
    let recovery = first_after.answered - killed;
    let mut before_kill: Vec<Duration> = all
        .iter()
        .filter(|a| a.answered < killing && a.id.is_some())
        .map(|a| a.answered - a.sent)
        .collect();
    before_kill.sort();
    let median_publish = before_kill[before_kill.len() / 2];
    let refused: HashSet<&str> = all
        .iter()
        .filter(|a| a.id.is_none())
        .map(|a| a.data.as_str())
        .collect();
    let sent_before: HashSet<&str> = all
        .iter()
        .filter(|a| a.sent < killed)
        .map(|a| a.data.as_str())
        .collect();

    // What a stream received, checked: rising IDs (so nothing twice), each event one
    // that was published with that ID (or a refused one: it may have been published);
    // missing, only publishes sent before the kill. The accepted IDs above `after` it
    // does not have.
    let check = |who: &str, got: &[(u64, String)], after: u64| -> usize {
        if let Some(w) = got.windows(2).find(|w| w[0].0 >= w[1].0) {
            panic!("{who}: {} then {}", w[0].0, w[1].0);
        }
        let mut received: HashSet<u64> = HashSet::new();
        for (id, data) in got {
            received.insert(*id);
            match published.get(id) {
                Some(expected) => assert_eq!(expected, data, "{who}: event {id}"),
                None => assert!(
                    refused.contains(data.as_str()),
                    "{who}: {data} ({id}) was never published"
                ),
            }
        }
        let missing: Vec<(&u64, &&str)> = published
            .iter()
            .filter(|(id, _)| **id > after && !received.contains(id))
            .collect();
        assert!(
            missing.iter().all(|(_, data)| sent_before.contains(**data)),
            "{who} lost publishes sent after the kill: {missing:?}"
        );
        missing.len()
    };
    let mut lost = Vec::new();
    for (s, subscriber) in subscribers.into_iter().enumerate() {
        let got = subscriber.await.expect("subscriber task");
        lost.push(check(&format!("subscriber {s}"), &got, 0));
    }

    // Streams open through the failover received what the old primary published before
    // it died, replicated or not. A node started after it has nothing in its ring: a
    // resume there from the first accepted ID is served from the new primary's history,
    // which is where a publish the old primary took with it is missing.
    let late = HeraldProcess::spawn(&toml, &["--demo"]);
    let up = wait_for(FAILOVER, || async {
        metric(&late.admin_url("/metrics"), "herald_backend_up").await == 1.0
    })
    .await;
    assert!(
        up,
        "a node started after the failover never reached the primary"
    );
    let from = *published.keys().min().expect("accepted publishes");
    let mut resumed = SseClient::resume(&late.url(query), &from.to_string()).await;
    assert_eq!(resumed.status, 200);
    resumed.expect_preamble().await;
    let history = until_end(resumed).await;
    let lost_from_history = check(
        "a resume on a node started after the failover",
        &history,
        from,
    );

    Outcome {
        recovery,
        followed,
        median_publish,
        accepted: published.len(),
        refused: refused.len(),
        lost,
        lost_from_history,
        replica_ack_failures,
    }
}

pub fn report(label: &str, o: &Outcome) {
    eprintln!(
        "sentinel failover ({label}): publishes accepted again {:?} after the SIGKILL, \
         both nodes on the new primary by {:?}; {} accepted, {} refused (503), {} \
         replica-ack failures; acknowledged but lost per subscriber: {:?}, from the \
         history: {}; median publish before the kill {:?}",
        o.recovery,
        o.followed,
        o.accepted,
        o.refused,
        o.replica_ack_failures,
        o.lost,
        o.lost_from_history,
        o.median_publish
    );
}
