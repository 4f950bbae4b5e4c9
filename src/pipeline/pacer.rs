//! The app's pace: the one place that knows its quota. A send takes a
//! permit from a token bucket (every attempt, retries included), keeps the
//! bucket's period since the last send by our clock, and keeps clear of the
//! service's window whatever the network's jitter: no send sooner than a
//! window after the *answer* of the call `rate` back. A frequency-limit
//! answer pauses every send and slows the bucket for a while (someone else
//! may be spending the app's quota). The pacer outlives broker sessions, so
//! a pause or a gap taken in one binds the next.
//!
//! [`Pacer::turn`] is the whole wait before a send: the permit, the gap, and
//! the claim the caller makes on its turn (the ledger's fenced record of the
//! call), started as long before the gap's end as recent claims took, so
//! that the claim's round trip does not lengthen every period.

use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::telemetry;

/// The longest a claim may start before the gap's end: a ledger slower than
/// this makes the send wait for it rather than take its turn early.
const MAX_CLAIM_LEAD: Duration = Duration::from_millis(100);

/// How the pacer reacts to a frequency-limit answer.
#[derive(Debug, Clone)]
pub struct SlowDown {
    /// The shortest pause of every send after a frequency-limit answer.
    pub pause: Duration,
    /// The rate is multiplied by this after each such answer...
    pub factor: f64,
    /// ...but never below this share of the configured rate...
    pub floor: f64,
    /// ...and goes back to the configured rate after this long without one.
    pub hold: Duration,
}

impl Default for SlowDown {
    fn default() -> Self {
        Self {
            pause: Duration::from_secs(1),
            factor: 0.5,
            floor: 0.1,
            hold: Duration::from_secs(30),
        }
    }
}

/// How a turn ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Turn<T> {
    /// The send may go, with what was claimed.
    Go(T),
    /// Stopped after the claim was made: the caller hands it back.
    StoppedAfterClaim(T),
    /// Stopped before the claim.
    Stopped,
}

/// One app's pace.
pub struct Pacer {
    /// The app, as the metrics' `sdkappid` label spells it.
    app: String,
    rate: f64,
    /// Added to every one-second window, so that jitter between our clock and
    /// the service's never puts `rate + 1` calls in one of its windows.
    guard: Duration,
    slow_down: SlowDown,
    bucket: Bucket,
    current_rate: f64,
    paused_until: Option<Instant>,
    slowed_until: Option<Instant>,
    /// When the latest attempts' answers (or failures) came back, newest
    /// last: each call reached the service no later than that.
    answered: VecDeque<Instant>,
    /// When the last call was sent (or this process became the app's
    /// sender: another may have sent a moment before).
    last_send: Option<Instant>,
    /// How long recent claims took: the next starts that much before its turn.
    claim_lead: Duration,
    /// A permit taken and not yet spent by a send.
    permit: bool,
}

impl Pacer {
    /// `rate` must be positive and finite (the settings check it).
    pub fn new(app: String, rate: f64, guard: Duration, slow_down: SlowDown) -> Self {
        metrics::gauge!(telemetry::RATE, telemetry::SDKAPPID => app.clone()).set(rate);
        Self {
            app,
            rate,
            guard,
            bucket: bucket(rate, guard),
            slow_down,
            current_rate: rate,
            paused_until: None,
            slowed_until: None,
            answered: VecDeque::new(),
            last_send: None,
            claim_lead: Duration::ZERO,
            permit: false,
        }
    }

    /// This process has just become the app's sender: a process before it
    /// may have sent a moment ago (a restart, a standby taking over), so the
    /// first send keeps a full period from now.
    pub fn become_sender(&mut self) {
        let now = Instant::now();
        self.last_send = Some(self.last_send.map_or(now, |last| last.max(now)));
    }

