//! One app's worker as others see it (health checks, the fleet, the
//! console, tests): flags for its state, set with their gauges, and its
//! recent flow (calls per minute, the rate in force, the last failure, the
//! queues' counts, the oldest unsettled job) under one short lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use super::history::History;
use crate::broker::QueueNames;
use crate::clock::now_ms;
use crate::telemetry::{
    APP_ACTIVE, APP_SERVED, BACKLOG_JOBS, CONNECTED, HALTED, LEDGER_DOWN, OLDEST_UNSETTLED_SECONDS,
    SDKAPPID,
};

/// What others (health checks, tests, the fleet, the console) can see of
/// one app's worker.
#[derive(Debug, Default)]
pub struct WorkerStatus {
    /// The app, as the `sdkappid` label spells it.
    pub app: String,
    /// Connected to the broker with the topology declared and a consumer.
    pub consuming: AtomicBool,
    /// This replica is the app's sender: its session received the app's jobs.
    pub active: AtomicBool,
    /// Stopped sending because of an app-wide fault.
    pub halted: AtomicBool,
    /// Stopped sending because the ledger cannot be read or written.
    pub ledger_down: AtomicBool,
    /// While the ledger is down: the error that put it there.
    pub ledger_error: Mutex<Option<String>>,
    /// The broker node of the session in progress (`host:port/vhost`) and
    /// its version, never its credentials.
    broker: Mutex<Option<(String, Option<String>)>>,
    /// The app's queues, where the console reads its dead letters.
    pub queues: Option<QueueNames>,
    /// The rate configured, in calls per second (the rate in force is in
    /// [`Flow::rate`] once a call was made).
    pub configured_rate: f64,
    /// The recent flow, for the console.
    flow: Mutex<Flow>,
    /// Unix milliseconds of the last delivery from the jobs queue.
    last_delivery_ms: AtomicU64,
    /// Wakes the queue sampler when deliveries start after a quiet spell.
    pub woken: tokio::sync::Notify,
}

/// An app is idle once nothing was delivered to it for this long.
const IDLE_AFTER_MS: u64 = 60_000;

/// An app's recent flow, as the console shows it.
#[derive(Debug, Clone, Default)]
pub struct Flow {
    /// Calls per minute over the last hour, per second over the last minute.
    pub history: History,
    /// The rate in force at the last call attempt.
    pub rate: Option<f64>,
    /// The last attempt that did not deliver: its answer.
    pub last_failure: Option<Failure>,
    /// The queues as the broker counted them last.
    pub queues: Option<QueueCounts>,
    /// Age of the oldest job held and not yet settled, when last measured.
    pub oldest_unsettled_secs: f64,
}

/// A call attempt that did not deliver.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub at_ms: u64,
    /// The service's ErrorCode; none for a transport failure.
    pub code: Option<i64>,
    pub info: String,
}

/// Messages ready in the app's queues.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QueueCounts {
    /// Jobs ready in the jobs queue (not those held by a worker).
    pub backlog: u64,
    /// Dead letters in the dead-letter queue; none counted when the queue is
    /// a fleet's, shared by its apps (a count of the app's alone takes a read
    /// of the queue, which the console's dead-letters page does).
    pub dead_letters: Option<u64>,
    pub sampled_at_ms: u64,
}

impl WorkerStatus {
    /// The status of one app's worker, its gauges at 0 (and served at 1).
    pub fn for_app(sdkappid: u64) -> Self {
        let status = Self {
            app: sdkappid.to_string(),
            ..Self::default()
        };
        for gauge in [
            APP_ACTIVE,
            CONNECTED,
            HALTED,
            LEDGER_DOWN,
            OLDEST_UNSETTLED_SECONDS,
            BACKLOG_JOBS,
        ] {
            metrics::gauge!(gauge, SDKAPPID => status.app.clone()).set(0.0);
        }
        metrics::gauge!(APP_SERVED, SDKAPPID => status.app.clone()).set(1.0);
        status
    }

    /// The same, knowing its queues and configured rate.
    pub fn with_queues(self, queues: QueueNames, rate: f64) -> Self {
        Self {
            queues: Some(queues),
            configured_rate: rate,
            ..self
        }
    }

    pub fn set_consuming(&self, on: bool) {
        self.consuming.store(on, Ordering::Relaxed);
        metrics::gauge!(CONNECTED, SDKAPPID => self.app.clone()).set(f64::from(u8::from(on)));
        if !on {
            self.set_active(false);
        }
    }

