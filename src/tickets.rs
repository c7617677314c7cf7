//! Short-lived, single-use subscribe tickets: `POST /tickets` trades a bearer JWT for a
//! random ticket that `EventSource` can carry in the URL (`/events?ticket=...`) without
//! exposing the long-lived token in URLs and logs.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::auth::Grants;

pub struct Tickets {
    ttl: Duration,
    max: usize,
    issued: Mutex<HashMap<String, (Instant, Grants)>>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many unused tickets (auth.max_tickets)")]
pub struct TicketsFull;

impl Tickets {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max,
            issued: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Instant, Grants)>> {
        self.issued.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new ticket carrying `grants`, valid for the configured TTL.
    pub fn issue(&self, grants: Grants) -> Result<String, TicketsFull> {
        let mut map = self.lock();
        if map.len() >= self.max {
            let now = Instant::now();
            map.retain(|_, (expires, _)| *expires > now);
            if map.len() >= self.max {
                return Err(TicketsFull);
            }
        }
        let ticket = format!("{:032x}", rand::rng().random::<u128>());
        map.insert(ticket.clone(), (Instant::now() + self.ttl, grants));
        Ok(ticket)
    }

    /// Use a ticket: its grants if it exists and has not expired. It is gone afterwards.
    pub fn redeem(&self, ticket: &str) -> Option<Grants> {
        let (expires, grants) = self.lock().remove(ticket)?;
        (expires > Instant::now()).then_some(grants)
    }

    pub fn sweep(&self) {
        let now = Instant::now();
        self.lock().retain(|_, (expires, _)| *expires > now);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_and_expiring() {
        let t = Tickets::new(Duration::from_millis(30), 2);
        let a = t.issue(Grants::from_patterns(&["x"])).unwrap();
        assert_eq!(a.len(), 32);
        assert!(t.redeem(&a).unwrap().allows("x"));
        assert!(t.redeem(&a).is_none(), "second use fails");
        let b = t.issue(Grants::all()).unwrap();
        let _c = t.issue(Grants::all()).unwrap();
        assert_eq!(t.issue(Grants::all()), Err(TicketsFull));
        std::thread::sleep(Duration::from_millis(40));
        assert!(t.redeem(&b).is_none(), "expired");
        t.sweep();
        assert!(t.is_empty());
        assert!(t.issue(Grants::all()).is_ok());
    }
}
