//! The consumer task: turns each delivery into a validated job for the
//! sender, or dead-letters it on arrival with the reason it can never be
//! sent, so nothing undecodable ever reaches (or blocks) the sender. That
//! includes a `message_id` the ledger could not hold (refused here, before
//! any SQL, rather than failing every statement of its batch), properties
//! that were not UTF-8, and a deadline that is not a time.
//!
//! It also opens the urgent lane: the app's urgent queue is consumed only
//! once this session knows it is the app's active consumer of the jobs
//! queue (its first delivery there, a job or the baton), so that the
//! replica that sends the app's ordinary jobs is the one that sends its
//! urgent ones (see [`UrgentLane`]).

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::frame::MAX_HEADER_TEXT;
use crate::broker::{BrokerError, DeadRoute};
use crate::status::WorkerStatus;
use crate::telemetry;
use crate::text::cut_text;

use super::baton::{self, Baton};
use super::config::CallRules;
use super::delivery::{Outbox, Pending};
use super::job::{self, Job, Rejection};
use super::properties;
use super::receipt::{self, Receipt, ReplyTo};
use crate::clock;

/// What the consumer task hands the sender. Nearly every message is a job,
/// so boxing it to shrink the rare `Lost` would only add allocations.
#[allow(clippy::large_enum_variant)]
pub enum Incoming {
    Job(Job, Pending),
    /// The baton arrived: this session is the app's active consumer, with
    /// or without jobs (its book opens, and receipts left by the sender
    /// before it go out).
    Active,
    /// The consumer stopped: the session is over.
    Lost(String),
}

pub struct Decoder {
    pub outbox: Outbox,
    pub dead_route: DeadRoute,
    pub rules: CallRules,
    /// The app, as the metrics' `sdkappid` label spells it.
    pub app: String,
    pub status: Arc<WorkerStatus>,
    /// The jobs queue, where a redelivered baton's replacement goes.
    pub queue: String,
    pub baton: Baton,
    pub urgent: UrgentLane,
    /// Where receipts of jobs refused on arrival go.
    pub receipts: receipt::ReceiptOut,
    /// Set when the session winds down: no baton is offered and no lane
    /// opened any more, and the task goes on until its consumers end, so
    /// that what was already on its way (a baton above all) is received.
    pub winding: CancellationToken,
}

/// The app's urgent queue as a session consumes it: on the jobs queue's
/// channel (so that both consumers go together when the channel or the
/// connection does), opened only by the active consumer of the jobs queue.
/// The urgent queue is single-active-consumer too, so a replica's urgent
/// consumer that outlives its jobs consumer for a moment (a wind-down's
/// cancel in flight) can only make the next replica's wait: it is never a
/// second sender.
#[derive(Clone)]
pub struct UrgentLane {
    pub channel: Channel,
    pub queue: String,
    /// Its consumer tag, for the wind-down's cancel.
    pub tag: String,
    /// Whether the consumer was opened (so the wind-down cancels it).
    pub opened: Arc<std::sync::atomic::AtomicBool>,
}

