//! Admission: arrived jobs sorted by what the book knows of them. Settled
//! ones are acked at once, jobs of a call in flight join that call's resend
//! (or are dead-lettered as in doubt past the repeat window), the rest wait
//! in the batcher. Without a ledger every job is new. Only redeliveries are
//! looked up: a fresh delivery is taken as new, and should the ledger know
//! its id (a producer's second publish, a replay run twice), recording its
//! call finds the job taken and it is looked up then (see
//! [`crate::ledger::Begun::JobsHeld`]). A redelivered job without
//! `message_id` is matched by its body's digest to the arrival it repeats,
//! and takes that arrival's id; a fresh one is always new.

use tracing::{info, warn};

use crate::broker::DeadReason;
use crate::ledger::{InFlightCall, Known};
use crate::telemetry;

use super::book::Book;
use super::config::WorkerConfig;
use super::decision::{on_redelivery, Redelivery};
use super::delivery::Pending;
use super::end::SessionEnd;
use super::fate::{dead_letter_fate, Fate, Settlement};
use super::holding::Holding;
use super::job::Job;
use super::settler::Settler;

/// Sorts what arrived: into the batcher, into a call's resend, or settled.
pub async fn admit<B: Book>(
    holding: &mut Holding,
    settler: &mut Settler<'_, B>,
    config: &WorkerConfig,
    app: &str,
) -> Result<(), SessionEnd> {
    holding.set_aside_duplicates();
    if holding.arrived.is_empty() {
        return Ok(());
    }
    let mut lookup = settler.book.look_up(&holding.arrived).await?;
    let mut settled = Vec::new();
    for (mut job, pending) in std::mem::take(&mut holding.arrived) {
        match lookup.take(&mut job) {
            Known::New => {
                let by = job.coalesce.as_ref().map(|_| job.id.clone());
                if let (Some(older), Some(by)) = (holding.lane(&job).push(job, pending), by) {
                    let fate = Fate::Superseded { by };
                    settled.push((older.job, older.delivery, fate));
                }
            }
            Known::Settled => {
                info!(job = %job.id, "redelivered job already settled: acked without a call");
                metrics::counter!(telemetry::JOBS_ACKED_KNOWN, telemetry::SDKAPPID => app.to_owned()).increment(1);
                let fate = Fate::Ack {
                    call: None,
                    msg_seq: None,
                    random: None,
                };
                settled.push((job, pending, fate));
            }
            Known::InFlight(call) => {
                if let Some(in_doubt) = redelivered(holding, config, call, job, pending) {
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
    settler.settle(settled).await
}

/// A job of a call in flight: resent with it (or started over, when no
/// attempt of it can have got through: see [`crate::pipeline::book`]), or
/// (past the repeat window, as configured) returned to be dead-lettered as
/// in doubt.
fn redelivered(
    holding: &mut Holding,
    config: &WorkerConfig,
    call: InFlightCall,
    job: Job,
    pending: Pending,
) -> Option<Settlement> {
    let doubt = call.doubt;
    match on_redelivery(doubt, config.resend_window, config.in_doubt) {
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