    /// Takes a permit unless one is held: waits out a pause, then for the
    /// bucket. Cancel-safe: a wait given up keeps the pause for the next.
    pub async fn permit(&mut self) {
        if self.permit {
            return;
        }
        let waiting = Instant::now();
        if let Some(until) = self.paused_until {
            tokio::time::sleep_until(until).await;
            self.paused_until = None;
        }
        if self
            .slowed_until
            .is_some_and(|until| Instant::now() >= until)
        {
            self.slowed_until = None;
            self.set_rate(self.rate);
            tracing::info!(
                rate = self.rate,
                "no frequency-limit answer for a while: back to the configured rate"
            );
        }
        while let Err(not_yet) = self.bucket.check() {
            tokio::time::sleep(not_yet.wait_time_from(TokioClock.now())).await;
        }
        self.permit = true;
        metrics::histogram!(telemetry::PERMIT_WAIT_SECONDS, telemetry::SDKAPPID => self.app.clone())
            .record(waiting.elapsed().as_secs_f64());
    }

    /// Waits until the next send could begin its claim: the permit, then
    /// the gap less the claim's lead. The send loop waits for this before
    /// it packs a call, so the call carries whatever arrived until the
    /// moment it goes (an urgent job most of all), not only what had
    /// arrived when the bucket allowed it. Cancel-safe, as [`Self::permit`].
    pub async fn ready(&mut self) {
        self.permit().await;
        self.wait_for_gap(self.claim_lead).await;
    }

    /// Waits for the next send's turn, making `claim` on it: the permit (if
    /// none is held), the gap less the claim's lead, the claim, then the
    /// rest of the gap. A claim once started is always finished, so a stop
    /// after it hands back what was claimed.
    pub async fn turn<F: Future>(&mut self, claim: F, stop: &CancellationToken) -> Turn<F::Output> {
        let lead = self.claim_lead;
        let ready = async {
            self.permit().await;
            self.wait_for_gap(lead).await;
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Turn::Stopped,
            _ = ready => {}
        }
        let claiming = Instant::now();
        let claimed = claim.await;
        // A decaying peak: one slow claim must not make the next send late.
        self.claim_lead = claiming
            .elapsed()
            .max(self.claim_lead.mul_f64(0.9))
            .min(MAX_CLAIM_LEAD);
        tokio::select! {
            biased;
            _ = stop.cancelled() => Turn::StoppedAfterClaim(claimed),
            _ = self.wait_for_gap(Duration::ZERO) => Turn::Go(claimed),
        }
    }

    /// A call is sent now: it spends the permit.
    pub fn sent(&mut self) {
        self.permit = false;
        self.last_send = Some(Instant::now());
    }

    /// The answer (or failure) of the call sent last came back now.
    pub fn answered(&mut self) {
        self.answered.push_back(Instant::now());
        let (calls, _) = self.window();
        while self.answered.len() > calls {
            self.answered.pop_front();
        }
    }

    /// A frequency-limit answer: pause at least `min_pause` (or the
    /// configured pause) and slow down.
    pub fn on_rate_limited(&mut self, min_pause: Duration) {
        let now = Instant::now();
        self.paused_until = Some(now + min_pause.max(self.slow_down.pause));
        self.slowed_until = Some(now + self.slow_down.hold);
        let slower =
            (self.current_rate * self.slow_down.factor).max(self.rate * self.slow_down.floor);
        self.set_rate(slower);
        tracing::warn!(
            rate = slower,
            "frequency limit answered: sender paused and slowed down"
        );
    }

    /// The rate in force now.
    pub fn current_rate(&self) -> f64 {
        self.current_rate
    }

    /// Sleeps until the gap since the last send (at the rate in force) and
    /// the service's window since the answers before have passed, less
    /// `lead`. The gap is kept between the moments calls are actually sent,
    /// so that whatever runs between a permit and its send (signing, the
    /// ledger's write) cannot bunch two sends together.
    async fn wait_for_gap(&self, lead: Duration) {
        let Some(last) = self.last_send else {
            return;
        };
        let gap_ends = last + (Duration::from_secs(1) + self.guard).div_f64(self.current_rate);
        let turn = self.window_opens().map_or(gap_ends, |w| w.max(gap_ends));
        tokio::time::sleep_until(turn.checked_sub(lead).unwrap_or(last)).await;
    }

