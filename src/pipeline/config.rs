//! The worker's configuration: every setting, its default (one set, shared by
//! the command line and [`WorkerConfig::new`]), and the policies an operator
//! chooses between.

use std::time::Duration;

use crate::broker::{self, Links, Topology};
use crate::ledger::{Ledger, Scope};
use crate::tencent::classify::Classifier;
use crate::tencent::client::ApiConfig;
use crate::tencent::usersig::SecretKey;

use super::crash::CrashPoint;
use super::pacer::SlowDown;

/// Defaults, in the units the command line takes them.
pub mod defaults {
    /// Calls per second for an app (the lower editions' quota).
    pub const RATE: f64 = 1.0;
    /// Milliseconds added to each second of the bucket, against clock jitter.
    pub const RATE_GUARD_MS: u64 = 10;
    /// Unacked deliveries held at once.
    pub const PREFETCH: u16 = 1000;
    /// Deliveries of one job before the broker dead-letters it by itself.
    /// Every restart or reconnect returns the jobs held with one more
    /// delivery counted (RabbitMQ before 4.3), so this is generous: the
    /// worker counts crash loops itself (see [`CRASH_LIMIT`]), and this is
    /// the last guard (no ledger, or a crash before a call is recorded).
    pub const DELIVERY_LIMIT: u32 = 1000;
    /// Worker sessions that may end with a job's call in flight, unsettled,
    /// before the job is dead-lettered as `crash-loop` (with the ledger).
    pub const CRASH_LIMIT: u32 = 5;
    /// Transient failures of one call before its jobs are dead-lettered.
    pub const MAX_ATTEMPTS: u32 = 8;
    /// Seconds a call may keep retrying, under the service's 300 s repeat window.
    pub const MAX_RETRY_AGE_SECS: u64 = 240;
    pub const BACKOFF_MIN_MS: u64 = 500;
    pub const BACKOFF_MAX_MS: u64 = 30_000;
    /// Seconds between probes while halted by an app-wide fault.
    pub const APP_FAULT_PROBE_SECS: f64 = 30.0;
    /// Seconds a signed UserSig is valid.
    pub const USERSIG_TTL_SECS: u64 = 86_400;
    /// Longest pause between reconnects, in seconds.
    pub const RECONNECT_MAX_SECS: u64 = 30;
    /// Seconds within which a redelivered job's call is resent verbatim: the
    /// service's 300 s repeat window, less a margin for the wait to send.
    pub const RESEND_WINDOW_SECS: u64 = 270;
    /// Hours ledger records (settled, or left in flight) are kept.
    pub const LEDGER_RETENTION_HOURS: f64 = 168.0;
    pub use crate::tencent::client::{CONNECT_TIMEOUT_MS, REQUEST_TIMEOUT_MS};
}

/// What to do when the service says the app itself is misconfigured.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum AppFaultPolicy {
    /// Stop sending, keep every job, probe slowly until the fault is fixed.
    Halt,
    /// Dead-letter the call's jobs as `rejected` and go on.
    DeadLetter,
}

/// Everything the worker needs, checked by the caller.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub amqp_url: String,
    /// The connections to share with other apps (a fleet's); without them
    /// the worker opens one of its own to `amqp_url`.
    pub links: Option<Links>,
    pub topology: Topology,
    pub api: ApiConfig,
    pub secret_key: SecretKey,
    /// Calls per second for the app.
    pub rate: f64,
    /// Margin added to each one-second window of the bucket.
    pub rate_guard: Duration,
    pub slow_down: SlowDown,
    /// Unacked deliveries the broker may hand over; bounds memory and how
    /// much can pile up for one call.
    pub prefetch: u16,
    /// What a call may hold.
    pub call: CallRules,
    /// What follows each answer: retries, backoff, app faults.
    pub policy: Policy,
    pub classifier: Classifier,
    /// Validity of each UserSig signed.
    pub usersig_ttl: Duration,
    /// Pause between reconnects grows up to this.
    pub reconnect_max: Duration,
    /// The delivery ledger; without one, delivery is at least once.
    pub ledger: Option<Ledger>,
    /// A call in flight younger than this is resent verbatim on redelivery:
    /// the service's 300 s repeat window, less a margin for the wait to send.
    pub resend_window: Duration,
    /// What to do with a job whose call has been in flight longer than that.
    pub in_doubt: InDoubtPolicy,
    /// Ledger records untouched for longer than this are pruned, settled or
    /// left in flight (in doubt).
    pub ledger_retention: Duration,
    /// With the ledger: sessions that may end with a job's call in flight,
    /// unsettled, before the job is dead-lettered as `crash-loop`.
    pub crash_limit: u32,
    /// Test hook: exit abruptly at a point of the cycle (see [`CrashPoint`]).
    pub crash_at: Option<(CrashPoint, u32)>,
    /// Test hook: exit abruptly before every call that carries this job.
    pub crash_on_job: Option<String>,
}

