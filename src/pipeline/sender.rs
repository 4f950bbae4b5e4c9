//! Sending one call and whatever it turns into: each attempt signed, spaced
//! by the limiter and sent; its answer classified; the next step taken as
//! [`decide`] says. Halves of a split call and calls that start over are
//! sent in turn until every job's fate is known.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn, Instrument};

use crate::broker::DeadReason;
use crate::telemetry;
use crate::tencent::classify::Outcome;
use crate::tencent::client::{ApiResponse, TransportError};

use super::batcher::Batcher;
use super::call::{dead_letter_all, leave, look_again, Call, CallEnd};
use super::claim::Claim;
use super::crash::CrashPoint;
use super::decision::{before_attempt, decide, CallHistory, Step};
use super::delivery::{Outbox, Pending};
use super::job::Job;
use super::ledger_retry::with_ledger;
use super::settle::Fate;
use super::{still_held, SessionEnd, Worker};

/// The longest a claim may start before the gap's end: a ledger slower
/// than this makes the call wait for it rather than take its turn early.
const MAX_CLAIM_LEAD: Duration = Duration::from_millis(100);

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
    /// half of a split call is acked before the search goes on. Returns the
    /// jobs to look up in the ledger again.
    pub(super) async fn deliver(
        &mut self,
        call: Call,
        outbox: &Outbox,
        shutdown: &CancellationToken,
    ) -> Result<Vec<(Job, Pending)>, SessionEnd> {
        let mut look_again = Vec::new();
        let mut work = vec![call];
        let mut has_permit = true;
        while let Some(call) = work.pop() {
            let span = info_span!(
                "call",
                random = %format!("{:08x}", call.batch.random),
                jobs = call.batch.jobs.len(),
                bytes = call.batch.body.len(),
                recovered = call.recovered,
            );
            match self
                .attempt_call(call, &mut has_permit, shutdown)
                .instrument(span)
                .await?
            {
                CallEnd::Settled(done) => self.settle(done, outbox, shutdown).await?,
                CallEnd::Then(calls) => work.extend(calls.into_iter().rev()),
                CallEnd::LookAgain(jobs) => look_again.extend(jobs),
            }
        }
        Ok(look_again)
    }

    /// Attempts one call until a step ends it; performs each step it is told.
    async fn attempt_call(
        &mut self,
        mut call: Call,
        has_permit: &mut bool,
        shutdown: &CancellationToken,
    ) -> Result<CallEnd, SessionEnd> {
        let policy = self.config.policy.clone();
        let mut history = CallHistory::new(call.batch.jobs.len(), call.recovered, None);
        let mut previous: Option<&'static str> = None;
        loop {
            if !std::mem::take(has_permit) && !self.wait_for_permit(shutdown).await {
                return Ok(self.leave(call).await);
            }
            let Some(claimed) = self.claim_on_turn(&mut call, shutdown).await else {
                return Ok(self.leave(call).await);
            };
            match claimed {
                Ok(Claim::Ready) => {}
                Ok(Claim::StartOver) => {
                    // Nothing was sent: the permit goes to the calls it becomes.
                    *has_permit = true;
                    let info = "refused at every attempt: never delivered";
                    return self.start_over(call, None, info, shutdown).await;
                }
                Ok(Claim::LookAgain) => return Ok(look_again(call)),
                Ok(Claim::CrashLoop { interruptions }) => {
                    let info = format!("its call was in flight in {interruptions} worker sessions that ended without an answer (the crash limit): it may be what stops them, and it may or may not have been delivered");
                    return Ok(dead_letter_all(call, DeadReason::CrashLoop, None, info));
                }
                Err(SessionEnd::Shutdown) => return Ok(self.leave(call).await),
                Err(end) => return Err(end),
            }
            history.doubt_since = history.doubt_since.or(call.doubt_since);
            let (window, in_doubt) = (self.config.resend_window, self.config.in_doubt);
            if let Some(step) = before_attempt(&history, window, in_doubt, Instant::now()) {
                return self.give_up_in_doubt(call, step, &history, shutdown).await;
            }
            history.attempted(Instant::now());
            let attempt = self.send_attempt(&mut call, previous).await;
            previous = Some(outcome_label(&attempt.outcome));
            let step = decide(&attempt.outcome, &history, &policy, Instant::now());
            history.note(&step);
            self.log_step(&step, &attempt, &call);
            if step.follows_a_refusal() && !history.maybe_delivered() {
                self.record_refusal(&call, shutdown).await?;
            }
            match step {
                Step::Deliver { msg_seq } => return Ok(self.delivered(call, msg_seq)),
                Step::RetryAfter(delay) => {
                    if !sleep_unless_shutdown(delay, shutdown).await {
                        return Ok(self.leave(call).await);
                    }
                }
                Step::PauseSender { min_pause } => {
                    self.limiter.on_rate_limited(min_pause);
                    self.show_rate();
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
                        return Ok(self.leave(call).await);
                    }
                    self.signer.invalidate();
                }
            }
        }
    }

    /// Claims the call at the end of the gap, so that it is taken (and
    /// ownership checked) the moment before it is sent: the claim starts as
    /// long before the gap's end as recent claims took, and the rest of the
    /// gap is kept after it. `None` on shutdown.
    async fn claim_on_turn(
        &mut self,
        call: &mut Call,
        shutdown: &CancellationToken,
    ) -> Option<Result<Claim, SessionEnd>> {
        if !self.wait_for_gap(self.claim_lead, shutdown).await {
            return None;
        }
        let claiming = Instant::now();
        let claimed = self.claim(call, shutdown).await;
        // A decaying peak: one slow claim must not make the next send late.
        self.claim_lead = claiming
            .elapsed()
            .max(self.claim_lead.mul_f64(0.9))
            .min(MAX_CLAIM_LEAD);
        if !self.wait_for_gap(Duration::ZERO, shutdown).await {
            return None;
        }
        Some(claimed)
    }

    /// Shutdown: the call's jobs go back to the queue, and the ledger's call
    /// is released, so the session that takes it over counts no
    /// interruption. Best effort: unreleased, it counts one.
    async fn leave(&mut self, call: Call) -> CallEnd {
        if let (Some(session), Some(id), true) =
            (self.ledger_session.clone(), call.ledger_id, call.claimed)
        {
            if let Err(e) = session.release(id).await {
                warn!(error = %e, call = id, "could not release the call in the ledger: the next sender will count an interruption");
            }
        }
        leave(call)
    }

    /// Keeps the limiter's gap since the last send (or since this session
    /// became the sender) and its window since the answers before, less
    /// `lead`; false on shutdown.
    async fn wait_for_gap(&mut self, lead: Duration, shutdown: &CancellationToken) -> bool {
        let Some(last) = self.last_send else {
            return true;
        };
        let gap_ends = last + self.limiter.min_gap();
        let turn = self
            .limiter
            .window_opens()
            .map_or(gap_ends, |w| w.max(gap_ends));
        let until = turn.checked_sub(lead).unwrap_or(last);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep_until(until) => true,
        }
    }

    /// Waits for the limiter's permit; false on shutdown.
    async fn wait_for_permit(&mut self, shutdown: &CancellationToken) -> bool {
        let permitted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => false,
            _ = self.limiter.acquire() => true,
        };
        self.show_rate();
        permitted
    }

    /// The rate in force on its gauge: it changes on a frequency-limit
    /// answer, and back when a permit is taken after the slow-down's hold.
    pub(super) fn show_rate(&self) {
        metrics::gauge!(telemetry::RATE, telemetry::SDKAPPID => self.app())
            .set(self.limiter.current_rate());
    }

    /// Signs, sends, and classifies. The call in flight is always finished,
    /// shutdown or not.
    async fn send_attempt(&mut self, call: &mut Call, previous: Option<&'static str>) -> Attempt {
        let usersig = self.signer.current();
        for queued in &mut call.batch.jobs {
            queued.tag.attempts += 1;
        }
        match previous {
            None => {
                metrics::histogram!(telemetry::CALL_BYTES, telemetry::SDKAPPID => self.app()).record(call.batch.body.len() as f64);
                metrics::histogram!(telemetry::CALL_JOBS, telemetry::SDKAPPID => self.app()).record(call.batch.jobs.len() as f64);
            }
            Some(after) => metrics::counter!(telemetry::RETRIES, telemetry::SDKAPPID => self.app(), "after" => after).increment(1),
        }
        self.last_send = Some(Instant::now());
        let sent = Instant::now();
        let result = self
            .client
            .send_broadcast(&usersig, call.batch.body.clone())
            .await;
        self.limiter.answered(Instant::now());
        metrics::histogram!(telemetry::CALL_SECONDS, telemetry::SDKAPPID => self.app())
            .record(sent.elapsed().as_secs_f64());
        let outcome = self.config.classifier.classify(&result);
        metrics::counter!(telemetry::CALLS, telemetry::SDKAPPID => self.app(), "outcome" => outcome_label(&outcome), "code" => code_label(&result))
            .increment(1);
        let (code, info) = describe(&result);
        let failure = !matches!(outcome, Outcome::Delivered { .. });
        self.status.record_call(
            call.batch.body.len(),
            self.limiter.current_rate(),
            failure.then_some((code, info.as_str())),
        );
        Attempt {
            number: call.batch.jobs[0].tag.attempts,
            outcome,
            code,
            info,
        }
    }

    fn delivered(&mut self, call: Call, msg_seq: Option<u64>) -> CallEnd {
        self.crash.reached(CrashPoint::AfterCall);
        metrics::counter!(telemetry::JOBS_DELIVERED, telemetry::SDKAPPID => self.app())
            .increment(call.batch.jobs.len() as u64);
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
        if let (Some(session), Some(id)) = (self.ledger_session.clone(), call.ledger_id) {
            let held = with_ledger(&self.status, shutdown, || {
                session.call_abandoned(id, code, info)
            })
            .await?;
            still_held(held, id)?;
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
        let since = history.doubt_since.unwrap_or_else(Instant::now);
        let age = Instant::now().saturating_duration_since(since);
        let info = format!(
            "its call may have reached the service {} s ago: past the service's repeat window another attempt could deliver it twice",
            age.as_secs()
        );
        warn!(age = ?age, jobs = call.batch.jobs.len(), ?step, "a call that may have been delivered reached the end of the repeat window");
        match step {
            Step::StartOver => self.start_over(call, None, &info, shutdown).await,
            _ => Ok(dead_letter_all(call, DeadReason::InDoubt, None, info)),
        }
    }

    /// The service refused the attempt for sure, and none before it may have
    /// got through: the ledger learns the call was never delivered, so a
    /// halt that outlasts the repeat window leaves nothing in doubt.
    async fn record_refusal(
        &mut self,
        call: &Call,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        if let (Some(session), Some(id)) = (self.ledger_session.clone(), call.ledger_id) {
            let held = with_ledger(&self.status, shutdown, || session.refused(id)).await?;
            still_held(held, id)?;
        }
        Ok(())
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
