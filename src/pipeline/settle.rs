//! Settling: carrying out each job's final word in the order that keeps
//! every promise. The ledger learns of deliveries before any ack; a dead
//! letter is confirmed, then recorded, then its original acked; a job neither
//! sent nor failed goes back to the queue. Acks of jobs without `message_id`
//! are recorded after them (see [`crate::ledger::Ledger::jobs_acked`]).

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::broker::{DeadLetter, DeadReason};

use super::crash::CrashPoint;
use super::delivery::{Outbox, Pending};
use super::job::Job;
use super::ledger_retry::with_ledger;
use super::{still_held, SessionEnd, Worker};

/// The final word on one job.
#[derive(Debug)]
pub enum Fate {
    /// Delivered (by the ledger's `call`, when there is one) or known settled.
    Ack {
        call: Option<i64>,
        msg_seq: Option<u64>,
    },
    /// Dead-letter it; `call` is the ledger's call it failed in.
    DeadLetter { dead: DeadLetter, call: Option<i64> },
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

impl Worker {
    /// Carries out the fates: deliveries recorded first, then each job's ack,
    /// dead letter or return.
    pub(super) async fn settle(
        &mut self,
        settlements: Vec<Settlement>,
        outbox: &Outbox,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        if settlements.is_empty() {
            return Ok(());
        }
        self.record_deliveries(&settlements, shutdown).await?;
        let acked_arrivals: Vec<String> = settlements
            .iter()
            .filter(|(job, _, fate)| job.digest.is_some() && !matches!(fate, Fate::Leave))
            .map(|(job, _, _)| job.id.clone())
            .collect();
        let (dead, rest): (Vec<Settlement>, Vec<Settlement>) = settlements
            .into_iter()
            .partition(|(_, _, fate)| matches!(fate, Fate::DeadLetter { .. }));
        for group in same_dead_letter_groups(dead) {
            self.dead_letter(group, outbox, shutdown).await?;
        }
        for (job, pending, fate) in rest {
            match fate {
                Fate::Ack { msg_seq, .. } => {
                    pending.ack(&job.id).await?;
                    tracing::debug!(job = %job.id, msg_seq, "acked");
                }
                Fate::Leave => pending.requeue().await?,
                Fate::DeadLetter { .. } => unreachable!("dead letters were settled above"),
            }
        }
        self.record_acked_arrivals(&acked_arrivals, shutdown).await
    }

    /// Jobs without `message_id` are matched to their arrivals by body, so
    /// the ledger learns which arrivals were acked: no later copy is them.
    async fn record_acked_arrivals(
        &mut self,
        job_ids: &[String],
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        if let (Some(ledger), false) = (self.config.ledger.clone(), job_ids.is_empty()) {
            with_ledger(&self.status, shutdown, || ledger.jobs_acked(job_ids)).await?;
        }
        Ok(())
    }

    /// The ledger learns of every delivered call before any of its jobs is acked.
    async fn record_deliveries(
        &mut self,
        settlements: &[Settlement],
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        let mut calls: Vec<(i64, Option<u64>)> = settlements
            .iter()
            .filter_map(|(_, _, fate)| match fate {
                Fate::Ack {
                    call: Some(call),
                    msg_seq,
                } => Some((*call, *msg_seq)),
                _ => None,
            })
            .collect();
        calls.dedup_by_key(|(call, _)| *call);
        if calls.is_empty() {
            return Ok(());
        }
        if let Some(session) = self.ledger_session.clone() {
            for (call, msg_seq) in &calls {
                let held = with_ledger(&self.status, shutdown, || {
                    session.call_delivered(*call, *msg_seq)
                })
                .await?;
                still_held(held, *call)?;
            }
        }
        self.crash.reached(CrashPoint::AfterLedger);
        Ok(())
    }

    /// Dead-letters a group of jobs that failed together (a call's jobs, for
    /// one reason): every dead letter confirmed, then one ledger record for
    /// them all, which closes their call only then, then the acks. A crash in
    /// between leaves the call open, so its jobs come back as a call in flight
    /// (resent within the repeat window, in doubt after it), never as new jobs
    /// under a new `Random`.
    async fn dead_letter(
        &mut self,
        group: Vec<Settlement>,
        outbox: &Outbox,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        let Some((_, _, Fate::DeadLetter { dead, call })) = group.first() else {
            return Ok(());
        };
        let (dead, call) = (dead.clone(), *call);
        // A call that may have been delivered stays open, marked, until all
        // its jobs are recorded: any that come back meanwhile are in doubt.
        // Either way no dead letter is published for a call this session no
        // longer owns: its successor decides.
        let maybe_delivered = matches!(
            dead.reason,
            DeadReason::RetriesExhausted | DeadReason::InDoubt | DeadReason::CrashLoop
        );
        if let (Some(session), Some(call)) = (self.ledger_session.clone(), call) {
            let held = with_ledger(&self.status, shutdown, || async {
                if maybe_delivered {
                    session.call_dead_lettering(call).await
                } else {
                    session.still_owner(call).await
                }
            })
            .await?;
            still_held(held, call)?;
        }
        let dlx = &self.config.topology.names.dlx;
        for (job, pending, fate) in &group {
            if let Fate::DeadLetter { dead, .. } = fate {
                // A job without `message_id` is known by its arrival's id.
                let arrival_id = job.digest.is_some().then(|| job.id.clone());
                let dead = DeadLetter {
                    arrival_id,
                    ..dead.clone()
                };
                pending
                    .publish_dead_letter(outbox, dlx, &job.body, &dead, &self.status.app)
                    .await?;
            }
        }
        self.crash.reached(CrashPoint::AfterDeadLetters);
        if let Some(session) = self.ledger_session.clone() {
            let ids: Vec<String> = group.iter().map(|(job, _, _)| job.id.clone()).collect();
            let held = with_ledger(&self.status, shutdown, || {
                session.jobs_dead_lettered(
                    call,
                    &ids,
                    dead.reason.as_str(),
                    dead.error_code,
                    &dead.error_info,
                )
            })
            .await?;
            still_held(held, call.unwrap_or_default())?;
        }
        for (job, pending, _) in &group {
            warn!(job = %job.id, reason = %dead.reason, code = dead.error_code, "dead-lettered");
            pending.ack(&job.id).await?;
        }
        Ok(())
    }
}

/// Consecutive dead letters of the same call and the same why, together.
fn same_dead_letter_groups(dead: Vec<Settlement>) -> Vec<Vec<Settlement>> {
    let why = |fate: &Fate| match fate {
        Fate::DeadLetter { dead, call } => {
            Some((*call, dead.reason, dead.error_code, dead.error_info.clone()))
        }
        _ => None,
    };
    let mut groups: Vec<Vec<Settlement>> = Vec::new();
    for settlement in dead {
        match groups.last_mut() {
            Some(group) if why(&group[0].2) == why(&settlement.2) => group.push(settlement),
            _ => groups.push(vec![settlement]),
        }
    }
    groups
}
