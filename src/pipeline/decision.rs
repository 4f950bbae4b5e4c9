//! What follows an answer: one pure function of the answer's outcome, the
//! call's history and the policy, returning the single step the sender takes
//! next. The sender's loop only performs the steps it is told, so every path
//! (deliver, retry, pause, re-sign, split, start over, dead-letter, halt) is
//! tested here without a broker or a service.
//!
//! The same goes for a redelivered job whose call the ledger holds as in
//! flight: [`on_redelivery`] says whether that call may still be resent.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

use crate::broker::DeadReason;
use crate::tencent::classify::Outcome;

use super::config::{AppFaultPolicy, InDoubtPolicy, Policy};

/// Fresh UserSigs tried for one call before an expiry answer is taken as the
/// app's fault (a clock or key problem), not the signature's age.
pub const MAX_RESIGNS: u32 = 2;

impl Policy {
    /// The wait before the retry that follows the `failures`-th transient
    /// failure: doubling from `backoff_min` up to `backoff_max`. No jitter:
    /// one sender per app means no herd of clients to spread out, and a
    /// fixed schedule is one a test can check.
    pub fn backoff(&self, failures: u32) -> Duration {
        ExponentialBuilder::default()
            .with_min_delay(self.backoff_min)
            .with_max_delay(self.backoff_max)
            .without_max_times()
            .build()
            .nth(failures.saturating_sub(1) as usize)
            .unwrap_or(self.backoff_max)
    }
}

/// What the sender knows of one call between its attempts.
#[derive(Debug, Clone)]
pub struct CallHistory {
    /// When an attempt of this very body and `Random` may first have reached
    /// the service: one that failed without a definite answer, or (for a
    /// call recovered from the ledger) the previous worker's. From then on
    /// no attempt may come later than the repeat window allows, and the age
    /// limit of retries counts from it. `None` while every attempt was
    /// refused for sure (a halt, a frequency limit): nothing was delivered,
    /// so no window binds the call.
    pub doubt_since: Option<Instant>,
    /// When the latest attempt was made.
    pub last_attempt: Option<Instant>,
    pub transient_failures: u32,
    pub resigns: u32,
    /// Jobs in the call: one job alone cannot be split.
    pub jobs: usize,
    /// Recovered from the ledger: resent verbatim, never split.
    pub recovered: bool,
}

impl CallHistory {
    pub fn new(jobs: usize, recovered: bool, doubt_since: Option<Instant>) -> Self {
        Self {
            doubt_since,
            last_attempt: None,
            transient_failures: 0,
            resigns: 0,
            jobs,
            recovered,
        }
    }

    /// An attempt is made at `at`.
    pub fn attempted(&mut self, at: Instant) {
        self.last_attempt = Some(at);
    }

    /// Whether an attempt may have reached the service.
    pub fn maybe_delivered(&self) -> bool {
        self.doubt_since.is_some()
    }

    /// Counts what a step spends of the call's allowances, and whether the
    /// attempt it follows may have reached the service.
    pub fn note(&mut self, step: &Step) {
        match step {
            Step::RetryAfter(_) => {
                self.transient_failures += 1;
                if let Some(at) = self.last_attempt {
                    self.doubt_since.get_or_insert(at);
                }
            }
            Step::Resign => self.resigns += 1,
            _ => {}
        }
    }
}

impl Step {
    /// The attempt this step follows was refused for sure: the service
    /// answered and took nothing.
    pub fn follows_a_refusal(&self) -> bool {
        matches!(
            self,
            Step::PauseSender { .. } | Step::Resign | Step::Halt { .. }
        )
    }
}

/// The one thing to do next with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The service took it: ack every job.
    Deliver { msg_seq: Option<u64> },
    /// Send the same body and `Random` again after this wait.
    RetryAfter(Duration),
    /// The app's frequency limit: pause the whole sender (at least
    /// `min_pause`), slow it down, then send the call again.
    PauseSender { min_pause: Duration },
    /// Sign a fresh UserSig and send again at once.
    Resign,
    /// Refused for something in it: send each half as a call of its own, to
    /// find the job at fault.
    Split,
    /// A recovered call refused: it was never delivered, so its jobs start
    /// over as a new call.
    StartOver,
    /// Dead-letter every job of the call.
    DeadLetter(DeadReason),
    /// The app is misconfigured: stop sending, keep the call, probe again
    /// after this long.
    Halt { probe_after: Duration },
}

