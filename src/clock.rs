//! The wall clock as unix time, written once for whatever stamps or ages
//! something: the broker's time headers and dead letters' ages, an app's
//! recent flow, the UserSig's and the console session's seconds, the
//! simulator's records. A clock before 1970 reads 0; milliseconds past
//! `u64` saturate. Imports nothing from the crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// `at` in unix milliseconds.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Now, in unix milliseconds.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Now, in unix milliseconds as AMQP's signed header integers carry them
/// (a dead letter's times, and the ages counted from them).
pub fn now_ms_i64() -> i64 {
    i64::try_from(now_ms()).unwrap_or(i64::MAX)
}

/// Now, in unix seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_before_the_epoch_read_zero() {
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1_500)), 1_500);
        let (secs, ms) = (now_secs(), now_ms());
        assert!(ms / 1000 >= secs && ms / 1000 - secs <= 1);
    }
}
