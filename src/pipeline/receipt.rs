//! Receipts: what a producer that set `reply_to` on a job hears once the
//! job's fate is final: who gets one, what it says, and its publishing
//! (confirmed, `mandatory`, bounded in time). The settler
//! publishes them (after the job's ack, never holding it up); with the
//! ledger, each is kept in its outbox from the job's settle record until the
//! broker confirmed it, so one a dying worker did not publish is published
//! by the next sender (a duplicate carries the same content).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use crate::broker::{self, BrokerError, Links};
use crate::telemetry;

use crate::broker::{DeadLetter, DeadReason};
use crate::ledger::KeptReceipt;

/// Where a job's receipt goes: the default exchange, routing key
/// `reply_to` (a queue's name, or RabbitMQ's direct reply-to), with this
/// `correlation_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    pub queue: String,
    /// The job's `correlation_id` if set, else its `message_id`.
    pub correlation_id: String,
}

impl ReplyTo {
    /// From a job's properties: `None` without `reply_to`.
    pub fn of(
        reply_to: Option<&str>,
        correlation_id: Option<&str>,
        message_id: &str,
    ) -> Option<Self> {
        let queue = reply_to.filter(|q| !q.is_empty())?;
        Some(Self {
            queue: queue.to_owned(),
            correlation_id: correlation_id.unwrap_or(message_id).to_owned(),
        })
    }
}

/// A job's final fate, as a receipt names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Delivered,
    DeadLettered,
    Expired,
    Superseded,
}

/// The receipt's body, JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub message_id: String,
    pub sdkappid: u64,
    pub outcome: Outcome,
    /// The service's `MsgSeq` for the call that carried it (delivered).
    #[serde(rename = "MsgSeq", skip_serializing_if = "Option::is_none", default)]
    pub msg_seq: Option<u64>,
    /// The call's `Random` (delivered).
    #[serde(rename = "Random", skip_serializing_if = "Option::is_none", default)]
    pub random: Option<u32>,
    /// Why it was not delivered: the dead letter's reason (`expired`,
    /// `rejected`, `invalid-job`, ...) or `superseded`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// The service's `ErrorCode`, when it answered one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub info: Option<String>,
    /// The job that took its place (superseded).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub superseded_by: Option<String>,
    /// When its fate became final, unix milliseconds.
    pub at_ms: u64,
}

impl Receipt {
    /// A delivered job's.
    pub fn delivered(
        id: &str,
        sdkappid: u64,
        msg_seq: Option<u64>,
        random: Option<u32>,
        at_ms: u64,
    ) -> Self {
        Self {
            msg_seq,
            random,
            ..Self::bare(id, sdkappid, Outcome::Delivered, at_ms)
        }
    }

    /// A dead-lettered job's (an expired one's outcome is `expired`).
    pub fn dead_lettered(id: &str, sdkappid: u64, dead: &DeadLetter, at_ms: u64) -> Self {
        let outcome = match dead.reason {
            DeadReason::Expired => Outcome::Expired,
            _ => Outcome::DeadLettered,
        };
        Self {
            reason: Some(dead.reason.to_string()),
            code: dead.error_code,
            info: Some(dead.error_info.clone()),
            ..Self::bare(id, sdkappid, outcome, at_ms)
        }
    }

    /// A superseded job's.
    pub fn superseded(id: &str, sdkappid: u64, by: &str, at_ms: u64) -> Self {
        Self {
            reason: Some("superseded".into()),
            info: Some(format!("superseded by {by} before it was sent")),
            superseded_by: Some(by.to_owned()),
            ..Self::bare(id, sdkappid, Outcome::Superseded, at_ms)
        }
    }

