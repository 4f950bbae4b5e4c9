//! The token bucket every call attempt draws from, retries included, and its
//! reaction to the service's frequency-limit answers: pause the whole sender,
//! then run slower for a while (someone else may be spending the app's quota).

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
        }
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

    /// Waits for the pause, if any, then for a permit.
    pub async fn acquire(&mut self) {
        if let Some(until) = self.paused_until.take() {
            tokio::time::sleep_until(until).await;
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
