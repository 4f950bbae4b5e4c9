//! One simulated app: the [`Simulator`] handle, its configuration, and what
//! a test reads of it (counters, deliveries, calls) or sets (faults, reset).
//! Its checks are in `checks`, its memory in `state`, its serving in `serve`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::faults::FaultPlan;
use super::state::{CallRecord, Delivery, ServiceState, Stats};
use crate::tencent::body::MAX_BODY_BYTES;
use crate::tencent::usersig::SecretKey;

/// What makes a call a repeat of one delivered within the repeat window. The
/// documentation says both: its text says the same content and `Random`, an
/// example's comment says the same `Random` alone marks the same message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RepeatBy {
    /// The same sender, elements, `CloudCustomData` and `Random`.
    #[default]
    ContentAndRandom,
    /// The same `Random`, whatever the content: the stricter reading.
    Random,
}

/// The one app the simulator hosts.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    pub sdkappid: u64,
    /// The app admin: the only identifier allowed to broadcast.
    pub identifier: String,
    pub secret_key: SecretKey,
    /// Calls per second: at most `floor(rate)` accepted calls in any one-second
    /// window; below 1, one call in any `1/rate`-second window.
    pub rate: f64,
    pub max_body_bytes: usize,
    /// A call that repeats a delivery within this window (by `repeat_by`) is
    /// answered OK with that delivery's `MsgSeq` and not delivered again.
    pub repeat_window: Duration,
    pub repeat_by: RepeatBy,
    /// When set, a `From_Account` outside it answers 70107 (account not imported).
    pub known_accounts: Option<HashSet<String>>,
    /// Keep each delivered body for `/simulator/deliveries` (off for long benchmarks).
    pub keep_bodies: bool,
}

impl SimulatorConfig {
    pub fn new(sdkappid: u64, identifier: impl Into<String>, secret_key: SecretKey) -> Self {
        Self {
            sdkappid,
            identifier: identifier.into(),
            secret_key,
            rate: 1.0,
            max_body_bytes: MAX_BODY_BYTES,
            repeat_window: Duration::from_secs(300),
            repeat_by: RepeatBy::ContentAndRandom,
            known_accounts: None,
            keep_bodies: true,
        }
    }
}

/// The simulator's shared state. Cheap to clone; every clone sees the same app.
#[derive(Clone)]
pub struct Simulator {
    pub(super) config: Arc<SimulatorConfig>,
    pub(super) state: Arc<Mutex<ServiceState>>,
}

impl Simulator {
    pub fn new(config: SimulatorConfig) -> Self {
        Self {
            config: Arc::new(config),
            state: Arc::new(Mutex::new(ServiceState::new())),
        }
    }

    /// The SDKAppID of the app this simulator hosts.
    pub fn sdkappid(&self) -> u64 {
        self.config.sdkappid
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ServiceState> {
        // A panic while holding the lock leaves plain counters behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Deliveries with `MsgSeq` above `after`, at most `limit`.
    pub fn deliveries(&self, after: u64, limit: usize) -> Vec<Delivery> {
        let state = self.lock();
        // MsgSeq starts at 1 and increases by one per delivery, so it indexes.
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(state.deliveries.len());
        state.deliveries[start..]
            .iter()
            .take(limit)
            .cloned()
            .collect()
    }

    /// The most recent calls, oldest first.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.lock().calls.iter().cloned().collect()
    }

    pub fn set_faults(&self, plan: FaultPlan) {
        self.lock().faults = plan;
    }

    pub fn reset(&self) {
        *self.lock() = ServiceState::new();
    }
}
