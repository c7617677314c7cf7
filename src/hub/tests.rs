use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use super::*;

pub(super) fn settings(history: usize, queue: usize) -> HubSettings {
    HubSettings {
        history_max_events: history,
        history_max_age: Duration::from_secs(3600),
        subscriber_queue_events: queue,
        subscriber_queue_bytes: 1 << 20,
        max_channels: 100,
        max_subscribers_per_channel: 100,
        reset_event: "reset".into(),
        coalesce_window: Duration::ZERO,
        mirror: false,
    }
}

fn hub(history: usize, queue: usize) -> Arc<Hub> {
    Hub::new(settings(history, queue), Arc::new(Metrics::new()))
}

fn ev(channel: &str, data: &str) -> NewEvent {
    NewEvent {
        channel: channel.into(),
        event: None,
        data: data.into(),
        retry: None,
    }
}

/// Counts wake-ups, so a test sees whether a parked subscriber was woken.
#[derive(Default)]
pub(super) struct CountingWaker(pub AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

pub(super) fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Poll until Pending, returning the IDs delivered (parsed from the `id:` lines).
pub(super) fn drain(sub: &mut Subscription, waker: &Waker) -> (Vec<u64>, SubscriptionPoll, String) {
    let mut cx = Context::from_waker(waker);
    let mut ids = Vec::new();
    let mut text = String::new();
    loop {
        let mut out = Vec::new();
        let r = sub.poll_events(&mut cx, &mut out);
        let chunk: String = out
            .iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect();
        ids.extend(
            chunk
                .lines()
                .filter_map(|l| l.strip_prefix("id: "))
                .map(|i| i.parse::<u64>().unwrap()),
        );
        text.push_str(&chunk);
        match r {
            SubscriptionPoll::Events(_) => {}
            // Parked after the events it took: what a poll would say next.
            SubscriptionPoll::CaughtUp(_) => return (ids, SubscriptionPoll::Pending, text),
            other => return (ids, other, text),
        }
    }
}

#[test]
fn publish_wakes_a_parked_subscriber_and_delivers_once() {
    let hub = hub(10, 10);
    let mut sub = hub.subscribe(&names(&["a"]), None).unwrap();
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(counter.clone());
    assert_eq!(drain(&mut sub, &waker).1, SubscriptionPoll::Pending);
    let ids = hub.publish(&[ev("a", "1"), ev("a", "2")]).unwrap();
    assert_eq!(counter.0.load(Ordering::SeqCst), 1, "one wake per publish");
    let (got, end, _) = drain(&mut sub, &waker);
    assert_eq!(got, ids);
    assert_eq!(end, SubscriptionPoll::Pending);
    // Parking twice without a publish in between registers once.
    drain(&mut sub, &waker);
    hub.publish(&[ev("a", "3")]).unwrap();
    assert_eq!(counter.0.load(Ordering::SeqCst), 2);
}

#[test]
fn ids_increase_across_channels() {
    let hub = hub(10, 10);
    let a = hub.publish(&[ev("a", "1")]).unwrap()[0];
    let b = hub.publish(&[ev("b", "1")]).unwrap()[0];
    let c = hub.publish(&[ev("a", "2")]).unwrap()[0];
    assert!(a < b && b < c);
}

#[test]
fn resume_replays_after_the_id_in_order_across_channels() {
    let hub = hub(100, 100);
    let first = hub.publish(&[ev("a", "0")]).unwrap()[0];
    let all = hub
        .publish(&[ev("b", "1"), ev("a", "2"), ev("c", "x"), ev("b", "3")])
        .unwrap();
    let rest = vec![all[0], all[1], all[3]];
    let mut sub = hub
        .subscribe(&names(&["b", "a"]), Some(&first.to_string()))
        .unwrap();
    let waker = Waker::noop().clone();
    let (got, _, text) = drain(&mut sub, &waker);
    assert_eq!(got, rest);
    assert!(!text.contains("reset"));
}

#[test]
fn resume_from_the_latest_id_replays_nothing() {
    let hub = hub(10, 10);
    let last = hub.publish(&[ev("a", "0")]).unwrap()[0];
    let mut sub = hub
        .subscribe(&names(&["a"]), Some(&last.to_string()))
        .unwrap();
    let (got, end, _) = drain(&mut sub, Waker::noop());
    assert!(got.is_empty());
    assert_eq!(end, SubscriptionPoll::Pending);
}

#[test]
fn unknown_or_evicted_ids_start_with_a_reset() {
    let hub = hub(3, 3);
    let ids: Vec<u64> = (0..5)
        .map(|i| hub.publish(&[ev("a", &i.to_string())]).unwrap()[0])
        .collect();
    let latest = *ids.last().unwrap();
    for (from, reason) in [
        ("garbage".to_string(), "unknown_id"),
        ((latest + 10).to_string(), "unknown_id"),
        ("1".to_string(), "unknown_id"),
        (ids[0].to_string(), "history_exhausted"),
    ] {
        let mut sub = hub.subscribe(&names(&["a"]), Some(&from)).unwrap();
        assert!(sub.starts_with_reset(), "{from}");
        let (got, _, text) = drain(&mut sub, Waker::noop());
        assert!(text.starts_with("event: reset\n"), "{text}");
        assert!(text.contains(reason), "{from}: {text}");
        assert_eq!(
            got,
            vec![latest],
            "reset carries the latest ID, nothing replayed"
        );
    }
    // The oldest retained event's predecessor is still a full resume.
    let mut sub = hub
        .subscribe(&names(&["a"]), Some(&ids[1].to_string()))
        .unwrap();
    assert_eq!(drain(&mut sub, Waker::noop()).0, ids[2..].to_vec());
}

#[test]
fn a_subscriber_further_behind_than_its_queue_lags() {
    let hub = hub(100, 4);
    let mut sub = hub.subscribe(&names(&["a"]), None).unwrap();
    for i in 0..5 {
        hub.publish(&[ev("a", &i.to_string())]).unwrap();
    }
    assert_eq!(drain(&mut sub, Waker::noop()).1, SubscriptionPoll::Lagged);
    let mut ok = hub.subscribe(&names(&["a"]), None).unwrap();
    for i in 0..4 {
        hub.publish(&[ev("a", &i.to_string())]).unwrap();
    }
    assert_eq!(drain(&mut ok, Waker::noop()).0.len(), 4);
}

#[test]
fn a_subscriber_with_too_many_unread_bytes_lags() {
    let mut s = settings(100, 100);
    s.subscriber_queue_bytes = 1000;
    let hub = Hub::new(s, Arc::new(Metrics::new()));
    let mut sub = hub.subscribe(&names(&["a"]), None).unwrap();
    hub.publish(&[ev("a", &"x".repeat(900))]).unwrap();
    assert_eq!(drain(&mut sub, Waker::noop()).0.len(), 1);
    hub.publish(&[ev("a", &"x".repeat(600)), ev("a", &"x".repeat(600))])
        .unwrap();
    assert_eq!(drain(&mut sub, Waker::noop()).1, SubscriptionPoll::Lagged);
}

#[test]
fn sweep_removes_idle_channels_and_remembers_their_floor() {
    let mut s = settings(10, 10);
    s.history_max_age = Duration::from_millis(1);
    let hub = Hub::new(s, Arc::new(Metrics::new()));
    let id = hub.publish(&[ev("gone", "x")]).unwrap()[0];
    let kept = hub.subscribe(&names(&["kept"]), None).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    hub.sweep();
    assert_eq!(
        hub.channel_count(),
        1,
        "only the channel with a subscriber stays"
    );
    let mut sub = hub
        .subscribe(&names(&["gone"]), Some(&(id - 1).to_string()))
        .unwrap();
    assert!(
        sub.starts_with_reset(),
        "its event aged out: the gap is reported"
    );
    drain(&mut sub, Waker::noop());
    drop(sub);
    drop(kept);
    hub.sweep();
    assert_eq!(hub.channel_count(), 0);
}

#[test]
fn closing_ends_subscriptions_and_refuses_publishes() {
    let hub = hub(10, 10);
    let mut sub = hub.subscribe(&names(&["a"]), None).unwrap();
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(counter.clone());
    drain(&mut sub, &waker);
    hub.close();
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    assert_eq!(drain(&mut sub, &waker).1, SubscriptionPoll::Closed);
    assert_eq!(hub.publish(&[ev("a", "x")]), Err(HubError::ShuttingDown));
}

#[test]
fn subscriber_limit_per_channel() {
    let mut s = settings(10, 10);
    s.max_subscribers_per_channel = 1;
    let hub = Hub::new(s, Arc::new(Metrics::new()));
    let first = hub.subscribe(&names(&["a"]), None).unwrap();
    assert_eq!(
        hub.subscribe(&names(&["b", "a"]), None).err(),
        Some(HubError::ChannelFull("a".into()))
    );
    drop(first);
    hub.subscribe(&names(&["b", "a"]), None).unwrap();
}

#[test]
fn channel_limit_refuses_new_channels_only() {
    let mut s = settings(10, 10);
    s.max_channels = 2;
    let hub = Hub::new(s, Arc::new(Metrics::new()));
    hub.publish(&[ev("a", "1"), ev("b", "1")]).unwrap();
    assert_eq!(
        hub.publish(&[ev("c", "1")]),
        Err(HubError::TooManyChannels(2))
    );
    hub.publish(&[ev("a", "2")]).unwrap();
    assert_eq!(
        hub.subscribe(&names(&["a", "d"]), None).err(),
        Some(HubError::TooManyChannels(2))
    );
    assert_eq!(hub.channel_count(), 2);
    hub.subscribe(&names(&["a", "b"]), None).unwrap();
}

#[test]
fn subscribing_while_closing_is_refused() {
    let hub = hub(10, 10);
    hub.close();
    assert_eq!(
        hub.subscribe(&names(&["a"]), None).err(),
        Some(HubError::ShuttingDown)
    );
}

/// Publishers on several threads, one subscriber on several channels: every event
/// arrives exactly once and IDs only go up, whatever the interleaving.
#[test]
fn merged_delivery_is_in_id_order_under_concurrent_publishing() {
    let hub = hub(100_000, 100_000);
    let channels = ["a", "b", "c"];
    let mut sub = hub.subscribe(&names(&channels), None).unwrap();
    let per_thread = 3000;
    let publishers: Vec<_> = channels
        .iter()
        .map(|c| {
            let hub = hub.clone();
            let c = c.to_string();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    hub.publish(&[ev(&c, &i.to_string())]).unwrap();
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    let waker = Waker::noop();
    while seen.len() < per_thread * channels.len() {
        seen.extend(drain(&mut sub, waker).0);
    }
    for p in publishers {
        p.join().unwrap();
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "IDs strictly increase"
    );
    assert_eq!(seen.len(), per_thread * channels.len());
}

/// Inside the coalescing window a publish does not wake parked subscribers at once; the
/// flusher wakes them when the window ends, and they read every event in one poll.
#[tokio::test(start_paused = true)]
async fn coalescing_defers_wakes_to_the_window_end() {
    let mut s = settings(100, 100);
    s.coalesce_window = Duration::from_millis(50);
    let hub = Hub::new(s, Arc::new(Metrics::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let flusher = tokio::spawn({
        let hub = hub.clone();
        let stop = stop.clone();
        async move { hub.run_flusher(stop).await }
    });
    let mut sub = hub.subscribe(&names(&["a"]), None).unwrap();
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(counter.clone());
    drain(&mut sub, &waker);
    hub.publish(&[ev("a", "1")]).unwrap();
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        1,
        "an idle channel wakes at once"
    );
    assert_eq!(drain(&mut sub, &waker).0.len(), 1);
    hub.publish(&[ev("a", "2")]).unwrap();
    hub.publish(&[ev("a", "3")]).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        1,
        "deferred inside the window"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        2,
        "one wake at the window's end"
    );
    assert_eq!(drain(&mut sub, &waker).0.len(), 2);
    stop.cancel();
    flusher.await.unwrap();
}

#[test]
fn polls_report_when_their_oldest_live_event_reached_the_hub() {
    let hub = hub(100, 100);
    let waker = Waker::from(Arc::new(CountingWaker::default()));
    let mut cx = Context::from_waker(&waker);
    let first = hub.publish(&[ev("a", "old")]).unwrap()[0];
    // A resume from before `first`: replayed history does not count as a delivery.
    let mut resumed = hub
        .subscribe(&names(&["a"]), Some(&(first - 1).to_string()))
        .unwrap();
    let mut out = Vec::new();
    assert_eq!(
        resumed.poll_events(&mut cx, &mut out),
        SubscriptionPoll::CaughtUp(1)
    );
    assert_eq!(
        resumed.take_oldest_live_us(),
        None,
        "a replay is no delivery"
    );
    assert_eq!(hub.metrics().resume_replayed.get_sample_count(), 1);
    assert_eq!(hub.metrics().resume_replayed.get_sample_sum(), 1.0);

    let mut merged = hub.subscribe(&names(&["a", "b"]), None).unwrap();
    let before = hub.now_us();
    std::thread::sleep(Duration::from_millis(5));
    hub.publish(&[ev("b", "live")]).unwrap();
    hub.publish(&[ev("a", "later")]).unwrap();
    for sub in [&mut resumed, &mut merged] {
        let mut out = Vec::new();
        assert!(matches!(
            sub.poll_events(&mut cx, &mut out),
            SubscriptionPoll::Events(_) | SubscriptionPoll::CaughtUp(_)
        ));
        let at = sub
            .take_oldest_live_us()
            .expect("live events were delivered");
        assert!(
            at >= before + 5_000,
            "stamped when published: {at} vs {before}"
        );
        assert_eq!(sub.take_oldest_live_us(), None, "taken once");
    }
    let latency = hub.seconds_since(before, std::time::Instant::now());
    assert!(latency >= 0.005, "{latency}");
}

#[test]
fn channels_count_in_the_first_group_they_match() {
    let hub = hub(10, 10);
    hub.publish(&[
        ev("chat:1", "x"),
        ev("chat:2", "x"),
        ev("news", "x"),
        ev("misc", "x"),
    ])
    .unwrap();
    let _s1 = hub.subscribe(&names(&["chat:1", "news"]), None).unwrap();
    let _s2 = hub.subscribe(&names(&["chat:2"]), None).unwrap();
    let patterns = [
        wildmatch::WildMatch::new("chat:*"),
        wildmatch::WildMatch::new("*"),
    ];
    // (subscribers, channels): chat:* has both chat channels; "*" takes the rest first,
    // so nothing is left for the last group ("other").
    assert_eq!(hub.count_by_group(&patterns), vec![(2, 2), (1, 2), (0, 0)]);
    assert_eq!(hub.count_by_group(&patterns[..1]), vec![(2, 2), (1, 2)]);
}