    /// Sets whether this replica is the app's sender.
    pub fn set_active(&self, on: bool) {
        self.active.store(on, Ordering::Relaxed);
        metrics::gauge!(APP_ACTIVE, SDKAPPID => self.app.clone()).set(f64::from(u8::from(on)));
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Sets the halt flag; returns what it was.
    pub fn set_halted(&self, on: bool) -> bool {
        metrics::gauge!(HALTED, SDKAPPID => self.app.clone()).set(f64::from(u8::from(on)));
        self.halted.swap(on, Ordering::Relaxed)
    }

    /// Sets the ledger-down flag and the error behind it (none when it is
    /// up again); returns what the flag was.
    pub fn set_ledger_down(&self, error: Option<String>) -> bool {
        let on = error.is_some();
        metrics::gauge!(LEDGER_DOWN, SDKAPPID => self.app.clone()).set(f64::from(u8::from(on)));
        *self
            .ledger_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = error;
        self.ledger_down.swap(on, Ordering::Relaxed)
    }

    /// The broker node a session is connected to now (and its version), or
    /// none between sessions.
    pub fn set_broker(&self, node: Option<(String, Option<String>)>) {
        *self.broker.lock().unwrap_or_else(|p| p.into_inner()) = node;
    }

    pub fn broker(&self) -> Option<(String, Option<String>)> {
        self.broker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn ledger_error(&self) -> Option<String> {
        self.ledger_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn with_flow<T>(&self, f: impl FnOnce(&mut Flow) -> T) -> T {
        f(&mut self.flow.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// One call attempt of `bytes`, made at `rate`; `failure` is its answer
    /// when it did not deliver (the ErrorCode, if any, and the words).
    pub fn record_call(&self, bytes: usize, rate: f64, failure: Option<(Option<i64>, &str)>) {
        let now = now_ms();
        let failure = failure.map(|(code, info)| Failure {
            at_ms: now,
            code,
            info: info.to_string(),
        });
        self.with_flow(|flow| {
            flow.history.record(now, bytes);
            flow.rate = Some(rate);
            if failure.is_some() {
                flow.last_failure = failure;
            }
        });
    }

    /// The age of the oldest job held and not yet settled, and its gauge.
    pub fn set_oldest_unsettled(&self, secs: f64) {
        metrics::gauge!(OLDEST_UNSETTLED_SECONDS, SDKAPPID => self.app.clone()).set(secs);
        self.with_flow(|flow| flow.oldest_unsettled_secs = secs);
    }

    /// A delivery arrived: the app is busy (and the sampler is woken when
    /// it was idle).
    pub fn touch(&self) {
        let now = now_ms();
        let before = self.last_delivery_ms.swap(now, Ordering::Relaxed);
        if now.saturating_sub(before) > IDLE_AFTER_MS {
            self.woken.notify_one();
        }
    }

    /// Whether something was delivered within the last minute.
    pub fn is_busy(&self) -> bool {
        now_ms().saturating_sub(self.last_delivery_ms.load(Ordering::Relaxed)) <= IDLE_AFTER_MS
    }

    /// The queues' counts as the broker gave them, and the backlog's gauge.
    pub fn set_queue_counts(&self, backlog: u64, dead_letters: Option<u64>) {
        metrics::gauge!(BACKLOG_JOBS, SDKAPPID => self.app.clone()).set(backlog as f64);
        let counts = QueueCounts {
            backlog,
            dead_letters,
            sampled_at_ms: now_ms(),
        };
        self.with_flow(|flow| flow.queues = Some(counts));
    }

    /// A copy of the recent flow.
    pub fn flow(&self) -> Flow {
        self.with_flow(|flow| flow.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_feed_the_history_and_keep_the_last_failure() {
        let status = WorkerStatus::for_app(7);
        status.record_call(6_000, 1.0, Some((Some(10007), "app fault")));
        status.record_call(12_000, 0.5, None);
        let flow = status.flow();
        assert_eq!(flow.rate, Some(0.5));
        assert_eq!(flow.history.calls_last_minute(now_ms()), 2);
        let failure = flow.last_failure.expect("kept");
        assert_eq!(
            (failure.code, failure.info.as_str()),
            (Some(10007), "app fault")
        );
        status.set_queue_counts(12, Some(3));
        status.set_oldest_unsettled(4.5);
        let flow = status.flow();
        assert_eq!(
            flow.queues.map(|q| (q.backlog, q.dead_letters)),
            Some((12, Some(3)))
        );
        assert_eq!(flow.oldest_unsettled_secs, 4.5);
    }
}
