//! The dead-letter queue, for operators: read it without changing it, and
//! move or remove selected jobs. Reading takes messages unacked on one
//! channel, one at a time, keeping only what the command prints or acts on
//! (memory follows that, not the queue); closing the channel gives back
//! whatever was not acted on (the broker may reorder it). A replayed job is
//! published to the jobs queue with confirms and only then removed from the
//! dead-letter queue, so an interruption at any point loses nothing (at worst
//! the job is in both queues with the same id and replay count, which the
//! ledger treats as one). Also what `dlq list` reads (a listing with its
//! summary, holding only what it shows); in `confirm`, what an operator
//! confirmed of a selection, by the digest of its ids; in `report`, a whole
//! dead letter as JSON (`dlq show`, the console). How the CLI prints a
//! listing is the CLI's ([`crate::cli::dlq`]).

use std::collections::{BTreeMap, VecDeque};
use std::ops::ControlFlow;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties, Channel};
use serde::Serialize;

use crate::broker::{self, headers, BrokerError, DeadQueue};
use crate::pipeline::job;

mod confirm;
mod report;
pub use confirm::{selection_digest, Confirmation, SelectedIds, SelectionChanged};

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

    /// Reads the dead letters it matches, in queue order, onto `channel`;
    /// the rest are dropped as they are read (their bodies with them), still
    /// unacked, so they stay in the queue.
    pub async fn read_matching(
        &self,
        channel: &Channel,
        queue: &DeadQueue,
        now_ms: i64,
    ) -> Result<Vec<DeadJob>, BrokerError> {
        let mut chosen = Vec::new();
        read_each(channel, queue, |dead| {
            if self.matches(&dead.info, now_ms) {
                chosen.push(dead);
            }
            ControlFlow::Continue(())
        })
        .await?;
        Ok(chosen)
    }
}

/// What a read of the dead-letter queue went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Messages taken, the app's or not: what the channel holds until it
    /// closes (unless acked).
    pub taken: usize,
    /// The app's dead letters among them, handed on.
    pub visited: usize,
}

/// Reads the app's dead letters onto `channel`, unacked, in queue order,
/// handing each to `visit` until it breaks or the queue is read. Nothing
/// leaves the queue until acked; closing the channel returns the rest. What
/// `visit` drops is dropped here, body and all (another app's letters at
/// once), so memory follows what it keeps, not the queue.
pub async fn read_each(
    channel: &Channel,
    queue: &DeadQueue,
    mut visit: impl FnMut(DeadJob) -> ControlFlow<()>,
) -> Result<Pass, BrokerError> {
    let mut pass = Pass::default();
    while let Some(dead) = next(channel, queue, &mut pass.taken).await? {
        pass.visited += 1;
        if visit(dead).is_break() {
            break;
        }
    }
    Ok(pass)
}