/// The limits and switches the sender's decision after each answer follows.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Transient failures of one call before its jobs are dead-lettered.
    pub max_attempts: u32,
    /// No attempt of a call later than this after its first: kept under the
    /// service's 5-minute repeat window so every retry is still a repeat the
    /// service can drop.
    pub max_retry_age: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub on_app_fault: AppFaultPolicy,
    /// Time between probes while halted by an app-wide fault.
    pub app_fault_probe: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_attempts: defaults::MAX_ATTEMPTS,
            max_retry_age: Duration::from_secs(defaults::MAX_RETRY_AGE_SECS),
            backoff_min: Duration::from_millis(defaults::BACKOFF_MIN_MS),
            backoff_max: Duration::from_millis(defaults::BACKOFF_MAX_MS),
            on_app_fault: AppFaultPolicy::Halt,
            app_fault_probe: Duration::from_secs_f64(defaults::APP_FAULT_PROBE_SECS),
        }
    }
}

/// How custom jobs share a call, given that a message may hold only one
/// `TIMCustomElem`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum CustomMerge {
    /// One custom element per call; other elements fill around it.
    #[default]
    Separate,
    /// Consecutive custom jobs with the same `Desc`, `Ext` and `Sound` share
    /// one envelope element (see [`crate::tencent::envelope`]); the app's
    /// clients must decode it.
    Envelope,
}

/// What a call may hold: the limits the batcher packs to and decoding
/// checks each job against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRules {
    /// Largest call body in bytes.
    pub max_bytes: usize,
    /// Jobs merged into one call at most (1 turns merging off).
    pub max_jobs: usize,
    pub custom_merge: CustomMerge,
}

impl Default for CallRules {
    fn default() -> Self {
        Self {
            max_bytes: crate::tencent::body::MAX_BODY_BYTES,
            max_jobs: usize::MAX,
            custom_merge: CustomMerge::Separate,
        }
    }
}

/// What to do with a job whose call has been in flight for longer than the
/// service's repeat window: resending it may broadcast it twice.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum InDoubtPolicy {
    /// Dead-letter it as `in-doubt` for an operator to decide.
    DeadLetter,
    /// Send its call again: at least once.
    Resend,
}

impl WorkerConfig {
    /// Defaults for everything but the app and the broker.
    pub fn new(amqp_url: String, prefix: &str, api: ApiConfig, secret_key: SecretKey) -> Self {
        Self {
            amqp_url,
            links: None,
            topology: Topology {
                names: broker::QueueNames::new(prefix),
                delivery_limit: defaults::DELIVERY_LIMIT,
            },
            api,
            secret_key,
            rate: defaults::RATE,
            rate_guard: Duration::from_millis(defaults::RATE_GUARD_MS),
            slow_down: SlowDown::default(),
            prefetch: defaults::PREFETCH,
            call: CallRules::default(),
            policy: Policy::default(),
            classifier: Classifier::default(),
            usersig_ttl: Duration::from_secs(defaults::USERSIG_TTL_SECS),
            reconnect_max: Duration::from_secs(defaults::RECONNECT_MAX_SECS),
            ledger: None,
            resend_window: Duration::from_secs(defaults::RESEND_WINDOW_SECS),
            in_doubt: InDoubtPolicy::DeadLetter,
            ledger_retention: Duration::from_secs_f64(defaults::LEDGER_RETENTION_HOURS * 3600.0),
            crash_limit: defaults::CRASH_LIMIT,
            crash_at: None,
            crash_on_job: None,
        }
    }

    /// Whose ledger records this worker's are: its app and its jobs queue.
    /// A job id means one job only within them.
    pub fn ledger_scope(&self) -> Scope {
        Scope::new(self.api.sdkappid, self.topology.names.jobs.clone())
    }
}
