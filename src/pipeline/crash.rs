//! The test-only crash hook: `BROADCAST_TEST_CRASH_AT=POINT:N` makes the worker
//! exit abruptly, as a kill would, the N-th time it reaches POINT. The
//! recovery tests use it to stop the worker between a call and its record.
//! `BROADCAST_TEST_CRASH_ON_JOB=ID` makes it exit before every call that
//! carries that job: a job that crashes the worker each time it is sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use clap::ValueEnum;

/// Points of the cycle where a test can make the worker die as if killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum CrashPoint {
    /// The call is recorded in flight but not sent.
    BeforeCall,
    /// The service answered OK; the ledger does not know yet.
    AfterCall,
    /// The ledger knows; the jobs are not acked.
    AfterLedger,
    /// A call's dead letters are published; the ledger does not know yet.
    AfterDeadLetters,
    /// Superseded jobs are recorded; they are not acked.
    AfterSuperseded,
    /// Jobs are settled and acked; their receipts are not published.
    BeforeReceipts,
}

/// Reads `POINT:N` (die the N-th time POINT is reached).
pub fn parse_crash_at(spec: &str) -> Result<(CrashPoint, u32), String> {
    let (point, n) = spec.split_once(':').unwrap_or((spec, "1"));
    let n: u32 = n
        .parse()
        .map_err(|_| format!("crash count {n:?} is not a number"))?;
    let point =
        CrashPoint::from_str(point, false).map_err(|_| format!("unknown crash point {point:?}"))?;
    Ok((point, n.max(1)))
}

/// Counts the points reached and exits at the configured one. Clones share
/// the counts: the parts of one worker that reach points count together.
#[derive(Debug, Default, Clone)]
pub struct CrashHook {
    at: Option<(CrashPoint, u32)>,
    on_job: Option<String>,
    counts: Arc<Mutex<HashMap<CrashPoint, u32>>>,
}

impl CrashHook {
    pub fn new(at: Option<(CrashPoint, u32)>, on_job: Option<String>) -> Self {
        Self {
            at,
            on_job,
            counts: Arc::default(),
        }
    }

    /// Before a call's attempts: [`CrashPoint::BeforeCall`], and the job trigger.
    pub fn before_call<'a>(&self, mut job_ids: impl Iterator<Item = &'a str>) {
        self.reached(CrashPoint::BeforeCall);
        if let Some(doomed) = &self.on_job {
            if job_ids.any(|id| id == doomed) {
                eprintln!("a call carries job {doomed:?}: exiting abruptly");
                std::process::exit(137);
            }
        }
    }

    /// Exits the process at once if this is the configured point and count.
    pub fn reached(&self, point: CrashPoint) {
        let Some((at, n)) = self.at else {
            return;
        };
        if at != point {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(point).or_insert(0);
        *count += 1;
        if *count == n {
            eprintln!("crash point {point:?} reached ({n}): exiting abruptly");
            std::process::exit(137);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_point_and_count() {
        assert_eq!(
            parse_crash_at("after-call:3"),
            Ok((CrashPoint::AfterCall, 3))
        );
        assert_eq!(
            parse_crash_at("before-call"),
            Ok((CrashPoint::BeforeCall, 1))
        );
        assert!(parse_crash_at("nowhere:1").is_err());
        assert!(parse_crash_at("after-ledger:x").is_err());
    }
}
