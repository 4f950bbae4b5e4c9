//! Dead letters: the headers the project reads and writes on jobs and dead
//! letters, why a job was dead-lettered, and the properties a dead letter is
//! published with.

use std::time::SystemTime;

use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::BasicProperties;

use super::unix_ms;

/// The headers the project reads and writes on jobs and dead letters.
pub mod headers {
    /// A job's deadline, unix milliseconds: after it, dead-lettered as expired.
    pub const DEADLINE: &str = "x-deadline";
    /// How often an operator replayed the job from the dead-letter queue.
    pub const REPLAYS: &str = "x-replays";
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
    pub error_info: String,
    /// Calls attempted with this job in them.
    pub attempts: u32,
    /// Unix milliseconds when this worker first received the job.
    pub first_seen_ms: u64,
}

impl DeadLetter {
    /// The original properties plus the headers that say why, less the AMQP
    /// `expiration`: a dead letter stays until an operator acts, so the job's
    /// expiration is only recorded, in `x-original-expiration`.
    pub fn properties(&self, original: &BasicProperties) -> BasicProperties {
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
            AMQPValue::LongString(LongString::from(self.error_info.as_str())),
        );
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
            AMQPValue::LongLongInt(i64::try_from(unix_ms(SystemTime::now())).unwrap_or(i64::MAX)),
        );
        without_expiration(original).with_headers(table)
    }
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
    use crate::broker::{header_i64, header_str};
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
        }
    }

    #[test]
    fn a_dead_letter_keeps_every_property_but_its_expiration() {
        let original = every_property();
        let dead = dead_letter().properties(&original);
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
        let dead = dead_letter().properties(&BasicProperties::default());
        assert_eq!(header_str(&dead, headers::ORIGINAL_EXPIRATION), None);
        assert!(headers::ADDED_BY_DEAD_LETTERING.contains(&headers::ORIGINAL_EXPIRATION));
    }
}
