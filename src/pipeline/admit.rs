//! Admission: arrived jobs sorted by what the ledger knows of them. Settled
//! ones are acked at once, jobs of a call in flight join that call's resend
//! (or are dead-lettered as in doubt past the repeat window), the rest wait
//! in the batcher. Without a ledger every job is new. Only redeliveries are
//! looked up: a fresh delivery is taken as new, and should the ledger know
//! its id (a producer's second publish, a replay run twice), recording its
//! call finds the job taken and it is looked up then (see
//! [`crate::ledger::Begun::JobsHeld`]). A redelivered job without
//! `message_id` is matched by its body's digest to the arrival it repeats,
//! and takes that arrival's id; a fresh one is always new.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::DeadReason;
use crate::ledger::{InFlightCall, Known, Ledger};
use crate::telemetry;

use super::decision::{on_redelivery, Redelivery};
use super::delivery::{Outbox, Pending};
use super::holding::Holding;
use super::job::Job;
use super::ledger_retry::with_ledger;
use super::settle::{dead_letter_fate, Fate, Settlement};
use super::{SessionEnd, Worker};

/// What the ledger knows of a set of arrived jobs.
#[derive(Default)]
struct Lookup {
    /// Jobs with a `message_id`, by id.
    by_id: HashMap<String, Known>,
    /// Redelivered jobs without one, by digest: the arrival each repeats.
    copies: HashMap<String, (String, Known)>,
}

impl Lookup {
    /// What is known of `job`; a redelivered job without `message_id` takes
    /// the id of the arrival it repeats, and a fresh one is new.
    fn take(&mut self, job: &mut Job) -> Known {
        if let Some(digest) = job.copy_digest().map(str::to_owned) {
            let Some((id, known)) = self.copies.remove(&digest) else {
                return Known::New;
            };
            info!(job = %id, arrival = %job.id, "a redelivered job without message_id repeats an earlier arrival: it takes that arrival's id");
            job.id = id;
            return known;
        }
        if job.digest.is_some() {
            return Known::New;
        }
        self.by_id.remove(&job.id).unwrap_or(Known::New)
    }
}

impl Worker {
    pub(super) async fn admit(
        &mut self,
        holding: &mut Holding,
        outbox: &Outbox,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        holding.set_aside_duplicates();
        if holding.arrived.is_empty() {
            return Ok(());
        }
        let Some(ledger) = self.config.ledger.clone() else {
            for (job, pending) in holding.arrived.drain(..) {
                holding.batcher.push(job, pending);
            }
            return Ok(());
        };
        let mut lookup = self.look_up(&ledger, &holding.arrived, shutdown).await?;
        let mut settled = Vec::new();
        for (mut job, pending) in std::mem::take(&mut holding.arrived) {
            match lookup.take(&mut job) {
                Known::New => holding.batcher.push(job, pending),
                Known::Settled => {
                    info!(job = %job.id, "redelivered job already settled: acked without a call");
                    metrics::counter!(telemetry::JOBS_ACKED_KNOWN, telemetry::SDKAPPID => self.app()).increment(1);
                    let fate = Fate::Ack {
                        call: None,
                        msg_seq: None,
                    };
                    settled.push((job, pending, fate));
                }
                Known::InFlight(call) => {
                    if let Some(in_doubt) = self.redelivered(holding, call, job, pending) {
                        settled.push(in_doubt);
                    }
                }
                Known::InDoubt => {
                    warn!(job = %job.id, "its call was being dead-lettered when a worker stopped: dead-lettering it as in-doubt");
                    let info = "its call was being dead-lettered (it may have been delivered) when a worker stopped".to_string();
                    let fate = dead_letter_fate(&pending, DeadReason::InDoubt, None, info, None);
                    settled.push((job, pending, fate));
                }
            }
        }
        self.settle(settled, outbox, shutdown).await
    }

    /// One query for the arrived jobs with a `message_id`, one for the
    /// redelivered ones without (only when there are such). A fresh job
    /// without `message_id` has an id of its own arrival: nothing to ask.
    async fn look_up(
        &self,
        ledger: &Ledger,
        arrived: &[(Job, Pending)],
        shutdown: &CancellationToken,
    ) -> Result<Lookup, SessionEnd> {
        let ids: Vec<(String, u32)> = arrived
            .iter()
            .filter(|(job, _)| job.digest.is_none() && (job.redelivered || job.recheck))
            .map(|(job, _)| (job.id.clone(), job.replays))
            .collect();
        let copies: Vec<(String, u32)> = arrived
            .iter()
            .filter_map(|(job, _)| job.copy_digest().map(|d| (d.to_owned(), job.replays)))
            .collect();
        let mut lookup = Lookup::default();
        if !ids.is_empty() {
            lookup.by_id = with_ledger(&self.status, shutdown, || ledger.lookup(&ids)).await?;
        }
        if !copies.is_empty() {
            lookup.copies =
                with_ledger(&self.status, shutdown, || ledger.match_copies(&copies)).await?;
        }
        Ok(lookup)
    }

    /// A job of a call in flight: resent with it, or (past the repeat window,
    /// as configured) returned to be dead-lettered as in doubt.
    fn redelivered(
        &self,
        holding: &mut Holding,
        call: InFlightCall,
        job: Job,
        pending: Pending,
    ) -> Option<Settlement> {
        let doubt = call.doubt;
        match on_redelivery(doubt, self.config.resend_window, self.config.in_doubt) {
            // Taken over, then started over: see [`super::claim`].
            Redelivery::StartOver => {
                info!(job = %job.id, call = call.call_id, "its call in flight was refused at every attempt: its jobs start over");
            }
            Redelivery::Resend => {}
            Redelivery::ResendInDoubt => {
                warn!(job = %job.id, call = call.call_id, ?doubt, "call in flight beyond the repeat window: resending it (at least once, as configured)");
            }
            Redelivery::DeadLetterInDoubt => {
                warn!(job = %job.id, call = call.call_id, ?doubt, "call in flight beyond the repeat window: dead-lettering the job as in-doubt, as configured");
                let info = format!(
                    "its call {} may have reached the service {} s ago, beyond the service's repeat window: it may or may not have been delivered",
                    call.call_id,
                    doubt.unwrap_or_default().as_secs()
                );
                let fate = dead_letter_fate(&pending, DeadReason::InDoubt, None, info, None);
                return Some((job, pending, fate));
            }
        }
        holding.recover(call, job, pending);
        None
    }
}
