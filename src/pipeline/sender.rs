//! Sending one call and whatever it turns into: each attempt signed, spaced
//! by the limiter and sent; its answer classified; the next step taken as
//! [`decide`] says. Halves of a split call and calls that start over are
//! sent in turn until every job's fate is known.

use std::time::Duration;

use lapin::Channel;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn, Instrument};

use crate::broker::DeadReason;
use crate::ledger::CallJob;
use crate::ops::telemetry;
use crate::tencent::classify::Outcome;
use crate::tencent::client::{ApiResponse, TransportError};

use super::batcher::{Batch, Batcher};
use super::crash::CrashPoint;
use super::decision::{before_attempt, decide, CallHistory, Step};
use super::delivery::Pending;
use super::ledger_retry::with_ledger;
use super::settle::{dead_letter_fate, Fate, Settlement};
use super::{SessionEnd, Worker};

/// One call to make: a fresh batch, a half of a refused one, or a call the
/// ledger holds as in flight, to be resent byte for byte.
pub struct Call {
    pub batch: Batch<Pending>,
    /// The ledger's id, once recorded (a recovered call has it from the start).
    pub ledger_id: Option<i64>,
    /// The ledger's call this one is a half of.
    pub parent: Option<i64>,
    /// For a recovered call: when the previous worker first attempted it.
    first_attempt: Option<Instant>,
    /// Its `Random` is claimed: no different call used it within the
    /// repeat window, and the call is recorded (in the ledger when there is
    /// one) under it, so every retry keeps it.
    claimed: bool,
}

impl Call {
    pub fn fresh(batch: Batch<Pending>, parent: Option<i64>) -> Self {
        Self {
            batch,
            ledger_id: None,
            parent,
            first_attempt: None,
            claimed: false,
        }
    }

    /// A call the ledger has held in flight for `age`.
    pub fn recovered(batch: Batch<Pending>, call_id: i64, age: Duration) -> Self {
        let now = Instant::now();
        Self {
            batch,
            ledger_id: Some(call_id),
            parent: None,
            first_attempt: Some(now.checked_sub(age).unwrap_or(now)),
            claimed: true,
        }
    }

    fn is_recovered(&self) -> bool {
        self.first_attempt.is_some()
    }
}

/// What one call's attempts came to.
pub enum CallEnd {
    Settled(Vec<Settlement>),
    /// The call turned into these, to make in order: the halves of a refused
    /// merged call, or the jobs of a refused recovered call as new calls.
    Then(Vec<Call>),
}

/// One attempt's answer, as the logs, metrics and dead letters tell it.
struct Attempt {
    /// Calls attempted with these jobs so far, this one included.
    number: u32,
    outcome: Outcome,
    code: Option<i64>,
    info: String,
}

impl Worker {
    /// Sends one call and whatever it turns into (halves, a renewed call)
    /// until every job's fate is known. The first attempt uses the permit
    /// the caller holds.
    /// Each call's jobs are settled as soon as it is answered: the delivered
    /// half of a split call is acked before the search goes on.
    pub(super) async fn deliver(
        &mut self,
        call: Call,
        publish_channel: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        let mut work = vec![call];
        let mut has_permit = true;
        while let Some(call) = work.pop() {
            let span = info_span!(
                "call",
                random = %format!("{:08x}", call.batch.random),
                jobs = call.batch.jobs.len(),
                bytes = call.batch.body.len(),
                recovered = call.is_recovered(),
            );
            match self
                .attempt_call(call, &mut has_permit, shutdown)
                .instrument(span)
                .await?
            {
                CallEnd::Settled(done) => self.settle(done, publish_channel, shutdown).await?,
                CallEnd::Then(calls) => work.extend(calls.into_iter().rev()),
            }
        }
        Ok(())
    }

