//! The worker: deliveries in from the jobs queue, calls out through the token
//! bucket, each job settled (acked, dead-lettered, or left in the queue) by
//! what the service answered. Data flows one way:
//!
//! ```text
//! consumer task: delivery -> decode -> Job (or dead letter) --channel-->
//! sender:        batcher -> permit -> take_batch -> deliver (attempts) -> fates -> settle
//! ```
//!
//! A session is one broker connection. When it breaks, everything not yet
//! settled is simply dropped (the broker redelivers it) and a new session
//! starts after a backoff. The limiter and the UserSig outlive sessions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::Acker;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn, Instrument};

use crate::api::{ApiClient, ApiConfig, ApiResponse, TransportError};
use crate::broker::{self, BrokerError, DeadLetter, Topology};
use crate::job::{self, Job, Rejection, DEADLINE_HEADER};
use crate::limit::{Limiter, SlowDown};
use crate::merge::{Batch, Batcher, Queued};
use crate::outcome::{Classifier, Outcome};
use crate::usersig::{SecretKey, Signer};

/// What to do when the service says the app itself is misconfigured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
    pub max_batch_bytes: usize,
    /// Transient failures of one call before its jobs are dead-lettered.
    pub max_attempts: u32,
    /// Age of a call after which transient failures dead-letter its jobs;
    /// kept under the service's 5-minute repeat window so every retry is
    /// still a repeat the service can drop.
    pub max_retry_age: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub on_app_fault: AppFaultPolicy,
    /// Time between probes while halted by an app-wide fault.
    pub app_fault_probe: Duration,
    pub classifier: Classifier,
    /// Validity of each UserSig signed.
    pub usersig_ttl: Duration,
    /// Pause between reconnects grows up to this.
    pub reconnect_max: Duration,
}

