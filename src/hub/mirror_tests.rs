//! The mirror role: follow, merge at the barrier, catch-up after a reconnect, and the
//! multi-channel merge over events that arrive from a backend.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Waker;

use bytes::Bytes;

use super::tests::{drain, names, settings, CountingWaker};
use super::*;
use crate::metrics::Metrics;

fn mirror() -> Arc<Hub> {
    let mut s = settings(100, 100);
    s.mirror = true;
    Hub::new(s, Arc::new(Metrics::new()))
}

fn encoded(id: u64) -> Bytes {
    Bytes::from(format!("id: {id}\ndata: {id}\n\n"))
}

fn retained(ids: &[u64]) -> Vec<Retained> {
    ids.iter()
        .map(|&id| Retained {
            id,
            bytes: encoded(id),
        })
        .collect()
}

/// Follow `channel` with `history` and the backend's gap `floor`, completed at once.
fn follow(hub: &Hub, channel: &str, history: &[u64], floor: u64, barrier: u64) {
    let plan = hub.begin_follow(&names(&[channel])).unwrap();
    assert_eq!(plan.load, names(&[channel]));
    hub.stage(channel, retained(history), floor, barrier);
    hub.complete_barrier(barrier);
}

fn waker() -> (Arc<CountingWaker>, Waker) {
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(counter.clone());
    (counter, waker)
}

#[test]
fn a_channel_is_read_only_once_followed() {
    let hub = mirror();
    assert_eq!(
        hub.subscribe(&names(&["a"]), None).err(),
        Some(HubError::NotFollowed("a".into()))
    );
    let plan = hub.begin_follow(&names(&["a", "a"])).unwrap();
    assert_eq!(plan.load, names(&["a"]));
    // Loading: a second follower waits instead of loading again, nobody subscribes yet.
    assert_eq!(
        hub.begin_follow(&names(&["a"])).unwrap(),
        FollowPlan {
            load: Vec::new(),
            wait: true
        }
    );
    assert_eq!(hub.follow_status(&names(&["a"])), FollowStatus::Loading);
    assert!(hub.subscribe(&names(&["a"]), None).is_err());
    hub.stage("a", Vec::new(), 0, 1);
    hub.complete_barrier(1);
    assert_eq!(hub.follow_status(&names(&["a"])), FollowStatus::Live);
    hub.subscribe(&names(&["a"]), None).unwrap();
}

/// What arrived while loading and what was loaded overlap: joined, no gap, no duplicate.
#[test]
fn history_and_events_buffered_while_loading_join_exactly() {
    let hub = mirror();
    let base = hub.horizon();
    hub.begin_follow(&names(&["a"])).unwrap();
    for id in [base + 3, base + 4] {
        hub.apply("a", id, encoded(id));
    }
    hub.stage("a", retained(&[base + 1, base + 2, base + 3]), 0, 7);
    hub.complete_barrier(6); // an earlier barrier completes nothing
    assert_eq!(hub.follow_status(&names(&["a"])), FollowStatus::Loading);
    hub.complete_barrier(7);
    let (_, w) = waker();
    let mut sub = hub
        .subscribe(&names(&["a"]), Some(&(base + 1).to_string()))
        .unwrap();
    assert_eq!(drain(&mut sub, &w).0, vec![base + 2, base + 3, base + 4]);
    hub.apply("a", base + 5, encoded(base + 5));
    hub.apply("a", base + 5, encoded(base + 5)); // a duplicate is dropped
    assert_eq!(drain(&mut sub, &w).0, vec![base + 5]);
}

