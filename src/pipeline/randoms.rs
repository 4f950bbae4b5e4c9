//! Without a ledger: the `Random`s this process used within the service's
//! repeat window, and for what content, so that two different calls never
//! share one (on the documentation's stricter reading the second would be
//! dropped as a repeat). With a ledger the same check is made in PostgreSQL,
//! across replicas and restarts.

use std::collections::{HashMap, VecDeque};

use tokio::time::Instant;

use crate::tencent::body::REPEAT_WINDOW;

#[derive(Debug, Default)]
pub struct RecentRandoms {
    /// `Random` -> the content digest of the call that used it.
    used: HashMap<u32, [u8; 32]>,
    /// When each was claimed, oldest first, to forget them after the window.
    order: VecDeque<(Instant, u32)>,
}

impl RecentRandoms {
    /// Claims `random` for a call with this content: false if a different
    /// call used it within the repeat window.
    pub fn claim(&mut self, random: u32, content: [u8; 32], now: Instant) -> bool {
        while let Some(&(at, old)) = self.order.front() {
            if now.saturating_duration_since(at) < REPEAT_WINDOW {
                break;
            }
            self.order.pop_front();
            if self.order.iter().all(|(_, r)| *r != old) {
                self.used.remove(&old);
            }
        }
        match self.used.get(&random) {
            Some(existing) if *existing != content => false,
            _ => {
                self.used.insert(random, content);
                self.order.push_back((now, random));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_random_is_held_by_its_content_for_the_repeat_window() {
        let mut recent = RecentRandoms::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert!(recent.claim(7, a, Instant::now()));
        assert!(!recent.claim(7, b, Instant::now()), "another content");
        assert!(recent.claim(7, a, Instant::now()), "the same content again");
        assert!(recent.claim(8, b, Instant::now()));
        tokio::time::advance(REPEAT_WINDOW + Duration::from_secs(1)).await;
        assert!(recent.claim(7, b, Instant::now()), "free after the window");
    }
}