/// The step after one attempt answered with `outcome`, at `now`.
pub fn decide(outcome: &Outcome, history: &CallHistory, policy: &Policy, now: Instant) -> Step {
    match outcome {
        Outcome::Delivered { msg_seq } => Step::Deliver { msg_seq: *msg_seq },
        Outcome::Transient => after_transient(history, policy, now),
        Outcome::RateLimited { min_pause } => Step::PauseSender {
            min_pause: *min_pause,
        },
        Outcome::Resign if history.resigns < MAX_RESIGNS => Step::Resign,
        // A fresh UserSig that still expires at once is a clock or key
        // problem: the app's, not the job's.
        Outcome::Resign | Outcome::AppFault => match policy.on_app_fault {
            AppFaultPolicy::Halt => Step::Halt {
                probe_after: policy.app_fault_probe,
            },
            AppFaultPolicy::DeadLetter => Step::DeadLetter(DeadReason::Rejected),
        },
        Outcome::Permanent if history.recovered => Step::StartOver,
        Outcome::Permanent if history.jobs > 1 => Step::Split,
        Outcome::Permanent => Step::DeadLetter(DeadReason::Rejected),
        // What the jobs share is refused: no half would fare better.
        Outcome::PermanentCall => Step::DeadLetter(DeadReason::Rejected),
    }
}

/// Retry after the backoff, unless the attempts are spent or the retry would
/// come later than the age limit allows.
fn after_transient(history: &CallHistory, policy: &Policy, now: Instant) -> Step {
    let failures = history.transient_failures + 1;
    let since = history.doubt_since.or(history.last_attempt).unwrap_or(now);
    let age = now.saturating_duration_since(since);
    let delay = policy.backoff(failures);
    if failures >= policy.max_attempts || age + delay >= policy.max_retry_age {
        return Step::DeadLetter(DeadReason::RetriesExhausted);
    }
    Step::RetryAfter(delay)
}

/// Checked right before every attempt, whatever was waited for since the
/// last one (backoff, a frequency-limit pause, a halt, a lost permit): an
/// attempt later than `resend_window` after the first of a call that may have
/// been delivered is no longer a repeat the service drops, so the call is
/// given up as in doubt (dead-lettered, or started over under the resend
/// policy: at least once).
pub fn before_attempt(
    history: &CallHistory,
    resend_window: Duration,
    in_doubt: InDoubtPolicy,
    now: Instant,
) -> Option<Step> {
    let since = history.doubt_since?;
    if now.saturating_duration_since(since) < resend_window {
        return None;
    }
    Some(match in_doubt {
        InDoubtPolicy::DeadLetter => Step::DeadLetter(DeadReason::InDoubt),
        InDoubtPolicy::Resend => Step::StartOver,
    })
}

/// What to do with a redelivered job whose call is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// Every attempt of the call was refused for sure: nothing was
    /// delivered, so its jobs start over as a new call (claiming its
    /// `Random` afresh), however long ago it was made.
    StartOver,
    /// Within the repeat window: resend the call verbatim; the service drops
    /// it if the first attempt went through.
    Resend,
    /// Beyond the window, resent anyway as configured: at least once.
    ResendInDoubt,
    /// Beyond the window: dead-letter the job as `in-doubt`.
    DeadLetterInDoubt,
}