    /// Attempts one call until a step ends it; performs each step it is told.
    async fn attempt_call(
        &mut self,
        mut call: Call,
        has_permit: &mut bool,
        shutdown: &CancellationToken,
    ) -> Result<CallEnd, SessionEnd> {
        let policy = self.config.policy.clone();
        let first_attempt = call.first_attempt.unwrap_or_else(Instant::now);
        let mut history =
            CallHistory::new(first_attempt, call.batch.jobs.len(), call.is_recovered());
        let mut previous: Option<&'static str> = None;
        loop {
            if !std::mem::take(has_permit) && !self.wait_for_permit(shutdown).await {
                return Ok(leave(call));
            }
            match self.claim_random(&mut call, shutdown).await {
                Ok(()) => {}
                Err(SessionEnd::Shutdown) => return Ok(leave(call)),
                Err(end) => return Err(end),
            }
            let (window, in_doubt) = (self.config.resend_window, self.config.in_doubt);
            if let Some(step) = before_attempt(&history, window, in_doubt, Instant::now()) {
                return self.give_up_in_doubt(call, step, &history, shutdown).await;
            }
            let attempt = self.send_attempt(&mut call, previous).await;
            previous = Some(outcome_label(&attempt.outcome));
            let step = decide(&attempt.outcome, &history, &policy, Instant::now());
            history.note(&step);
            self.log_step(&step, &attempt, &call);
            match step {
                Step::Deliver { msg_seq } => return Ok(self.delivered(call, msg_seq)),
                Step::RetryAfter(delay) => {
                    if !sleep_unless_shutdown(delay, shutdown).await {
                        return Ok(leave(call));
                    }
                }
                Step::PauseSender { min_pause } => {
                    self.limiter.on_rate_limited(min_pause);
                    metrics::gauge!(telemetry::RATE).set(self.limiter.current_rate());
                }
                Step::Resign => self.signer.invalidate(),
                Step::Split => {
                    let (left, right) = call.batch.split();
                    let parent = call.ledger_id;
                    return Ok(CallEnd::Then(vec![
                        Call::fresh(left, parent),
                        Call::fresh(right, parent),
                    ]));
                }
                Step::StartOver => {
                    return self
                        .start_over(call, attempt.code, &attempt.info, shutdown)
                        .await
                }
                Step::DeadLetter(reason) => {
                    return Ok(dead_letter_all(call, reason, attempt.code, attempt.info))
                }
                Step::Halt { probe_after } => {
                    if !sleep_unless_shutdown(probe_after, shutdown).await {
                        return Ok(leave(call));
                    }
                    self.signer.invalidate();
                }
            }
        }
    }

