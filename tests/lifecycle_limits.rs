//! Connection lifecycle limits, for real: slow request heads are closed, oversized heads
//! get 431, running out of file descriptors neither spins nor wedges the accept loop,
//! streams end after `limits.max_connection_lifetime`, and a drain spreads the ends of
//! streams over its window, each with a `retry:` hint.

mod common;
#[path = "common/hardening.rs"]
mod hardening;

use std::time::{Duration, Instant};

use common::*;
use hardening::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_closed_after_header_read_timeout() {
    let mut config = quick_config();
    config.limits.header_read_timeout = Duration::from_secs(1);
    let server = TestServer::start(config).await;

    // Slowloris: a head that never completes, one header line every 200 ms.
    let mut trickle = connect_raw(server.public, None, None).await;
    let start = Instant::now();
    trickle
        .write_all(b"GET /events?channel=slow HTTP/1.1\r\nHost: herald\r\n")
        .await
        .unwrap();
    let (mut reader, mut writer) = trickle.into_split();
    let dripping = tokio::spawn(async move {
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let line = format!("X-Drip-{i}: y\r\n");
            if writer.write_all(line.as_bytes()).await.is_err() {
                return i;
            }
        }
        unreachable!()
    });
    let (how, got) = read_until_closed(&mut reader, Duration::from_secs(5)).await;
    let trickle_closed = start.elapsed();
    dripping.abort();

    // A connection that sends nothing at all.
    let mut silent = connect_raw(server.public, None, None).await;
    let start = Instant::now();
    let (silent_how, silent_got) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    let silent_closed = start.elapsed();

    eprintln!(
        "header_read_timeout 1s: trickling head closed after {trickle_closed:?} ({how:?}, \
         server sent {:?}); silent connection closed after {silent_closed:?} \
         ({silent_how:?}, server sent {:?})",
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&silent_got)
    );
    assert_ne!(how, Closed::Open, "the trickling connection was closed");
    assert!(
        trickle_closed >= Duration::from_millis(900) && trickle_closed < Duration::from_secs(3),
        "closed about header_read_timeout after the head began: {trickle_closed:?}"
    );
    assert!(
        !String::from_utf8_lossy(&got).contains(" 200 "),
        "no stream was opened"
    );
    assert_ne!(silent_how, Closed::Open, "the silent connection was closed");
    assert!(silent_closed < Duration::from_secs(3), "{silent_closed:?}");

    // A kept-alive connection (served by hyper after its first request) that starts a
    // second head and never finishes it.
    let mut kept = connect_raw(server.public, None, None).await;
    send_get(&mut kept, "/no-such-page", "").await;
    let (status, _) = read_response(&mut kept, ANSWER_DEADLINE)
        .await
        .expect("first answer");
    assert_eq!(status, 404);
    let start = Instant::now();
    kept.write_all(b"GET /events?channel=slow HTTP/1.1\r\nHost: herald\r\n")
        .await
        .unwrap();
    let (kept_how, kept_got) = read_until_closed(&mut kept, Duration::from_secs(5)).await;
    let kept_closed = start.elapsed();
    eprintln!(
        "  second, unfinished head on a kept-alive connection closed after \
         {kept_closed:?} ({kept_how:?}, server sent {:?})",
        String::from_utf8_lossy(&kept_got)
    );
    assert_ne!(
        kept_how,
        Closed::Open,
        "the kept-alive connection was closed"
    );
    assert!(kept_closed < Duration::from_secs(3), "{kept_closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_over_max_header_bytes_get_431() {
    let mut config = quick_config();
    config.limits.max_header_bytes = 8192;
    let server = TestServer::start(config).await;

    let mut big = connect_raw(server.public, None, None).await;
    assert_eq!(
        oversized_head_status(&mut big, "a first request").await,
        431
    );

    // A head well within the limit is served as usual.
    let mut fine = connect_raw(server.public, None, None).await;
    let filler = "a".repeat(4_000);
    send_get(
        &mut fine,
        "/events?channel=big",
        &format!("X-Fine: {filler}\r\n"),
    )
    .await;
    let (status, _) = read_status(&mut fine, ANSWER_DEADLINE)
        .await
        .expect("an answer to the normal head");
    assert_eq!(status, 200);

    // The same cap on a kept-alive connection, for a request after the first.
    let mut kept = connect_raw(server.public, None, None).await;
    send_get(&mut kept, "/no-such-page", "").await;
    let (status, _) = read_response(&mut kept, ANSWER_DEADLINE)
        .await
        .expect("first answer");
    assert_eq!(status, 404);
    assert_eq!(
        oversized_head_status(&mut kept, "a second request on a kept-alive connection").await,
        431
    );
}

