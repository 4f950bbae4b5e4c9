//! The settler: the one place a held job's fate is carried out, in the
//! order that keeps every promise. The book learns of deliveries before any
//! ack; a dead letter is confirmed, then recorded, then its original acked;
//! a job neither sent nor failed goes back to the queue. Acks of jobs
//! without `message_id` are recorded after them (see
//! [`crate::ledger::Ledger::jobs_acked`]). Receipts (for jobs published
//! with `reply_to`) are kept by the book before the records, made ready
//! after them, and published after the acks, never holding one up. (A job
//! that can never be a call is dead-lettered on arrival by the decoder,
//! which needs no book.)

use std::time::SystemTime;

use futures_util::future::join_all;
use tracing::{info, warn};

use crate::broker::{DeadLetter, DeadReason, DeadRoute};

use super::book::Book;
use super::crash::{CrashHook, CrashPoint};
use super::delivery::{Outbox, Pending};
use super::end::SessionEnd;
use super::fate::{Fate, Settlement};
use super::job::Job;
use super::receipt;
use crate::clock;
use crate::ledger::{KeptReceipt, Superseded};
use crate::telemetry;

/// A session's settler: where dead letters go, and the book that hears of
/// every fate.
pub struct Settler<'b, B: Book> {
    outbox: Outbox,
    dead_route: DeadRoute,
    /// The app, as the metrics' `sdkappid` label spells it.
    app: String,
    sdkappid: u64,
    pub book: &'b mut B,
    crash: CrashHook,
    receipts: receipt::ReceiptOut,
}

impl<'b, B: Book> Settler<'b, B> {
    pub fn new(
        outbox: Outbox,
        dead_route: DeadRoute,
        sdkappid: u64,
        book: &'b mut B,
        crash: CrashHook,
        receipts: receipt::ReceiptOut,
    ) -> Self {
        Self {
            outbox,
            dead_route,
            app: sdkappid.to_string(),
            sdkappid,
            book,
            crash,
            receipts,
        }
    }

    /// Carries out the fates: deliveries recorded first, then each job's
    /// dead letter, ack or return.
    pub async fn settle(&mut self, settlements: Vec<Settlement>) -> Result<(), SessionEnd> {
        if settlements.is_empty() {
            return Ok(());
        }
        let now = clock::unix_ms(SystemTime::now());
        let mut receipts: Vec<KeptReceipt> = settlements
            .iter()
            .filter_map(|(job, _, fate)| receipt_of(job, fate, self.sdkappid, now))
            .collect();
        self.book.receipts_kept(&receipts).await?;
        self.record_deliveries(&settlements).await?;
        self.record_superseded(&settlements).await?;
        let acked_arrivals: Vec<String> = settlements
            .iter()
            .filter(|(job, _, fate)| job.digest.is_some() && !matches!(fate, Fate::Leave))
            .map(|(job, _, _)| job.id.clone())
            .collect();
        let (dead, rest): (Vec<Settlement>, Vec<Settlement>) = settlements
            .into_iter()
            .partition(|(_, _, fate)| matches!(fate, Fate::DeadLetter { .. }));
        for group in same_dead_letter_groups(dead) {
            self.dead_letter(group).await?;
        }
        // Their fates recorded: the receipts may go (and those of jobs
        // known settled before come from the book).
        let replying: Vec<String> = rest
            .iter()
            .filter(|(job, _, fate)| job.reply.is_some() && !matches!(fate, Fate::Leave))
            .map(|(job, _, _)| job.id.clone())
            .collect();
        let kept = self.book.receipts_ready(&replying).await?;
        receipts.extend(kept.into_iter().filter(|k| {
            rest.iter().any(|(job, _, fate)| {
                job.id == k.job_id && matches!(fate, Fate::Ack { random: None, .. })
            })
        }));
        // All at once: each ack is a trip through the connection's I/O
        // thread, and they need no order among themselves.
        let acks = rest.iter().map(|(job, pending, fate)| async move {
            match fate {
                Fate::Ack { msg_seq, .. } => {
                    pending.ack(&job.id).await?;
                    tracing::debug!(job = %job.id, msg_seq, "acked");
                    Ok(())
                }
                Fate::Superseded { by } => {
                    pending.ack(&job.id).await?;
                    info!(job = %job.id, by = %by, "superseded by a later job of its latest-wins key: acked unsent");
                    Ok(())
                }
                Fate::Leave => pending.requeue().await,
                Fate::DeadLetter { .. } => unreachable!("dead letters were settled above"),
            }
        });
        for acked in join_all(acks).await {
            acked?;
        }
        self.book.arrivals_acked(&acked_arrivals).await?;
        self.crash.reached(CrashPoint::BeforeReceipts);
        self.send_receipts(&receipts).await;
        Ok(())
    }

    /// Publishes receipts (the jobs are acked); those confirmed or
    /// unroutable are no longer kept.
    pub async fn send_receipts(&mut self, receipts: &[KeptReceipt]) {
        if receipts.is_empty() {
            return;
        }
        let done = self.receipts.publish(receipts).await;
        self.book.receipts_sent(&done).await;
    }

