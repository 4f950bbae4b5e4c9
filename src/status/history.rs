//! An app's calls over the last hour, in memory: a ring of 60 minute buckets
//! (calls and request bytes), for the chart and the mean fill, and a ring of
//! 60 one-second buckets, for the calls of the last 60 s that the quota's
//! share is computed from. Fixed size, so recording a call is a couple of
//! additions under a short lock, whatever the traffic. Times are passed in
//! (unix milliseconds), so the rings are tested without a clock.

use serde::Serialize;

/// The largest call body the service takes: a call this big is full.
pub const FULL_CALL_BYTES: f64 = 12_000.0;

/// Slots in each ring: an hour of minutes, a minute of seconds.
const SLOTS: usize = 60;

/// Calls and their request bytes in one minute or one second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Bucket {
    /// The minute or second (since the epoch) plus one; 0 marks an unused slot.
    stamp: u64,
    calls: u32,
    bytes: u64,
}

/// Calls per minute for the last hour and per second for the last minute.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    minutes: [Bucket; SLOTS],
    seconds: [Bucket; SLOTS],
}

impl Default for History {
    fn default() -> Self {
        Self {
            minutes: [Bucket::default(); SLOTS],
            seconds: [Bucket::default(); SLOTS],
        }
    }
}

/// One minute of the chart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MinutePoint {
    /// When the minute began, unix milliseconds.
    pub start_ms: u64,
    /// Call attempts in it.
    pub calls: u32,
    /// Their request bytes together.
    pub bytes: u64,
    /// Their mean fill (bytes / 12,000), none without calls.
    pub fill: Option<f64>,
}

/// Adds one call to the ring's bucket for `stamp`, reusing the slot of the
/// same stamp an hour (or a minute) earlier.
fn bump(ring: &mut [Bucket; SLOTS], stamp: u64, bytes: usize) {
    let slot = &mut ring[(stamp % SLOTS as u64) as usize];
    if slot.stamp != stamp + 1 {
        *slot = Bucket {
            stamp: stamp + 1,
            ..Bucket::default()
        };
    }
    slot.calls = slot.calls.saturating_add(1);
    slot.bytes = slot.bytes.saturating_add(bytes as u64);
}

/// The bucket of `stamp`, if the ring still holds it.
fn at(ring: &[Bucket; SLOTS], stamp: u64) -> Bucket {
    let slot = ring[(stamp % SLOTS as u64) as usize];
    if slot.stamp == stamp + 1 {
        slot
    } else {
        Bucket::default()
    }
}

fn fill(calls: u32, bytes: u64) -> Option<f64> {
    (calls > 0).then(|| bytes as f64 / f64::from(calls) / FULL_CALL_BYTES)
}

impl History {
    /// One call attempt of `bytes` at `now_ms`.
    pub fn record(&mut self, now_ms: u64, bytes: usize) {
        let second = now_ms / 1000;
        bump(&mut self.seconds, second, bytes);
        bump(&mut self.minutes, second / 60, bytes);
    }

    /// Call attempts in the 60 s up to `now_ms`.
    pub fn calls_last_minute(&self, now_ms: u64) -> u32 {
        let now = now_ms / 1000;
        (0..SLOTS as u64)
            .filter_map(|back| now.checked_sub(back))
            .map(|second| at(&self.seconds, second).calls)
            .sum()
    }

    /// The mean fill of the calls of the last `minutes` minutes (this one
    /// included); none without calls.
    pub fn fill_over(&self, now_ms: u64, minutes: u64) -> Option<f64> {
        let now = now_ms / 60_000;
        let (calls, bytes) = (0..minutes.min(SLOTS as u64))
            .filter_map(|back| now.checked_sub(back))
            .map(|minute| at(&self.minutes, minute))
            .fold((0u32, 0u64), |(c, b), bucket| {
                (
                    c.saturating_add(bucket.calls),
                    b.saturating_add(bucket.bytes),
                )
            });
        fill(calls, bytes)
    }

    /// The last 60 minutes, oldest first, the current one last.
    pub fn per_minute(&self, now_ms: u64) -> Vec<MinutePoint> {
        let now = now_ms / 60_000;
        (0..SLOTS as u64)
            .rev()
            .filter_map(|back| now.checked_sub(back))
            .map(|minute| {
                let bucket = at(&self.minutes, minute);
                MinutePoint {
                    start_ms: minute * 60_000,
                    calls: bucket.calls,
                    bytes: bucket.bytes,
                    fill: fill(bucket.calls, bucket.bytes),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_699_999_980_000; // a whole minute, in ms

    #[test]
    fn the_last_minute_counts_the_last_60_seconds_only() {
        let mut h = History::default();
        h.record(T0, 6_000);
        h.record(T0 + 30_000, 12_000);
        h.record(T0 + 59_999, 3_000);
        assert_eq!(h.calls_last_minute(T0 + 59_999), 3);
        // 60 s after the first call it has left the window.
        assert_eq!(h.calls_last_minute(T0 + 60_000), 2);
        assert_eq!(h.calls_last_minute(T0 + 119_999), 0);
        // A slot a minute old is reused, not added to.
        h.record(T0 + 120_000, 1_000);
        assert_eq!(h.calls_last_minute(T0 + 120_000), 1);
    }

    #[test]
    fn fill_is_the_mean_of_the_bytes_over_12000() {
        let mut h = History::default();
        assert_eq!(h.fill_over(T0, 5), None);
        h.record(T0, 6_000);
        h.record(T0 + 1_000, 12_000);
        assert_eq!(h.fill_over(T0 + 1_000, 5), Some(0.75));
        h.record(T0 + 60_000, 3_000);
        assert_eq!(h.fill_over(T0 + 60_000, 1), Some(0.25));
        assert_eq!(h.fill_over(T0 + 60_000, 5), Some(21_000.0 / 3.0 / 12_000.0));
        // Five minutes later the first minute is out of a 5-minute window.
        assert_eq!(h.fill_over(T0 + 5 * 60_000, 5), Some(0.25));
    }

    #[test]
    fn the_chart_holds_the_last_hour_oldest_first() {
        let mut h = History::default();
        h.record(T0, 12_000);
        h.record(T0 + 10 * 60_000, 6_000);
        h.record(T0 + 10 * 60_000 + 5, 6_000);
        let points = h.per_minute(T0 + 10 * 60_000);
        assert_eq!(points.len(), 60);
        let last = points[59];
        assert_eq!(
            (last.start_ms, last.calls, last.fill),
            (T0 + 600_000, 2, Some(0.5))
        );
        assert_eq!((points[49].start_ms, points[49].calls), (T0, 1));
        assert_eq!(points[48].fill, None);
        // An hour on, the slot of T0's minute holds a new minute, never both.
        h.record(T0 + 3_600_000, 1_200);
        let later = h.per_minute(T0 + 3_600_000);
        assert_eq!(later[59].calls, 1);
        assert!(later.iter().all(|p| p.start_ms != T0));
        assert_eq!(later.iter().map(|p| p.calls).sum::<u32>(), 3);
    }
}