    /// Waits for the limiter's permit; false on shutdown.
    async fn wait_for_permit(&mut self, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => false,
            _ = self.limiter.acquire() => true,
        }
    }

    /// Before a call's first attempt: puts it under the first `Random`
    /// candidate that no different call used within the service's repeat
    /// window, and records it under that `Random` (in flight in the ledger,
    /// or in memory without one), so every retry reuses it.
    async fn claim_random(
        &mut self,
        call: &mut Call,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        if call.claimed {
            return Ok(());
        }
        let ids: Vec<CallJob> = call
            .batch
            .jobs
            .iter()
            .map(|q| CallJob {
                id: q.job.id.clone(),
                replays: q.job.replays,
                digest: q.job.digest.clone(),
            })
            .collect();
        // Collisions are rare (two different calls in five minutes on 32
        // bits), so the next candidate almost never needs a second look.
        for candidate in 0.. {
            if candidate > 0 {
                warn!(random = call.batch.random, "this Random was used by a different call within the repeat window: deriving the next one");
                call.batch.use_random_candidate(candidate);
            }
            let digest = call.batch.content_digest();
            let claimed = match self.config.ledger.clone() {
                Some(ledger) => {
                    let (body, random, parent) = (&call.batch.body, call.batch.random, call.parent);
                    let id = with_ledger(&self.status, shutdown, || {
                        ledger.begin_call(body, random, &digest, &ids, parent)
                    })
                    .await?;
                    call.ledger_id = id;
                    id.is_some()
                }
                None => self
                    .recent_randoms
                    .claim(call.batch.random, digest, Instant::now()),
            };
            if claimed {
                break;
            }
        }
        call.claimed = true;
        self.crash.reached(CrashPoint::BeforeCall);
        Ok(())
    }

    /// Signs, keeps the gap since the last send, sends, and classifies. The
    /// call in flight is always finished, shutdown or not.
    async fn send_attempt(&mut self, call: &mut Call, previous: Option<&'static str>) -> Attempt {
        let usersig = self.signer.current();
        for queued in &mut call.batch.jobs {
            queued.tag.attempts += 1;
        }
        match previous {
            None => {
                metrics::histogram!(telemetry::CALL_BYTES).record(call.batch.body.len() as f64);
                metrics::histogram!(telemetry::CALL_JOBS).record(call.batch.jobs.len() as f64);
            }
            Some(after) => metrics::counter!(telemetry::RETRIES, "after" => after).increment(1),
        }
        if let Some(last) = self.last_send {
            tokio::time::sleep_until(last + self.limiter.min_gap()).await;
        }
        self.last_send = Some(Instant::now());
        let sent = Instant::now();
        let result = self
            .client
            .send_broadcast(&usersig, call.batch.body.clone())
            .await;
        metrics::histogram!(telemetry::CALL_SECONDS).record(sent.elapsed().as_secs_f64());
        let outcome = self.config.classifier.classify(&result);
        metrics::counter!(telemetry::CALLS, "outcome" => outcome_label(&outcome), "code" => code_label(&result))
            .increment(1);
        let (code, info) = describe(&result);
        Attempt {
            number: call.batch.jobs[0].tag.attempts,
            outcome,
            code,
            info,
        }
    }

    fn delivered(&mut self, call: Call, msg_seq: Option<u64>) -> CallEnd {
        self.crash.reached(CrashPoint::AfterCall);
        metrics::counter!(telemetry::JOBS_DELIVERED).increment(call.batch.jobs.len() as u64);
        let ledger_call = call.ledger_id;
        let fate = || Fate::Ack {
            call: ledger_call,
            msg_seq,
        };
        CallEnd::Settled(
            call.batch
                .jobs
                .into_iter()
                .map(|q| (q.job, q.tag, fate()))
                .collect(),
        )
    }

    /// Refused now, so never delivered: the jobs held start over as new; the
    /// call's other jobs count as new when they come.
    async fn start_over(
        &mut self,
        call: Call,
        code: Option<i64>,
        info: &str,
        shutdown: &CancellationToken,
    ) -> Result<CallEnd, SessionEnd> {
        if let (Some(ledger), Some(id)) = (self.config.ledger.clone(), call.ledger_id) {
            with_ledger(&self.status, shutdown, || {
                ledger.call_abandoned(id, code, info)
            })
            .await?;
        }
        // Packed again under today's rules: the recovered body may have been
        // made under others.
        let mut batcher = Batcher::new();
        for queued in call.batch.jobs {
            batcher.push(queued.job, queued.tag);
        }
        let calls = std::iter::from_fn(|| batcher.take_batch(&self.config.call))
            .map(|batch| Call::fresh(batch, None))
            .collect();
        Ok(CallEnd::Then(calls))
    }

    /// A call that may have been delivered reached the end of the repeat
    /// window before its next attempt: dead-lettered as in doubt, or started
    /// over (at least once) as configured.
    async fn give_up_in_doubt(
        &mut self,
        call: Call,
        step: Step,
        history: &CallHistory,
        shutdown: &CancellationToken,
    ) -> Result<CallEnd, SessionEnd> {
        let age = Instant::now().saturating_duration_since(history.first_attempt);
        let info = format!(
            "its call was first attempted {} s ago and may have been delivered: past the service's repeat window another attempt could deliver it twice",
            age.as_secs()
        );
        warn!(age = ?age, jobs = call.batch.jobs.len(), ?step, "a call that may have been delivered reached the end of the repeat window");
        match step {
            Step::StartOver => self.start_over(call, None, &info, shutdown).await,
            _ => Ok(dead_letter_all(call, DeadReason::InDoubt, None, info)),
        }
    }

    /// Says what the step is about to do, and keeps the halt flag.
    fn log_step(&self, step: &Step, attempt: &Attempt, call: &Call) {
        let attempt_outcome = attempt.outcome;
        let Attempt {
            number: attempt,
            code,
            info,
            ..
        } = attempt;
        match step {
            Step::Deliver { msg_seq } => {
                if self.status.set_halted(false) {
                    info!("the app-wide fault is gone: sending again");
                }
                info!(attempt, msg_seq, "delivered");
            }
            Step::RetryAfter(delay) => {
                warn!(attempt, code, %info, retry_in = ?delay, "transient failure")
            }
            Step::PauseSender { .. } => {
                warn!(attempt, code, "frequency limit: pausing the sender")
            }
            Step::Resign => info!(attempt, "UserSig expired: signing a new one"),
            Step::Split => {
                warn!(attempt, code, %info, "refused: splitting the call to find the job at fault")
            }
            Step::StartOver => {
                warn!(attempt, code, %info, "a recovered call was refused: its jobs start over")
            }
            Step::DeadLetter(DeadReason::RetriesExhausted) => {
                warn!(attempt, code, %info, "retries exhausted: dead-lettering the call's jobs")
            }
            Step::DeadLetter(_) if attempt_outcome == Outcome::PermanentCall => {
                warn!(attempt, code, %info, jobs = call.batch.jobs.len(), "refused for what its jobs share (sender or custom data): dead-lettering the call's jobs")
            }
            Step::DeadLetter(_) if attempt_outcome == Outcome::Permanent => {
                warn!(attempt, code, %info, job = %call.batch.jobs[0].job.id, "refused: dead-lettering the job")
            }
            Step::DeadLetter(_) => {
                error!(attempt, code, %info, "app-wide fault: dead-lettering the call's jobs as configured")
            }
            Step::Halt { probe_after } => {
                if !self.status.set_halted(true) {
                    error!(
                        code, %info, probe_every = ?probe_after,
                        "app-wide fault: sending stopped, every job kept; fix the app's configuration (console switch, admin account, SDKAppID, secret key)"
                    );
                }
            }
        }
    }
}

