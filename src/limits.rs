//! Admission of new event streams: a global cap, a per-client-IP cap, and an optional
//! per-IP rate of new streams (reconnect storms). A refused stream gets 429/503 with
//! `Retry-After`, never a hang.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The admission limits, from `limits.*`.
#[derive(Debug, Clone)]
pub struct AdmissionLimits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// New streams per second per IP; 0 turns the rate limit off.
    pub new_streams_per_ip_per_second: f64,
    /// Streams an IP may open in a burst before the rate applies.
    pub new_streams_burst_per_ip: f64,
    pub retry_after: Duration,
}

/// Why a stream was not admitted; `code` is the JSON error and metric reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 503: the node holds `limits.max_connections` streams.
    NodeFull,
    /// 429: this IP holds `limits.max_connections_per_ip` streams.
    TooManyFromIp,
    /// 429: this IP opens streams faster than `limits.new_streams_per_ip_per_second`.
    RateLimited { retry_after_secs: u64 },
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NodeFull => "max_connections",
            Refusal::TooManyFromIp => "max_connections_per_ip",
            Refusal::RateLimited { .. } => "rate_limited",
        }
    }
}

struct IpState {
    streams: usize,
    /// Token bucket for new streams (unused when the rate limit is off).
    tokens: f64,
    refilled: Instant,
}

pub struct Admission {
    open: AtomicUsize,
    /// Entries exist while an IP has streams or an unrefilled bucket; swept otherwise.
    per_ip: Mutex<HashMap<IpAddr, IpState>>,
}

/// Held by an open stream; dropping it gives the slot back.
pub struct StreamPermit {
    admission: Arc<Admission>,
    ip: IpAddr,
    /// No rate limit when admitted: nothing to remember once the IP's last stream ends.
    forget_when_empty: bool,
}

impl Admission {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, IpState>> {
        self.per_ip.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admit one more stream from `ip` under `limits` (the current ones: a lowered cap
    /// refuses new streams and leaves open ones be), or say why not.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &AdmissionLimits,
    ) -> Result<StreamPermit, Refusal> {
        let mut map = self.lock();
        if self.open.load(Ordering::Relaxed) >= limits.max_connections {
            return Err(Refusal::NodeFull);
        }
        let now = Instant::now();
        let rate = limits.new_streams_per_ip_per_second;
        let burst = limits.new_streams_burst_per_ip;
        let state = map.entry(ip).or_insert(IpState {
            streams: 0,
            tokens: burst,
            refilled: now,
        });
        if state.streams >= limits.max_connections_per_ip {
            return Err(Refusal::TooManyFromIp);
        }
        if rate > 0.0 {
            let elapsed = now.duration_since(state.refilled).as_secs_f64();
            state.tokens = (state.tokens + elapsed * rate).min(burst);
            state.refilled = now;
            if state.tokens < 1.0 {
                let wait = ((1.0 - state.tokens) / rate).ceil().max(1.0) as u64;
                return Err(Refusal::RateLimited {
                    retry_after_secs: wait,
                });
            }
            state.tokens -= 1.0;
        }
        state.streams += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(StreamPermit {
            admission: self.clone(),
            ip,
            forget_when_empty: rate <= 0.0,
        })
    }

    /// Streams currently admitted.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// IPs currently tracked (bounded: IPs with streams, plus buckets still refilling).
    pub fn tracked_ips(&self) -> usize {
        self.lock().len()
    }

    /// Forget IPs with no streams whose bucket has refilled under `limits`.
    pub fn sweep(&self, limits: &AdmissionLimits) {
        let now = Instant::now();
        let rate = limits.new_streams_per_ip_per_second;
        let burst = limits.new_streams_burst_per_ip;
        self.lock().retain(|_, s| {
            let refilled = rate <= 0.0
                || s.tokens + now.duration_since(s.refilled).as_secs_f64() * rate >= burst;
            s.streams > 0 || !refilled
        });
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut map = self.admission.lock();
        if let Some(state) = map.get_mut(&self.ip) {
            state.streams -= 1;
            if state.streams == 0 && self.forget_when_empty {
                map.remove(&self.ip);
            }
        }
        self.admission.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize, rate: f64, burst: f64) -> AdmissionLimits {
        AdmissionLimits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            new_streams_per_ip_per_second: rate,
            new_streams_burst_per_ip: burst,
            retry_after: Duration::from_secs(5),
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn global_and_per_ip_caps_release_on_drop() {
        let l = limits(3, 2, 0.0, 0.0);
        let a = Admission::new();
        let p1 = a.admit(ip(1), &l).unwrap();
        let _p2 = a.admit(ip(1), &l).unwrap();
        assert_eq!(a.admit(ip(1), &l).err(), Some(Refusal::TooManyFromIp));
        let _p3 = a.admit(ip(2), &l).unwrap();
        assert_eq!(a.admit(ip(3), &l).err(), Some(Refusal::NodeFull));
        drop(p1);
        let _p4 = a.admit(ip(3), &l).unwrap();
        assert_eq!(a.open(), 3);
        // A lowered cap (a reload) refuses new streams and leaves open ones be.
        let lowered = limits(1, 2, 0.0, 0.0);
        assert_eq!(a.admit(ip(4), &lowered).err(), Some(Refusal::NodeFull));
        assert_eq!(a.open(), 3);
    }

    #[test]
    fn rate_limit_with_burst_then_sweep_forgets() {
        let l = limits(100, 100, 0.5, 2.0);
        let a = Admission::new();
        drop(a.admit(ip(1), &l).unwrap());
        drop(a.admit(ip(1), &l).unwrap());
        match a.admit(ip(1), &l) {
            Err(Refusal::RateLimited { retry_after_secs }) => assert!(retry_after_secs >= 1),
            other => panic!("expected rate limit, got {:?}", other.err()),
        }
        assert!(a.admit(ip(2), &l).is_ok(), "other IPs unaffected");
        assert_eq!(a.tracked_ips(), 2);
        a.sweep(&l);
        assert_eq!(a.tracked_ips(), 2, "buckets still refilling are kept");
    }

    #[test]
    fn no_rate_limit_means_no_leftover_entries() {
        let l = limits(10, 10, 0.0, 0.0);
        let a = Admission::new();
        for n in 0..5 {
            drop(a.admit(ip(n), &l).unwrap());
        }
        assert_eq!(a.tracked_ips(), 0);
    }
}
