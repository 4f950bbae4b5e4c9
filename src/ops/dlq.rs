//! The dead-letter queue, for operators: read it without changing it, and
//! move or remove selected jobs. Reading takes every message unacked on one
//! channel; closing the channel gives back whatever was not acted on, in its
//! place. A replayed job is published to the jobs queue with confirms and only
//! then removed from the dead-letter queue, so an interruption at any point
//! loses nothing (at worst the job is in both queues with the same id and
//! replay count, which the ledger treats as one).

use std::collections::BTreeMap;
use std::time::SystemTime;

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties, Channel};
use serde::Serialize;

use crate::broker::{self, headers, BrokerError};
use crate::pipeline::job;

/// One dead letter, held unacked while the command runs.
pub struct DeadJob {
    pub id: String,
    pub info: DeadInfo,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    acker: Acker,
}

/// What the headers say about a dead letter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadInfo {
    pub id: String,
    /// `x-reason`, or `broker:<reason>` for what RabbitMQ dead-lettered itself.
    pub reason: String,
    pub error_code: Option<i64>,
    pub error_info: Option<String>,
    pub attempts: Option<i64>,
    pub first_seen_ms: Option<i64>,
    pub dead_lettered_at_ms: Option<i64>,
    pub replays: u32,
}

impl DeadInfo {
    /// Seconds since it was dead-lettered (or first seen), if known.
    pub fn age_secs(&self, now_ms: i64) -> Option<i64> {
        self.dead_lettered_at_ms
            .or(self.first_seen_ms)
            .map(|at| (now_ms - at).max(0) / 1000)
    }
}

/// Which dead letters an operation applies to; every given criterion must hold.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub ids: Vec<String>,
    pub reason: Option<String>,
    pub code: Option<i64>,
    pub older_than_secs: Option<i64>,
    pub newer_than_secs: Option<i64>,
    pub all: bool,
}

impl Selection {
    /// A selection that names nothing would silently do nothing (or, read as
    /// "everything", far too much): say so.
    pub fn is_empty(&self) -> bool {
        !self.all
            && self.ids.is_empty()
            && self.reason.is_none()
            && self.code.is_none()
            && self.older_than_secs.is_none()
            && self.newer_than_secs.is_none()
    }

    pub fn matches(&self, info: &DeadInfo, now_ms: i64) -> bool {
        let age = info.age_secs(now_ms);
        (self.ids.is_empty() || self.ids.contains(&info.id))
            && self.reason.as_ref().is_none_or(|r| *r == info.reason)
            && self.code.is_none_or(|c| info.error_code == Some(c))
            && self
                .older_than_secs
                .is_none_or(|s| age.is_some_and(|a| a >= s))
            && self
                .newer_than_secs
                .is_none_or(|s| age.is_some_and(|a| a < s))
    }
}

/// Reads the whole dead-letter queue onto `channel`, unacked, in queue order.
/// Nothing leaves the queue until acked; closing the channel returns the rest.
pub async fn read_all(channel: &Channel, queue: &str) -> Result<Vec<DeadJob>, BrokerError> {
    let mut jobs = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .map_err(BrokerError::Channel)?
    {
        let delivery = message.delivery;
        let properties = delivery.properties;
        let id = properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_string())
            .unwrap_or_else(|| job::body_digest(&delivery.data));
        let info = DeadInfo {
            id: id.clone(),
            reason: reason_of(&properties),
            error_code: broker::header_i64(&properties, headers::ERROR_CODE),
            error_info: broker::header_str(&properties, headers::ERROR_INFO),
            attempts: broker::header_i64(&properties, headers::ATTEMPTS),
            first_seen_ms: broker::header_i64(&properties, headers::FIRST_SEEN),
            dead_lettered_at_ms: broker::header_i64(&properties, headers::DEAD_LETTERED_AT),
            replays: broker::header_i64(&properties, headers::REPLAYS)
                .and_then(|r| u32::try_from(r).ok())
                .unwrap_or(0),
        };
        jobs.push(DeadJob {
            id,
            info,
            body: delivery.data,
            properties,
            acker: delivery.acker,
        });
    }
    Ok(jobs)
}