    /// The service's window at the rate in force: at most `calls` in any
    /// `span` (5 in a second at 5 calls/s; 1 in two seconds at 0.5).
    fn window(&self) -> (usize, Duration) {
        let calls = self.current_rate.floor().max(1.0);
        (
            calls as usize,
            Duration::from_secs_f64(calls / self.current_rate),
        )
    }

    /// The earliest moment the next call may be sent so that the service
    /// can never see one window too many, however late the earlier calls
    /// reached it: a window after the answer of the call `calls` back.
    fn window_opens(&self) -> Option<Instant> {
        let (calls, span) = self.window();
        (self.answered.len() >= calls).then(|| self.answered[self.answered.len() - calls] + span)
    }

    /// The rate in force, and its gauge.
    fn set_rate(&mut self, rate: f64) {
        self.current_rate = rate;
        self.bucket = bucket(rate, self.guard);
        metrics::gauge!(telemetry::RATE, telemetry::SDKAPPID => self.app.clone()).set(rate);
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// A bucket of one permit refilled every `(1 s + guard) / rate`: no bursts, so
/// no window of the service ever sees more than `rate` calls.
fn bucket(rate: f64, guard: Duration) -> Bucket {
    let period = (Duration::from_secs(1) + guard).div_f64(rate);
    let quota = Quota::with_period(period.max(Duration::from_micros(1)))
        .expect("the period is positive")
        .allow_burst(NonZeroU32::MIN);
    RateLimiter::direct_with_clock(quota, TokioClock)
}

/// The bucket's clock is tokio's (monotonic, as governor's own), so that
/// every wait of the pacer runs on one clock, which tests can pause.
#[derive(Debug, Clone, Copy)]
struct TokioClock;

impl Clock for TokioClock {
    /// Time since the process's first reading.
    type Instant = Duration;

    fn now(&self) -> Duration {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(rate: f64, guard_ms: u64) -> Pacer {
        Pacer::new(
            "1".into(),
            rate,
            Duration::from_millis(guard_ms),
            SlowDown::default(),
        )
    }

    /// A send at the pacer's turn, with a claim that takes `claim` to make.
    async fn send(pacer: &mut Pacer, claim: Duration) -> Instant {
        // The claim starts when it is polled, as a ledger write does.
        let claiming = async move { tokio::time::sleep(claim).await };
        let claimed = pacer.turn(claiming, &CancellationToken::new()).await;
        assert_eq!(claimed, Turn::Go(()));
        pacer.sent();
        Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_opens_a_span_after_the_answer_rate_calls_back() {
        let mut pacer = pacer(5.0, 10);
        let t0 = Instant::now();
        for _ in 0..4 {
            pacer.answered();
            assert_eq!(pacer.window_opens(), None, "fewer than 5 answered");
            tokio::time::advance(Duration::from_millis(200)).await;
        }
        // The fifth answer arrives late: the window is anchored on the first.
        tokio::time::advance(Duration::from_millis(100)).await;
        pacer.answered();
        assert_eq!(pacer.window_opens(), Some(t0 + Duration::from_secs(1)));
        tokio::time::advance(Duration::from_millis(100)).await;
        pacer.answered();
        assert_eq!(
            pacer.window_opens(),
            Some(t0 + Duration::from_millis(1_200))
        );
        // Slowed to 2.5 calls/s: 2 calls in 0.8 s, from the answer 2 back.
        pacer.on_rate_limited(Duration::ZERO);
        assert_eq!(
            pacer.window_opens(),
            Some(t0 + Duration::from_millis(900 + 800))
        );
        let mut slow = super::tests::pacer(0.5, 0);
        let at = Instant::now();
        slow.answered();
        assert_eq!(slow.window_opens(), Some(at + Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn sends_keep_the_period_and_a_claim_starts_its_lead_early() {
        let mut pacer = pacer(5.0, 0);
        pacer.become_sender();
        let start = Instant::now();
        // The first send keeps a full period from becoming the sender.
        let first = send(&mut pacer, Duration::ZERO).await;
        assert_eq!(first - start, Duration::from_millis(200));
        // A claim of 30 ms: the send still comes a period after the last...
        let second = send(&mut pacer, Duration::from_millis(30)).await;
        assert_eq!(second - first, Duration::from_millis(230));
        // ...and the next claim starts 30 ms early, so the period holds.
        let third = send(&mut pacer, Duration::from_millis(30)).await;
        assert_eq!(third - second, Duration::from_millis(200));
        // A claim slower than the lead allows delays its send.
        let fourth = send(&mut pacer, Duration::from_millis(500)).await;
        assert!(fourth - third > Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_not_spent_by_a_send_is_kept_for_the_next() {
        let mut pacer = pacer(1.0, 0);
        pacer.permit().await;
        let held = Instant::now();
        // No send (the claim found nothing to send): the permit stays.
        pacer.permit().await;
        assert_eq!(Instant::now(), held);
        pacer.sent();
        pacer.permit().await;
        assert_eq!(Instant::now() - held, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_outlives_a_wait_given_up_halfway() {
        let mut pacer = pacer(5.0, 0);
        pacer.permit().await;
        pacer.sent();
        let answered = Instant::now();
        pacer.on_rate_limited(Duration::from_secs(60));
        // The session that took the pause ends ten seconds into it.
        let gave_up = tokio::time::timeout(Duration::from_secs(10), pacer.permit()).await;
        assert!(gave_up.is_err(), "still paused");
        // The next session's first permit comes when the pause is over.
        pacer.permit().await;
        assert!(answered.elapsed() >= Duration::from_secs(60));
        assert!(answered.elapsed() < Duration::from_secs(61));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_the_wait_ends_the_turn_and_a_claim_made_is_handed_back() {
        let mut pacer = pacer(1.0, 0);
        pacer.become_sender();
        let stop = CancellationToken::new();
        stop.cancel();
        let turn = pacer.turn(async { "claimed" }, &stop).await;
        assert_eq!(turn, Turn::Stopped, "stopped before the claim");
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(900)).await;
            stopping.cancel();
        });
        // The claim is made 100 ms before the turn at most; the stop comes
        // in the rest of the gap: the claim is handed back, not sent.
        pacer.claim_lead = MAX_CLAIM_LEAD;
        let turn = pacer
            .turn(tokio::time::sleep(Duration::from_millis(10)), &stop)
            .await;
        assert_eq!(turn, Turn::StoppedAfterClaim(()));
    }

    #[tokio::test(start_paused = true)]
    async fn slows_after_a_limit_answer_and_recovers_after_the_hold() {
        let mut pacer = Pacer::new(
            "1".into(),
            20.0,
            Duration::from_millis(10),
            SlowDown {
                pause: Duration::from_millis(100),
                hold: Duration::from_millis(300),
                ..SlowDown::default()
            },
        );
        let start = Instant::now();
        for _ in 0..5 {
            pacer.permit().await;
            pacer.sent();
        }
        // Four gaps of (1 s + 10 ms) / 20 = 50.5 ms.
        assert!(start.elapsed() >= Duration::from_millis(200));
        pacer.on_rate_limited(Duration::ZERO);
        assert_eq!(pacer.current_rate(), 10.0);
        let paused = Instant::now();
        pacer.permit().await;
        pacer.sent();
        assert!(paused.elapsed() >= Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(350)).await;
        pacer.permit().await;
        assert_eq!(pacer.current_rate(), 20.0, "recovers after the hold");
    }
}
