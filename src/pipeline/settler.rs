//! The settler: the one place a held job's fate is carried out, in the
//! order that keeps every promise. The book learns of deliveries before any
//! ack; a dead letter is confirmed, then recorded, then its original acked;
//! a job neither sent nor failed goes back to the queue. Acks of jobs
//! without `message_id` are recorded after them (see
//! [`crate::ledger::Ledger::jobs_acked`]). (A job that can never be a call
//! is dead-lettered on arrival by the decoder, which needs no book.)

use futures_util::future::join_all;
use tracing::{info, warn};

use crate::broker::{DeadLetter, DeadReason, DeadRoute};

use super::book::Book;
use super::crash::{CrashHook, CrashPoint};
use super::delivery::{Outbox, Pending};
use super::end::SessionEnd;
use super::fate::{Fate, Settlement};
use crate::ledger::Superseded;
use crate::telemetry;

/// A session's settler: where dead letters go, and the book that hears of
/// every fate.
pub struct Settler<'b, B: Book> {
    outbox: Outbox,
    dead_route: DeadRoute,
    /// The app, as the metrics' `sdkappid` label spells it.
    app: String,
    pub book: &'b mut B,
    crash: CrashHook,
}

impl<'b, B: Book> Settler<'b, B> {
    pub fn new(
        outbox: Outbox,
        dead_route: DeadRoute,
        app: String,
        book: &'b mut B,
        crash: CrashHook,
    ) -> Self {
        Self {
            outbox,
            dead_route,
            app,
            book,
            crash,
        }
    }

    /// Carries out the fates: deliveries recorded first, then each job's
    /// dead letter, ack or return.
    pub async fn settle(&mut self, settlements: Vec<Settlement>) -> Result<(), SessionEnd> {
        if settlements.is_empty() {
            return Ok(());
        }
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
        Ok(self.book.arrivals_acked(&acked_arrivals).await?)
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
