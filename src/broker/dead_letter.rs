//! Dead letters: the headers the project reads and writes on jobs and dead
//! letters, why a job was dead-lettered, and the properties a dead letter is
//! published with.

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::BasicProperties;

use super::frame::{properties_bytes, MAX_HEADER_TEXT};
use crate::clock;
use crate::text::cut_text;

/// The headers the project reads and writes on jobs and dead letters.
pub mod headers {
    /// A job's deadline, unix milliseconds: after it, dead-lettered as expired.
    pub const DEADLINE: &str = "x-deadline";
    /// How often an operator replayed the job from the dead-letter queue.
    pub const REPLAYS: &str = "x-replays";
    /// A latest-wins key: a job with it supersedes a held job of the same
    /// app and key not yet in a call.
    pub const COALESCE_KEY: &str = "x-coalesce-key";
    /// Why a job was dead-lettered (a [`super::DeadReason`]).
    pub const REASON: &str = "x-reason";
    /// The service's ErrorCode, or void when there was none.
    pub const ERROR_CODE: &str = "x-error-code";
    /// The service's ErrorInfo, or what went wrong in words.
    pub const ERROR_INFO: &str = "x-error-info";
    /// Calls attempted with the job in them.
    pub const ATTEMPTS: &str = "x-attempts";
    /// Unix milliseconds when a worker first received the job.
    pub const FIRST_SEEN: &str = "x-first-seen";
    /// Unix milliseconds when the job was dead-lettered.
    pub const DEAD_LETTERED_AT: &str = "x-dead-lettered-at";
    /// Set by RabbitMQ when it dead-letters a message itself.
    pub const FIRST_DEATH_REASON: &str = "x-first-death-reason";
    /// The job's AMQP `expiration`, which its dead letter does not carry (a
    /// dead letter stays until an operator acts).
    pub const ORIGINAL_EXPIRATION: &str = "x-original-expiration";
    /// On the dead letter of a job without `message_id`: the id of its
    /// arrival, which a replay gives it, so that two dead letters of one
    /// body stay two jobs.
    pub const JOB_ID: &str = "x-job-id";
    /// Producer headers left off a dead letter because they would not fit
    /// in a frame, with their sizes (`x-pad (130000 bytes)`).
    pub const DROPPED_HEADERS: &str = "x-dropped-headers";

    /// Headers that dead-lettering adds (ours and RabbitMQ's): a replay removes
    /// them, so the job goes back as it came.
    pub const ADDED_BY_DEAD_LETTERING: &[&str] = &[
        REASON,
        ERROR_CODE,
        ERROR_INFO,
        ATTEMPTS,
        FIRST_SEEN,
        DEAD_LETTERED_AT,
        ORIGINAL_EXPIRATION,
        JOB_ID,
        DROPPED_HEADERS,
        "x-death",
        FIRST_DEATH_REASON,
        "x-first-death-queue",
        "x-first-death-exchange",
        "x-last-death-reason",
        "x-last-death-queue",
        "x-last-death-exchange",
        "x-delivery-count",
    ];
}

/// Why a job was dead-lettered: the `x-reason` header, and the ledger's
/// `reason` column, spelled the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// The body is not JSON.
    InvalidJson,
    /// The body is JSON but not a job the service could take.
    InvalidJob,
    /// A call with this job alone is over the byte cap.
    TooLarge,
    /// Its deadline passed before it could be sent.
    Expired,
    /// The service refused it for good.
    Rejected,
    /// Transient failures went on past the attempts or the age allowed.
    RetriesExhausted,
    /// Its call may or may not have been delivered, and can no longer be
    /// resent safely.
    InDoubt,
    /// Its call was in flight in as many worker sessions as the crash limit
    /// allows, each ended without an answer: it may be what stops them.
    CrashLoop,
}

impl DeadReason {
    /// Every reason this worker gives.
    pub const ALL: [DeadReason; 8] = [
        DeadReason::InvalidJson,
        DeadReason::InvalidJob,
        DeadReason::TooLarge,
        DeadReason::Expired,
        DeadReason::Rejected,
        DeadReason::RetriesExhausted,
        DeadReason::InDoubt,
        DeadReason::CrashLoop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::InvalidJson => "invalid-json",
            DeadReason::InvalidJob => "invalid-job",
            DeadReason::TooLarge => "too-large",
            DeadReason::Expired => "expired",
            DeadReason::Rejected => "rejected",
            DeadReason::RetriesExhausted => "retries-exhausted",
            DeadReason::InDoubt => "in-doubt",
            DeadReason::CrashLoop => "crash-loop",
        }
    }
}

