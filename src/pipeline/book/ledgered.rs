//! The book kept in the ledger (PostgreSQL): what a job became and which
//! call carried it, fenced by the session that is the app's sender (see
//! [`crate::ledger::LedgerSession`]). Every operation is retried until the
//! ledger answers (sending stops meanwhile, and the worker reports it), and
//! old records are pruned in the background.
//!
//! Two kinds of failure: the database out of reach stops sending at once; a
//! statement it refuses while answering (a conflict, a timeout, a datum it
//! will not take) is retried a few times first, since it may pass, and then
//! stops sending too, with the database's words in the log and in `/readyz`.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::broker::DeadLetter;
use crate::ledger::{
    Begun, CallJob, KeptReceipt, Ledger, LedgerError, LedgerSession, Ownership, Superseded,
    TakeOver,
};
use crate::status::WorkerStatus;

use super::super::call::Call;
use super::super::delivery::Pending;
use super::super::job::Job;
use super::api::{Book, BookEnd, Claim, Lookup};

/// The ledger, and the fenced session of the sender this process is.
/// Receipts a new sender publishes of those its predecessors left, at most.
const RECEIPTS_AT_OPEN: i64 = 10_000;

pub struct Ledgered {
    /// In the app's scope: its jobs queue and SDKAppID.
    ledger: Ledger,
    /// Drawn when a session becomes the app's sender; what it records is
    /// owned by its token.
    session: Option<LedgerSession>,
    /// Where a ledger that does not answer is reported (`/readyz`).
    status: Arc<WorkerStatus>,
    /// The open session's stop: waits for the ledger end with it.
    stop: CancellationToken,
    /// Sessions a job's call may be left in flight in before it is
    /// dead-lettered as `crash-loop`.
    crash_limit: u32,
    /// Records untouched for longer are pruned.
    retention: Duration,
}

impl Ledgered {
    /// `ledger` in the app's scope.
    pub fn new(
        ledger: Ledger,
        status: Arc<WorkerStatus>,
        crash_limit: u32,
        retention: Duration,
    ) -> Self {
        Self {
            ledger,
            session: None,
            status,
            stop: CancellationToken::new(),
            crash_limit,
            retention,
        }
    }

    /// Runs a ledger operation until it answers (see [`with_ledger`]).
    async fn retried<T, F, Fut>(&self, op: F) -> Result<T, BookEnd>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, LedgerError>>,
    {
        with_ledger(&self.status, &self.stop, op).await
    }

    /// The open session; the worker opens one before it claims or settles.
    fn session(&self) -> LedgerSession {
        self.session
            .clone()
            .expect("a session is opened when it becomes the sender")
    }

    /// A fenced write's answer: a call taken over by a later session ends
    /// this one.
    fn held(ownership: Ownership, call: i64) -> Result<(), BookEnd> {
        match ownership {
            Ownership::Held => Ok(()),
            Ownership::Lost => Err(BookEnd::Superseded { call }),
        }
    }

    /// Records a fresh call in flight under the first `Random` candidate
    /// that no different call used within the service's repeat window.
    /// Collisions are rare (two different calls in five minutes on 32
    /// bits), so the next candidate almost never needs a second look.
    async fn record(&self, call: &mut Call) -> Result<Claim, BookEnd> {
        let session = self.session();
        let jobs: Vec<CallJob> = call
            .batch
            .jobs
            .iter()
            .map(|q| CallJob {
                id: q.job.id.clone(),
                replays: q.job.replays,
                digest: q.job.digest.clone(),
            })
            .collect();
        for candidate in 1.. {
            let digest = call.batch.content_digest();
            let (body, random, parent) = (&call.batch.body, call.batch.random, call.parent);
            let begun = self
                .retried(|| session.begin_call(body, random, &digest, &jobs, parent))
                .await?;
            match begun {
                Begun::Recorded(id) => {
                    call.ledger_id = Some(id);
                    return Ok(Claim::Ready);
                }
                Begun::RandomTaken => {
                    warn!(random, "this Random was used by a different call within the repeat window: deriving the next one");
                    call.batch.use_random_candidate(candidate);
                }
                Begun::JobsHeld => {
                    warn!(jobs = jobs.len(), "a job of this call is in another call in flight, or was settled, since it was looked up: looking its jobs up again");
                    return Ok(Claim::LookAgain);
                }
                Begun::Superseded => {
                    return Err(BookEnd::Superseded {
                        call: parent.unwrap_or_default(),
                    })
                }
            }
        }
        unreachable!("the candidates never run out")
    }

