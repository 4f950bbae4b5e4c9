//! The consumer task: turns each delivery into a validated job for the
//! sender, or dead-letters it on arrival with the reason it can never be
//! sent, so nothing undecodable ever reaches (or blocks) the sender. That
//! includes a `message_id` the ledger could not hold: it is refused here,
//! before any SQL, rather than failing every statement of its batch.

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::StreamExt;
use lapin::Channel;
use tokio::sync::mpsc;
use tracing::warn;

use crate::broker::{self, headers, BrokerError};
use crate::ops::telemetry;

use super::config::CallRules;
use super::delivery::Pending;
use super::job::{self, Job, Rejection};

/// What the consumer task hands the sender. Nearly every message is a job,
/// so boxing it to shrink the rare `Lost` would only add allocations.
#[allow(clippy::large_enum_variant)]
pub enum Incoming {
    Job(Job, Pending),
    /// The consumer stopped: the session is over.
    Lost(String),
}

pub struct Decoder {
    pub publish_channel: Channel,
    pub dlx: String,
    pub rules: CallRules,
    /// The app, as the metrics' `sdkappid` label spells it.
    pub app: String,
}

impl Decoder {
    pub async fn run(self, mut consumer: lapin::Consumer, tx: mpsc::UnboundedSender<Incoming>) {
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
                Ok(delivery) => delivery,
                Err(e) => {
                    let _ = tx.send(Incoming::Lost(format!("consumer error: {e}")));
                    return;
                }
            };
            metrics::counter!(telemetry::JOBS_RECEIVED, telemetry::SDKAPPID => this.app.clone())
                .increment(1);
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned());
            let deadline_ms = broker::header_i64(&delivery.properties, headers::DEADLINE)
                .and_then(|ms| u64::try_from(ms).ok());
            let replays = broker::header_i64(&delivery.properties, headers::REPLAYS)
                .and_then(|r| u32::try_from(r).ok())
                .unwrap_or(0);
            let redelivered = delivery.redelivered;
            let decoded = job::decode(
                &delivery.data,
                message_id.as_deref(),
                deadline_ms,
                &this.rules,
                SystemTime::now(),
            );
            // A decoded job keeps its compacted body; the raw one (maybe
            // padded to megabytes) is dropped here.
            let (pending, body) = Pending::from_delivery(delivery);
            match decoded {
                Ok(mut job) => {
                    job.replays = replays;
                    job.redelivered = redelivered;
                    if tx.send(Incoming::Job(job, pending)).is_err() {
                        return;
                    }
                }
                Err(rejection) => {
                    // Escaped: a refused id may hold control characters,
                    // and it goes to the logs.
                    let id = message_id.map_or_else(
                        || job::body_digest(&body),
                        |id| id.escape_debug().to_string(),
                    );
                    let this = this.clone();
                    dead_letters.spawn(async move {
                        this.dead_letter(&id, pending, &body, rejection).await
                    });
                }
            }
        }
        let _ = tx.send(Incoming::Lost("the broker cancelled the consumer".into()));
    }

    async fn dead_letter(
        &self,
        id: &str,
        pending: Pending,
        body: &[u8],
        rejection: Rejection,
    ) -> Result<(), BrokerError> {
        let dead = pending.dead_letter_for(rejection.reason(), None, rejection.to_string());
        pending
            .publish_dead_letter(&self.publish_channel, &self.dlx, body, &dead, &self.app)
            .await?;
        warn!(job = %id, reason = %dead.reason, info = %dead.error_info, "dead-lettered on arrival");
        pending.ack(id).await
    }
}
