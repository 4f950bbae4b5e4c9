//! Admission: arrived jobs sorted by what the ledger knows of them. Settled
//! ones are acked at once, jobs of a call in flight join that call's resend
//! (or are dead-lettered as in doubt past the repeat window), the rest wait
//! in the batcher. Without a ledger every job is new.

use lapin::Channel;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::DeadReason;
use crate::ledger::{InFlightCall, Known};
use crate::ops::telemetry;

use super::decision::{on_redelivery, Redelivery};
use super::delivery::Pending;
use super::holding::Holding;
use super::job::Job;
use super::ledger_retry::with_ledger;
use super::settle::{dead_letter_fate, Fate, Settlement};
use super::{SessionEnd, Worker};

impl Worker {
    pub(super) async fn admit(
        &mut self,
        holding: &mut Holding,
        publish_channel: &Channel,
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
        let ids: Vec<(String, u32)> = holding
            .arrived
            .iter()
            .map(|(job, _)| (job.id.clone(), job.replays))
            .collect();
        let mut known = with_ledger(&self.status, shutdown, || ledger.lookup(&ids)).await?;
        let mut settled = Vec::new();
        for (job, pending) in std::mem::take(&mut holding.arrived) {
            match known.remove(&job.id) {
                None | Some(Known::New) => holding.batcher.push(job, pending),
                Some(Known::Settled) => {
                    info!(job = %job.id, "redelivered job already settled: acked without a call");
                    metrics::counter!(telemetry::JOBS_ACKED_KNOWN).increment(1);
                    let fate = Fate::Ack {
                        call: None,
                        msg_seq: None,
                    };
                    settled.push((job, pending, fate));
                }
                Some(Known::InFlight(call)) => {
                    if let Some(in_doubt) = self.redelivered(holding, call, job, pending) {
                        settled.push(in_doubt);
                    }
                }
            }
        }
        self.settle(settled, publish_channel, shutdown).await
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
        match on_redelivery(call.age, self.config.resend_window, self.config.in_doubt) {
            Redelivery::Resend => {}
            Redelivery::ResendInDoubt => {
                warn!(job = %job.id, call = call.call_id, age = ?call.age, "call in flight beyond the repeat window: resending it (at least once, as configured)");
            }
            Redelivery::DeadLetterInDoubt => {
                warn!(job = %job.id, call = call.call_id, age = ?call.age, "call in flight beyond the repeat window: dead-lettering the job as in-doubt, as configured");
                let info = format!(
                    "its call {} was in flight {} s ago, beyond the service's repeat window: it may or may not have been delivered",
                    call.call_id,
                    call.age.as_secs()
                );
                let fate = dead_letter_fate(&pending, DeadReason::InDoubt, None, info, None);
                return Some((job, pending, fate));
            }
        }
        holding.recover(call, job, pending);
        None
    }
}