    /// Takes over a call in flight that a session before this one left:
    /// resent verbatim if it may have been delivered, started over if no
    /// attempt of it can have got through.
    async fn take_over(&self, call: &mut Call, call_id: i64) -> Result<Claim, BookEnd> {
        let session = self.session();
        let taken = self.retried(|| session.take_over(call_id)).await?;
        match taken {
            TakeOver::Owned { interruptions, .. } if interruptions >= self.crash_limit => {
                error!(call = call_id, interruptions, "this call was in flight in as many sessions that ended without an answer as the crash limit allows: dead-lettering its jobs as crash-loop");
                Ok(Claim::CrashLoop { interruptions })
            }
            TakeOver::Owned { doubt: None, .. } => {
                info!(
                    call = call_id,
                    "took over a call in flight that no attempt delivered: its jobs start over"
                );
                Ok(Claim::StartOver)
            }
            TakeOver::Owned {
                interruptions,
                doubt,
            } => {
                info!(
                    call = call_id,
                    interruptions, "took over a call in flight: resending it verbatim"
                );
                call.in_doubt_for(doubt);
                Ok(Claim::Ready)
            }
            TakeOver::Settled => Ok(Claim::LookAgain),
            TakeOver::Superseded => Err(BookEnd::Superseded { call: call_id }),
        }
    }
}

impl Book for Ledgered {
    /// Draws the session's token: later than that of every sender before.
    async fn open(&mut self, stop: &CancellationToken) -> Result<(), BookEnd> {
        self.stop = stop.clone();
        let ledger = self.ledger.clone();
        let session = self.retried(|| ledger.open_session()).await?;
        info!(token = session.token(), "this session is the app's sender");
        self.session = Some(session);
        Ok(())
    }

    fn close(&mut self) {
        self.session = None;
    }

    /// One query for the arrived jobs with a `message_id`, one for the
    /// redelivered ones without (only when there are such). Only
    /// redeliveries (and jobs found taken when their call was recorded) are
    /// looked up: a fresh job without `message_id` has an id of its own
    /// arrival, and a fresh one with an id the ledger knows is found out
    /// when its call is recorded ([`Begun::JobsHeld`]).
    async fn look_up(&mut self, arrived: &[(Job, Pending)]) -> Result<Lookup, BookEnd> {
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
        let ledger = &self.ledger;
        if !ids.is_empty() {
            lookup.by_id = self.retried(|| ledger.lookup(&ids)).await?;
        }
        if !copies.is_empty() {
            lookup.copies = self.retried(|| ledger.match_copies(&copies)).await?;
        }
        Ok(lookup)
    }

    async fn claim(&mut self, call: &mut Call) -> Result<Claim, BookEnd> {
        match (call.claimed, call.ledger_id) {
            // A retry: the session that claimed it may have been superseded.
            (true, Some(id)) => {
                let session = self.session();
                let held = self.retried(|| session.attempt_again(id)).await?;
                Self::held(held, id).map(|()| Claim::Ready)
            }
            (true, None) => Ok(Claim::Ready),
            (false, Some(id)) => self.take_over(call, id).await,
            (false, None) => self.record(call).await,
        }
    }