/// `doubt` is the time since an attempt of the call may first have reached
/// the service (`None`: none may have).
pub fn on_redelivery(
    doubt: Option<Duration>,
    resend_window: Duration,
    in_doubt: InDoubtPolicy,
) -> Redelivery {
    let Some(age) = doubt else {
        return Redelivery::StartOver;
    };
    match in_doubt {
        _ if age < resend_window => Redelivery::Resend,
        InDoubtPolicy::Resend => Redelivery::ResendInDoubt,
        InDoubtPolicy::DeadLetter => Redelivery::DeadLetterInDoubt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            max_attempts: 4,
            max_retry_age: Duration::from_secs(240),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(4),
            on_app_fault: AppFaultPolicy::Halt,
            app_fault_probe: Duration::from_secs(30),
        }
    }

    /// Runs the decision as the sender would: each step noted in the history.
    fn step(outcome: Outcome, history: &mut CallHistory, policy: &Policy) -> Step {
        history.attempted(Instant::now());
        let step = decide(&outcome, history, policy, Instant::now());
        history.note(&step);
        step
    }

    #[tokio::test(start_paused = true)]
    async fn delivered_is_delivered_whatever_came_before() {
        let mut history = CallHistory::new(3, false, None);
        let p = policy();
        assert_eq!(
            step(Outcome::Transient, &mut history, &p),
            Step::RetryAfter(Duration::from_millis(500))
        );
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(
            step(Outcome::Delivered { msg_seq: Some(7) }, &mut history, &p),
            Step::Deliver { msg_seq: Some(7) }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_back_off_then_give_up_at_the_attempt_limit() {
        let mut history = CallHistory::new(1, false, None);
        let p = policy();
        let mut delays = Vec::new();
        loop {
            match step(Outcome::Transient, &mut history, &p) {
                Step::RetryAfter(delay) => {
                    delays.push(delay);
                    tokio::time::advance(delay).await;
                }
                other => {
                    assert_eq!(other, Step::DeadLetter(DeadReason::RetriesExhausted));
                    break;
                }
            }
        }
        // Four attempts: three retries, doubling from the minimum.
        assert_eq!(
            delays,
            [500, 1000, 2000].map(Duration::from_millis).to_vec()
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let p = policy();
        let delays: Vec<u64> = (1..=6).map(|n| p.backoff(n).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 4000, 4000]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_is_scheduled_past_the_age_limit() {
        let p = Policy {
            max_attempts: 100,
            ..policy()
        };
        let mut history = CallHistory::new(2, false, None);
        // The age counts from the first attempt that may have got through.
        assert_eq!(
            step(Outcome::Transient, &mut history, &p),
            Step::RetryAfter(Duration::from_millis(500))
        );
        tokio::time::advance(Duration::from_secs(238)).await;
        // 238 s + the next 1 s backoff is still under 240 s.
        assert_eq!(
            step(Outcome::Transient, &mut history, &p),
            Step::RetryAfter(Duration::from_secs(1))
        );
        tokio::time::advance(Duration::from_millis(1_500)).await;
        // 239.5 s + the next 2 s backoff would land past 240 s.
        assert_eq!(
            step(Outcome::Transient, &mut history, &p),
            Step::DeadLetter(DeadReason::RetriesExhausted)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_halt_refused_for_sure_is_never_in_doubt_however_long_it_lasts() {
        let p = policy();
        let window = Duration::from_secs(270);
        let mut history = CallHistory::new(3, false, None);
        for _ in 0..40 {
            let halt = step(Outcome::AppFault, &mut history, &p);
            assert!(halt.follows_a_refusal(), "{halt:?}");
            tokio::time::advance(Duration::from_secs(30)).await;
        }
        // Twenty minutes of refusals: no window to keep, no retry age spent.
        assert!(!history.maybe_delivered());
        let now = Instant::now();
        assert_eq!(
            before_attempt(&history, window, InDoubtPolicy::DeadLetter, now),
            None
        );
        assert_eq!(
            step(Outcome::Transient, &mut history, &p),
            Step::RetryAfter(Duration::from_millis(500))
        );
        // From that timeout on, the call may have been delivered.
        assert_eq!(history.doubt_since, Some(now));
        assert!(!step(Outcome::Transient, &mut history, &p).follows_a_refusal());
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovered_call_counts_its_age_from_the_first_attempt_of_its_previous_worker() {
        let p = Policy {
            max_attempts: 100,
            ..policy()
        };
        tokio::time::advance(Duration::from_secs(300)).await;
        let first = Instant::now() - Duration::from_secs(250);
        let mut history = CallHistory::new(5, true, Some(first));
        assert_eq!(
            step(Outcome::Transient, &mut history, &p),
            Step::DeadLetter(DeadReason::RetriesExhausted)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_pause_the_sender_and_never_use_up_the_attempts() {
        let mut history = CallHistory::new(5, false, None);
        let p = policy();
        for _ in 0..20 {
            assert_eq!(
                step(
                    Outcome::RateLimited {
                        min_pause: Duration::from_secs(60)
                    },
                    &mut history,
                    &p
                ),
                Step::PauseSender {
                    min_pause: Duration::from_secs(60)
                }
            );
        }
        assert_eq!(history.transient_failures, 0);
        assert!(matches!(
            step(Outcome::Transient, &mut history, &p),
            Step::RetryAfter(_)
        ));
    }

    #[test]
    fn an_expired_usersig_is_renewed_twice_then_taken_as_an_app_fault() {
        for (on_app_fault, then) in [
            (
                AppFaultPolicy::Halt,
                Step::Halt {
                    probe_after: Duration::from_secs(30),
                },
            ),
            (
                AppFaultPolicy::DeadLetter,
                Step::DeadLetter(DeadReason::Rejected),
            ),
        ] {
            let p = Policy {
                on_app_fault,
                ..policy()
            };
            let mut history = CallHistory::new(1, false, None);
            assert_eq!(step(Outcome::Resign, &mut history, &p), Step::Resign);
            assert_eq!(step(Outcome::Resign, &mut history, &p), Step::Resign);
            assert_eq!(step(Outcome::Resign, &mut history, &p), then);
        }
    }

    #[test]
    fn app_faults_halt_or_dead_letter_as_configured() {
        let history = CallHistory::new(10, false, None);
        let halt = policy();
        assert_eq!(
            decide(&Outcome::AppFault, &history, &halt, Instant::now()),
            Step::Halt {
                probe_after: Duration::from_secs(30)
            }
        );
        let dead_letter = Policy {
            on_app_fault: AppFaultPolicy::DeadLetter,
            ..policy()
        };
        assert_eq!(
            decide(&Outcome::AppFault, &history, &dead_letter, Instant::now()),
            Step::DeadLetter(DeadReason::Rejected)
        );
    }

    #[test]
    fn permanent_refusals_split_a_merged_call_and_dead_letter_a_lone_job() {
        let p = policy();
        let now = Instant::now();
        let merged = CallHistory::new(2, false, None);
        assert_eq!(decide(&Outcome::Permanent, &merged, &p, now), Step::Split);
        let alone = CallHistory::new(1, false, None);
        assert_eq!(
            decide(&Outcome::Permanent, &alone, &p, now),
            Step::DeadLetter(DeadReason::Rejected)
        );
        // What the jobs share is refused: dead-letter them all at once,
        // recovered or not.
        for (jobs, recovered) in [(1, false), (50, false), (7, true)] {
            let history = CallHistory::new(jobs, recovered, None);
            assert_eq!(
                decide(&Outcome::PermanentCall, &history, &p, now),
                Step::DeadLetter(DeadReason::Rejected)
            );
        }
        // A recovered call was never delivered if refused now: start over,
        // however many jobs it holds.
        for jobs in [1, 7] {
            let recovered = CallHistory::new(jobs, true, None);
            assert_eq!(
                decide(&Outcome::Permanent, &recovered, &p, now),
                Step::StartOver
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_attempt_of_a_maybe_delivered_call_comes_after_the_repeat_window() {
        let window = Duration::from_secs(270);
        let p = Policy {
            max_attempts: 100,
            ..policy()
        };
        let mut history = CallHistory::new(3, false, None);
        // Refused for the rate only: never delivered, no window to keep.
        for _ in 0..3 {
            step(
                Outcome::RateLimited {
                    min_pause: Duration::from_secs(60),
                },
                &mut history,
                &p,
            );
            tokio::time::advance(Duration::from_secs(100)).await;
        }
        let now = Instant::now();
        assert_eq!(
            before_attempt(&history, window, InDoubtPolicy::DeadLetter, now),
            None
        );
        // A timeout: it may have gone through. Then a long frequency-limit
        // pause carries the next attempt past the window.
        let mut history = CallHistory::new(3, false, None);
        assert!(matches!(
            step(Outcome::Transient, &mut history, &p),
            Step::RetryAfter(_)
        ));
        tokio::time::advance(Duration::from_secs(200)).await;
        assert_eq!(
            before_attempt(&history, window, InDoubtPolicy::DeadLetter, Instant::now()),
            None
        );
        step(
            Outcome::RateLimited {
                min_pause: Duration::from_secs(60),
            },
            &mut history,
            &p,
        );
        tokio::time::advance(Duration::from_secs(70)).await;
        assert_eq!(
            before_attempt(&history, window, InDoubtPolicy::DeadLetter, Instant::now()),
            Some(Step::DeadLetter(DeadReason::InDoubt))
        );
        assert_eq!(
            before_attempt(&history, window, InDoubtPolicy::Resend, Instant::now()),
            Some(Step::StartOver)
        );
        // A recovered call may have been delivered by its previous worker.
        let recovered = CallHistory::new(1, true, Some(Instant::now() - window));
        assert_eq!(
            before_attempt(
                &recovered,
                window,
                InDoubtPolicy::DeadLetter,
                Instant::now()
            ),
            Some(Step::DeadLetter(DeadReason::InDoubt))
        );
    }

    #[test]
    fn a_redelivered_call_is_resent_only_within_the_repeat_window_unless_told_otherwise() {
        let window = Duration::from_secs(270);
        for policy in [InDoubtPolicy::DeadLetter, InDoubtPolicy::Resend] {
            assert_eq!(
                on_redelivery(Some(Duration::from_secs(269)), window, policy),
                Redelivery::Resend
            );
            // Every attempt refused for sure: its jobs start over, however old.
            assert_eq!(on_redelivery(None, window, policy), Redelivery::StartOver);
        }
        assert_eq!(
            on_redelivery(Some(window), window, InDoubtPolicy::DeadLetter),
            Redelivery::DeadLetterInDoubt
        );
        assert_eq!(
            on_redelivery(Some(window), window, InDoubtPolicy::Resend),
            Redelivery::ResendInDoubt
        );
    }
}