    fn bare(id: &str, sdkappid: u64, outcome: Outcome, at_ms: u64) -> Self {
        Self {
            message_id: id.to_owned(),
            sdkappid,
            outcome,
            msg_seq: None,
            random: None,
            reason: None,
            code: None,
            info: None,
            superseded_by: None,
            at_ms,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a receipt serializes")
    }
}

/// A receipt with where it goes.
pub fn addressed(job_id: &str, to: &ReplyTo, receipt: &Receipt) -> KeptReceipt {
    KeptReceipt {
        job_id: job_id.to_owned(),
        reply_to: to.queue.clone(),
        correlation_id: to.correlation_id.clone(),
        body: receipt.to_json(),
    }
}

/// The longest a batch of receipts waits for the broker's confirms: a
/// receipt not confirmed by then stays kept (with the ledger) for the next
/// sender, and the session goes on.
const CONFIRM_WITHIN: Duration = Duration::from_secs(5);

/// Where a session's receipts go out: a confirm channel on the replica's
/// receipts connection ([`Links::receipts`]), made on first use and again
/// after a failure. Cheap to clone: clones share the channel.
#[derive(Clone)]
pub struct ReceiptOut {
    links: Links,
    channel: Arc<Mutex<Option<Channel>>>,
    /// The app, as the metrics' `sdkappid` label spells it.
    app: String,
}

/// The direct reply-to pseudo-queue's prefix: a publish to a forged name
/// under it can close the connection.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

impl ReceiptOut {
    pub fn new(links: Links, app: String) -> Self {
        Self {
            links,
            channel: Arc::default(),
            app,
        }
    }

    /// The worker stops: its channel is closed (the connection is shared).
    pub async fn close(&self) {
        if let Some(channel) = self.channel.lock().await.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                channel.close(200, "worker stopped".into()),
            )
            .await;
        }
    }

    async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut held = self.channel.lock().await;
        if let Some(channel) = held.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let link = self.links.receipts().await?;
        let channel = broker::confirm_channel(link.connection()).await?;
        *held = Some(channel.clone());
        Ok(channel)
    }

    /// Publishes receipts to the default exchange under their `reply_to`,
    /// with `mandatory` and confirms; answers the ids done with: confirmed,
    /// returned as unroutable (the producer's queue is gone), or refused
    /// (the broker closed the channel or connection over it: a forged
    /// direct reply-to name), each counted and never retried. One that
    /// failed otherwise, or was not confirmed in time, is not among them.
    /// Direct reply-to receipts go one at a time, after the others, so
    /// that a refusal is known to be theirs.
    pub async fn publish(&self, receipts: &[KeptReceipt]) -> Vec<String> {
        let (direct, named): (Vec<&KeptReceipt>, Vec<&KeptReceipt>) = receipts
            .iter()
            .partition(|r| r.reply_to.starts_with(DIRECT_REPLY_TO));
        let mut done = Vec::new();
        if !named.is_empty() {
            let Ok(channel) = self.channel().await else {
                warn!(
                    receipts = named.len(),
                    "no broker connection for receipts: kept for the next sender (with the ledger)"
                );
                return done;
            };
            let sends = named.iter().map(|receipt| send(&channel, receipt));
            match tokio::time::timeout(CONFIRM_WITHIN, join_all(sends)).await {
                Ok(results) => {
                    for (receipt, result) in named.iter().zip(results) {
                        done.extend(self.settled(receipt, result, false));
                    }
                }
                Err(_) => warn!(
                    receipts = named.len(),
                    "receipts not confirmed in time: kept for the next sender (with the ledger)"
                ),
            }
        }
        for receipt in direct {
            let Ok(channel) = self.channel().await else {
                break;
            };
            let result = tokio::time::timeout(CONFIRM_WITHIN, send(&channel, receipt)).await;
            match result {
                Ok(result) => done.extend(self.settled(receipt, result, true)),
                Err(_) => {
                    warn!(job = %receipt.job_id, "receipt not confirmed in time: kept for the next sender (with the ledger)")
                }
            }
        }
        done
    }

    /// What became of one receipt: its id when it is done with.
    fn settled(
        &self,
        receipt: &KeptReceipt,
        result: Result<Confirmation, lapin::Error>,
        alone: bool,
    ) -> Option<String> {
        let outcome = match result {
            Ok(Confirmation::Ack(None)) => {
                debug!(job = %receipt.job_id, to = %receipt.reply_to, "receipt confirmed");
                "confirmed"
            }
            Ok(Confirmation::Ack(Some(returned))) => {
                warn!(job = %receipt.job_id, to = %receipt.reply_to, code = returned.reply_code, "receipt unroutable (the producer's queue is gone?): dropped");
                "unroutable"
            }
            // Published alone: the broker closing its channel was its doing.
            Err(e) if alone => {
                warn!(job = %receipt.job_id, to = %receipt.reply_to, error = %e, "receipt refused by the broker (a direct reply-to name of no live channel?): dropped");
                "refused"
            }
            Ok(other) => {
                warn!(job = %receipt.job_id, confirmation = ?other, "receipt not confirmed: kept for the next sender (with the ledger)");
                "failed"
            }
            Err(e) => {
                warn!(job = %receipt.job_id, error = %e, "receipt not published: kept for the next sender (with the ledger)");
                "failed"
            }
        };
        metrics::counter!(telemetry::RECEIPTS, telemetry::SDKAPPID => self.app.clone(), "result" => outcome)
            .increment(1);
        (outcome != "failed").then(|| receipt.job_id.clone())
    }
}

