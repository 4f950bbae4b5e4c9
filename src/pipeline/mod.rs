//! The worker: deliveries in from the jobs queue, calls out through the token
//! bucket, each job settled (acked, dead-lettered, or left in the queue) by
//! what the service answered. Data flows one way, a module per step:
//!
//! ```text
//! decoder:  delivery -> decode -> Job (or dead letter on arrival) --channel-->
//! session:  holding area -> admit (ledger) -> batcher -> permit (limiter)
//! sender:   take the call -> attempt -> classify -> decision -> step
//! settle:   ack, dead letter, or return to the queue
//! ```
//!
//! - [`config`]: every setting and its default; [`crash`]: the test-only crash hook.
//! - [`job`]: decoding a delivery into a validated job; `delivery`: the held
//!   delivery and the three ways it ends.
//! - `decoder`: the consumer task; `holding`: the jobs held from arrival to call;
//!   `admit`: sorting arrivals by what the ledger knows.
//! - [`batcher`]: packing jobs into calls; [`limiter`]: the token bucket.
//! - `session`: one broker session and its send loop; `call`: a call to make
//!   and how it ends; `sender`: one call's attempts; [`decision`]: the pure step after each answer; `settle`: fates
//!   carried out; `ledger_retry`: ledger operations retried while it is down;
//!   `randoms`: the `Random`s used lately, when there is no ledger; `claim`:
//!   the call made this session's before each attempt (fencing).
//!
//! A session is one broker connection. When it breaks, everything not yet
//! settled is simply dropped (the broker redelivers it) and a new session
//! starts after a backoff. The limiter and the UserSig outlive sessions.
//!
//! With a ledger, arriving jobs are looked up first: settled ones are acked
//! without a call, jobs of a call still in flight make that very call be sent
//! again (the service drops it as a repeat if it got through), and each call is
//! recorded before its first attempt and after its answer, before any ack.

mod admit;
pub mod batcher;
mod call;
mod claim;
pub mod config;
pub mod crash;
pub mod decision;
mod decoder;
mod delivery;
mod holding;
pub mod job;
mod ledger_retry;
pub mod limiter;
mod properties;
mod randoms;
mod sender;
mod session;
mod settle;

pub use config::{AppFaultPolicy, CallRules, CustomMerge, InDoubtPolicy, Policy, WorkerConfig};

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::BrokerError;
use crate::ledger::{LedgerError, LedgerSession, Ownership};
use crate::status::WorkerStatus;
use crate::tencent::client::{ApiClient, TransportError};
use crate::tencent::usersig::Signer;
use crash::CrashHook;
use ledger_retry::{prune_forever, ShuttingDown};
use limiter::Limiter;

/// A failure the worker cannot recover from by reconnecting.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Topology(BrokerError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] TransportError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// How a session ended (or why a step of it cannot go on).
#[derive(Debug)]
enum SessionEnd {
    Shutdown,
    Broker(String),
    /// The ledger says a later session owns a call this one held: the broker
    /// has handed the queue on, whether or not this connection noticed.
    Superseded {
        call: i64,
    },
}

/// A ledger write found the call taken over by a later session.
fn still_held(ownership: Ownership, call: i64) -> Result<(), SessionEnd> {
    match ownership {
        Ownership::Held => Ok(()),
        Ownership::Lost => Err(SessionEnd::Superseded { call }),
    }
}

impl From<BrokerError> for SessionEnd {
    fn from(e: BrokerError) -> Self {
        SessionEnd::Broker(e.to_string())
    }
}

impl From<ShuttingDown> for SessionEnd {
    fn from(_: ShuttingDown) -> Self {
        SessionEnd::Shutdown
    }
}

