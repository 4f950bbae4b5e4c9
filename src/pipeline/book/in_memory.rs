//! The book without a ledger: only the `Random`s this process used within
//! the service's repeat window, and for what content, so that two different
//! calls never share one (on the documentation's stricter reading the second
//! would be dropped as a repeat). Nothing else is remembered, so delivery
//! is at least once: a kill between a call and its acks sends it again.

use std::collections::{HashMap, VecDeque};

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::broker::DeadLetter;
use crate::ledger::{KeptReceipt, Superseded};
use crate::tencent::body::REPEAT_WINDOW;

use super::super::call::Call;
use super::super::delivery::Pending;
use super::super::job::Job;
use super::api::{Book, BookEnd, Claim, Lookup};

#[derive(Debug, Default)]
pub struct InMemory {
    /// `Random` -> the content digest of the call that used it.
    used: HashMap<u32, [u8; 32]>,
    /// When each was claimed, oldest first, to forget them after the window.
    order: VecDeque<(Instant, u32)>,
}

impl InMemory {
    /// Claims `random` for a call with this content: false if a different
    /// call used it within the repeat window. Claiming it again for the same
    /// content keeps it claimed for another window.
    fn claim_random(&mut self, random: u32, content: [u8; 32], now: Instant) -> bool {
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

impl Book for InMemory {
    async fn open(&mut self, _stop: &CancellationToken) -> Result<(), BookEnd> {
        Ok(())
    }

    fn close(&mut self) {}

    async fn look_up(&mut self, _arrived: &[(Job, Pending)]) -> Result<Lookup, BookEnd> {
        Ok(Lookup::default())
    }

    /// The first candidate `Random` no different call used within the
    /// window; a retry claims its own again, so it stays the call's.
    async fn claim(&mut self, call: &mut Call) -> Result<Claim, BookEnd> {
        for candidate in 1.. {
            let digest = call.batch.content_digest();
            if self.claim_random(call.batch.random, digest, Instant::now()) {
                break;
            }
            warn!(random = call.batch.random, "this Random was used by a different call within the repeat window: deriving the next one");
            call.batch.use_random_candidate(candidate);
        }
        Ok(Claim::Ready)
    }

    async fn release(&mut self, _call: &Call) {}

    async fn refused(&mut self, _call: &Call) -> Result<(), BookEnd> {
        Ok(())
    }

    async fn abandoned(&mut self, _: &Call, _: Option<i64>, _: &str) -> Result<(), BookEnd> {
        Ok(())
    }

    async fn delivered(&mut self, _calls: &[(i64, Option<u64>)]) -> Result<(), BookEnd> {
        Ok(())
    }

    async fn dead_lettering(&mut self, _call: i64, _maybe: bool) -> Result<(), BookEnd> {
        Ok(())
    }

    async fn dead_lettered(
        &mut self,
        _: Option<i64>,
        _: &[String],
        _: &DeadLetter,
    ) -> Result<(), BookEnd> {
        Ok(())
    }

    async fn superseded(&mut self, _jobs: &[Superseded]) -> Result<(), BookEnd> {
        Ok(())
    }

    async fn arrivals_acked(&mut self, _job_ids: &[String]) -> Result<(), BookEnd> {
        Ok(())
    }

    async fn receipts_kept(&mut self, _receipts: &[KeptReceipt]) -> Result<(), BookEnd> {
        Ok(())
    }

    async fn receipts_ready(&mut self, _job_ids: &[String]) -> Result<Vec<KeptReceipt>, BookEnd> {
        Ok(Vec::new())
    }

    async fn receipts_waiting(&mut self) -> Result<Vec<KeptReceipt>, BookEnd> {
        Ok(Vec::new())
    }

    async fn receipts_sent(&mut self, _job_ids: &[String]) {}

    fn upkeep(&self, _shutdown: &CancellationToken) -> Option<JoinHandle<()>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_random_is_held_by_its_content_for_the_repeat_window() {
        let mut recent = InMemory::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert!(recent.claim_random(7, a, Instant::now()));
        assert!(
            !recent.claim_random(7, b, Instant::now()),
            "another content"
        );
        assert!(
            recent.claim_random(7, a, Instant::now()),
            "the same content again"
        );
        assert!(recent.claim_random(8, b, Instant::now()));
        tokio::time::advance(REPEAT_WINDOW + Duration::from_secs(1)).await;
        assert!(
            recent.claim_random(7, b, Instant::now()),
            "free after the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_still_attempted_keeps_its_random_past_the_first_window() {
        let mut recent = InMemory::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert!(recent.claim_random(7, a, Instant::now()));
        // Probed again four minutes later (a halt), then four more.
        tokio::time::advance(Duration::from_secs(240)).await;
        assert!(recent.claim_random(7, a, Instant::now()));
        tokio::time::advance(Duration::from_secs(240)).await;
        assert!(
            !recent.claim_random(7, b, Instant::now()),
            "within the window of its latest attempt"
        );
    }
}
