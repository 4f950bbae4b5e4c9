//! A job's delivery from the broker, held until its fate is known, and the
//! three ways a delivery ends: acked, dead-lettered (a confirmed publish to
//! the dead-letter exchange, then the ack), or returned to the queue.

use std::time::SystemTime;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{Acker, BasicProperties, Channel};
use tracing::warn;

use crate::broker::{self, BrokerError, DeadLetter, DeadReason, DeadRoute};
use crate::clock;
use crate::telemetry;

/// Where a session's dead letters go: its channel in confirm mode, and the
/// room a dead letter's properties have in its connection's frames.
#[derive(Clone)]
pub struct Outbox {
    pub channel: Channel,
    pub room: usize,
}

/// A job's delivery: what is needed to ack it or dead-letter it with its
/// properties. The body is not kept: a decoded job holds its own, compacted.
#[derive(Debug)]
pub struct Pending {
    acker: Acker,
    properties: BasicProperties,
    /// When this worker received it, for the `x-first-seen` header.
    pub first_seen_ms: u64,
    /// Calls attempted with this job.
    pub attempts: u32,
}

impl Pending {
    /// The delivery, and its body handed back to the caller.
    pub fn from_delivery(delivery: Delivery) -> (Self, Vec<u8>) {
        let pending = Self {
            acker: delivery.acker,
            properties: delivery.properties,
            first_seen_ms: clock::unix_ms(SystemTime::now()),
            attempts: 0,
        };
        (pending, delivery.data)
    }

    /// Why it is dead-lettered, with what this worker knows of it.
    pub fn dead_letter_for(
        &self,
        reason: DeadReason,
        error_code: Option<i64>,
        error_info: String,
    ) -> DeadLetter {
        DeadLetter {
            reason,
            error_code,
            error_info,
            attempts: self.attempts,
            first_seen_ms: self.first_seen_ms,
            arrival_id: None,
        }
    }

    /// Its `message_id`, if the producer set one.
    pub fn message_id(&self) -> Option<String> {
        self.properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
    }

    /// Where its receipt goes, read from its properties (for a job refused
    /// before it was decoded); `id` is its job id.
    pub fn reply_to(&self, id: &str) -> Option<super::receipt::ReplyTo> {
        let text =
            |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
        super::receipt::ReplyTo::of(
            text(self.properties.reply_to()).as_deref(),
            text(self.properties.correlation_id()).as_deref(),
            id,
        )
    }

    /// Acks it. `Ok(false)` from the broker means the channel was recovered
    /// and the tag is void: the broker will redeliver the job.
    pub async fn ack(&self, id: &str) -> Result<(), BrokerError> {
        match self.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                warn!(job = %id, "ack not delivered (channel recovered): the job will be redelivered");
                Ok(())
            }
            Err(e) => Err(BrokerError::Channel(e)),
        }
    }

    /// Publishes `body` with the original properties, plus the headers that
    /// say why, to the dead-letter exchange and waits for the confirm. The
    /// caller acks the original afterwards (after the ledger, when there is one).
    pub async fn publish_dead_letter(
        &self,
        outbox: &Outbox,
        route: &DeadRoute,
        body: &[u8],
        dead: &DeadLetter,
        app: &str,
    ) -> Result<(), BrokerError> {
        let properties = dead.properties(&self.properties, outbox.room);
        broker::publish_confirmed(
            &outbox.channel,
            &route.exchange,
            &route.routing_key,
            body,
            properties,
        )
        .await?;
        let code = dead
            .error_code
            .map_or_else(|| "none".to_string(), |c| c.to_string());
        metrics::counter!(telemetry::JOBS_DEAD_LETTERED, telemetry::SDKAPPID => app.to_owned(), "reason" => dead.reason.as_str(), "code" => code)
            .increment(1);
        Ok(())
    }

    /// Gives it back to the queue, unsent and unfailed.
    pub async fn requeue(&self) -> Result<(), BrokerError> {
        self.acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(BrokerError::Channel)
    }
}