/// The worker. Build it once; `run` it until shutdown.
pub struct Worker {
    config: WorkerConfig,
    client: ApiClient,
    limiter: Limiter,
    signer: Signer,
    status: Arc<WorkerStatus>,
    crash: CrashHook,
    /// When the last call was sent, for the limiter's gap between sends.
    last_send: Option<Instant>,
    /// Without a ledger: the `Random`s used within the repeat window.
    recent_randoms: randoms::RecentRandoms,
    /// With a ledger: this session's token, drawn when it became the app's
    /// sender; the calls it records are fenced by it.
    ledger_session: Option<LedgerSession>,
    /// Ends the current session as a shutdown would, and starts the next at
    /// once: the app's queue moves to the next replica in line.
    release: Arc<Notify>,
    /// How long the last claim took: the next starts that much before its
    /// turn, so the ledger's round trip does not lengthen every period.
    claim_lead: Duration,
}

impl Worker {
    pub fn new(mut config: WorkerConfig) -> Result<Self, WorkerError> {
        let status = Arc::new(
            WorkerStatus::for_app(config.api.sdkappid)
                .with_queues(config.topology.names.clone(), config.rate),
        );
        metrics::gauge!(crate::telemetry::RATE, crate::telemetry::SDKAPPID => status.app.clone())
            .set(config.rate);
        // Every record the worker reads or writes is its app's and queue's.
        let scope = config.ledger_scope();
        config.ledger = config.ledger.map(|ledger| ledger.in_scope(scope));
        let client = ApiClient::new(&config.api)?;
        let limiter = Limiter::new(config.rate, config.rate_guard, config.slow_down.clone());
        let signer = Signer::new(
            config.secret_key.clone(),
            config.api.sdkappid,
            config.api.identifier.clone(),
            config.usersig_ttl,
        );
        Ok(Self {
            crash: CrashHook::new(config.crash_at, config.crash_on_job.clone()),
            config,
            client,
            limiter,
            signer,
            status,
            // Set when a session becomes the app's sender (see session.rs).
            last_send: None,
            recent_randoms: randoms::RecentRandoms::default(),
            ledger_session: None,
            release: Arc::new(Notify::new()),
            claim_lead: Duration::ZERO,
        })
    }

    pub fn status(&self) -> Arc<WorkerStatus> {
        self.status.clone()
    }

    /// Releases the app to the next replica in line: the session in progress
    /// winds down as on shutdown (the call in flight finished and settled,
    /// every unsent job returned), then consumes again, standing by.
    pub fn release_handle(&self) -> Arc<Notify> {
        self.release.clone()
    }

    /// The app, as the metrics' `sdkappid` label spells it.
    fn app(&self) -> String {
        self.status.app.clone()
    }

    /// Runs sessions until `shutdown` is cancelled. Only a topology conflict
    /// ends it with an error: reconnecting cannot fix that.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        if let Some(ledger) = self.config.ledger.clone() {
            let pruning = tokio::spawn(prune_forever(
                ledger,
                self.config.ledger_retention,
                shutdown.clone(),
            ));
            let result = self.run_sessions(&shutdown).await;
            pruning.abort();
            return result;
        }
        self.run_sessions(&shutdown).await
    }

    async fn run_sessions(&mut self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let mut reconnect = self.reconnect_backoff();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let started = Instant::now();
            let end = match self.session(shutdown).await {
                Ok(end) => end,
                Err(e @ BrokerError::Topology { .. }) => return Err(WorkerError::Topology(e)),
                Err(e) => SessionEnd::Broker(e.to_string()),
            };
            self.status.set_consuming(false);
            self.ledger_session = None;
            let why = match end {
                SessionEnd::Shutdown if shutdown.is_cancelled() => return Ok(()),
                SessionEnd::Shutdown => {
                    info!("released the app: standing by behind the next replica");
                    reconnect = self.reconnect_backoff();
                    continue;
                }
                SessionEnd::Broker(why) => why,
                SessionEnd::Superseded { call } => {
                    format!("a later session owns call {call}: this one is no longer the sender")
                }
            };
            if started.elapsed() > Duration::from_secs(60) {
                reconnect = self.reconnect_backoff();
            }
            let delay = reconnect.next().unwrap_or(self.config.reconnect_max);
            warn!(%why, retry_in = ?delay, "broker session ended; unsettled jobs will be redelivered");
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn reconnect_backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(self.config.reconnect_max)
            .with_jitter()
            .without_max_times()
            .build()
    }
}