    async fn release(&mut self, call: &Call) {
        let (Some(session), Some(id), true) = (self.session.clone(), call.ledger_id, call.claimed)
        else {
            return;
        };
        if let Err(e) = session.release(id).await {
            warn!(error = %e, call = id, "could not release the call in the ledger: the next sender will count an interruption");
        }
    }

    async fn refused(&mut self, call: &Call) -> Result<(), BookEnd> {
        let Some(id) = call.ledger_id else {
            return Ok(());
        };
        let session = self.session();
        let held = self.retried(|| session.refused(id)).await?;
        Self::held(held, id)
    }

    async fn abandoned(
        &mut self,
        call: &Call,
        code: Option<i64>,
        info: &str,
    ) -> Result<(), BookEnd> {
        let Some(id) = call.ledger_id else {
            return Ok(());
        };
        let session = self.session();
        let held = self
            .retried(|| session.call_abandoned(id, code, info))
            .await?;
        Self::held(held, id)
    }

    async fn delivered(&mut self, calls: &[(i64, Option<u64>)]) -> Result<(), BookEnd> {
        let session = self.session();
        for (call, msg_seq) in calls {
            let held = self
                .retried(|| session.call_delivered(*call, *msg_seq))
                .await?;
            Self::held(held, *call)?;
        }
        Ok(())
    }

    /// A call that may have been delivered stays open, marked, until all its
    /// jobs are recorded: any that come back meanwhile are in doubt. Either
    /// way no dead letter is published for a call this session no longer
    /// owns: its successor decides.
    async fn dead_lettering(&mut self, call: i64, maybe_delivered: bool) -> Result<(), BookEnd> {
        let session = self.session();
        let held = self
            .retried(|| async {
                if maybe_delivered {
                    session.call_dead_lettering(call).await
                } else {
                    session.still_owner(call).await
                }
            })
            .await?;
        Self::held(held, call)
    }

    async fn dead_lettered(
        &mut self,
        call: Option<i64>,
        job_ids: &[String],
        dead: &DeadLetter,
    ) -> Result<(), BookEnd> {
        let session = self.session();
        let reason = dead.reason.as_str();
        let held = self
            .retried(|| {
                session.jobs_dead_lettered(call, job_ids, reason, dead.error_code, &dead.error_info)
            })
            .await?;
        Self::held(held, call.unwrap_or_default())
    }

    async fn superseded(&mut self, jobs: &[Superseded]) -> Result<(), BookEnd> {
        let ledger = &self.ledger;
        self.retried(|| ledger.jobs_superseded(jobs)).await
    }

    async fn arrivals_acked(&mut self, job_ids: &[String]) -> Result<(), BookEnd> {
        if job_ids.is_empty() {
            return Ok(());
        }
        let ledger = &self.ledger;
        self.retried(|| ledger.jobs_acked(job_ids)).await
    }

    async fn receipts_kept(&mut self, receipts: &[KeptReceipt]) -> Result<(), BookEnd> {
        if receipts.is_empty() {
            return Ok(());
        }
        let ledger = &self.ledger;
        self.retried(|| ledger.receipts_kept(receipts)).await
    }

    async fn receipts_ready(&mut self, job_ids: &[String]) -> Result<Vec<KeptReceipt>, BookEnd> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ledger = &self.ledger;
        self.retried(|| ledger.receipts_ready(job_ids)).await
    }

    async fn receipts_waiting(&mut self) -> Result<Vec<KeptReceipt>, BookEnd> {
        let ledger = &self.ledger;
        self.retried(|| ledger.receipts_waiting(RECEIPTS_AT_OPEN))
            .await
    }

    /// Best effort: a receipt left kept is published again by a later
    /// sender (a duplicate, with the same content).
    async fn receipts_sent(&mut self, job_ids: &[String]) {
        if job_ids.is_empty() {
            return;
        }
        if let Err(e) = self.ledger.receipts_sent(job_ids).await {
            warn!(error = %e, "confirmed receipts still kept: a later sender publishes them again");
        }
    }

    fn upkeep(&self, shutdown: &CancellationToken) -> Option<JoinHandle<()>> {
        Some(tokio::spawn(prune_forever(
            self.ledger.clone(),
            self.retention,
            shutdown.clone(),
        )))
    }
}
/// Retries of a refused statement before the ledger counts as down.
pub const REFUSALS_BEFORE_DOWN: u32 = 5;

