//! Settling: carrying out each job's final word in the order that keeps
//! every promise. The ledger learns of deliveries before any ack; a dead
//! letter is confirmed, then recorded, then its original acked; a job neither
//! sent nor failed goes back to the queue. Acks of jobs without `message_id`
//! are recorded after them (see [`crate::ledger::Ledger::jobs_acked`]).

use lapin::Channel;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::broker::{DeadLetter, DeadReason};

use super::crash::CrashPoint;
use super::delivery::Pending;
use super::job::Job;
use super::ledger_retry::with_ledger;
use super::{SessionEnd, Worker};

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
        publish_channel: &Channel,
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
        for (job, pending, fate) in settlements {
            match fate {
                Fate::Ack { msg_seq, .. } => {
                    pending.ack(&job.id).await?;
                    tracing::debug!(job = %job.id, msg_seq, "acked");
                }
                Fate::DeadLetter { dead, call } => {
                    self.dead_letter(&job, &pending, &dead, call, publish_channel, shutdown)
                        .await?;
                }
                Fate::Leave => pending.requeue().await?,
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
        if let Some(ledger) = self.config.ledger.clone() {
            for (call, msg_seq) in &calls {
                with_ledger(&self.status, shutdown, || {
                    ledger.call_delivered(*call, *msg_seq)
                })
                .await?;
            }
        }
        self.crash.reached(CrashPoint::AfterLedger);
        Ok(())
    }

    /// Confirmed dead letter, then the ledger's record, then the ack.
    async fn dead_letter(
        &mut self,
        job: &Job,
        pending: &Pending,
        dead: &DeadLetter,
        call: Option<i64>,
        publish_channel: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        let dlx = &self.config.topology.names.dlx;
        pending
            .publish_dead_letter(publish_channel, dlx, dead)
            .await?;
        if let Some(ledger) = self.config.ledger.clone() {
            let ids = [job.id.clone()];
            with_ledger(&self.status, shutdown, || {
                ledger.jobs_dead_lettered(
                    call,
                    &ids,
                    dead.reason.as_str(),
                    dead.error_code,
                    &dead.error_info,
                )
            })
            .await?;
        }
        warn!(job = %job.id, reason = %dead.reason, code = dead.error_code, "dead-lettered");
        pending.ack(&job.id).await?;
        Ok(())
    }
}