/// Send a subscribe whose head carries a 10 KB header; the status it gets.
async fn oversized_head_status(stream: &mut TcpStream, what: &str) -> u16 {
    let filler = "a".repeat(10_000);
    send_get(
        stream,
        "/events?channel=big",
        &format!("X-Big: {filler}\r\n"),
    )
    .await;
    let (status, head) = read_status(stream, ANSWER_DEADLINE)
        .await
        .expect("an answer to the oversized head");
    eprintln!(
        "max_header_bytes 8192: a 10 KB head on {what} got {:?}",
        String::from_utf8_lossy(&head).lines().next()
    );
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    // A long header timeout so the idle admin connection is not closed under us.
    let herald = HeraldProcess::spawn("[limits]\nheader_read_timeout = \"60s\"\n", &[]);
    let pid = herald.child.id();
    const ERRORS: &str = "herald_accept_errors_total";
    // The admin connection: opened before descriptors run out, then reused (keep-alive).
    let admin = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    assert_eq!(metric_now(&admin, herald.admin, ERRORS).await, 0.0);
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=64:64"])
        .status()
        .expect("prlimit");
    assert!(limited.success(), "prlimit --nofile=64:64 on herald");
    let fds_at_start = open_fds(pid);

    // Open streams until one is not answered: herald cannot accept it.
    let path = "/events?channel=fd";
    let mut held: Vec<TcpStream> = Vec::new();
    let mut waiting = None;
    for _ in 0..200 {
        let mut s = connect_raw(herald.public, None, None).await;
        send_get(&mut s, path, "").await;
        match read_status(&mut s, Duration::from_secs(1)).await {
            Some((200, _)) => held.push(s),
            Some((status, head)) => panic!(
                "unexpected answer {status}: {:?}",
                String::from_utf8_lossy(&head)
            ),
            None => {
                waiting = Some(s);
                break;
            }
        }
    }
    let mut waiting = waiting.expect("accept fails before 200 streams at a limit of 64 fds");
    let fds_full = open_fds(pid);
    let errors = wait_metric(&admin, herald.admin, ERRORS, Duration::from_secs(5), |v| {
        v > 0.0
    })
    .await;
    assert!(errors > 0.0, "herald_accept_errors_total rose on EMFILE");

    // Hold the node out of descriptors and measure its CPU.
    let tck = clock_ticks_per_second();
    let (ticks_before, errors_before, window_start) = (cpu_ticks(pid), errors, Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks = cpu_ticks(pid) - ticks_before;
    let window = window_start.elapsed();
    let errors_after = metric_now(&admin, herald.admin, ERRORS).await;
    let cpu = ticks as f64 / tck as f64 / window.as_secs_f64();

    // Free the descriptors: the connection waiting in the backlog is served, and new
    // subscribers get in.
    let streams_held = held.len();
    drop(held);
    let freed = Instant::now();
    let served = read_status(&mut waiting, Duration::from_secs(5)).await;
    let backlog_served = freed.elapsed();
    let mut fresh = SseClient::connect(&herald.url(path)).await;
    assert_eq!(fresh.status, 200);
    fresh.expect_preamble().await;
    let fresh_ok = freed.elapsed();

    eprintln!(
        "EMFILE at RLIMIT_NOFILE 64: herald held {streams_held} streams ({fds_at_start} fds \
         before them, {fds_full} when full); accept errors {errors_before} -> {errors_after} \
         over the {window:?} window ({:.1}/s); CPU over the window {:.1}% of one core \
         ({ticks} ticks at {tck}/s); after freeing: backlog connection served in \
         {backlog_served:?}, a new subscribe in {fresh_ok:?}",
        (errors_after - errors_before) / window.as_secs_f64(),
        cpu * 100.0
    );
    assert!(streams_held > 0);
    assert!(cpu < 0.30, "accept loop spins: {:.1}% CPU", cpu * 100.0);
    assert!(
        errors_after > errors_before,
        "accept keeps being retried (with back-off) while out of descriptors"
    );
    let (status, _) = served.expect("the connection accepted late is answered");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_after_max_connection_lifetime_with_a_retry_hint() {
    let mut config = quick_config();
    config.limits.max_connection_lifetime = Duration::from_secs(1);
    config.limits.connection_lifetime_jitter = 0.5;
    config.sse.retry = Duration::from_secs(2);
    let server = TestServer::start(config).await;
    let url = server.url("/events?channel=life");
    const STREAMS: usize = 10;

    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let asked = Instant::now();
        let mut s = SseClient::connect(&url).await;
        assert_eq!(s.status, 200);
        // Said up front: the connection ends with the stream, so no client (nor nginx's
        // upstream keep-alive cache) may send its next request on it.
        assert_eq!(s.header("connection"), Some("close"));
        s.expect_preamble().await;
        streams.push((asked, Instant::now(), s));
    }
    // A live stream until its lifetime is up: events still flow.
    let client = reqwest::Client::new();
    publish_data(&client, &server.url("/publish"), "life", "still here").await;
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|(asked, opened, mut s)| {
            tokio::spawn(async move {
                let e = s.next_event(Duration::from_millis(900)).await;
                assert_eq!(e.data, "still here");
                assert!(s.wait_end(Duration::from_secs(4)).await, "the stream ended");
                (asked, opened, Instant::now(), s.raw)
            })
        })
        .collect();
    let mut lives = Vec::new();
    let mut hints = Vec::new();
    for t in tasks {
        let (asked, opened, ended, raw) = t.await.unwrap();
        let hint = trailing_retry(&raw).unwrap_or_else(|| {
            panic!(
                "the stream ends with a retry: hint; got {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
        hints.push(hint);
        // The server's clock starts between our request and its answer.
        assert!(
            ended - asked >= Duration::from_secs(1),
            "ended before max_connection_lifetime: {:?}",
            ended - asked
        );
        assert!(
            ended - opened <= Duration::from_millis(1800),
            "ended well after lifetime + jitter (1.5 s): {:?}",
            ended - opened
        );
        lives.push(ended - asked);
    }
    lives.sort();
    hints.sort();
    let m = reqwest::Client::new();
    let counted = wait_metric(
        &m,
        server.admin,
        "herald_disconnects_total{reason=\"lifetime\"}",
        Duration::from_secs(5),
        |v| v == STREAMS as f64,
    )
    .await;
    eprintln!(
        "max_connection_lifetime 1s, jitter 0.5: {STREAMS} streams lived {:?} .. {:?}; \
         retry hints {} .. {} ms (sse.retry 2000); disconnects(lifetime) {counted}",
        lives[0],
        lives[STREAMS - 1],
        hints[0],
        hints[STREAMS - 1]
    );
    assert_eq!(counted, STREAMS as f64);
    assert!(
        hints.iter().all(|h| (2000..=4000).contains(h)),
        "retry hints are sse.retry plus jitter: {hints:?}"
    );
    assert!(
        lives[STREAMS - 1] - lives[0] > Duration::from_millis(100),
        "jitter spreads the ends: {lives:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_spreads_stream_ends_over_the_window_each_with_a_retry_hint() {
    let mut herald = HeraldProcess::spawn("[shutdown]\ndrain_timeout = \"3s\"\n", &[]);
    const STREAMS: usize = 50;
    let url = herald.url("/events?channel=drain");
    let mut waiting = Vec::new();
    for _ in 0..STREAMS {
        let mut s = SseClient::connect(&url).await;
        assert_eq!(s.status, 200);
        s.expect_preamble().await;
        waiting.push(tokio::spawn(async move {
            let ended = s.wait_end(Duration::from_secs(8)).await;
            (ended, Instant::now(), s.raw)
        }));
    }
    let m = reqwest::Client::new();
    assert_eq!(
        metric_now(&m, herald.admin, "herald_connections_open").await,
        STREAMS as f64
    );

    let signalled = Instant::now();
    herald.terminate();
    let status = herald
        .wait_exit_async(Duration::from_secs(5))
        .await
        .expect("herald exits within drain_timeout + 2 s");
    let exited = signalled.elapsed();
    let mut ends = Vec::new();
    let mut hints = Vec::new();
    for w in waiting {
        let (ended, at, raw) = w.await.unwrap();
        assert!(ended, "every stream was ended by the server");
        hints.push(trailing_retry(&raw).unwrap_or_else(|| {
            panic!(
                "each stream ends with a retry: hint; got {:?}",
                String::from_utf8_lossy(&raw)
            )
        }));
        ends.push(at - signalled);
    }
    ends.sort();
    hints.sort();
    let spread = ends[STREAMS - 1] - ends[0];
    eprintln!(
        "drain 3s with {STREAMS} streams: ends from {:?} to {:?} after SIGTERM \
         (spread {spread:?}, median {:?}); retry hints {} .. {} ms; exit {status} after \
         {exited:?}",
        ends[0],
        ends[STREAMS - 1],
        ends[STREAMS / 2],
        hints[0],
        hints[STREAMS - 1]
    );
    assert!(status.success(), "exit status 0: {status}");
    assert!(
        spread > Duration::from_millis(500),
        "ends are spread over the window: {ends:?}"
    );
    assert!(
        ends[STREAMS - 1] < Duration::from_secs(3),
        "every stream ended within drain_timeout"
    );
    // sse.retry (3 s) plus jitter up to the drain spread (70% of 3 s).
    assert!(
        hints.iter().all(|h| (3000..=5100).contains(h)),
        "retry hints: {hints:?}"
    );
    assert!(
        hints[STREAMS - 1] - hints[0] > 200,
        "jittered hints: {hints:?}"
    );
}