/// One receipt published and its confirm awaited.
async fn send(channel: &Channel, receipt: &KeptReceipt) -> Result<Confirmation, lapin::Error> {
    let properties = BasicProperties::default()
        .with_correlation_id(receipt.correlation_id.as_str().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirm = channel
        .basic_publish(
            "".into(),
            receipt.reply_to.as_str().into(),
            options,
            &receipt.body,
            properties,
        )
        .await?;
    confirm.await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead(reason: DeadReason, code: Option<i64>, info: &str) -> DeadLetter {
        DeadLetter {
            reason,
            error_code: code,
            error_info: info.into(),
            attempts: 1,
            first_seen_ms: 0,
            arrival_id: None,
        }
    }

    #[test]
    fn the_correlation_id_is_the_producers_or_else_the_message_id() {
        assert_eq!(ReplyTo::of(None, Some("c"), "m"), None);
        assert_eq!(ReplyTo::of(Some(""), Some("c"), "m"), None);
        let with = ReplyTo::of(Some("amq.rabbitmq.reply-to.g1h2"), Some("c"), "m").unwrap();
        assert_eq!(with.correlation_id, "c");
        assert_eq!(with.queue, "amq.rabbitmq.reply-to.g1h2");
        assert_eq!(
            ReplyTo::of(Some("q"), None, "m").unwrap().correlation_id,
            "m"
        );
    }

    #[test]
    fn each_outcome_says_what_it_documents() {
        let delivered = Receipt::delivered("j1", 1400000000, Some(42), Some(7), 1000);
        let json: serde_json::Value = serde_json::from_slice(&delivered.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"message_id": "j1", "sdkappid": 1400000000u64, "outcome": "delivered", "MsgSeq": 42, "Random": 7, "at_ms": 1000})
        );
        let expired = dead(DeadReason::Expired, None, "its deadline passed");
        let json: serde_json::Value =
            serde_json::from_slice(&Receipt::dead_lettered("j2", 1, &expired, 5).to_json())
                .unwrap();
        assert_eq!(json["outcome"], "expired");
        assert_eq!(json["reason"], "expired");
        assert!(json.get("MsgSeq").is_none());
        let refused = dead(DeadReason::Rejected, Some(80001), "dirty words");
        let json: serde_json::Value =
            serde_json::from_slice(&Receipt::dead_lettered("j3", 1, &refused, 5).to_json())
                .unwrap();
        assert_eq!(json["outcome"], "dead-lettered");
        assert_eq!(json["code"], 80001);
        assert_eq!(json["info"], "dirty words");
        let json: serde_json::Value =
            serde_json::from_slice(&Receipt::superseded("j4", 1, "j5", 5).to_json()).unwrap();
        assert_eq!(json["outcome"], "superseded");
        assert_eq!(json["superseded_by"], "j5");
        let back: Receipt = serde_json::from_slice(&delivered.to_json()).unwrap();
        assert_eq!(back, delivered);
    }
}