/// Every job of a call goes back to the queue.
pub fn leave(call: Call) -> CallEnd {
    CallEnd::Settled(
        call.batch
            .jobs
            .into_iter()
            .map(|q| (q.job, q.tag, Fate::Leave))
            .collect(),
    )
}

/// Every job of a call is dead-lettered for the same reason.
pub fn dead_letter_all(call: Call, reason: DeadReason, code: Option<i64>, info: String) -> CallEnd {
    let ledger_call = call.ledger_id;
    CallEnd::Settled(
        call.batch
            .jobs
            .into_iter()
            .map(|q| {
                let fate = dead_letter_fate(&q.tag, reason, code, info.clone(), ledger_call);
                (q.job, q.tag, fate)
            })
            .collect(),
    )
}

/// Sleeps; false if shutdown came first.
async fn sleep_unless_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Delivered { .. } => "delivered",
        Outcome::Transient => "transient",
        Outcome::RateLimited { .. } => "rate_limited",
        Outcome::Resign => "resign",
        Outcome::Permanent => "permanent",
        Outcome::PermanentCall => "permanent_call",
        Outcome::AppFault => "app_fault",
    }
}

/// The ErrorCode as a label, or the kind of transport failure.
fn code_label(result: &Result<ApiResponse, TransportError>) -> String {
    match result {
        Ok(response) => response.error_code.to_string(),
        Err(TransportError::Status { status }) => format!("http_{status}"),
        Err(TransportError::Timeout) => "timeout".into(),
        Err(TransportError::Connect(_)) => "connect".into(),
        Err(TransportError::InvalidResponse(_)) => "invalid_response".into(),
        Err(TransportError::Other(_)) => "transport".into(),
    }
}

/// The ErrorCode and text of an attempt, for logs and dead letters. The text
/// of a transport error never holds the URL (see [`crate::tencent::client`]).
fn describe(result: &Result<ApiResponse, TransportError>) -> (Option<i64>, String) {
    match result {
        Ok(response) => (Some(response.error_code), response.error_info.clone()),
        Err(e) => (None, e.to_string()),
    }
}
