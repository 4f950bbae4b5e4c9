//! One call's attempts, and whatever they turn into: the chain from a call
//! to its jobs' fates. Each attempt waits for the pacer's turn, claiming the
//! call in the book on it; the sender makes it; [`decide`] says the one step
//! that follows, which is carried out here: deliver, retry, pause, re-sign,
//! split, start over, dead-letter or halt. Halves of a split call and calls
//! that start over are sent in turn until every job's fate is known, and
//! each call's jobs are settled as soon as it is answered.

use std::ops::ControlFlow;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn, Instrument};

use crate::broker::DeadReason;
use crate::status::WorkerStatus;
use crate::telemetry;
use crate::tencent::classify::Outcome;

use super::batcher::Batcher;
use super::book::{Book, BookEnd, Claim};
use super::call::{dead_letter_all, leave, look_again, Call, CallEnd};
use super::config::WorkerConfig;
use super::crash::{CrashHook, CrashPoint};
use super::decision::{before_attempt, decide, CallHistory, Step};
use super::delivery::Pending;
use super::end::SessionEnd;
use super::fate::Fate;
use super::job::Job;
use super::pacer::Turn;
use super::sender::{outcome_label, Attempt, Sender};
use super::settler::Settler;

/// The parts one call's attempts use, borrowed from the session.
pub struct Attempts<'s, 'b, B: Book> {
    pub sender: &'s mut Sender,
    pub settler: &'s mut Settler<'b, B>,
    pub config: &'s WorkerConfig,
    pub status: &'s WorkerStatus,
    pub crash: &'s CrashHook,
    pub stop: &'s CancellationToken,
}

impl<B: Book> Attempts<'_, '_, B> {
    /// Sends one call and whatever it turns into (halves, renewed calls)
    /// until every job's fate is known, settling each call's jobs as soon as
    /// it is answered. Returns the jobs to look up in the book again.
    pub async fn deliver(&mut self, call: Call) -> Result<Vec<(Job, Pending)>, SessionEnd> {
        let mut look_again = Vec::new();
        let mut work = vec![call];
        while let Some(call) = work.pop() {
            let span = info_span!(
                "call",
                random = %format!("{:08x}", call.batch.random),
                jobs = call.batch.jobs.len(),
                bytes = call.batch.body.len(),
                recovered = call.recovered,
            );
            match self.attempt_call(call).instrument(span).await? {
                CallEnd::Settled(done) => self.settler.settle(done).await?,
                CallEnd::Then(calls) => work.extend(calls.into_iter().rev()),
                CallEnd::LookAgain(jobs) => look_again.extend(jobs),
            }
        }
        Ok(look_again)
    }

    /// Attempts one call until a step ends it.
    async fn attempt_call(&mut self, mut call: Call) -> Result<CallEnd, SessionEnd> {
        let mut history = CallHistory::new(call.batch.jobs.len(), call.recovered, None);
        let mut previous = None;
        loop {
            match self.take_turn(&mut call).await? {
                None => return Ok(self.leave(call).await),
                Some(Claim::Ready) => {}
                Some(Claim::StartOver) => {
                    let info = "refused at every attempt: never delivered";
                    return self.start_over(call, None, info).await;
                }
                Some(Claim::LookAgain) => return Ok(look_again(call)),
                Some(Claim::CrashLoop { interruptions }) => {
                    let info = format!("its call was in flight in {interruptions} worker sessions that ended without an answer (the crash limit): it may be what stops them, and it may or may not have been delivered");
                    return Ok(dead_letter_all(call, DeadReason::CrashLoop, None, info));
                }
            }
            history.doubt_since = history.doubt_since.or(call.doubt_since);
            let (window, in_doubt) = (self.config.resend_window, self.config.in_doubt);
            if let Some(step) = before_attempt(&history, window, in_doubt, Instant::now()) {
                return self.give_up_in_doubt(call, step, &history).await;
            }
            history.attempted(Instant::now());
            let attempt = self.sender.attempt(&mut call, previous).await;
            previous = Some(outcome_label(&attempt.outcome));
            let step = decide(
                &attempt.outcome,
                &history,
                &self.config.policy,
                Instant::now(),
            );
            history.note(&step);
            log_step(self.status, &step, &attempt, &call);
            if step.follows_a_refusal() && !history.maybe_delivered() {
                // Never delivered: a halt outlasting the repeat window leaves
                // nothing in doubt, whoever takes the call over.
                self.settler.book.refused(&call).await?;
            }
            call = match self.follow(step, call, &attempt).await? {
                ControlFlow::Continue(call) => call,
                ControlFlow::Break(end) => return Ok(end),
            };
        }
    }

    /// Waits for the pacer's turn and claims the call on it. `None` when the
    /// session stopped first (the call is then left).
    async fn take_turn(&mut self, call: &mut Call) -> Result<Option<Claim>, SessionEnd> {
        let turn = self
            .sender
            .pacer
            .turn(self.settler.book.claim(call), self.stop)
            .await;
        let (claimed, go) = match turn {
            Turn::Go(claimed) => (claimed, true),
            Turn::StoppedAfterClaim(claimed) => (claimed, false),
            Turn::Stopped => return Ok(None),
        };
        let claim = match claimed {
            Ok(claim) => claim,
            Err(BookEnd::Stopped) => return Ok(None),
            Err(end) => return Err(end.into()),
        };
        if claim == Claim::Ready && !std::mem::replace(&mut call.claimed, true) {
            self.crash
                .before_call(call.batch.jobs.iter().map(|q| q.job.id.as_str()));
        }
        Ok(go.then_some(claim))
    }