/// The backend's gap floor and epoch decide resets, as the owner's own floors do.
#[test]
fn resumes_below_the_backend_floor_or_epoch_get_a_reset() {
    let hub = mirror();
    let base = hub.horizon();
    follow(&hub, "a", &[base + 5, base + 6], base + 4, 1);
    hub.apply("a", base + 7, encoded(base + 7));
    let (_, w) = waker();
    let mut ok = hub
        .subscribe(&names(&["a"]), Some(&(base + 4).to_string()))
        .unwrap();
    assert!(!ok.starts_with_reset());
    assert_eq!(drain(&mut ok, &w).0, vec![base + 5, base + 6, base + 7]);
    let gap = hub
        .subscribe(&names(&["a"]), Some(&(base + 3).to_string()))
        .unwrap();
    assert!(gap.starts_with_reset());
    // Redis came back without its data: its new epoch makes every older ID unknown.
    hub.rebase(base + 100);
    let old = hub
        .subscribe(&names(&["a"]), Some(&(base + 6).to_string()))
        .unwrap();
    assert!(old.starts_with_reset());
}

/// A multi-channel subscriber never gets a loaded event ahead of a smaller ID still on
/// its way: it parks, and the event's own (duplicate) arrival wakes it.
#[test]
fn merged_delivery_waits_for_the_horizon_over_loaded_history() {
    let hub = mirror();
    let base = hub.horizon();
    follow(&hub, "a", &[], 0, 1);
    // b's history holds base+2, published after base+1 on a, which is still in transit.
    follow(&hub, "b", &[base + 2], 0, 2);
    let (counter, w) = waker();
    let mut sub = hub.subscribe(&names(&["a", "b"]), None).unwrap();
    let mut sub_from_start = hub
        .subscribe(&names(&["a", "b"]), Some(&base.to_string()))
        .unwrap();
    assert_eq!(drain(&mut sub_from_start, &w).0, Vec::<u64>::new());
    assert_eq!(drain(&mut sub, &w).1, SubscriptionPoll::Pending);
    hub.apply("a", base + 1, encoded(base + 1));
    assert_eq!(drain(&mut sub_from_start, &w).0, vec![base + 1]);
    let woken = counter.0.load(Ordering::SeqCst);
    hub.apply("b", base + 2, encoded(base + 2)); // already loaded: only moves the horizon
    assert!(
        counter.0.load(Ordering::SeqCst) > woken,
        "parked subscriber woken"
    );
    assert_eq!(drain(&mut sub_from_start, &w).0, vec![base + 2]);
    assert_eq!(drain(&mut sub, &w).0, vec![base + 1, base + 2]);
}

/// After a reconnect every followed channel catches up at one barrier: what was missed
/// arrives in ID order across channels, then what arrived meanwhile.
#[test]
fn catch_up_after_a_reconnect_is_complete_and_ordered() {
    let hub = mirror();
    let base = hub.horizon();
    follow(&hub, "a", &[base + 1], 0, 1);
    follow(&hub, "b", &[], 0, 2);
    let (_, w) = waker();
    let mut sub = hub.subscribe(&names(&["a", "b"]), None).unwrap();
    hub.apply("a", base + 1, encoded(base + 1)); // loaded already: moves the horizon
    hub.apply("b", base + 2, encoded(base + 2));
    assert_eq!(drain(&mut sub, &w).0, vec![base + 1, base + 2]);
    let mut catch_up = hub.begin_resync();
    catch_up.sort();
    assert_eq!(
        catch_up,
        vec![("a".to_string(), base + 1), ("b".to_string(), base + 2)]
    );
    // Published while the node was away (lost on pub/sub), then one that came after.
    hub.apply("a", base + 6, encoded(base + 6));
    assert_eq!(
        drain(&mut sub, &w).0,
        Vec::<u64>::new(),
        "waits for the catch-up"
    );
    hub.stage("a", retained(&[base + 3, base + 5]), 0, 3);
    hub.stage("b", retained(&[base + 4]), 0, 3);
    hub.complete_barrier(3);
    assert_eq!(
        drain(&mut sub, &w).0,
        vec![base + 3, base + 4, base + 5, base + 6]
    );
    assert!(hub.horizon() >= base + 6);
}