impl std::fmt::Display for DeadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job was dead-lettered, as headers on the dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: DeadReason,
    pub error_code: Option<i64>,
    /// Written cut to [`MAX_HEADER_TEXT`]; the ledger keeps it whole.
    pub error_info: String,
    /// Calls attempted with this job in them.
    pub attempts: u32,
    /// Unix milliseconds when this worker first received the job.
    pub first_seen_ms: u64,
    /// For a job without `message_id`: its arrival's id (`x-job-id`).
    pub arrival_id: Option<String>,
}

impl DeadLetter {
    /// The original properties plus the headers that say why, less the AMQP
    /// `expiration`: a dead letter stays until an operator acts, so the job's
    /// expiration is only recorded, in `x-original-expiration`. They take at
    /// most `room` bytes (see [`super::frame::properties_room`]): should the
    /// producer's headers leave too little, the largest are left off and
    /// named in `x-dropped-headers`.
    pub fn properties(&self, original: &BasicProperties, room: usize) -> BasicProperties {
        let properties = self.with_reasons(original);
        fit_headers(properties, room)
    }

    fn with_reasons(&self, original: &BasicProperties) -> BasicProperties {
        let mut table = original.headers().clone().unwrap_or_default();
        let mut set = |name: &str, value: AMQPValue| {
            table.insert(ShortString::from(name), value);
        };
        if let Some(expiration) = original.expiration() {
            set(
                headers::ORIGINAL_EXPIRATION,
                AMQPValue::LongString(expiration.as_str().into()),
            );
        }
        set(
            headers::REASON,
            AMQPValue::LongString(self.reason.as_str().into()),
        );
        match self.error_code {
            Some(code) => set(headers::ERROR_CODE, AMQPValue::LongLongInt(code)),
            None => set(headers::ERROR_CODE, AMQPValue::Void),
        }
        set(
            headers::ERROR_INFO,
            AMQPValue::LongString(LongString::from(cut_text(
                &self.error_info,
                MAX_HEADER_TEXT,
            ))),
        );
        if let Some(id) = &self.arrival_id {
            set(headers::JOB_ID, AMQPValue::LongString(id.as_str().into()));
        }
        set(
            headers::ATTEMPTS,
            AMQPValue::LongLongInt(i64::from(self.attempts)),
        );
        set(
            headers::FIRST_SEEN,
            AMQPValue::LongLongInt(i64::try_from(self.first_seen_ms).unwrap_or(i64::MAX)),
        );
        set(
            headers::DEAD_LETTERED_AT,
            AMQPValue::LongLongInt(clock::now_ms_i64()),
        );
        without_expiration(original).with_headers(table)
    }
}

/// `properties` with the producer's largest headers left off until they
/// take at most `room` bytes; those left off are named in
/// `x-dropped-headers`. The headers dead-lettering adds are never dropped.
fn fit_headers(properties: BasicProperties, room: usize) -> BasicProperties {
    if properties_bytes(&properties) <= room {
        return properties;
    }
    let mut table = properties
        .headers()
        .clone()
        .unwrap_or_default()
        .inner()
        .clone();
    let bytes_with = |table: &BTreeMap<ShortString, AMQPValue>| {
        properties_bytes(&properties.clone().with_headers(table.clone().into()))
    };
    let bare = bytes_with(&BTreeMap::new());
    let mut producers: Vec<(ShortString, usize)> = table
        .iter()
        .filter(|(key, _)| !headers::ADDED_BY_DEAD_LETTERING.contains(&key.as_str()))
        .map(|(key, value)| {
            let one = BTreeMap::from([(key.clone(), value.clone())]);
            (key.clone(), bytes_with(&one) - bare)
        })
        .collect();
    producers.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    // Room is kept for the header that names what was left off.
    let room = room.saturating_sub(MAX_HEADER_TEXT + 32);
    let mut dropped = Vec::new();
    for (key, bytes) in producers {
        if bytes_with(&table) <= room {
            break;
        }
        table.remove(&key);
        dropped.push(format!("{key} ({bytes} bytes)"));
    }
    table.insert(
        ShortString::from(headers::DROPPED_HEADERS),
        AMQPValue::LongString(cut_text(&dropped.join(", "), MAX_HEADER_TEXT).into()),
    );
    properties.with_headers(table.into())
}

