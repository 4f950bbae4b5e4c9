//! What a book answers: the trait both keepers implement, and the answers
//! a claim, a look-up or a fenced write give.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::broker::DeadLetter;
use crate::ledger::{KeptReceipt, Known, Superseded};

use super::super::call::Call;
use super::super::delivery::Pending;
use super::super::job::Job;

/// Why the book cannot go on with this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookEnd {
    /// The session's stop came while the book waited for its store.
    Stopped,
    /// A later session owns `call`: the broker has handed the app on,
    /// whether or not this session noticed.
    Superseded { call: i64 },
}

/// Whether a call may be attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Ready,
    /// Recovered, and every attempt of it was refused for sure: it was never
    /// delivered, so its jobs start over as a new call (under a `Random`
    /// claimed now) rather than as a resend.
    StartOver,
    /// The book's word on its jobs changed since they were looked up.
    LookAgain,
    /// Its jobs were in flight in this many sessions that ended without
    /// settling them, as many as the crash limit allows: not sent again.
    CrashLoop {
        interruptions: u32,
    },
}

/// What the book knows of a set of arrived jobs.
#[derive(Debug, Default)]
pub struct Lookup {
    /// Jobs with a `message_id`, by id.
    pub by_id: HashMap<String, Known>,
    /// Redelivered jobs without one, by digest: the arrival each repeats.
    pub copies: HashMap<String, (String, Known)>,
}

impl Lookup {
    /// What is known of `job`; a redelivered job without `message_id` takes
    /// the id of the arrival it repeats, and a fresh one is new.
    pub fn take(&mut self, job: &mut Job) -> Known {
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

/// The worker's memory of jobs and calls. A session opens it when it
/// becomes the app's sender and closes it when it ends; every call is
/// claimed before each attempt and recorded as it settles.
pub trait Book: Send {
    /// This session is the app's sender from now; `stop` ends its waits.
    fn open(
        &mut self,
        stop: &CancellationToken,
    ) -> impl Future<Output = Result<(), BookEnd>> + Send;

    /// The session is over.
    fn close(&mut self);

    /// What is known of arrived jobs.
    fn look_up(
        &mut self,
        arrived: &[(Job, Pending)],
    ) -> impl Future<Output = Result<Lookup, BookEnd>> + Send;

    /// Claims the call before an attempt: a fresh call recorded under a
    /// `Random` no different call used within the repeat window, a
    /// recovered one taken over, a retry checked still this session's (and
    /// in doubt from now: the attempt may get through).
    fn claim(&mut self, call: &mut Call) -> impl Future<Output = Result<Claim, BookEnd>> + Send;

    /// Gives a claimed call up unsettled (a clean stop): the next session
    /// takes it over without counting an interruption. Best effort.
    fn release(&mut self, call: &Call) -> impl Future<Output = ()> + Send;

    /// The service refused the latest attempt for sure and no earlier one
    /// may have got through: the call was never delivered.
    fn refused(&mut self, call: &Call) -> impl Future<Output = Result<(), BookEnd>> + Send;

    /// The call will not be resent as it was (refused after a takeover, or
    /// never delivered): its jobs are free for a new call.
    fn abandoned(
        &mut self,
        call: &Call,
        code: Option<i64>,
        info: &str,
    ) -> impl Future<Output = Result<(), BookEnd>> + Send;

    /// These calls reached the service (with their `MsgSeq`): recorded
    /// before any of their jobs is acked.
    fn delivered(
        &mut self,
        calls: &[(i64, Option<u64>)],
    ) -> impl Future<Output = Result<(), BookEnd>> + Send;

    /// The jobs of `call` are about to be dead-lettered; when it may have
    /// been delivered, its jobs that come back meanwhile are in doubt.
    fn dead_lettering(
        &mut self,
        call: i64,
        maybe_delivered: bool,
    ) -> impl Future<Output = Result<(), BookEnd>> + Send;

    /// Jobs dead-lettered (their dead letters confirmed), of `call` or of none.
    fn dead_lettered(
        &mut self,
        call: Option<i64>,
        job_ids: &[String],
        dead: &DeadLetter,
    ) -> impl Future<Output = Result<(), BookEnd>> + Send;

    /// Jobs superseded by a later job of their latest-wins key, about to be
    /// acked unsent: once recorded, one that comes back is known as settled.
    fn superseded(
        &mut self,
        jobs: &[Superseded],
    ) -> impl Future<Output = Result<(), BookEnd>> + Send;

    /// Arrivals of jobs without `message_id` whose deliveries were acked: no
    /// later copy of their bodies can be them.
    fn arrivals_acked(
        &mut self,
        job_ids: &[String],
    ) -> impl Future<Output = Result<(), BookEnd>> + Send;

    /// Receipts of jobs whose fates are about to be recorded: kept until
    /// confirmed, so a worker that dies before publishing one does not lose
    /// it (the ledger's outbox; in memory, nothing is kept).
    fn receipts_kept(
        &mut self,
        receipts: &[KeptReceipt],
    ) -> impl Future<Output = Result<(), BookEnd>> + Send;

    /// The jobs' fates are recorded: their kept receipts may go. Answers
    /// those it keeps (for jobs known settled before, whose receipts were
    /// kept by an earlier settle).
    fn receipts_ready(
        &mut self,
        job_ids: &[String],
    ) -> impl Future<Output = Result<Vec<KeptReceipt>, BookEnd>> + Send;

    /// Ready receipts a sender before this one did not see confirmed.
    fn receipts_waiting(
        &mut self,
    ) -> impl Future<Output = Result<Vec<KeptReceipt>, BookEnd>> + Send;

    /// Receipts confirmed (or unroutable): no longer kept.
    fn receipts_sent(&mut self, job_ids: &[String]) -> impl Future<Output = ()> + Send;

    /// Upkeep in the background until `shutdown` (pruning old records).
    fn upkeep(&self, shutdown: &CancellationToken) -> Option<JoinHandle<()>>;
}