/// The app's next dead letter onto `channel`, unacked, reading past (and
/// holding, unacked) those of other apps sharing the queue; none once the
/// channel has read the whole queue. `taken` counts every message taken.
pub async fn next(
    channel: &Channel,
    queue: &DeadQueue,
    taken: &mut usize,
) -> Result<Option<DeadJob>, BrokerError> {
    loop {
        let Some(message) = channel
            .basic_get(
                queue.name.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(BrokerError::Channel)?
        else {
            return Ok(None);
        };
        *taken += 1;
        let delivery = message.delivery;
        let first_death = broker::header_str(&delivery.properties, "x-first-death-queue");
        if queue.owns(delivery.routing_key.as_str(), first_death.as_deref()) {
            return Ok(Some(DeadJob::from_delivery(delivery)));
        }
    }
}

/// The app's first dead letter with this id, read no further than it.
pub async fn find(
    channel: &Channel,
    queue: &DeadQueue,
    id: &str,
) -> Result<Option<DeadJob>, BrokerError> {
    let mut found = None;
    read_each(channel, queue, |dead| {
        if dead.id == id {
            found = Some(dead);
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .await?;
    Ok(found)
}

impl DeadJob {
    fn from_delivery(delivery: Delivery) -> Self {
        let properties = delivery.properties;
        // A job without `message_id` is known by the id of its arrival, which
        // the worker writes on its dead letter; one that RabbitMQ dead-lettered
        // by itself has none, and is shown by its body's digest.
        let id = properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_string())
            .or_else(|| broker::header_str(&properties, headers::JOB_ID))
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
        Self {
            id,
            info,
            body: delivery.data,
            properties,
            acker: delivery.acker,
        }
    }
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

/// Counts one more under its (reason, code), for the summary; a dead
/// letter without an ErrorCode counts under `-`.
pub fn count(summary: &mut BTreeMap<(String, String), usize>, info: &DeadInfo) {
    let code = info
        .error_code
        .map_or_else(|| "-".to_string(), |c| c.to_string());
    *summary.entry((info.reason.clone(), code)).or_insert(0) += 1;
}

/// The dead letters a listing shows, kept as they are read: the first
/// `limit` in queue order, or the last `limit` for newest first.
struct Collect {
    kept: VecDeque<DeadInfo>,
    newest_first: bool,
    limit: usize,
}

impl Collect {
    fn new(newest_first: bool, limit: Option<usize>) -> Self {
        Self {
            kept: VecDeque::new(),
            newest_first,
            limit: limit.unwrap_or(usize::MAX),
        }
    }

    fn push(&mut self, info: DeadInfo) {
        if self.newest_first {
            self.kept.push_back(info);
            if self.kept.len() > self.limit {
                self.kept.pop_front();
            }
        } else if self.kept.len() < self.limit {
            self.kept.push_back(info);
        }
    }

    fn finish(self) -> Vec<DeadInfo> {
        if self.newest_first {
            self.kept.into_iter().rev().collect()
        } else {
            self.kept.into()
        }
    }
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
    // A job without `message_id` goes back under the id of its arrival, so
    // two dead letters of one body are two jobs, and replaying one twice
    // (stopped between the publish and the removal) is still one. Without
    // an arrival id (RabbitMQ dead-lettered it itself) it goes back without
    // an id, a fresh arrival of its own.
    if dead.properties.message_id().is_none() {
        let arrival = broker::header_str(&dead.properties, headers::JOB_ID);
        if let Some(id) = arrival.and_then(|id| lapin::types::ShortString::try_new(id).ok()) {
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

/// What an operator does to selected dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Back to the jobs queue, published with confirms, then removed here.
    Replay,
    /// Removed for good.
    Purge,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replay => "replay",
            Self::Purge => "purge",
        }
    }
}

/// Carries out `action` on each chosen dead letter in turn: the one place
/// `dlq replay`, `dlq purge` and the console act. A replay is confirmed in
/// the jobs queue before its dead letter is removed, so stopping anywhere
/// loses nothing. `after_publish` hears of each confirmed publish (its
/// 1-based number) before the removal, `done` of each job once removed.
/// Stops at the first failure; the jobs not reached stay where they are.
pub async fn act_on_each(
    chosen: Vec<DeadJob>,
    action: Action,
    channel: &Channel,
    jobs_queue: &str,
    mut after_publish: impl FnMut(usize),
    mut done: impl FnMut(&DeadInfo),
) -> Result<usize, BrokerError> {
    let mut acted = 0;
    for job in chosen {
        let info = job.info.clone();
        match action {
            Action::Replay => {
                job.replay(channel, jobs_queue, || after_publish(acted + 1))
                    .await?
            }
            Action::Purge => job.remove().await?,
        }
        acted += 1;
        done(&info);
    }
    Ok(acted)
}

/// What `dlq list` prints: the matching dead letters in the order asked, at
/// most as many as asked, and a count of every match by reason and code. It
/// keeps only the headers of the dead letters it will show.
pub struct Listing {
    /// The app's dead letters in the queue, matching or not.
    pub total: usize,
    pub summary: BTreeMap<(String, String), usize>,
    pub shown: Vec<DeadInfo>,
}

impl Listing {
    /// Reads the whole queue onto `channel` (the caller closes it, which
    /// gives every message back), keeping the first `limit` matches, or with
    /// `newest_first` the last `limit` (a ring), newest first.
    pub async fn read(
        channel: &Channel,
        queue: &DeadQueue,
        selection: &Selection,
        now_ms: i64,
        newest_first: bool,
        limit: Option<usize>,
    ) -> Result<Self, BrokerError> {
        let mut collect = Collect::new(newest_first, limit);
        let mut summary = BTreeMap::new();
        let pass = read_each(channel, queue, |dead| {
            // The summary counts every match, the limit only trims what is shown.
            if selection.matches(&dead.info, now_ms) {
                count(&mut summary, &dead.info);
                collect.push(dead.info);
            }
            ControlFlow::Continue(())
        })
        .await?;
        Ok(Self {
            total: pass.visited,
            summary,
            shown: collect.finish(),
        })
    }
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

    fn collected(newest_first: bool, limit: Option<usize>, n: usize) -> Vec<String> {
        let mut collect = Collect::new(newest_first, limit);
        for i in 0..n {
            collect.push(info(&i.to_string(), "rejected", None, 0));
        }
        collect.finish().into_iter().map(|i| i.id).collect()
    }

    #[test]
    fn a_listing_keeps_only_what_it_shows() {
        assert_eq!(collected(false, Some(2), 5), ["0", "1"]);
        assert_eq!(collected(true, Some(2), 5), ["4", "3"]);
        assert_eq!(collected(true, None, 3), ["2", "1", "0"]);
        assert_eq!(collected(false, None, 3), ["0", "1", "2"]);
        assert_eq!(collected(true, Some(0), 3), Vec::<String>::new());
        assert_eq!(collected(false, Some(0), 3), Vec::<String>::new());
        assert_eq!(collected(true, Some(10), 3), ["2", "1", "0"]);
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
