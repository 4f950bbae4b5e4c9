//! An app as the console shows it, made from its worker's status at one
//! moment: whether this replica sends for it, the rate in force and the
//! share of the last minute's quota used, the recent fill, the queues'
//! counts, the oldest unsettled job, what stopped it, and (on its own page)
//! the last hour per minute. The pages and `/api/` show the same values.

use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::status::history::MinutePoint;
use crate::status::{Failure, WorkerStatus};

/// Minutes the "recent" fill is the mean over.
pub const FILL_MINUTES: u64 = 5;

/// One app's state.
#[derive(Debug, Clone, Serialize)]
pub struct AppView {
    pub sdkappid: u64,
    /// `active` (this replica sends), `standby` (connected, another replica
    /// sends or no job came since it connected) or `disconnected`.
    pub state: &'static str,
    /// Who sends for the app, as far as this replica knows.
    pub sender: &'static str,
    pub halted: bool,
    pub ledger_down: bool,
    pub ledger_error: Option<String>,
    /// The last call attempt that did not deliver.
    pub last_failure: Option<Failure>,
    /// The rate in force (calls per second): the configured one until a call
    /// says otherwise.
    pub rate: f64,
    pub configured_rate: f64,
    /// Call attempts in the last 60 s.
    pub calls_last_minute: u32,
    /// Those calls over the quota of the last minute (rate x 60).
    pub quota_used: f64,
    /// Mean fill (request bytes / 12,000) of the calls of the last 5 minutes.
    pub fill_recent: Option<f64>,
    /// Jobs ready in the jobs queue, as the broker counted them last.
    pub backlog: Option<u64>,
    /// Dead letters in the dead-letter queue, as counted with the backlog.
    pub dead_letters: Option<u64>,
    /// When the queues were counted (unix ms).
    pub counted_at_ms: Option<u64>,
    /// Age of the oldest job held and not yet settled (0 when none is held).
    pub oldest_unsettled_secs: f64,
    pub jobs_queue: Option<String>,
    pub dead_queue: Option<String>,
    /// Calls and fill per minute over the last hour, oldest first (on the
    /// app's own page and `/api/apps/{sdkappid}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<MinutePoint>>,
}

impl AppView {
    /// The app's state at `now_ms`, with its hour per minute if asked.
    pub fn of(sdkappid: u64, status: &WorkerStatus, now_ms: u64, with_history: bool) -> Self {
        let flow = status.flow();
        let consuming = status.consuming.load(Ordering::Relaxed);
        let active = status.is_active();
        let (state, sender) = match (consuming, active) {
            (_, true) => ("active", "this replica"),
            (true, false) => ("standby", "another replica"),
            (false, false) => ("disconnected", "unknown: this replica is not connected"),
        };
        let rate = flow.rate.unwrap_or(status.configured_rate);
        let calls_last_minute = flow.history.calls_last_minute(now_ms);
        Self {
            sdkappid,
            state,
            sender,
            halted: status.halted.load(Ordering::Relaxed),
            ledger_down: status.ledger_down.load(Ordering::Relaxed),
            ledger_error: status.ledger_error(),
            last_failure: flow.last_failure.clone(),
            rate,
            configured_rate: status.configured_rate,
            calls_last_minute,
            quota_used: quota_used(calls_last_minute, rate),
            fill_recent: flow.history.fill_over(now_ms, FILL_MINUTES),
            backlog: flow.queues.map(|q| q.backlog),
            dead_letters: flow.queues.and_then(|q| q.dead_letters),
            counted_at_ms: flow.queues.map(|q| q.sampled_at_ms),
            oldest_unsettled_secs: flow.oldest_unsettled_secs,
            jobs_queue: status.queues.as_ref().map(|q| q.jobs.clone()),
            dead_queue: status.queues.as_ref().map(|q| q.dead.clone()),
            history: with_history.then(|| flow.history.per_minute(now_ms)),
        }
    }
}

/// Calls of the last minute over what the rate allows in a minute.
pub fn quota_used(calls: u32, rate: f64) -> f64 {
    if rate > 0.0 {
        f64::from(calls) / (rate * 60.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::QueueNames;
    use crate::clock::now_ms;

    #[test]
    fn an_app_reads_as_its_status_says() {
        let status = WorkerStatus::for_app(9).with_queues(QueueNames::new("p"), 2.0);
        let view = AppView::of(9, &status, now_ms(), false);
        assert_eq!(
            (view.state, view.rate, view.quota_used),
            ("disconnected", 2.0, 0.0)
        );
        assert!(view.history.is_none() && view.backlog.is_none());
        status.set_consuming(true);
        assert_eq!(AppView::of(9, &status, now_ms(), false).state, "standby");
        status.set_active(true);
        for _ in 0..30 {
            status.record_call(9_000, 1.0, None);
        }
        status.set_queue_counts(40, Some(2));
        let view = AppView::of(9, &status, now_ms(), true);
        assert_eq!((view.state, view.sender), ("active", "this replica"));
        assert_eq!(view.rate, 1.0, "the rate of the last call");
        assert_eq!((view.calls_last_minute, view.quota_used), (30, 0.5));
        assert_eq!(view.fill_recent, Some(0.75));
        assert_eq!((view.backlog, view.dead_letters), (Some(40), Some(2)));
        assert_eq!(view.history.map(|h| h.len()), Some(60));
        assert_eq!(view.jobs_queue.as_deref(), Some("p.jobs"));
    }

    #[test]
    fn the_quota_share_is_calls_over_rate_times_sixty() {
        assert_eq!(quota_used(60, 1.0), 1.0);
        assert_eq!(quota_used(150, 5.0), 0.5);
        assert_eq!(quota_used(3, 0.0), 0.0);
    }
}
