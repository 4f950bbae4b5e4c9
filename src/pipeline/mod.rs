//! The worker: deliveries in from the jobs queue, calls out at the app's
//! pace, each job settled (acked, dead-lettered, or left in the queue) by
//! what the service answered. Data flows one way:
//!
//! ```text
//! decoder:   delivery -> properties, job -> Job (or dead letter on arrival) --channel-->
//! session:   holding area -> admit (book) -> batcher -> permit (pacer)
//! attempts:  call -> turn (pacer + book claim) -> attempt (sender) -> decide -> step
//! settler:   ack, dead letter, or return to the queue (book first)
//! ```
//!
//! The worker is made of parts that own their state:
//! - [`pacer`]: the app's quota (bucket, window of answers, gaps); `sender`:
//!   one attempt (signer, client, classifier) with the pacer;
//! - [`book`]: what is remembered of jobs and calls (the ledger, or memory);
//! - `settler`: the one place that acks, dead-letters and requeues;
//! - `baton`: how a replica knows it is the app's sender while idle;
//! - `session`: one broker session and its send loop; `attempts`: one call's
//!   attempts and what they turn into; `admit`: arrivals sorted by the book.
//!
//! And their pure or plain pieces: [`config`] (every setting and its
//! default), [`job`] and `properties` (decoding a delivery), [`batcher`]
//! (packing), [`decision`] (the step after each answer), `call` (a call and
//! how it ends), `holding` (the jobs held from arrival to call), `delivery`
//! (a held delivery and where its dead letter goes), `fate` (a job's final
//! word), `decoder` (the consumer
//! task), `end` (how a session ends), [`crash`] (the test-only crash hook).
//!
//! A session is the app's channels on a connection (its own, or one a fleet
//! shares among its apps). When it breaks, everything not yet settled is
//! simply dropped (the broker redelivers it) and a new session starts after
//! a backoff. The sender (its pace, its UserSig) and the book
//! outlive sessions.

mod admit;
mod attempts;
pub mod batcher;
mod baton;
pub mod book;
mod call;
pub mod config;
pub mod crash;
pub mod decision;
mod decoder;
mod delivery;
mod end;
mod fate;
mod holding;
pub mod job;
pub mod pacer;
mod properties;
pub mod receipt;
mod sender;
mod session;
mod settler;

pub use baton::is_baton;
pub use config::{AppFaultPolicy, CallRules, CustomMerge, InDoubtPolicy, Policy, WorkerConfig};
pub use properties::MAX_COALESCE_KEY_BYTES;

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::{BrokerError, Links};
use crate::ledger::LedgerError;
use crate::status::WorkerStatus;
use book::{Book, InMemory, Ledgered};
use crash::CrashHook;
use end::SessionEnd;
use sender::Sender;
use session::Session;

