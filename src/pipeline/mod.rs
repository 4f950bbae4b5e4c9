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
//!
//! With a ledger, arriving jobs are looked up first: settled ones are acked
//! without a call, jobs of a call still in flight make that very call be sent
//! again (the service drops it as a repeat if it got through), and each call is
//! recorded before its first attempt and after its answer, before any ack.

pub mod batcher;
pub mod config;
pub mod crash;
pub mod job;
pub mod limiter;

pub use config::{AppFaultPolicy, InDoubtPolicy, WorkerConfig};

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

use crate::broker::{self, BrokerError, DeadLetter, DeadReason};
use crate::ledger::{Known, Ledger, LedgerError};
use crate::ops::telemetry::{self, WorkerStatus};
use crate::tencent::classify::Outcome;
use crate::tencent::client::{ApiClient, ApiResponse, TransportError};
use crate::tencent::usersig::Signer;
use batcher::{Batch, Batcher, Queued};
use crash::{CrashHook, CrashPoint};
use job::{Job, Rejection};
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
    /// Delivered (by the ledger's `call`, when there is one) or known settled.
    Ack {
        call: Option<i64>,
        msg_seq: Option<u64>,
    },
    /// Dead-letter it; `call` is the ledger's call it failed in.
    DeadLetter { dead: DeadLetter, call: Option<i64> },
    /// Not sent and not failed: back to the queue (shutdown).
    Leave,
}

type Settlement = (Job, Pending, Fate);

/// How a session ended (or why a step of it cannot go on).
#[derive(Debug)]
enum SessionEnd {
    Shutdown,
    Broker(String),
}

impl From<BrokerError> for SessionEnd {
    fn from(e: BrokerError) -> Self {
        SessionEnd::Broker(e.to_string())
    }
}

/// One call to make: a fresh batch, a half of a refused one, or a call the
/// ledger holds as in flight, to be resent byte for byte.
struct Call {
    batch: Batch<Pending>,
    /// The ledger's id, once recorded (a recovered call has it from the start).
    ledger_id: Option<i64>,
    /// The ledger's call this one is a half of.
    parent: Option<i64>,
    recovered: bool,
}

impl Call {
    fn fresh(batch: Batch<Pending>, parent: Option<i64>) -> Self {
        Self {
            batch,
            ledger_id: None,
            parent,
            recovered: false,
        }
    }
}

