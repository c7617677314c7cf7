//! Short-lived, single-use subscribe tickets: `POST /tickets` trades a bearer JWT for a
//! random ticket that `EventSource` can carry in the URL (`/events?ticket=...`) without
//! exposing the long-lived token in URLs and logs.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::auth::Grants;

pub struct Tickets {
    issued: Mutex<HashMap<String, (Instant, Grants)>>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many unused tickets (auth.max_tickets)")]
pub struct TicketsFull;

impl Default for Tickets {
    fn default() -> Self {
        Self::new()
    }
}

impl Tickets {
    pub fn new() -> Self {
        Self {
            issued: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Instant, Grants)>> {
        self.issued.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new ticket carrying `grants`, valid for `ttl`, unless `max` are unused already
    /// (`auth.ticket_ttl`, `auth.max_tickets`, as in force when it is issued).
    pub fn issue(&self, grants: Grants, ttl: Duration, max: usize) -> Result<String, TicketsFull> {
        let mut map = self.lock();
        if map.len() >= max {
            let now = Instant::now();
            map.retain(|_, (expires, _)| *expires > now);
            if map.len() >= max {
                return Err(TicketsFull);
            }
        }
        let ticket = format!("{:032x}", rand::rng().random::<u128>());
        map.insert(ticket.clone(), (Instant::now() + ttl, grants));
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
        let t = Tickets::new();
        let (ttl, max) = (Duration::from_millis(30), 2);
        let a = t.issue(Grants::from_patterns(&["x"]), ttl, max).unwrap();
        assert_eq!(a.len(), 32);
        assert!(t.redeem(&a).unwrap().allows("x"));
        assert!(t.redeem(&a).is_none(), "second use fails");
        let b = t.issue(Grants::all(), ttl, max).unwrap();
        let _c = t.issue(Grants::all(), ttl, max).unwrap();
        assert_eq!(t.issue(Grants::all(), ttl, max), Err(TicketsFull));
        std::thread::sleep(Duration::from_millis(40));
        assert!(t.redeem(&b).is_none(), "expired");
        t.sweep();
        assert!(t.is_empty());
        assert!(t.issue(Grants::all(), ttl, max).is_ok());
    }
}
