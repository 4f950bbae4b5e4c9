//! A held job's final word, as the steps after an answer decide it and the
//! settler carries it out.

use crate::broker::{DeadLetter, DeadReason};

use super::delivery::Pending;
use super::job::Job;

/// The final word on one job.
#[derive(Debug)]
pub enum Fate {
    /// Delivered (by the book's `call`, when it has one) or known settled.
    Ack {
        call: Option<i64>,
        msg_seq: Option<u64>,
        /// The call's `Random` when delivered by a call (none: known
        /// settled before).
        random: Option<u32>,
    },
    /// Dead-letter it; `call` is the book's call it failed in.
    DeadLetter { dead: DeadLetter, call: Option<i64> },
    /// A later job of its latest-wins key (`by`) took its place before it
    /// was in any call: recorded, then acked, never sent.
    Superseded { by: String },
    /// Not sent and not failed: back to the queue (shutdown).
    Leave,
}

pub type Settlement = (Job, Pending, Fate);

pub fn dead_letter_fate(
    pending: &Pending,
    reason: DeadReason,
    code: Option<i64>,
    info: String,
    call: Option<i64>,
) -> Fate {
    Fate::DeadLetter {
        dead: pending.dead_letter_for(reason, code, info),
        call,
    }
}