/// What one call's attempts came to.
enum CallEnd {
    Settled(Vec<Settlement>),
    /// A merged call refused: try its halves.
    Split(Call, Call),
    /// A recovered call the service refused: its jobs start over as new.
    Renew(Call),
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
            crash: CrashHook::new(config.crash_at),
            config,
            client,
            limiter,
            signer,
            status: Arc::new(WorkerStatus::default()),
            last_send: None,
        })
    }

    pub fn status(&self) -> Arc<WorkerStatus> {
        self.status.clone()
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
        let names = self.config.topology.names.clone();
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
        self.status.set_consuming(true);
        info!(queue = %names.jobs, prefetch = self.config.prefetch, "consuming (active, or standing by until the active consumer goes)");

        let (tx, mut rx) = mpsc::unbounded_channel();
        let decoder = Decoder {
            publish_channel: publish_channel.clone(),
            dlx: names.dlx.clone(),
            max_batch_bytes: self.config.max_batch_bytes,
        };
        let consumer_task = tokio::spawn(decoder.run(consumer, tx));

        let mut queues = Queues::default();
        let end = self
            .send_loop(&mut queues, &mut rx, &publish_channel, shutdown)
            .await;

        // Stop consuming, then hand back everything not settled.
        let _ = consume_channel
            .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default())
            .await;
        consumer_task.abort();
        if matches!(end, SessionEnd::Shutdown) {
            let mut left = queues.drain();
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
        Ok(end)
    }

    /// Waits for work, then for a permit, then sends what piled up, until
    /// shutdown or the broker goes.
    async fn send_loop(
        &mut self,
        queues: &mut Queues,
        rx: &mut mpsc::UnboundedReceiver<Incoming>,
        publish_channel: &Channel,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        match self
            .send_loop_inner(queues, rx, publish_channel, shutdown)
            .await
        {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    async fn send_loop_inner(
        &mut self,
        queues: &mut Queues,
        rx: &mut mpsc::UnboundedReceiver<Incoming>,
        publish_channel: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<std::convert::Infallible, SessionEnd> {
        loop {
            queues.readmit_duplicates();
            while queues.is_empty() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Err(SessionEnd::Shutdown),
                    incoming = rx.recv() => queues.arrive(incoming)?,
                }
                self.admit(queues, publish_channel, shutdown).await?;
            }
            {
                metrics::gauge!(telemetry::OLDEST_UNSETTLED_SECONDS).set(queues.oldest_age_secs());
                let waiting = Instant::now();
                let permit = self.limiter.acquire();
                tokio::pin!(permit);
                loop {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return Err(SessionEnd::Shutdown),
                        _ = &mut permit => break,
                        incoming = rx.recv() => queues.arrive(incoming)?,
                    }
                }
                metrics::histogram!(telemetry::PERMIT_WAIT_SECONDS)
                    .record(waiting.elapsed().as_secs_f64());
            }
            while let Ok(incoming) = rx.try_recv() {
                queues.arrive(Some(incoming))?;
            }
            self.admit(queues, publish_channel, shutdown).await?;
            let expired: Vec<Settlement> = queues
                .batcher
                .take_expired(SystemTime::now())
                .into_iter()
                .map(|q| {
                    let deadline_ms = q.job.deadline.map(broker::unix_ms).unwrap_or(0);
                    let info = Rejection::Expired { deadline_ms }.to_string();
                    let fate = dead_letter_fate(&q.tag, DeadReason::Expired, None, info, None);
                    (q.job, q.tag, fate)
                })
                .collect();
            self.settle(expired, publish_channel, shutdown).await?;
            let call = match queues.recovering.pop() {
                Some(call) => Some(call),
                None => queues
                    .batcher
                    .take_batch(self.config.max_batch_bytes, self.config.max_jobs_per_call)
                    .map(|batch| Call::fresh(batch, None)),
            };
            if let Some(call) = call {
                let settlements = self.deliver(call, shutdown).await?;
                self.settle(settlements, publish_channel, shutdown).await?;
            }
        }
    }

    /// Sorts arrived jobs by what the ledger knows of them: settled ones are
    /// acked at once, jobs of a call in flight join that call's resend, the
    /// rest wait in the batcher. Without a ledger every job is new.
    async fn admit(
        &mut self,
        queues: &mut Queues,
        publish_channel: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        queues.set_aside_duplicates();
        if queues.arrived.is_empty() {
            return Ok(());
        }
        let Some(ledger) = self.config.ledger.clone() else {
            for (job, pending) in queues.arrived.drain(..) {
                queues.batcher.push(job, pending);
            }
            return Ok(());
        };
        let ids: Vec<(String, u32)> = queues
            .arrived
            .iter()
            .map(|(job, _)| (job.id.clone(), job.replays))
            .collect();
        let mut known = with_ledger(&self.status, shutdown, || ledger.lookup(&ids)).await?;
        let mut settled = Vec::new();
        for (job, pending) in std::mem::take(&mut queues.arrived) {
            match known.remove(&job.id) {
                None | Some(Known::New) => queues.batcher.push(job, pending),
                Some(Known::Settled) => {
                    info!(job = %job.id, "redelivered job already settled: acked without a call");
                    metrics::counter!(telemetry::JOBS_ACKED_KNOWN).increment(1);
                    settled.push((
                        job,
                        pending,
                        Fate::Ack {
                            call: None,
                            msg_seq: None,
                        },
                    ));
                }
                Some(Known::InFlight(call))
                    if call.age < self.config.resend_window
                        || self.config.in_doubt == InDoubtPolicy::Resend =>
                {
                    if call.age >= self.config.resend_window {
                        warn!(job = %job.id, call = call.call_id, age = ?call.age, "call in flight beyond the repeat window: resending it (at least once, as configured)");
                    }
                    queues.recover(call, job, pending);
                }
                Some(Known::InFlight(call)) => {
                    warn!(job = %job.id, call = call.call_id, age = ?call.age, "call in flight beyond the repeat window: dead-lettering the job as in-doubt, as configured");
                    let info = format!(
                        "its call {} was in flight {} s ago, beyond the service's repeat window: it may or may not have been delivered",
                        call.call_id,
                        call.age.as_secs()
                    );
                    let fate = dead_letter_fate(&pending, DeadReason::InDoubt, None, info, None);
                    settled.push((job, pending, fate));
                }
            }
        }
        self.settle(settled, publish_channel, shutdown).await
    }

    /// Sends one call and whatever it turns into (halves, a renewed call)
    /// until every job's fate is known.
    async fn deliver(
        &mut self,
        call: Call,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Settlement>, SessionEnd> {
        let mut settlements = Vec::new();
        let mut work = vec![call];
        let mut has_permit = true;
        while let Some(call) = work.pop() {
            let span = info_span!(
                "call",
                random = %format!("{:08x}", call.batch.random),
                jobs = call.batch.jobs.len(),
                bytes = call.batch.body.len(),
                recovered = call.recovered,
            );
            match self
                .attempt_call(call, &mut has_permit, shutdown)
                .instrument(span)
                .await?
            {
                CallEnd::Settled(done) => settlements.extend(done),
                CallEnd::Split(left, right) => {
                    work.push(right);
                    work.push(left);
                }
                CallEnd::Renew(call) => work.push(call),
            }
        }
        Ok(settlements)
    }

    /// Attempts one call: retries, pauses, re-signing and halting happen
    /// here. The first attempt uses the permit the caller holds.
    async fn attempt_call(
        &mut self,
        mut call: Call,
        has_permit: &mut bool,
        shutdown: &CancellationToken,
    ) -> Result<CallEnd, SessionEnd> {
        let started = Instant::now();
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.backoff_min)
            .with_max_delay(self.config.backoff_max)
            .with_jitter()
            .without_max_times()
            .build();
        let mut transient_failures = 0u32;
        let mut resigns = 0u32;
        let mut first_attempt = true;
        let mut last_outcome = "none";
        loop {
            if !std::mem::take(has_permit) {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(leave(call)),
                    _ = self.limiter.acquire() => {}
                }
            }
            if let (Some(ledger), None) = (self.config.ledger.clone(), call.ledger_id) {
                let ids: Vec<(String, u32)> = call
                    .batch
                    .jobs
                    .iter()
                    .map(|q| (q.job.id.clone(), q.job.replays))
                    .collect();
                let (body, random, parent) = (&call.batch.body, call.batch.random, call.parent);
                let recorded = with_ledger(&self.status, shutdown, || {
                    ledger.begin_call(body, random, &ids, parent)
                })
                .await;
                match recorded {
                    Ok(id) => call.ledger_id = Some(id),
                    Err(SessionEnd::Shutdown) => return Ok(leave(call)),
                    Err(end) => return Err(end),
                }
                self.crash.reached(CrashPoint::BeforeCall);
            }
            let usersig = self.signer.current();
            for queued in &mut call.batch.jobs {
                queued.tag.attempts += 1;
            }
            let attempt = call.batch.jobs[0].tag.attempts;
            if first_attempt {
                metrics::histogram!(telemetry::CALL_BYTES).record(call.batch.body.len() as f64);
                metrics::histogram!(telemetry::CALL_JOBS).record(call.batch.jobs.len() as f64);
            }
            if let Some(last) = self.last_send {
                tokio::time::sleep_until((last + self.limiter.min_gap()).into()).await;
            }
            self.last_send = Some(Instant::now());
            // The call in flight is always finished, shutdown or not.
            let sent = Instant::now();
            let result = self
                .client
                .send_broadcast(&usersig, call.batch.body.clone())
                .await;
            metrics::histogram!(telemetry::CALL_SECONDS).record(sent.elapsed().as_secs_f64());
            let outcome = self.config.classifier.classify(&result);
            let (code, info) = describe(&result);
            metrics::counter!(telemetry::CALLS, "outcome" => outcome_label(&outcome), "code" => code_label(&result))
                .increment(1);
            if !std::mem::take(&mut first_attempt) {
                metrics::counter!(telemetry::RETRIES, "after" => last_outcome).increment(1);
            }
            last_outcome = outcome_label(&outcome);
            match outcome {
                Outcome::Delivered { msg_seq } => {
                    if self.status.set_halted(false) {
                        info!("the app-wide fault is gone: sending again");
                    }
                    info!(attempt, msg_seq, "delivered");
                    self.crash.reached(CrashPoint::AfterCall);
                    metrics::counter!(telemetry::JOBS_DELIVERED)
                        .increment(call.batch.jobs.len() as u64);
                    let ledger_call = call.ledger_id;
                    let done = call
                        .batch
                        .jobs
                        .into_iter()
                        .map(|q| {
                            (
                                q.job,
                                q.tag,
                                Fate::Ack {
                                    call: ledger_call,
                                    msg_seq,
                                },
                            )
                        })
                        .collect();
                    return Ok(CallEnd::Settled(done));
                }
                Outcome::Transient => {
                    transient_failures += 1;
                    if transient_failures >= self.config.max_attempts
                        || started.elapsed() >= self.config.max_retry_age
                    {
                        warn!(attempt, code, %info, "retries exhausted: dead-lettering the call's jobs");
                        return Ok(dead_letter_all(
                            call,
                            DeadReason::RetriesExhausted,
                            code,
                            info,
                        ));
                    }
                    let delay = backoff.next().unwrap_or(self.config.backoff_max);
                    warn!(attempt, code, %info, retry_in = ?delay, "transient failure");
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return Ok(leave(call)),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Outcome::RateLimited { min_pause } => {
                    warn!(attempt, code, "frequency limit: pausing the sender");
                    self.limiter.on_rate_limited(min_pause);
                    metrics::gauge!(telemetry::RATE).set(self.limiter.current_rate());
                }
                Outcome::Resign if resigns < 2 => {
                    resigns += 1;
                    info!(attempt, "UserSig expired: signing a new one");
                    self.signer.invalidate();
                }
                Outcome::Permanent if call.recovered => {
                    // Refused now, so never delivered: the jobs we hold start
                    // over as new; the call's other jobs count as new when they come.
                    warn!(attempt, code, %info, "a recovered call was refused: its jobs start over");
                    if let (Some(ledger), Some(id)) = (self.config.ledger.clone(), call.ledger_id) {
                        with_ledger(&self.status, shutdown, || {
                            ledger.call_abandoned(id, code, &info)
                        })
                        .await?;
                    }
                    let jobs = call.batch.jobs;
                    let key = jobs[0].job.key.clone();
                    return Ok(CallEnd::Renew(Call::fresh(Batch::new(key, jobs), None)));
                }
                Outcome::Permanent if call.batch.jobs.len() > 1 => {
                    warn!(attempt, code, %info, "refused: splitting the call to find the job at fault");
                    let (left, right) = call.batch.split();
                    return Ok(CallEnd::Split(
                        Call::fresh(left, call.ledger_id),
                        Call::fresh(right, call.ledger_id),
                    ));
                }
                Outcome::Permanent => {
                    warn!(attempt, code, %info, job = %call.batch.jobs[0].job.id, "refused: dead-lettering the job");
                    return Ok(dead_letter_all(call, DeadReason::Rejected, code, info));
                }
                // A fresh UserSig that still expires at once is a clock or key
                // problem: the app's, not the job's.
                Outcome::Resign | Outcome::AppFault => match self.config.on_app_fault {
                    AppFaultPolicy::DeadLetter => {
                        error!(attempt, code, %info, "app-wide fault: dead-lettering the call's jobs as configured");
                        return Ok(dead_letter_all(call, DeadReason::Rejected, code, info));
                    }
                    AppFaultPolicy::Halt => {
                        if !self.status.set_halted(true) {
                            error!(
                                code, %info, probe_every = ?self.config.app_fault_probe,
                                "app-wide fault: sending stopped, every job kept; fix the app's configuration (console switch, admin account, SDKAppID, secret key)"
                            );
                        }
                        tokio::select! {
                            biased;
                            _ = shutdown.cancelled() => return Ok(leave(call)),
                            _ = tokio::time::sleep(self.config.app_fault_probe) => {}
                        }
                        self.signer.invalidate();
                    }
                },
            }
        }
    }

    /// Carries out the fates, in the order that keeps every promise: the
    /// ledger learns of deliveries before any ack; a dead letter is confirmed,
    /// then recorded, then its original acked.
    async fn settle(
        &mut self,
        settlements: Vec<Settlement>,
        publish_channel: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        if settlements.is_empty() {
            return Ok(());
        }
        let delivered_calls: Vec<(i64, Option<u64>)> = {
            let mut calls: Vec<(i64, Option<u64>)> = settlements
                .iter()
                .filter_map(|(_, _, fate)| match fate {
                    Fate::Ack {
                        call: Some(call),
                        msg_seq,
                    } => Some((*call, *msg_seq)),
                    _ => None,
                })
                .collect();
            calls.dedup_by_key(|(call, _)| *call);
            calls
        };
        if !delivered_calls.is_empty() {
            if let Some(ledger) = self.config.ledger.clone() {
                for (call, msg_seq) in &delivered_calls {
                    with_ledger(&self.status, shutdown, || {
                        ledger.call_delivered(*call, *msg_seq)
                    })
                    .await?;
                }
            }
            self.crash.reached(CrashPoint::AfterLedger);
        }
        let dlx = self.config.topology.names.dlx.clone();
        for (job, pending, fate) in settlements {
            match fate {
                Fate::Ack { msg_seq, .. } => {
                    ack(&pending.acker, &job.id).await?;
                    tracing::debug!(job = %job.id, msg_seq, "acked");
                }
                Fate::DeadLetter { dead, call } => {
                    broker::publish_confirmed(
                        publish_channel,
                        &dlx,
                        "",
                        &pending.body,
                        dead.properties(&pending.properties),
                    )
                    .await?;
                    if let Some(ledger) = self.config.ledger.clone() {
                        let ids = [job.id.clone()];
                        with_ledger(&self.status, shutdown, || {
                            ledger.jobs_dead_lettered(
                                call,
                                &ids,
                                dead.reason.as_str(),
                                dead.error_code,
                                &dead.error_info,
                            )
                        })
                        .await?;
                    }
                    warn!(job = %job.id, reason = %dead.reason, code = dead.error_code, "dead-lettered");
                    count_dead_letter(dead.reason, dead.error_code);
                    ack(&pending.acker, &job.id).await?;
                }
                Fate::Leave => {
                    pending
                        .acker
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
}

/// The jobs the sender holds, from arrival to call.
#[derive(Default)]
struct Queues {
    /// Arrived, not yet looked up in the ledger.
    arrived: Vec<(Job, Pending)>,
    /// New jobs waiting for a call.
    batcher: Batcher<Pending>,
    /// Calls the ledger holds as in flight, to resend first (newest last).
    recovering: Vec<Call>,
    /// Copies of a job already held (a producer's double publish, a replay
    /// run twice): looked at again once the first copy is settled.
    duplicates: Vec<(Job, Pending)>,
}

impl Queues {
    fn is_empty(&self) -> bool {
        self.arrived.is_empty() && self.batcher.is_empty() && self.recovering.is_empty()
    }

    /// Moves arrived copies of jobs already held aside, so one call never
    /// carries a job twice.
    fn set_aside_duplicates(&mut self) {
        let mut held: std::collections::HashSet<String> = self
            .batcher
            .iter()
            .map(|q| q.job.id.clone())
            .chain(
                self.recovering
                    .iter()
                    .flat_map(|c| c.batch.jobs.iter().map(|q| q.job.id.clone())),
            )
            .collect();
        let (fresh, copies): (Vec<_>, Vec<_>) = std::mem::take(&mut self.arrived)
            .into_iter()
            .partition(|(job, _)| held.insert(job.id.clone()));
        self.arrived = fresh;
        self.duplicates.extend(copies);
    }

    /// Gives the copies set aside another look (their first copy has been
    /// settled since, or is held still and they are set aside again).
    fn readmit_duplicates(&mut self) {
        self.arrived.append(&mut self.duplicates);
    }

    fn arrive(&mut self, incoming: Option<Incoming>) -> Result<(), SessionEnd> {
        match incoming {
            Some(Incoming::Job(job, pending)) => {
                self.arrived.push((job, pending));
                Ok(())
            }
            Some(Incoming::Lost(why)) => Err(SessionEnd::Broker(why)),
            None => Err(SessionEnd::Broker("the consumer task ended".into())),
        }
    }

    /// Seconds since the oldest held job arrived.
    fn oldest_age_secs(&self) -> f64 {
        let oldest = self
            .arrived
            .iter()
            .map(|(_, p)| p.first_seen_ms)
            .chain(self.batcher.iter().map(|q| q.tag.first_seen_ms))
            .chain(
                self.recovering
                    .iter()
                    .flat_map(|c| c.batch.jobs.iter().map(|q| q.tag.first_seen_ms)),
            )
            .min();
        oldest.map_or(0.0, |ms| {
            broker::unix_ms(SystemTime::now()).saturating_sub(ms) as f64 / 1000.0
        })
    }

    /// Adds a redelivered job to the resend of its call.
    fn recover(&mut self, call: crate::ledger::InFlightCall, job: Job, pending: Pending) {
        if let Some(existing) = self
            .recovering
            .iter_mut()
            .find(|c| c.ledger_id == Some(call.call_id))
        {
            existing.batch.jobs.push(Queued::new(job, pending));
            return;
        }
        let batch = Batch {
            key: job.key.clone(),
            jobs: vec![Queued::new(job, pending)],
            random: call.random,
            body: call.body,
        };
        self.recovering.insert(
            0,
            Call {
                batch,
                ledger_id: Some(call.call_id),
                parent: None,
                recovered: true,
            },
        );
    }

    /// Everything held, for a shutdown.
    fn drain(&mut self) -> Vec<Pending> {
        let mut all: Vec<Pending> = self
            .arrived
            .drain(..)
            .chain(self.duplicates.drain(..))
            .map(|(_, pending)| pending)
            .collect();
        all.extend(
            self.recovering
                .drain(..)
                .flat_map(|call| call.batch.jobs.into_iter().map(|q| q.tag)),
        );
        all.extend(self.batcher.drain().into_iter().map(|q| q.tag));
        all
    }
}

/// Runs a ledger operation until it succeeds; while it fails, sending is
/// stopped and the worker reports it. Gives up only on shutdown.
async fn with_ledger<T, F, Fut>(
    status: &WorkerStatus,
    shutdown: &CancellationToken,
    mut op: F,
) -> Result<T, SessionEnd>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LedgerError>>,
{
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        match op().await {
            Ok(value) => {
                if status.set_ledger_down(false) {
                    info!("the ledger answers again: sending resumes");
                }
                return Ok(value);
            }
            Err(e) => {
                if !status.set_ledger_down(true) {
                    error!(error = %e, "the ledger is unreachable: sending stopped (delivery could no longer be promised once), every job kept");
                }
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Err(SessionEnd::Shutdown),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Prunes settled ledger records older than `retention`, a small batch at a
/// time, every minute.
async fn prune_forever(ledger: Ledger, retention: Duration, shutdown: CancellationToken) {
    loop {
        loop {
            match ledger.prune(retention, 1000).await {
                Ok(0) => break,
                Ok(n) => {
                    tracing::debug!(rows = n, "pruned old ledger records");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "pruning skipped");
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}

fn leave(call: Call) -> CallEnd {
    CallEnd::Settled(
        call.batch
            .jobs
            .into_iter()
            .map(|q| (q.job, q.tag, Fate::Leave))
            .collect(),
    )
}

fn dead_letter_all(call: Call, reason: DeadReason, code: Option<i64>, info: String) -> CallEnd {
    let ledger_call = call.ledger_id;
    CallEnd::Settled(
        call.batch
            .jobs
            .into_iter()
            .map(|q| {
                let fate = dead_letter_fate(&q.tag, reason, code, info.clone(), ledger_call);
                (q.job, q.tag, fate)
            })
            .collect(),
    )
}

fn dead_letter_fate(
    pending: &Pending,
    reason: DeadReason,
    code: Option<i64>,
    info: String,
    call: Option<i64>,
) -> Fate {
    Fate::DeadLetter {
        dead: DeadLetter {
            reason,
            error_code: code,
            error_info: info,
            attempts: pending.attempts,
            first_seen_ms: pending.first_seen_ms,
        },
        call,
    }
}

fn count_dead_letter(reason: DeadReason, code: Option<i64>) {
    let code = code.map_or_else(|| "none".to_string(), |c| c.to_string());
    metrics::counter!(telemetry::JOBS_DEAD_LETTERED, "reason" => reason.as_str(), "code" => code)
        .increment(1);
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Delivered { .. } => "delivered",
        Outcome::Transient => "transient",
        Outcome::RateLimited { .. } => "rate_limited",
        Outcome::Resign => "resign",
        Outcome::Permanent => "permanent",
        Outcome::AppFault => "app_fault",
    }
}

/// The ErrorCode as a label, or the kind of transport failure.
fn code_label(result: &Result<ApiResponse, TransportError>) -> String {
    match result {
        Ok(response) => response.error_code.to_string(),
        Err(TransportError::Status { status }) => format!("http_{status}"),
        Err(TransportError::Timeout) => "timeout".into(),
        Err(TransportError::Connect(_)) => "connect".into(),
        Err(TransportError::InvalidResponse(_)) => "invalid_response".into(),
        Err(TransportError::Other(_)) => "transport".into(),
    }
}

/// The ErrorCode and text of an attempt, for logs and dead letters. The text
/// of a transport error never holds the URL (see [`crate::tencent::client`]).
fn describe(result: &Result<ApiResponse, TransportError>) -> (Option<i64>, String) {
    match result {
        Ok(response) => (Some(response.error_code), response.error_info.clone()),
        Err(e) => (None, e.to_string()),
    }
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
        let this = Arc::new(self);
        // Dead letters are confirmed concurrently, so a stream of bad input
        // does not hold up the good jobs behind it. Each task holds an unacked
        // delivery, so the prefetch bounds how many run at once.
        let mut dead_letters: tokio::task::JoinSet<Result<(), BrokerError>> =
            tokio::task::JoinSet::new();
        while let Some(delivery) = consumer.next().await {
            while let Some(done) = dead_letters.try_join_next() {
                if let Ok(Err(e)) = done {
                    let _ = tx.send(Incoming::Lost(e.to_string()));
                    return;
                }
            }
            let delivery = match delivery {
                Ok(delivery) => {
                    metrics::counter!(telemetry::JOBS_RECEIVED).increment(1);
                    metrics::gauge!(telemetry::ACTIVE).set(1.0);
                    delivery
                }
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
            let deadline_ms = broker::header_i64(&delivery.properties, broker::headers::DEADLINE)
                .and_then(|ms| u64::try_from(ms).ok());
            let decoded = job::decode(
                &delivery.data,
                message_id.as_deref(),
                deadline_ms,
                this.max_batch_bytes,
                SystemTime::now(),
            );
            let replays = broker::header_i64(&delivery.properties, broker::headers::REPLAYS)
                .and_then(|r| u32::try_from(r).ok())
                .unwrap_or(0);
            let pending = Pending::from_delivery(delivery);
            match decoded {
                Ok(mut job) => {
                    job.replays = replays;
                    if tx.send(Incoming::Job(job, pending)).is_err() {
                        return;
                    }
                }
                Err(rejection) => {
                    let id = message_id.unwrap_or_else(|| job::body_digest(&pending.body));
                    let this = this.clone();
                    dead_letters
                        .spawn(async move { this.dead_letter(&id, pending, rejection).await });
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
        warn!(job = %id, reason = %dead.reason, info = %dead.error_info, "dead-lettered on arrival");
        count_dead_letter(dead.reason, None);
        ack(&pending.acker, id).await
    }
}
