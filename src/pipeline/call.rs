//! A call to make and what its attempts came to: a fresh batch, a half of a
//! refused one, or a call the ledger holds in flight (resent byte for byte),
//! and how each ends: settled, turned into other calls, or its jobs looked
//! up again.

use std::time::Duration;

use tokio::time::Instant;

use crate::broker::DeadReason;

use super::batcher::Batch;
use super::delivery::Pending;
use super::fate::{dead_letter_fate, Fate, Settlement};
use super::job::Job;

/// One call to make: a fresh batch, a half of a refused one, or a call the
/// ledger holds as in flight, to be resent byte for byte.
pub struct Call {
    pub batch: Batch<Pending>,
    /// The ledger's id, once recorded (a recovered call has it from the start).
    pub ledger_id: Option<i64>,
    /// The ledger's call this one is a half of.
    pub parent: Option<i64>,
    /// Recovered from the ledger: resent verbatim, never split.
    pub(super) recovered: bool,
    /// For a recovered call, once taken over: when an attempt of it may
    /// first have reached the service, by the previous worker (`None`:
    /// every attempt was refused for sure).
    pub(super) doubt_since: Option<Instant>,
    /// This session may send it: a fresh call's `Random` is claimed (no
    /// different call used it within the repeat window) and the call is
    /// recorded under it (in the ledger when there is one), so every retry
    /// keeps it; a recovered call is taken over from the session before.
    pub(super) claimed: bool,
}

impl Call {
    pub fn fresh(batch: Batch<Pending>, parent: Option<i64>) -> Self {
        Self {
            batch,
            ledger_id: None,
            parent,
            recovered: false,
            doubt_since: None,
            claimed: false,
        }
    }

    /// A call the ledger holds in flight.
    pub fn recovered(batch: Batch<Pending>, call_id: i64) -> Self {
        Self {
            batch,
            ledger_id: Some(call_id),
            parent: None,
            recovered: true,
            doubt_since: None,
            claimed: false,
        }
    }

    /// Taken over with its doubt: an attempt of it may have reached the
    /// service `doubt` ago.
    pub(super) fn in_doubt_for(&mut self, doubt: Option<Duration>) {
        let now = Instant::now();
        self.doubt_since = doubt.map(|d| now.checked_sub(d).unwrap_or(now));
    }
}

/// What one call's attempts came to.
pub enum CallEnd {
    Settled(Vec<Settlement>),
    /// The call turned into these, to make in order: the halves of a refused
    /// merged call, or the jobs of a refused recovered call as new calls.
    Then(Vec<Call>),
    /// The ledger's word on these jobs changed since they were looked up
    /// (another call holds one, or their call was settled): look again.
    LookAgain(Vec<(Job, Pending)>),
}

/// Every job of a call, to be looked up in the ledger again.
pub fn look_again(call: Call) -> CallEnd {
    CallEnd::LookAgain(
        call.batch
            .jobs
            .into_iter()
            .map(|mut q| {
                q.job.recheck = true;
                (q.job, q.delivery)
            })
            .collect(),
    )
}

/// Every job of a call goes back to the queue.
pub fn leave(call: Call) -> CallEnd {
    CallEnd::Settled(
        call.batch
            .jobs
            .into_iter()
            .map(|q| (q.job, q.delivery, Fate::Leave))
            .collect(),
    )
}

/// Every job of a call is dead-lettered for the same reason.
pub fn dead_letter_all(call: Call, reason: DeadReason, code: Option<i64>, info: String) -> CallEnd {
    let ledger_call = call.ledger_id;
    CallEnd::Settled(
        call.batch
            .jobs
            .into_iter()
            .map(|q| {
                let fate = dead_letter_fate(&q.delivery, reason, code, info.clone(), ledger_call);
                (q.job, q.delivery, fate)
            })
            .collect(),
    )
}