    /// Carries out the step after an answer: the call again, or how it ended.
    async fn follow(
        &mut self,
        step: Step,
        call: Call,
        attempt: &Attempt,
    ) -> Result<ControlFlow<CallEnd, Call>, SessionEnd> {
        let end = match step {
            Step::Deliver { msg_seq } => self.delivered(call, msg_seq),
            Step::RetryAfter(delay) | Step::Halt { probe_after: delay } => {
                if !sleep_unless_stopped(delay, self.stop).await {
                    return Ok(ControlFlow::Break(self.leave(call).await));
                }
                if matches!(step, Step::Halt { .. }) {
                    self.sender.resign();
                }
                return Ok(ControlFlow::Continue(call));
            }
            Step::PauseSender { min_pause } => {
                self.sender.on_rate_limited(min_pause);
                return Ok(ControlFlow::Continue(call));
            }
            Step::Resign => {
                self.sender.resign();
                return Ok(ControlFlow::Continue(call));
            }
            Step::Split => {
                let (left, right) = call.batch.split();
                let parent = call.ledger_id;
                CallEnd::Then(vec![Call::fresh(left, parent), Call::fresh(right, parent)])
            }
            Step::StartOver => self.start_over(call, attempt.code, &attempt.info).await?,
            Step::DeadLetter(reason) => {
                dead_letter_all(call, reason, attempt.code, attempt.info.clone())
            }
        };
        Ok(ControlFlow::Break(end))
    }

    /// Stopped: the call's jobs go back to the queue, and the book's call is
    /// released, so the session that takes it over counts no interruption.
    async fn leave(&mut self, call: Call) -> CallEnd {
        self.settler.book.release(&call).await;
        leave(call)
    }

    fn delivered(&self, call: Call, msg_seq: Option<u64>) -> CallEnd {
        self.crash.reached(CrashPoint::AfterCall);
        metrics::counter!(telemetry::JOBS_DELIVERED, telemetry::SDKAPPID => self.status.app.clone())
            .increment(call.batch.jobs.len() as u64);
        let (book_call, random) = (call.ledger_id, call.batch.random);
        CallEnd::Settled(
            call.batch
                .jobs
                .into_iter()
                .map(|q| {
                    let fate = Fate::Ack {
                        call: book_call,
                        msg_seq,
                        random: Some(random),
                    };
                    (q.job, q.delivery, fate)
                })
                .collect(),
        )
    }

    /// Never delivered (refused now, or at every attempt): the jobs held
    /// start over as new calls, packed again under today's rules (the
    /// recovered body may have been made under others); the call's other
    /// jobs count as new when they come.
    async fn start_over(
        &mut self,
        call: Call,
        code: Option<i64>,
        info: &str,
    ) -> Result<CallEnd, SessionEnd> {
        self.settler.book.abandoned(&call, code, info).await?;
        let mut batcher = Batcher::new();
        for mut queued in call.batch.jobs {
            // Jobs that were in a call are never superseded.
            queued.job.coalesce = None;
            batcher.push(queued.job, queued.delivery);
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
    ) -> Result<CallEnd, SessionEnd> {
        let since = history.doubt_since.unwrap_or_else(Instant::now);
        let age = Instant::now().saturating_duration_since(since);
        let info = format!(
            "its call may have reached the service {} s ago: past the service's repeat window another attempt could deliver it twice",
            age.as_secs()
        );
        warn!(age = ?age, jobs = call.batch.jobs.len(), ?step, "a call that may have been delivered reached the end of the repeat window");
        match step {
            Step::StartOver => self.start_over(call, None, &info).await,
            _ => Ok(dead_letter_all(call, DeadReason::InDoubt, None, info)),
        }
    }
}

/// Says what the step is about to do, and keeps the halt flag.
fn log_step(status: &WorkerStatus, step: &Step, attempt: &Attempt, call: &Call) {
    let Attempt {
        number: attempt_no,
        code,
        info,
        outcome,
    } = attempt;
    let attempt = attempt_no;
    match step {
        Step::Deliver { msg_seq } => {
            if status.set_halted(false) {
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
        Step::DeadLetter(_) if *outcome == Outcome::PermanentCall => {
            warn!(attempt, code, %info, jobs = call.batch.jobs.len(), "refused for what its jobs share (sender or custom data): dead-lettering the call's jobs")
        }
        Step::DeadLetter(_) if *outcome == Outcome::Permanent => {
            warn!(attempt, code, %info, job = %call.batch.jobs[0].job.id, "refused: dead-lettering the job")
        }
        Step::DeadLetter(_) => {
            error!(attempt, code, %info, "app-wide fault: dead-lettering the call's jobs as configured")
        }
        Step::Halt { probe_after } => {
            if !status.set_halted(true) {
                error!(
                    code, %info, probe_every = ?probe_after,
                    "app-wide fault: sending stopped, every job kept; fix the app's configuration (console switch, admin account, SDKAppID, secret key)"
                );
            }
        }
    }
}

/// Sleeps; false if the session stopped first.
async fn sleep_unless_stopped(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}