impl WorkerConfig {
    /// Defaults for everything but the app and the broker.
    pub fn new(amqp_url: String, prefix: &str, api: ApiConfig, secret_key: SecretKey) -> Self {
        Self {
            amqp_url,
            topology: Topology {
                names: broker::QueueNames::new(prefix),
                delivery_limit: 20,
            },
            api,
            secret_key,
            rate: 1.0,
            rate_guard: Duration::from_millis(10),
            slow_down: SlowDown::default(),
            prefetch: 1000,
            max_batch_bytes: crate::api::MAX_BODY_BYTES,
            max_attempts: 8,
            max_retry_age: Duration::from_secs(240),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            on_app_fault: AppFaultPolicy::Halt,
            app_fault_probe: Duration::from_secs(30),
            classifier: Classifier::default(),
            usersig_ttl: Duration::from_secs(86_400),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

/// A failure the worker cannot recover from by reconnecting.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Topology(BrokerError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] TransportError),
}

/// What others (health checks, tests) can see of a running worker.
#[derive(Debug, Default)]
pub struct WorkerStatus {
    /// Connected to the broker with the topology declared and a consumer.
    pub consuming: AtomicBool,
    /// Stopped sending because of an app-wide fault.
    pub halted: AtomicBool,
}

/// A job's delivery: what is needed to ack it or dead-letter it as it came.
#[derive(Debug)]
pub struct Pending {
    acker: Acker,
    properties: BasicProperties,
    body: Vec<u8>,
    first_seen_ms: u64,
    /// Calls attempted with this job.
    attempts: u32,
}

impl Pending {
    fn from_delivery(delivery: Delivery) -> Self {
        Self {
            acker: delivery.acker,
            properties: delivery.properties,
            body: delivery.data,
            first_seen_ms: broker::unix_ms(SystemTime::now()),
            attempts: 0,
        }
    }
}

/// What the consumer task hands the sender. Nearly every message is a job,
/// so boxing it to shrink the rare `Lost` would only add allocations.
#[allow(clippy::large_enum_variant)]
enum Incoming {
    Job(Job, Pending),
    /// The consumer stopped: the session is over.
    Lost(String),
}

/// The final word on one job.
#[derive(Debug)]
enum Fate {
    Ack {
        msg_seq: Option<u64>,
    },
    DeadLetter(DeadLetter),
    /// Not sent and not failed: back to the queue (shutdown).
    Leave,
}

/// How a session ended.
enum SessionEnd {
    Shutdown,
    Broker(String),
}

/// The worker. Build it once; `run` it until shutdown.
pub struct Worker {
    config: WorkerConfig,
    client: ApiClient,
    limiter: Limiter,
    signer: Signer,
    status: Arc<WorkerStatus>,
}

impl Worker {
    pub fn new(config: WorkerConfig) -> Result<Self, WorkerError> {
        let client = ApiClient::new(&config.api)?;
        let limiter = Limiter::new(config.rate, config.rate_guard, config.slow_down.clone());
        let signer = Signer::new(
            config.secret_key.clone(),
            config.api.sdkappid,
            config.api.identifier.clone(),
            config.usersig_ttl,
        );
        Ok(Self {
            config,
            client,
            limiter,
            signer,
            status: Arc::new(WorkerStatus::default()),
        })
    }

    pub fn status(&self) -> Arc<WorkerStatus> {
        self.status.clone()
    }

    /// Runs sessions until `shutdown` is cancelled. Only a topology conflict
    /// ends it with an error: reconnecting cannot fix that.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let mut reconnect = self.reconnect_backoff();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let started = Instant::now();
            let end = match self.session(&shutdown).await {
                Ok(end) => end,
                Err(e @ BrokerError::Topology { .. }) => return Err(WorkerError::Topology(e)),
                Err(e) => SessionEnd::Broker(e.to_string()),
            };
            self.status.consuming.store(false, Ordering::Relaxed);
            match end {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Broker(why) => {
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

    /// One connection's worth of work.
    async fn session(&mut self, shutdown: &CancellationToken) -> Result<SessionEnd, BrokerError> {
        let connection = broker::connect(&self.config.amqp_url, "broadcast-worker run").await?;
        let result = self.consume(&connection, shutdown).await;
        let _ = connection.close(200, "worker session over".into()).await;
        result
    }

    async fn consume(
        &mut self,
        connection: &Connection,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, BrokerError> {
        self.config.topology.declare(connection).await?;
        let names = &self.config.topology.names;
        let consume_channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::Channel)?;
        consume_channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await
            .map_err(BrokerError::Channel)?;
        let publish_channel = broker::confirm_channel(connection).await?;
        let consumer_tag = format!(
            "broadcast-worker-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let consumer = consume_channel
            .basic_consume(
                names.jobs.as_str().into(),
                consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::Channel)?;
        self.status.consuming.store(true, Ordering::Relaxed);
        info!(queue = %names.jobs, prefetch = self.config.prefetch, "consuming (active, or standing by until the active consumer goes)");

        let (tx, mut rx) = mpsc::unbounded_channel();
        let decoder = Decoder {
            publish_channel: publish_channel.clone(),
            dlx: names.dlx.clone(),
            max_batch_bytes: self.config.max_batch_bytes,
        };
        let consumer_task = tokio::spawn(decoder.run(consumer, tx));

        let mut batcher: Batcher<Pending> = Batcher::new();
        let end = self
            .send_loop(&mut batcher, &mut rx, &publish_channel, shutdown)
            .await;

        // Stop consuming, then hand back everything not settled.
        let _ = consume_channel
            .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default())
            .await;
        consumer_task.abort();
        if matches!(end, Ok(SessionEnd::Shutdown)) {
            let mut left: Vec<Pending> = batcher.drain().into_iter().map(|q| q.tag).collect();
            while let Ok(Incoming::Job(_, pending)) = rx.try_recv() {
                left.push(pending);
            }
            let count = left.len();
            for pending in left {
                let _ = pending
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await;
            }
            info!(
                returned = count,
                "shutdown: unsent jobs returned to the queue"
            );
        }
        let _ = consume_channel.close(200, "worker stopping".into()).await;
        let _ = publish_channel.close(200, "worker stopping".into()).await;
        end
    }

    /// Waits for work, then for a permit, then sends what piled up, until
    /// shutdown or the broker goes.
    async fn send_loop(
        &mut self,
        batcher: &mut Batcher<Pending>,
        rx: &mut mpsc::UnboundedReceiver<Incoming>,
        publish_channel: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, BrokerError> {
        loop {
            while batcher.is_empty() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
                    incoming = rx.recv() => accept(incoming, batcher)?,
                }
            }
            {
                let permit = self.limiter.acquire();
                tokio::pin!(permit);
                loop {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
                        _ = &mut permit => break,
                        incoming = rx.recv() => accept(incoming, batcher)?,
                    }
                }
            }
            while let Ok(incoming) = rx.try_recv() {
                accept(Some(incoming), batcher)?;
            }
            let now = SystemTime::now();
            let expired = batcher.take_expired(now);
            let mut fates: Vec<(Queued<Pending>, Fate)> = expired
                .into_iter()
                .map(|q| {
                    let deadline_ms = q.job.deadline.map(broker::unix_ms).unwrap_or(0);
                    let fate = dead_letter_fate(
                        &q,
                        "expired",
                        None,
                        Rejection::Expired { deadline_ms }.to_string(),
                    );
                    (q, fate)
                })
                .collect();
            if let Some(batch) = batcher.take_batch(self.config.max_batch_bytes) {
                fates.extend(self.deliver(batch, shutdown).await);
            }
            let end = settle(fates, publish_channel, &self.config.topology.names.dlx).await;
            if let Err(e) = end {
                return Ok(SessionEnd::Broker(e.to_string()));
            }
        }
    }

    /// Sends one call until its jobs' fates are known: retries, pauses,
    /// re-signing, bisection and halting all happen here. The first attempt
    /// uses the permit the caller already holds.
    async fn deliver(
        &mut self,
        batch: Batch<Pending>,
        shutdown: &CancellationToken,
    ) -> Vec<(Queued<Pending>, Fate)> {
        let mut fates = Vec::new();
        let mut work = vec![batch];
        let mut has_permit = true;
        while let Some(call) = work.pop() {
            let call_id = format!("{:08x}", call.random);
            let span =
                info_span!("call", id = %call_id, jobs = call.jobs.len(), bytes = call.body.len());
            let (done, halves) = self
                .attempt_call(call, &mut has_permit, shutdown)
                .instrument(span)
                .await;
            fates.extend(done);
            if let Some((left, right)) = halves {
                work.push(right);
                work.push(left);
            }
        }
        fates
    }

    /// Attempts one call. Returns the fates decided, or the two halves to try
    /// next when the service refused a merged call.
    async fn attempt_call(
        &mut self,
        mut call: Batch<Pending>,
        has_permit: &mut bool,
        shutdown: &CancellationToken,
    ) -> (
        Vec<(Queued<Pending>, Fate)>,
        Option<(Batch<Pending>, Batch<Pending>)>,
    ) {
        let started = Instant::now();
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.backoff_min)
            .with_max_delay(self.config.backoff_max)
            .with_jitter()
            .without_max_times()
            .build();
        let mut transient_failures = 0u32;
        let mut resigns = 0u32;
        let leave = |call: Batch<Pending>| -> Vec<(Queued<Pending>, Fate)> {
            call.jobs.into_iter().map(|q| (q, Fate::Leave)).collect()
        };
        loop {
            if !std::mem::take(has_permit) {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return (leave(call), None),
                    _ = self.limiter.acquire() => {}
                }
            }
            let usersig = self.signer.current();
            for queued in &mut call.jobs {
                queued.tag.attempts += 1;
            }
            let attempt = call.jobs[0].tag.attempts;
            // The call in flight is always finished, shutdown or not.
            let result = self
                .client
                .send_broadcast(&usersig, call.body.clone())
                .await;
            let outcome = self.config.classifier.classify(&result);
            let (code, info) = describe(&result);
            match outcome {
                Outcome::Delivered { msg_seq } => {
                    if self.status.halted.swap(false, Ordering::Relaxed) {
                        info!("the app-wide fault is gone: sending again");
                    }
                    info!(attempt, msg_seq, "delivered");
                    let fates = call
                        .jobs
                        .into_iter()
                        .map(|q| (q, Fate::Ack { msg_seq }))
                        .collect();
                    return (fates, None);
                }
                Outcome::Transient => {
                    transient_failures += 1;
                    if transient_failures >= self.config.max_attempts
                        || started.elapsed() >= self.config.max_retry_age
                    {
                        warn!(attempt, code, %info, "retries exhausted: dead-lettering the call's jobs");
                        return (
                            self.dead_letter_all(call, "retries-exhausted", code, info),
                            None,
                        );
                    }
                    let delay = backoff.next().unwrap_or(self.config.backoff_max);
                    warn!(attempt, code, %info, retry_in = ?delay, "transient failure");
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return (leave(call), None),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Outcome::RateLimited { min_pause } => {
                    warn!(attempt, code, "frequency limit: pausing the sender");
                    self.limiter.on_rate_limited(min_pause);
                }
                Outcome::Resign if resigns < 2 => {
                    resigns += 1;
                    info!(attempt, "UserSig expired: signing a new one");
                    self.signer.invalidate();
                }
                Outcome::Permanent if call.jobs.len() > 1 => {
                    warn!(attempt, code, %info, "refused: splitting the call to find the job at fault");
                    return (Vec::new(), Some(call.split()));
                }
                Outcome::Permanent => {
                    warn!(attempt, code, %info, job = %call.jobs[0].job.id, "refused: dead-lettering the job");
                    return (self.dead_letter_all(call, "rejected", code, info), None);
                }
                // A fresh UserSig that still expires at once is a clock or key
                // problem: the app's, not the job's.
                Outcome::Resign | Outcome::AppFault => match self.config.on_app_fault {
                    AppFaultPolicy::DeadLetter => {
                        error!(attempt, code, %info, "app-wide fault: dead-lettering the call's jobs as configured");
                        return (self.dead_letter_all(call, "rejected", code, info), None);
                    }
                    AppFaultPolicy::Halt => {
                        if !self.status.halted.swap(true, Ordering::Relaxed) {
                            error!(
                                code, %info, probe_every = ?self.config.app_fault_probe,
                                "app-wide fault: sending stopped, every job kept; fix the app's configuration (console switch, admin account, SDKAppID, secret key)"
                            );
                        }
                        tokio::select! {
                            biased;
                            _ = shutdown.cancelled() => return (leave(call), None),
                            _ = tokio::time::sleep(self.config.app_fault_probe) => {}
                        }
                        self.signer.invalidate();
                    }
                },
            }
        }
    }

    fn dead_letter_all(
        &self,
        call: Batch<Pending>,
        reason: &'static str,
        code: Option<i64>,
        info: String,
    ) -> Vec<(Queued<Pending>, Fate)> {
        call.jobs
            .into_iter()
            .map(|q| {
                let fate = dead_letter_fate(&q, reason, code, info.clone());
                (q, fate)
            })
            .collect()
    }
}

fn dead_letter_fate(
    q: &Queued<Pending>,
    reason: &'static str,
    code: Option<i64>,
    info: String,
) -> Fate {
    Fate::DeadLetter(DeadLetter {
        reason,
        error_code: code,
        error_info: info,
        attempts: q.tag.attempts,
        first_seen_ms: q.tag.first_seen_ms,
    })
}

/// The ErrorCode and text of an attempt, for logs and dead letters. The text
/// of a transport error never holds the URL (see [`crate::api`]).
fn describe(result: &Result<ApiResponse, TransportError>) -> (Option<i64>, String) {
    match result {
        Ok(response) => (Some(response.error_code), response.error_info.clone()),
        Err(e) => (None, e.to_string()),
    }
}

fn accept(incoming: Option<Incoming>, batcher: &mut Batcher<Pending>) -> Result<(), BrokerError> {
    match incoming {
        Some(Incoming::Job(job, pending)) => {
            batcher.push(job, pending);
            Ok(())
        }
        Some(Incoming::Lost(why)) => Err(BrokerError::ConsumerLost(why)),
        None => Err(BrokerError::ConsumerLost("the consumer task ended".into())),
    }
}

/// Carries out the fates: acks, dead letters (publish, confirm, then ack),
/// and returns to the queue.
async fn settle(
    fates: Vec<(Queued<Pending>, Fate)>,
    publish_channel: &Channel,
    dlx: &str,
) -> Result<(), BrokerError> {
    for (queued, fate) in fates {
        let Pending {
            acker,
            properties,
            body,
            ..
        } = queued.tag;
        let id = queued.job.id;
        match fate {
            Fate::Ack { msg_seq } => {
                ack(&acker, &id).await?;
                tracing::debug!(job = %id, msg_seq, "acked");
            }
            Fate::DeadLetter(dead) => {
                broker::publish_confirmed(
                    publish_channel,
                    dlx,
                    "",
                    &body,
                    dead.properties(&properties),
                )
                .await?;
                warn!(job = %id, reason = dead.reason, code = dead.error_code, "dead-lettered");
                ack(&acker, &id).await?;
            }
            Fate::Leave => {
                acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
                    .map_err(BrokerError::Channel)?;
            }
        }
    }
    Ok(())
}

/// Acks one delivery. `Ok(false)` means the channel was recovered and the tag
/// is void: the broker will redeliver the job.
async fn ack(acker: &Acker, id: &str) -> Result<(), BrokerError> {
    match acker.ack(BasicAckOptions::default()).await {
        Ok(true) => Ok(()),
        Ok(false) => {
            warn!(job = %id, "ack not delivered (channel recovered): the job will be redelivered");
            Ok(())
        }
        Err(e) => Err(BrokerError::Channel(e)),
    }
}

/// The consumer side: decodes deliveries and dead-letters what can never be
/// sent, so nothing undecodable ever reaches (or blocks) the sender.
struct Decoder {
    publish_channel: Channel,
    dlx: String,
    max_batch_bytes: usize,
}

impl Decoder {
    async fn run(self, mut consumer: lapin::Consumer, tx: mpsc::UnboundedSender<Incoming>) {
        while let Some(delivery) = consumer.next().await {
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(e) => {
                    let _ = tx.send(Incoming::Lost(format!("consumer error: {e}")));
                    return;
                }
            };
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned());
            let deadline_ms = broker::header_i64(&delivery.properties, DEADLINE_HEADER)
                .and_then(|ms| u64::try_from(ms).ok());
            let decoded = job::decode(
                &delivery.data,
                message_id.as_deref(),
                deadline_ms,
                self.max_batch_bytes,
                SystemTime::now(),
            );
            let pending = Pending::from_delivery(delivery);
            match decoded {
                Ok(job) => {
                    if tx.send(Incoming::Job(job, pending)).is_err() {
                        return;
                    }
                }
                Err(rejection) => {
                    let id = message_id.unwrap_or_else(|| job::body_digest(&pending.body));
                    if let Err(e) = self.dead_letter(&id, pending, rejection).await {
                        let _ = tx.send(Incoming::Lost(e.to_string()));
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Incoming::Lost("the broker cancelled the consumer".into()));
    }

    async fn dead_letter(
        &self,
        id: &str,
        pending: Pending,
        rejection: Rejection,
    ) -> Result<(), BrokerError> {
        let dead = DeadLetter {
            reason: rejection.reason(),
            error_code: None,
            error_info: rejection.to_string(),
            attempts: 0,
            first_seen_ms: pending.first_seen_ms,
        };
        broker::publish_confirmed(
            &self.publish_channel,
            &self.dlx,
            "",
            &pending.body,
            dead.properties(&pending.properties),
        )
        .await?;
        warn!(job = %id, reason = dead.reason, info = %dead.error_info, "dead-lettered on arrival");
        ack(&pending.acker, id).await
    }
}
