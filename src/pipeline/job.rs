//! A job: one broadcast a producer asked for. Decoding turns the bytes and
//! properties of a queue message into a validated [`Job`], or into a
//! [`Rejection`] that says exactly why it can never be sent.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::broker::DeadReason;
use crate::tencent::body::{call_overhead, MergeKey};
use crate::tencent::elements::{parse_body, BodyError, KNOWN_FIELDS};

/// A validated broadcast job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The AMQP `message_id`, or a digest of the body where the producer set none.
    pub id: String,
    pub key: MergeKey,
    /// The `MsgBody` elements as the producer wrote them (compact JSON).
    pub elements: Vec<Box<RawValue>>,
    /// After this, the job is dead-lettered as expired instead of sent late.
    pub deadline: Option<SystemTime>,
    /// Times an operator replayed it from the dead-letter queue (`x-replays`).
    pub replays: u32,
}

impl Job {
    /// Bytes the elements add to a call body, commas between them included
    /// (plus one comma before them unless they open the array).
    pub fn elements_bytes(&self) -> usize {
        self.elements.iter().map(|e| e.get().len()).sum::<usize>() + self.elements.len() - 1
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.deadline.is_some_and(|deadline| now > deadline)
    }
}

/// Why a message can never become a call. The reason names go into the
/// dead letter's `x-reason` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    InvalidJson(String),
    InvalidJob(String),
    TooLarge { bytes: usize, max: usize },
    Expired { deadline_ms: u64 },
}

impl Rejection {
    /// The `x-reason` value.
    pub fn reason(&self) -> DeadReason {
        match self {
            Rejection::InvalidJson(_) => DeadReason::InvalidJson,
            Rejection::InvalidJob(_) => DeadReason::InvalidJob,
            Rejection::TooLarge { .. } => DeadReason::TooLarge,
            Rejection::Expired { .. } => DeadReason::Expired,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::InvalidJson(e) => write!(f, "invalid-json: {e}"),
            Rejection::InvalidJob(e) => write!(f, "invalid-job: {e}"),
            Rejection::TooLarge { bytes, max } => {
                write!(
                    f,
                    "too-large: a call with this job alone is {bytes} bytes, over {max}"
                )
            }
            Rejection::Expired { deadline_ms } => {
                write!(
                    f,
                    "expired: deadline {deadline_ms} (unix ms) passed before sending"
                )
            }
        }
    }
}

/// Decodes a message. `message_id` and `deadline_ms` come from its properties
/// and headers; `max_call_bytes` is the cap a call must fit.
pub fn decode(
    body: &[u8],
    message_id: Option<&str>,
    deadline_ms: Option<u64>,
    max_call_bytes: usize,
    now: SystemTime,
) -> Result<Job, Rejection> {
    let parsed = parse_body(body).map_err(|e| match e {
        BodyError::NotJson(e) => Rejection::InvalidJson(e),
        BodyError::Invalid(e) => Rejection::InvalidJob(e),
    })?;
    if let Some(field) = parsed.unknown_fields.first() {
        return Err(Rejection::InvalidJob(format!(
            "unknown field {field:?} (a job has only {})",
            KNOWN_FIELDS.join(", ")
        )));
    }
    let id = match message_id.filter(|id| !id.is_empty()) {
        Some(id) => id.to_string(),
        None => body_digest(body),
    };
    let elements = parsed
        .msg_body
        .iter()
        .map(|element| {
            RawValue::from_string(element.to_string()).expect("a serialized Value is valid JSON")
        })
        .collect();
    let job = Job {
        id,
        key: MergeKey {
            from_account: parsed.from_account,
            cloud_custom_data: parsed.cloud_custom_data,
        },
        elements,
        deadline: deadline_ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        replays: 0,
    };
    let bytes = call_overhead(&job.key) + job.elements_bytes();
    if bytes > max_call_bytes {
        return Err(Rejection::TooLarge {
            bytes,
            max: max_call_bytes,
        });
    }
    if let (true, Some(deadline_ms)) = (job.is_expired(now), deadline_ms) {
        return Err(Rejection::Expired { deadline_ms });
    }
    Ok(job)
}

/// The id of a job whose producer set no `message_id`: the same body is the
/// same job.
pub fn body_digest(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_now(body: &str) -> Result<Job, Rejection> {
        decode(body.as_bytes(), None, None, 12_000, SystemTime::now())
    }

    #[test]
    fn reasons_are_exact() {
        assert_eq!(
            decode_now("not json").unwrap_err().reason(),
            DeadReason::InvalidJson
        );
        let err = decode_now(
            r#"{"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"a"}}],"Extra":1}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid-job: unknown field \"Extra\" (a job has only From_Account, Random, MsgBody, CloudCustomData)"
        );
        let big = format!(
            r#"{{"MsgBody":[{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"{}"}}}}]}}"#,
            "x".repeat(12_000)
        );
        assert!(matches!(decode_now(&big), Err(Rejection::TooLarge { .. })));
    }

    #[test]
    fn ids_come_from_message_id_or_the_body() {
        let body = r#"{"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"a"}}]}"#;
        let with_id = decode(
            body.as_bytes(),
            Some("job-1"),
            None,
            12_000,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(with_id.id, "job-1");
        let a = decode_now(body).unwrap();
        let b = decode_now(body).unwrap();
        assert_eq!(a.id, b.id);
        assert!(a.id.starts_with("sha256:"));
        let other = decode_now(
            r#"{"Random":5,"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"a"}}]}"#,
        )
        .unwrap();
        assert_ne!(a.id, other.id, "Random takes part in the identity");
    }

    #[test]
    fn deadlines_expire() {
        let body = br#"{"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"a"}}]}"#;
        let now = UNIX_EPOCH + Duration::from_millis(10_000);
        assert!(decode(body, None, Some(10_001), 12_000, now).is_ok());
        assert_eq!(
            decode(body, None, Some(9_999), 12_000, now).unwrap_err(),
            Rejection::Expired { deadline_ms: 9_999 }
        );
    }
}