/// A failure the worker cannot recover from by reconnecting.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Topology(BrokerError),
    #[error(transparent)]
    Broker(BrokerError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// One app's worker. Build it once; `run` it until shutdown.
pub struct Worker {
    status: Arc<WorkerStatus>,
    /// Ends the current session as a stop would, and starts the next at
    /// once: the app's queue moves to the next replica in line.
    release: Arc<Notify>,
    /// The worker, with the book its settings chose.
    parts: Parts,
}

enum Parts {
    Ledgered(Parted<Ledgered>),
    InMemory(Parted<InMemory>),
}

/// The parts that outlive sessions.
struct Parted<B: Book> {
    config: WorkerConfig,
    links: Links,
    /// Whether the links are this worker's own, to close when it stops.
    own_links: bool,
    /// Whether the topology is known to be declared (see [`Session`]).
    declared: bool,
    sender: Sender,
    book: B,
    status: Arc<WorkerStatus>,
    release: Arc<Notify>,
    crash: CrashHook,
    /// Where the app's receipts go out (a channel on the receipts connection).
    receipts: receipt::ReceiptOut,
}

impl Worker {
    pub fn new(mut config: WorkerConfig) -> Result<Self, WorkerError> {
        let status = Arc::new(
            WorkerStatus::for_app(config.api.sdkappid)
                .with_queues(config.topology.names.clone(), config.rate),
        );
        let release = Arc::new(Notify::new());
        let sender = Sender::new(&config, status.clone());
        let (links, own_links) = match config.links.take() {
            Some(links) => (links, false),
            None => (
                Links::new(&config.amqp_url, 1, "broadcast-worker run")
                    .map_err(WorkerError::Broker)?,
                true,
            ),
        };
        let crash = CrashHook::new(config.crash_at, config.crash_on_job.clone());
        // Every record the worker reads or writes is its app's and queue's.
        let scope = config.ledger_scope();
        let ledger = config.ledger.take().map(|ledger| ledger.in_scope(scope));
        let (crash_limit, retention) = (config.crash_limit, config.ledger_retention);
        let parts = match ledger {
            Some(ledger) => {
                let book = Ledgered::new(ledger, status.clone(), crash_limit, retention);
                Parts::Ledgered(Parted {
                    receipts: receipt::ReceiptOut::new(
                        links.clone(),
                        config.api.sdkappid.to_string(),
                    ),
                    config,
                    links,
                    own_links,
                    declared: false,
                    sender,
                    book,
                    status: status.clone(),
                    release: release.clone(),
                    crash,
                })
            }
            None => Parts::InMemory(Parted {
                receipts: receipt::ReceiptOut::new(links.clone(), config.api.sdkappid.to_string()),
                config,
                links,
                own_links,
                declared: false,
                sender,
                book: InMemory::default(),
                status: status.clone(),
                release: release.clone(),
                crash,
            }),
        };
        Ok(Self {
            status,
            release,
            parts,
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

    /// Runs sessions until `shutdown` is cancelled. Only a topology conflict
    /// ends it with an error: reconnecting cannot fix that.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        match self.parts {
            Parts::Ledgered(worker) => worker.run(shutdown).await,
            Parts::InMemory(worker) => worker.run(shutdown).await,
        }
    }
}

impl<B: Book> Parted<B> {
    async fn run(mut self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let upkeep = self.book.upkeep(&shutdown);
        let result = self.run_sessions(&shutdown).await;
        if let Some(upkeep) = upkeep {
            upkeep.abort();
        }
        self.receipts.close().await;
        if self.own_links {
            self.links.close("worker stopped").await;
        }
        result
    }

    async fn run_sessions(&mut self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let mut reconnect = self.reconnect_backoff();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let started = Instant::now();
            let why = match self.session(shutdown).await {
                Err(e @ BrokerError::Topology { .. }) => return Err(WorkerError::Topology(e)),
                Err(e) => e.to_string(),
                Ok(SessionEnd::Stopped) if shutdown.is_cancelled() => return Ok(()),
                Ok(SessionEnd::Stopped) => {
                    info!("released the app: standing by behind the next replica");
                    reconnect = self.reconnect_backoff();
                    continue;
                }
                Ok(SessionEnd::Broker(why)) => why,
                Ok(SessionEnd::Superseded { call }) => {
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

    /// One session, stopped by a shutdown or a release.
    async fn session(&mut self, shutdown: &CancellationToken) -> Result<SessionEnd, BrokerError> {
        let stop = shutdown.child_token();
        let releasing = {
            let (stop, release, links) = (stop.clone(), self.release.clone(), self.links.clone());
            tokio::spawn(async move {
                release.notified().await;
                // Balancing releases hundreds of apps at once when a replica
                // joins; their wind-downs (consumers cancelled, channels
                // closed, batons passed) take turns with session starts so
                // the broker sees them at a bounded pace. A shutdown does
                // not wait: it cancels `stop` itself.
                links.start_turn().await;
                stop.cancel();
            })
        };
        let session = Session {
            config: &self.config,
            status: &self.status,
            links: &self.links,
            declared: &mut self.declared,
            sender: &mut self.sender,
            book: &mut self.book,
            crash: &self.crash,
            receipts: &self.receipts,
        };
        let end = session.run(&stop).await;
        if !matches!(end, Ok(SessionEnd::Stopped)) {
            self.declared = false;
        }
        releasing.abort();
        self.status.set_consuming(false);
        self.status.set_broker(None);
        end
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
