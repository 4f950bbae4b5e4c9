//! The token bucket every call attempt draws from, retries included; the
//! window of answered calls that keeps sends clear of the service's window
//! whatever the network's jitter; and the reaction to the service's
//! frequency-limit answers: pause the whole sender, then run slower for a
//! while (someone else may be spending the app's quota).

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

/// How the limiter reacts to a frequency-limit answer.
#[derive(Debug, Clone)]
pub struct SlowDown {
    /// The shortest pause of the whole sender after a frequency-limit answer.
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

/// Calls per second for one app.
pub struct Limiter {
    rate: f64,
    /// Added to every one-second window, so that jitter between our clock and
    /// the service's never puts `rate + 1` calls in one of its windows.
    guard: Duration,
    slow_down: SlowDown,
    bucket: DefaultDirectRateLimiter,
    current_rate: f64,
    paused_until: Option<Instant>,
    slowed_until: Option<Instant>,
    /// When the latest attempts' answers (or failures) came back, newest
    /// last: each call reached the service no later than that.
    answered: VecDeque<Instant>,
}

impl Limiter {
    /// `rate` must be positive and finite (configuration checks it).
    pub fn new(rate: f64, guard: Duration, slow_down: SlowDown) -> Self {
        Self {
            rate,
            guard,
            bucket: bucket(rate, guard),
            slow_down,
            current_rate: rate,
            paused_until: None,
            slowed_until: None,
            answered: VecDeque::new(),
        }
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

    /// An attempt's answer (or failure) came back at `at`.
    pub fn answered(&mut self, at: Instant) {
        self.answered.push_back(at);
        let (calls, _) = self.window();
        while self.answered.len() > calls {
            self.answered.pop_front();
        }
    }

    /// The earliest moment the next call may be sent so that the service
    /// can never see one window too many, however late the earlier calls
    /// reached it: a window after the answer of the call `calls` back. The
    /// bucket spaces sends by our clock; this bounds them by the service's.
    pub fn window_opens(&self) -> Option<Instant> {
        let (calls, span) = self.window();
        (self.answered.len() >= calls).then(|| self.answered[self.answered.len() - calls] + span)
    }

    /// The rate in force now.
    pub fn current_rate(&self) -> f64 {
        self.current_rate
    }

    /// The shortest time between two sends at the rate in force. The sender
    /// also keeps it between the moments it actually sends, so that whatever
    /// runs between a permit and its send (signing, the ledger's write) cannot
    /// bunch two sends together.
    pub fn min_gap(&self) -> Duration {
        (Duration::from_secs(1) + self.guard).div_f64(self.current_rate)
    }

    /// Waits for the pause, if any, then for a permit. The pause is kept
    /// until it has passed: a wait given up halfway (a session that ended,
    /// a shutdown) leaves it for the next.
    pub async fn acquire(&mut self) {
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
        self.bucket.until_ready().await;
    }

    /// A frequency-limit answer: pause at least `min_pause` (or the configured
    /// pause) and slow down.
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

    fn set_rate(&mut self, rate: f64) {
        self.current_rate = rate;
        self.bucket = bucket(rate, self.guard);
    }
}

/// A bucket of one permit refilled every `(1 s + guard) / rate`: no bursts, so
/// no window of the service ever sees more than `rate` calls.
fn bucket(rate: f64, guard: Duration) -> DefaultDirectRateLimiter {
    let period = (Duration::from_secs(1) + guard).div_f64(rate);
    let quota = Quota::with_period(period.max(Duration::from_micros(1)))
        .expect("the period is positive")
        .allow_burst(NonZeroU32::MIN);
    RateLimiter::direct(quota)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_opens_a_span_after_the_answer_rate_calls_back() {
        let mut limiter = Limiter::new(5.0, Duration::from_millis(10), SlowDown::default());
        let t0 = Instant::now();
        for i in 0..4 {
            limiter.answered(t0 + Duration::from_millis(200 * i));
            assert_eq!(limiter.window_opens(), None, "fewer than 5 answered");
        }
        // The fifth answer arrives late: the window is anchored on the first.
        limiter.answered(t0 + Duration::from_millis(900));
        assert_eq!(limiter.window_opens(), Some(t0 + Duration::from_secs(1)));
        limiter.answered(t0 + Duration::from_millis(1_000));
        assert_eq!(
            limiter.window_opens(),
            Some(t0 + Duration::from_millis(1_200))
        );
        // Slowed to 2.5 calls/s: 2 calls in 0.8 s, from the answer 2 back.
        limiter.on_rate_limited(Duration::ZERO);
        assert_eq!(
            limiter.window_opens(),
            Some(t0 + Duration::from_millis(900 + 800))
        );
        let mut slow = Limiter::new(0.5, Duration::ZERO, SlowDown::default());
        slow.answered(t0);
        assert_eq!(slow.window_opens(), Some(t0 + Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_outlives_a_wait_given_up_halfway() {
        let mut limiter = Limiter::new(5.0, Duration::ZERO, SlowDown::default());
        limiter.acquire().await;
        let answered = Instant::now();
        limiter.on_rate_limited(Duration::from_secs(60));
        // The session that took the pause ends ten seconds into it.
        let gave_up = tokio::time::timeout(Duration::from_secs(10), limiter.acquire()).await;
        assert!(gave_up.is_err(), "still paused");
        // The next session's first permit comes when the pause is over.
        limiter.acquire().await;
        assert!(
            answered.elapsed() >= Duration::from_secs(60),
            "{:?}",
            answered.elapsed()
        );
        assert!(answered.elapsed() < Duration::from_secs(61));
    }

    #[tokio::test]
    async fn spaces_permits_and_slows_after_a_limit_answer() {
        let mut limiter = Limiter::new(
            20.0,
            Duration::from_millis(10),
            SlowDown {
                pause: Duration::from_millis(100),
                hold: Duration::from_millis(300),
                ..SlowDown::default()
            },
        );
        let start = std::time::Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        // Four gaps of (1 s + 10 ms) / 20 = 50.5 ms.
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
        limiter.on_rate_limited(Duration::ZERO);
        assert_eq!(limiter.current_rate(), 10.0);
        let paused = std::time::Instant::now();
        limiter.acquire().await;
        assert!(paused.elapsed() >= Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(350)).await;
        limiter.acquire().await;
        assert_eq!(limiter.current_rate(), 20.0, "recovers after the hold");
    }
}
