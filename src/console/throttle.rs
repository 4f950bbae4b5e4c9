//! The budget of wrong tokens each client has: a token bucket per client
//! (see [`super::client::Client::key`]) holding [`BURST`] failures, one more
//! every [`REFILL`]. Only failures cost: the right token is checked before
//! the budget and never waits, so an operator gets in at once from an
//! address where someone else guesses. Past the budget a wrong token is
//! answered 429 with `Retry-After` at once (nothing is held open for it).
//! Memory is bounded: at most [`CLIENTS`] buckets, those refilled to full
//! forgotten (a full bucket is the same as none); clients beyond the cap
//! share one bucket until room is made.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong tokens a client may present at once.
pub const BURST: f64 = 5.0;
/// Time for one more.
pub const REFILL: Duration = Duration::from_secs(6);
/// Clients counted at once at most.
pub const CLIENTS: usize = 10_000;
/// How long a wrong token within the budget waits for its answer, so that
/// one client guessing in a row goes no faster than this.
pub const FAILURE_DELAY: Duration = Duration::from_millis(250);

/// What becomes of a wrong token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Within the budget: refused (401), after [`FAILURE_DELAY`].
    Refused,
    /// Over it: 429, to try again after this long; `first` for the first
    /// such answer since the client's last refusal (logged once).
    Throttled { retry_after: Duration, first: bool },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    warned: bool,
}

impl Bucket {
    fn full(now: Instant) -> Self {
        Self {
            tokens: BURST,
            at: now,
            warned: false,
        }
    }

    fn refill(&mut self, now: Instant, every: Duration) {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() / every.as_secs_f64();
        self.tokens = (self.tokens + gained).min(BURST);
        self.at = now;
    }

    fn charge(&mut self, now: Instant, every: Duration) -> Verdict {
        self.refill(now, every);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.warned = false;
            return Verdict::Refused;
        }
        let first = !self.warned;
        self.warned = true;
        Verdict::Throttled {
            retry_after: every.mul_f64(1.0 - self.tokens),
            first,
        }
    }
}

struct State {
    clients: HashMap<IpAddr, Bucket>,
    /// Shared by clients that found the map full.
    overflow: Bucket,
    pruned_at: Instant,
}

/// Every client's budget of wrong tokens.
pub struct Throttle {
    state: Mutex<State>,
    refill: Duration,
    capacity: usize,
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(REFILL, CLIENTS)
    }
}

impl Throttle {
    pub fn new(refill: Duration, capacity: usize) -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new(State {
                clients: HashMap::new(),
                overflow: Bucket::full(now),
                pruned_at: now,
            }),
            refill,
            capacity: capacity.max(1),
        }
    }

    /// Counts a wrong token from `client` at `now`.
    pub fn failed(&self, client: IpAddr, now: Instant) -> Verdict {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State {
            clients,
            overflow,
            pruned_at,
        } = &mut *state;
        if !clients.contains_key(&client) && clients.len() >= self.capacity {
            // At most once a second: pruning reads every bucket.
            if now.saturating_duration_since(*pruned_at) >= Duration::from_secs(1) {
                *pruned_at = now;
                let every = self.refill;
                clients.retain(|_, b| {
                    b.refill(now, every);
                    b.tokens < BURST
                });
            }
            if clients.len() >= self.capacity {
                return overflow.charge(now, self.refill);
            }
        }
        clients
            .entry(client)
            .or_insert_with(|| Bucket::full(now))
            .charge(now, self.refill)
    }

    /// Clients counted now.
    pub fn tracked(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clients
            .len()
    }
}

/// Whole seconds to put in `Retry-After`: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn a_client_gets_its_burst_then_one_per_refill() {
        let t = Throttle::new(Duration::from_secs(6), 100);
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(t.failed(ip(1), now), Verdict::Refused);
        }
        let Verdict::Throttled { retry_after, first } = t.failed(ip(1), now) else {
            panic!("the sixth at once is throttled");
        };
        assert!(
            first && retry_after == Duration::from_secs(6),
            "{retry_after:?}"
        );
        assert_eq!(retry_after_secs(retry_after), 6);
        assert!(matches!(
            t.failed(ip(1), now + Duration::from_secs(3)),
            Verdict::Throttled { first: false, .. }
        ));
        // Another client has its own budget.
        assert_eq!(t.failed(ip(2), now), Verdict::Refused);
        // Once a refill has passed, one more wrong token is only refused.
        let later = now + Duration::from_secs(7);
        assert_eq!(t.failed(ip(1), later), Verdict::Refused);
        assert!(matches!(
            t.failed(ip(1), later),
            Verdict::Throttled { first: true, .. }
        ));
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
    }

    #[test]
    fn memory_is_capped_and_full_buckets_forgotten() {
        let t = Throttle::new(Duration::from_secs(1), 3);
        let now = Instant::now();
        for n in 0..3 {
            t.failed(ip(n), now);
        }
        // Full: newcomers share the overflow bucket, and nobody is dropped
        // while every bucket still counts something.
        for _ in 0..5 {
            assert_eq!(t.failed(ip(100), now), Verdict::Refused);
        }
        assert!(matches!(t.failed(ip(101), now), Verdict::Throttled { .. }));
        assert_eq!(t.tracked(), 3);
        // Once refilled, the old buckets go and a newcomer gets its own.
        let later = now + Duration::from_secs(10);
        assert_eq!(t.failed(ip(200), later), Verdict::Refused);
        assert_eq!(t.tracked(), 1);
    }
}