    /// Shutdown: every job still held goes back to the queue, unsent.
    pub async fn hand_back(&self, held: Vec<Pending>) {
        let count = held.len();
        // At once, in order: the frames leave as the futures are first polled.
        join_all(held.iter().map(Pending::requeue)).await;
        info!(
            returned = count,
            "shutdown: unsent jobs returned to the queue"
        );
    }

    /// The book learns of every delivered call before any of its jobs is acked.
    async fn record_deliveries(&mut self, settlements: &[Settlement]) -> Result<(), SessionEnd> {
        let mut calls: Vec<(i64, Option<u64>)> = settlements
            .iter()
            .filter_map(|(_, _, fate)| match fate {
                Fate::Ack {
                    call: Some(call),
                    msg_seq,
                    ..
                } => Some((*call, *msg_seq)),
                _ => None,
            })
            .collect();
        calls.dedup_by_key(|(call, _)| *call);
        if calls.is_empty() {
            return Ok(());
        }
        self.book.delivered(&calls).await?;
        self.crash.reached(CrashPoint::AfterLedger);
        Ok(())
    }

    /// Superseded jobs are recorded (with the job that replaced each) before
    /// any of them is acked: one that comes back after a crash is known as
    /// settled, never sent.
    async fn record_superseded(&mut self, settlements: &[Settlement]) -> Result<(), SessionEnd> {
        let superseded: Vec<Superseded> = settlements
            .iter()
            .filter_map(|(job, _, fate)| match fate {
                Fate::Superseded { by } => Some(Superseded {
                    job_id: job.id.clone(),
                    by: by.clone(),
                    key: job.coalesce.clone().unwrap_or_default(),
                }),
                _ => None,
            })
            .collect();
        if superseded.is_empty() {
            return Ok(());
        }
        self.book.superseded(&superseded).await?;
        metrics::counter!(telemetry::JOBS_SUPERSEDED, telemetry::SDKAPPID => self.app.clone())
            .increment(superseded.len() as u64);
        self.crash.reached(CrashPoint::AfterSuperseded);
        Ok(())
    }

    /// Dead-letters a group of jobs that failed together (a call's jobs, for
    /// one reason): every dead letter confirmed, then one record for them
    /// all, which closes their call only then, then the acks. A crash in
    /// between leaves the call open, so its jobs come back as a call in
    /// flight (resent within the repeat window, in doubt after it), never as
    /// new jobs under a new `Random`.
    async fn dead_letter(&mut self, group: Vec<Settlement>) -> Result<(), SessionEnd> {
        let Some((_, _, Fate::DeadLetter { dead, call })) = group.first() else {
            return Ok(());
        };
        let (dead, call) = (dead.clone(), *call);
        if let Some(call) = call {
            let maybe_delivered = matches!(
                dead.reason,
                DeadReason::RetriesExhausted | DeadReason::InDoubt | DeadReason::CrashLoop
            );
            self.book.dead_lettering(call, maybe_delivered).await?;
        }
        for (job, pending, fate) in &group {
            if let Fate::DeadLetter { dead, .. } = fate {
                // A job without `message_id` is known by its arrival's id.
                let arrival_id = job.digest.is_some().then(|| job.id.clone());
                let dead = DeadLetter {
                    arrival_id,
                    ..dead.clone()
                };
                pending
                    .publish_dead_letter(
                        &self.outbox,
                        &self.dead_route,
                        &job.body,
                        &dead,
                        &self.app,
                    )
                    .await?;
            }
        }
        self.crash.reached(CrashPoint::AfterDeadLetters);
        let ids: Vec<String> = group.iter().map(|(job, _, _)| job.id.clone()).collect();
        self.book.dead_lettered(call, &ids, &dead).await?;
        let replying: Vec<String> = group
            .iter()
            .filter(|(job, _, _)| job.reply.is_some())
            .map(|(job, _, _)| job.id.clone())
            .collect();
        self.book.receipts_ready(&replying).await?;
        let acks = group.iter().map(|(job, pending, _)| {
            warn!(job = %job.id, reason = %dead.reason, code = dead.error_code, "dead-lettered");
            pending.ack(&job.id)
        });
        for acked in join_all(acks).await {
            acked?;
        }
        Ok(())
    }
}

/// The receipt a settled job's producer gets, ready for the outbox: `None`
/// without `reply_to`, or for a fate that is not final (back to the
/// queue) or whose content the book keeps (a job known settled before: an
/// ack without a call's `Random`).
pub fn receipt_of(job: &Job, fate: &Fate, sdkappid: u64, at_ms: u64) -> Option<KeptReceipt> {
    let to = job.reply.as_ref()?;
    let receipt = match fate {
        Fate::Ack {
            msg_seq,
            random: Some(random),
            ..
        } => receipt::Receipt::delivered(&job.id, sdkappid, *msg_seq, Some(*random), at_ms),
        Fate::DeadLetter { dead, .. } => {
            receipt::Receipt::dead_lettered(&job.id, sdkappid, dead, at_ms)
        }
        Fate::Superseded { by } => receipt::Receipt::superseded(&job.id, sdkappid, by, at_ms),
        Fate::Ack { random: None, .. } | Fate::Leave => return None,
    };
    Some(receipt::addressed(&job.id, to, &receipt))
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