/// Runs a ledger operation until it succeeds; while it fails (at once when
/// the database is out of reach, after [`REFUSALS_BEFORE_DOWN`] retries when
/// it refuses the statement), sending is stopped and the worker reports it.
/// Gives up only on shutdown.
async fn with_ledger<T, F, Fut>(
    status: &WorkerStatus,
    shutdown: &CancellationToken,
    mut op: F,
) -> Result<T, BookEnd>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LedgerError>>,
{
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    let mut refusals = 0;
    loop {
        match op().await {
            Ok(value) => {
                if status.set_ledger_down(None) {
                    info!("the ledger answers again: sending resumes");
                }
                return Ok(value);
            }
            Err(e) => {
                if !e.is_unreachable() && refusals < REFUSALS_BEFORE_DOWN {
                    refusals += 1;
                    warn!(error = %e, retry = refusals, "the ledger refused a statement: retrying it");
                } else if !status.set_ledger_down(Some(e.to_string())) {
                    if e.is_unreachable() {
                        error!(error = %e, "the ledger is unreachable: sending stopped (delivery could no longer be promised once), every job kept");
                    } else {
                        error!(error = %e, "the ledger keeps refusing a statement: sending stopped (delivery could no longer be promised once), every job kept");
                    }
                }
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Err(BookEnd::Stopped),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// How often each app prunes its ledger records, give or take a fifth (the
/// first time at a random moment within it, so a fleet's apps spread out).
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Prunes ledger records (settled, or in doubt) older than `retention`, a
/// small batch at a time, every few minutes.
async fn prune_forever(ledger: Ledger, retention: Duration, shutdown: CancellationToken) {
    let mut pause = PRUNE_EVERY.mul_f64(rand::random_range(0.0..1.0));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        loop {
            match ledger.prune(retention, 1000).await {
                Ok(0) => break,
                Ok(n) => {
                    tracing::debug!(rows = n, "pruned old ledger records");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "pruning skipped");
                    break;
                }
            }
        }
        pause = PRUNE_EVERY.mul_f64(rand::random_range(0.8..1.2));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Runs `with_ledger` on an operation failing `failures` times with `error`.
    async fn run(failures: u32, error: fn() -> LedgerError) -> (bool, u32, WorkerStatus) {
        let status = WorkerStatus::default();
        let calls = AtomicU32::new(0);
        let mut down_seen = false;
        let result = with_ledger(&status, &CancellationToken::new(), || {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            down_seen |= status.ledger_down.load(Ordering::Relaxed);
            async move {
                if n < failures {
                    Err(error())
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        (down_seen, result.unwrap(), status)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_database_stops_sending_at_once() {
        let (down_seen, _, status) = run(1, || sqlx::Error::PoolTimedOut.into()).await;
        assert!(down_seen, "reported down from the first failure");
        assert!(!status.ledger_down.load(Ordering::Relaxed));
        assert_eq!(status.ledger_error(), None, "cleared once it answers");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_statement_is_retried_before_the_ledger_counts_as_down() {
        let refused = || LedgerError::Url("refused".into());
        let (down_seen, _, _) = run(REFUSALS_BEFORE_DOWN, refused).await;
        assert!(!down_seen, "a few refusals are retried quietly");
        let (down_seen, answered_at, _) = run(REFUSALS_BEFORE_DOWN + 3, refused).await;
        assert!(down_seen, "then the ledger counts as down");
        assert_eq!(
            answered_at,
            REFUSALS_BEFORE_DOWN + 3,
            "and is retried still"
        );
    }
}