/// A copy of `original` with every property but `expiration` (lapin can set a
/// property, not unset one).
fn without_expiration(original: &BasicProperties) -> BasicProperties {
    let mut copy = BasicProperties::default();
    macro_rules! keep {
        ($($get:ident => $with:ident),* $(,)?) => {
            $(if let Some(value) = original.$get() {
                copy = copy.$with(value.clone());
            })*
        };
    }
    keep!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        headers => with_headers,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        user_id => with_user_id,
        app_id => with_app_id,
        cluster_id => with_cluster_id,
    );
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::header_values::{header_i64, header_str};
    use lapin::types::FieldTable;

    fn every_property() -> BasicProperties {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("identity".into())
            .with_headers(FieldTable::from(std::collections::BTreeMap::from([(
                ShortString::from(headers::DEADLINE),
                AMQPValue::LongLongInt(42),
            )])))
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("corr".into())
            .with_reply_to("reply".into())
            .with_expiration("5000".into())
            .with_message_id("job-1".into())
            .with_timestamp(1_700_000_000)
            .with_type("broadcast".into())
            .with_user_id("guest".into())
            .with_app_id("producer".into())
            .with_cluster_id("cluster".into())
    }

    fn dead_letter() -> DeadLetter {
        DeadLetter {
            reason: DeadReason::Rejected,
            error_code: Some(80001),
            error_info: "refused".into(),
            attempts: 1,
            first_seen_ms: 1,
            arrival_id: None,
        }
    }

    const ROOM: usize = 131_072 - 20 - 4096;

    #[test]
    fn a_dead_letter_keeps_every_property_but_its_expiration() {
        let original = every_property();
        let dead = dead_letter().properties(&original, ROOM);
        assert_eq!(dead.expiration(), &None);
        assert_eq!(
            header_str(&dead, headers::ORIGINAL_EXPIRATION).as_deref(),
            Some("5000")
        );
        assert_eq!(header_i64(&dead, headers::DEADLINE), Some(42));
        assert_eq!(
            header_str(&dead, headers::REASON).as_deref(),
            Some("rejected")
        );
        // Every other property as it came: compare all fields, serialized.
        let fields = |p: &BasicProperties| {
            let mut v = serde_json::to_value(p).unwrap();
            let map = v.as_object_mut().unwrap();
            map.remove("expiration");
            map.remove("headers");
            v
        };
        assert_eq!(fields(&dead), fields(&original));
    }

    #[test]
    fn a_job_without_expiration_gets_no_original_expiration() {
        let dead = dead_letter().properties(&BasicProperties::default(), ROOM);
        assert_eq!(header_str(&dead, headers::ORIGINAL_EXPIRATION), None);
        assert!(headers::ADDED_BY_DEAD_LETTERING.contains(&headers::ORIGINAL_EXPIRATION));
    }

    fn padded(bytes: usize) -> BasicProperties {
        let mut table = FieldTable::default();
        table.insert(
            "x-pad".into(),
            AMQPValue::LongString("p".repeat(bytes).into()),
        );
        table.insert("x-small".into(), AMQPValue::LongString("kept".into()));
        BasicProperties::default()
            .with_message_id("job-1".into())
            .with_headers(table)
    }

    #[test]
    fn a_long_reason_is_cut_with_a_marker() {
        let mut dead = dead_letter();
        dead.error_info = format!("MsgType unknown: {}", "A".repeat(17_000));
        let properties = dead.properties(&BasicProperties::default(), ROOM);
        let info = header_str(&properties, headers::ERROR_INFO).unwrap();
        assert!(info.len() <= MAX_HEADER_TEXT, "{}", info.len());
        assert!(info.ends_with("[cut: 17017 bytes in all]"), "{info}");
    }

    #[test]
    fn producer_headers_are_kept_while_they_fit_and_the_largest_dropped_after() {
        // 17 KB of headers fit in the broker's frame: kept whole.
        let kept = dead_letter().properties(&padded(17_000), ROOM);
        assert_eq!(header_str(&kept, "x-pad").map(|p| p.len()), Some(17_000));
        assert_eq!(header_str(&kept, headers::DROPPED_HEADERS), None);
        // Near the frame's size: x-pad is left off, named; the rest stays.
        let fitted = dead_letter().properties(&padded(130_000), ROOM);
        assert!(properties_bytes(&fitted) <= ROOM);
        assert_eq!(header_str(&fitted, "x-pad"), None);
        assert_eq!(header_str(&fitted, "x-small").as_deref(), Some("kept"));
        assert_eq!(
            header_str(&fitted, headers::DROPPED_HEADERS).as_deref(),
            Some("x-pad (130011 bytes)")
        );
        assert_eq!(
            header_str(&fitted, headers::REASON).as_deref(),
            Some("rejected")
        );
        assert_eq!(
            fitted.message_id().as_ref().map(|m| m.as_str()),
            Some("job-1")
        );
    }

    #[test]
    fn an_arrival_id_goes_on_the_dead_letter_and_is_removed_by_a_replay() {
        let mut dead = dead_letter();
        dead.arrival_id = Some("sha256:ab~01".into());
        let properties = dead.properties(&BasicProperties::default(), ROOM);
        assert_eq!(
            header_str(&properties, headers::JOB_ID).as_deref(),
            Some("sha256:ab~01")
        );
        assert!(headers::ADDED_BY_DEAD_LETTERING.contains(&headers::JOB_ID));
    }
}