impl UrgentLane {
    async fn open(&self) -> Result<lapin::Consumer, BrokerError> {
        let consumer = self
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                self.tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::Channel)?;
        self.opened.store(true, std::sync::atomic::Ordering::SeqCst);
        info!(queue = %self.queue, "active for the app: consuming its urgent lane too");
        Ok(consumer)
    }

    pub fn is_open(&self) -> bool {
        self.opened.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The next delivery of the urgent lane, once it is open.
async fn next_urgent(
    lane: &mut Option<lapin::Consumer>,
) -> Option<Result<lapin::message::Delivery, lapin::Error>> {
    match lane {
        Some(consumer) => consumer.next().await,
        None => std::future::pending().await,
    }
}

impl Decoder {
    pub async fn run(self, mut consumer: lapin::Consumer, tx: mpsc::UnboundedSender<Incoming>) {
        let this = Arc::new(self);
        // Dead letters are confirmed concurrently, so a stream of bad input
        // does not hold up the good jobs behind it. Each task holds an unacked
        // delivery, so the prefetch bounds how many run at once.
        let mut dead_letters: tokio::task::JoinSet<Result<(), BrokerError>> =
            tokio::task::JoinSet::new();
        let mut offer = this.baton.offers();
        let mut urgent: Option<lapin::Consumer> = None;
        let mut urgent_closed = false;
        loop {
            let offering = offer.due().is_some() && !this.winding.is_cancelled();
            // A dead letter that failed (its channel closed, say) ends the
            // session at once, not at the next delivery, which may never come.
            let delivery = tokio::select! {
                Some(done) = dead_letters.join_next(), if !dead_letters.is_empty() => {
                    if let Ok(Err(e)) = done {
                        let _ = tx.send(Incoming::Lost(e.to_string()));
                        return;
                    }
                    continue;
                }
                // Quiet, with no baton offered yet: offer this session's.
                _ = tokio::time::sleep_until(offer.due().unwrap_or_else(tokio::time::Instant::now)), if offering => {
                    if let Err(e) = this.offer_baton(&mut offer).await {
                        return drop(tx.send(Incoming::Lost(format!("baton: {e}"))));
                    }
                    continue;
                }
                delivery = consumer.next() => match delivery {
                    Some(delivery) => (delivery, false),
                    None => break,
                },
                delivery = next_urgent(&mut urgent) => match delivery {
                    Some(delivery) => (delivery, true),
                    // Cancelled by the wind-down: the jobs consumer goes on
                    // until its own end.
                    None if this.winding.is_cancelled() => {
                        urgent = None;
                        urgent_closed = true;
                        continue;
                    }
                    None => {
                        let why = "the broker cancelled the urgent lane's consumer";
                        return drop(tx.send(Incoming::Lost(why.into())));
                    }
                },
            };
            let (delivery, from_urgent) = match delivery {
                (Ok(delivery), from_urgent) => (delivery, from_urgent),
                (Err(e), _) => {
                    return drop(tx.send(Incoming::Lost(format!("consumer error: {e}"))))
                }
            };
            // A delivery from the jobs queue: this session is the app's
            // active consumer, so its urgent lane is this session's to send.
            if let Err(e) = this.open_urgent(&mut urgent, urgent_closed).await {
                return drop(tx.send(Incoming::Lost(format!("urgent lane: {e}"))));
            }
            if !from_urgent {
                offer.delivered();
            }
            if !from_urgent && baton::is_baton(&delivery) {
                if let Err(e) = this.receive_baton(delivery, &mut offer).await {
                    return drop(tx.send(Incoming::Lost(format!("baton: {e}"))));
                }
                if tx.send(Incoming::Active).is_err() {
                    return;
                }
                continue;
            }
            if !this
                .clone()
                .hand_on(delivery, from_urgent, &tx, &mut dead_letters)
            {
                return;
            }
        }
        let _ = tx.send(Incoming::Lost("the broker cancelled the consumer".into()));
    }

    /// Opens the urgent lane unless it is open, closed, or the session winds
    /// down.
    async fn open_urgent(
        &self,
        urgent: &mut Option<lapin::Consumer>,
        closed: bool,
    ) -> Result<(), BrokerError> {
        if urgent.is_none() && !closed && !self.winding.is_cancelled() {
            *urgent = Some(self.urgent.open().await?);
        }
        Ok(())
    }

    /// Hands a job on to the sender, or starts dead-lettering it; whether
    /// the sender is still there.
    fn hand_on(
        self: Arc<Self>,
        delivery: lapin::message::Delivery,
        urgent: bool,
        tx: &mpsc::UnboundedSender<Incoming>,
        dead_letters: &mut tokio::task::JoinSet<Result<(), BrokerError>>,
    ) -> bool {
        self.status.touch();
        metrics::counter!(telemetry::JOBS_RECEIVED, telemetry::SDKAPPID => self.app.clone())
            .increment(1);
        let decoded = self.decode(&delivery).map(|job| Job { urgent, ..job });
        // A decoded job keeps its compacted body; the raw one (maybe
        // padded to megabytes) is dropped here.
        let (pending, body) = Pending::from_delivery(delivery);
        match decoded {
            Ok(job) => return tx.send(Incoming::Job(job, pending)).is_ok(),
            Err(rejection) => {
                let message_id = pending.message_id();
                dead_letters.spawn(async move {
                    self.dead_letter(message_id, pending, &body, rejection)
                        .await
                });
            }
        }
        true
    }

    /// A delivery as a job: its properties read, its body decoded.
    fn decode(&self, delivery: &lapin::message::Delivery) -> Result<Job, Rejection> {
        let read = properties::read(&delivery.properties).map_err(Rejection::InvalidJob)?;
        let mut job = job::decode(
            &delivery.data,
            read.message_id.as_deref(),
            read.deadline_ms,
            &self.rules,
            SystemTime::now(),
        )?;
        job.replays = read.replays;
        job.coalesce = read.coalesce_key;
        job.reply = ReplyTo::of(
            read.reply_to.as_deref(),
            read.correlation_id.as_deref(),
            &job.id,
        );
        job.redelivered = delivery.redelivered;
        Ok(job)
    }

    /// Offers this session's baton (the queue was quiet).
    async fn offer_baton(&self, offer: &mut baton::Offer) -> Result<(), BrokerError> {
        let published = baton::offer(&self.outbox.channel, &self.queue).await?;
        offer.made(published);
        Ok(())
    }

    /// A baton arrived: this session is the app's active consumer, and one
    /// is in circulation (held here from now on), so none is to be offered.
    async fn receive_baton(
        &self,
        delivery: lapin::message::Delivery,
        offer: &mut baton::Offer,
    ) -> Result<(), BrokerError> {
        offer.made(true);
        self.status.set_active(true);
        self.baton
            .receive(delivery, &self.outbox.channel, &self.queue)
            .await
    }

    /// Dead-letters a message that can never be a call. One without
    /// `message_id` gets an arrival id of its own (`x-job-id`), so that a
    /// replay of two such dead letters of one body replays two jobs.
    async fn dead_letter(
        &self,
        message_id: Option<String>,
        pending: Pending,
        body: &[u8],
        rejection: Rejection,
    ) -> Result<(), BrokerError> {
        let mut dead = pending.dead_letter_for(rejection.reason(), None, rejection.to_string());
        let raw_id = message_id.clone();
        // Escaped: a refused id may hold control characters, and it goes to
        // the logs.
        let id = match message_id {
            Some(id) => id.escape_debug().to_string(),
            None => {
                let arrival = job::arrival_id(&job::body_digest(body));
                dead.arrival_id = Some(arrival.clone());
                arrival
            }
        };
        pending
            .publish_dead_letter(&self.outbox, &self.dead_route, body, &dead, &self.app)
            .await?;
        // Its refusal is recorded nowhere but the dead letter, so its
        // receipt goes before the ack (a crash in between repeats both).
        let receipt_id = raw_id
            .or_else(|| dead.arrival_id.clone())
            .unwrap_or_default();
        if let Some(to) = pending.reply_to(&receipt_id) {
            let now = clock::unix_ms(SystemTime::now());
            let sdkappid = self.app.parse().unwrap_or_default();
            let receipt = Receipt::dead_lettered(&receipt_id, sdkappid, &dead, now);
            let kept = receipt::addressed(&receipt_id, &to, &receipt);
            self.receipts.publish(&[kept]).await;
        }
        let info = cut_text(&dead.error_info, MAX_HEADER_TEXT);
        warn!(job = %id, reason = %dead.reason, %info, "dead-lettered on arrival");
        pending.ack(&id).await
    }
}
