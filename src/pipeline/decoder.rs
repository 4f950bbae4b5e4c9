//! The consumer task: turns each delivery into a validated job for the
//! sender, or dead-letters it on arrival with the reason it can never be
//! sent, so nothing undecodable ever reaches (or blocks) the sender. That
//! includes a `message_id` the ledger could not hold (refused here, before
//! any SQL, rather than failing every statement of its batch), properties
//! that were not UTF-8, and a deadline that is not a time.

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::warn;

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

/// What the consumer task hands the sender. Nearly every message is a job,
/// so boxing it to shrink the rare `Lost` would only add allocations.
#[allow(clippy::large_enum_variant)]
pub enum Incoming {
    Job(Job, Pending),
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
        loop {
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
                _ = tokio::time::sleep_until(offer.due().unwrap_or_else(tokio::time::Instant::now)), if offer.due().is_some() => {
                    if let Err(e) = this.offer_baton(&mut offer).await {
                        return drop(tx.send(Incoming::Lost(format!("baton: {e}"))));
                    }
                    continue;
                }
                delivery = consumer.next() => match delivery {
                    Some(delivery) => delivery,
                    None => break,
                },
            };
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(e) => return drop(tx.send(Incoming::Lost(format!("consumer error: {e}")))),
            };
            offer.delivered();
            if baton::is_baton(&delivery) {
                if let Err(e) = this.receive_baton(delivery, &mut offer).await {
                    return drop(tx.send(Incoming::Lost(format!("baton: {e}"))));
                }
                continue;
            }
            this.status.touch();
            metrics::counter!(telemetry::JOBS_RECEIVED, telemetry::SDKAPPID => this.app.clone())
                .increment(1);
            let decoded = this.decode(&delivery);
            // A decoded job keeps its compacted body; the raw one (maybe
            // padded to megabytes) is dropped here.
            let (pending, body) = Pending::from_delivery(delivery);
            match decoded {
                Ok(job) => {
                    if tx.send(Incoming::Job(job, pending)).is_err() {
                        return;
                    }
                }
                Err(rejection) => {
                    let message_id = pending.message_id();
                    let this = this.clone();
                    dead_letters.spawn(async move {
                        this.dead_letter(message_id, pending, &body, rejection)
                            .await
                    });
                }
            }
        }
        let _ = tx.send(Incoming::Lost("the broker cancelled the consumer".into()));
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
        let info = cut_text(&dead.error_info, MAX_HEADER_TEXT);
        warn!(job = %id, reason = %dead.reason, %info, "dead-lettered on arrival");
        pending.ack(&id).await
    }
}