/// The worker's `x-reason`, or the reason RabbitMQ gave when it dead-lettered
/// the message itself (a delivery limit, most likely).
fn reason_of(properties: &BasicProperties) -> String {
    if let Some(reason) = broker::header_str(properties, headers::REASON) {
        return reason;
    }
    match broker::header_str(properties, headers::FIRST_DEATH_REASON) {
        Some(reason) => format!("broker:{reason}"),
        None => "unknown".into(),
    }
}

/// Counts by (reason, code), for the summary.
pub fn summarize<'a>(
    infos: impl Iterator<Item = &'a DeadInfo>,
) -> BTreeMap<(String, String), usize> {
    let mut summary = BTreeMap::new();
    for info in infos {
        let code = info
            .error_code
            .map_or_else(|| "-".to_string(), |c| c.to_string());
        *summary.entry((info.reason.clone(), code)).or_insert(0) += 1;
    }
    summary
}

/// The properties a replayed job is published with.
pub fn replay_properties(dead: &DeadJob) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(original) = dead.properties.headers() {
        for (key, value) in original.inner() {
            if !headers::ADDED_BY_DEAD_LETTERING.contains(&key.as_str()) {
                headers.insert(key.clone(), value.clone());
            }
        }
    }
    headers.insert(
        headers::REPLAYS.into(),
        AMQPValue::LongLongInt(i64::from(dead.info.replays) + 1),
    );
    let mut properties = dead.properties.clone().with_headers(headers);
    // Without an id the job's identity is its body's digest, which a replay
    // keeps; set it explicitly so the worker and `jobs show` agree.
    if dead.properties.message_id().is_none() {
        if let Ok(id) = lapin::types::ShortString::try_new(dead.id.clone()) {
            properties = properties.with_message_id(id);
        }
    }
    properties
}

impl DeadJob {
    /// Publishes it back to the jobs queue (confirmed), then removes it here.
    pub async fn replay(
        self,
        channel: &Channel,
        jobs_queue: &str,
        after_publish: impl FnOnce(),
    ) -> Result<(), BrokerError> {
        broker::publish_confirmed(
            channel,
            "",
            jobs_queue,
            &self.body,
            replay_properties(&self),
        )
        .await?;
        after_publish();
        self.remove().await
    }

    /// Removes it from the dead-letter queue for good.
    pub async fn remove(self) -> Result<(), BrokerError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(BrokerError::Channel)
    }
}

pub fn now_ms() -> i64 {
    i64::try_from(broker::unix_ms(SystemTime::now())).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, reason: &str, code: Option<i64>, age_secs: i64) -> DeadInfo {
        DeadInfo {
            id: id.into(),
            reason: reason.into(),
            error_code: code,
            error_info: None,
            attempts: None,
            first_seen_ms: None,
            dead_lettered_at_ms: Some(1_000_000 - age_secs * 1000),
            replays: 0,
        }
    }

    #[test]
    fn selections_combine_their_criteria() {
        let now = 1_000_000;
        let a = info("a", "rejected", Some(10004), 100);
        let b = info("b", "invalid-json", None, 5);
        let by_reason = Selection {
            reason: Some("rejected".into()),
            ..Default::default()
        };
        assert!(by_reason.matches(&a, now) && !by_reason.matches(&b, now));
        let by_code = Selection {
            code: Some(10004),
            ..Default::default()
        };
        assert!(by_code.matches(&a, now) && !by_code.matches(&b, now));
        let old = Selection {
            older_than_secs: Some(60),
            ..Default::default()
        };
        assert!(old.matches(&a, now) && !old.matches(&b, now));
        let young = Selection {
            newer_than_secs: Some(60),
            ..Default::default()
        };
        assert!(!young.matches(&a, now) && young.matches(&b, now));
        let by_id = Selection {
            ids: vec!["b".into()],
            ..Default::default()
        };
        assert!(!by_id.matches(&a, now) && by_id.matches(&b, now));
        assert!(Selection::default().is_empty());
        assert!(!Selection {
            all: true,
            ..Default::default()
        }
        .is_empty());
    }
}