/// Events trimmed from Redis before the node could catch up end the subscribers, which
/// resume and learn of the gap, instead of skipping it silently.
#[test]
fn a_gap_found_at_catch_up_ends_the_subscribers() {
    let hub = mirror();
    let base = hub.horizon();
    follow(&hub, "a", &[base + 1], 0, 1);
    let (_, w) = waker();
    let mut sub = hub.subscribe(&names(&["a"]), None).unwrap();
    hub.begin_resync();
    hub.stage("a", retained(&[base + 9]), base + 8, 2);
    hub.complete_barrier(2);
    assert_eq!(drain(&mut sub, &w).1, SubscriptionPoll::Lagged);
    let resumed = hub
        .subscribe(&names(&["a"]), Some(&(base + 1).to_string()))
        .unwrap();
    assert!(resumed.starts_with_reset());
}

/// A follow in progress when the connection is replaced is dropped; its caller follows
/// again. Channels nobody reads leave the mirror at the next sweep.
#[test]
fn reconnects_drop_follows_in_progress_and_sweeps_drop_unread_channels() {
    let hub = mirror();
    hub.begin_follow(&names(&["loading"])).unwrap();
    follow(&hub, "read", &[], 0, 1);
    follow(&hub, "unread", &[], 0, 2);
    let sub = hub.subscribe(&names(&["read"]), None).unwrap();
    let caught_up: Vec<String> = hub.begin_resync().into_iter().map(|(n, _)| n).collect();
    assert!(!caught_up.contains(&"loading".to_string()), "{caught_up:?}");
    assert_eq!(
        hub.follow_status(&names(&["loading"])),
        FollowStatus::Missing
    );
    hub.stage("read", Vec::new(), 0, 3);
    hub.stage("unread", Vec::new(), 0, 3);
    hub.complete_barrier(3);
    hub.sweep();
    assert_eq!(hub.follow_status(&names(&["read"])), FollowStatus::Live);
    assert_eq!(
        hub.follow_status(&names(&["unread"])),
        FollowStatus::Missing
    );
    drop(sub);
}

/// Events lost on pub/sub (a reconnect) on channels nobody followed then: the last ID a
/// load read moves the horizon at its barrier, so resumes from those IDs are not
/// refused as unknown and merged streams do not wait for the next event.
#[test]
fn a_loaded_last_id_moves_the_horizon_at_its_barrier() {
    let hub = mirror();
    let base = hub.horizon();
    hub.begin_follow(&names(&["quiet"])).unwrap();
    hub.stage("quiet", retained(&[base + 40]), 0, 1);
    hub.stage_horizon(1, base + 50);
    hub.complete_barrier(1);
    assert_eq!(hub.horizon(), base + 50);
    let resumed = hub
        .subscribe(&names(&["quiet"]), Some(&(base + 45).to_string()))
        .unwrap();
    assert!(!resumed.starts_with_reset());
    let (_, w) = waker();
    let mut merged = hub
        .subscribe(&names(&["quiet"]), Some(&(base + 1).to_string()))
        .unwrap();
    assert_eq!(drain(&mut merged, &w).0, vec![base + 40]);
}

/// While a catch-up is missing channels, no other barrier moves the horizon past what
/// those channels lack.
#[test]
fn a_follow_completing_during_a_catch_up_leaves_the_horizon() {
    let hub = mirror();
    let base = hub.horizon();
    follow(&hub, "a", &[], 0, 1);
    follow(&hub, "b", &[], 0, 2);
    let (_, w) = waker();
    let mut sub = hub.subscribe(&names(&["a", "b"]), None).unwrap();
    hub.begin_resync();
    // A new channel's follow completes first and read Redis's last ID as base+9.
    hub.begin_follow(&names(&["c"])).unwrap();
    hub.stage("c", retained(&[base + 9]), 0, 3);
    hub.stage_horizon(3, base + 9);
    hub.complete_barrier(3);
    assert!(
        hub.horizon() < base + 9,
        "the catch-up of a and b is pending"
    );
    hub.stage("a", retained(&[base + 5]), 0, 4);
    hub.stage("b", retained(&[base + 7]), 0, 4);
    hub.stage_horizon(4, base + 8);
    hub.complete_barrier(4);
    assert_eq!(hub.horizon(), base + 9);
    assert_eq!(drain(&mut sub, &w).0, vec![base + 5, base + 7]);
}
