//! A job: one broadcast a producer asked for. Decoding turns the bytes and
//! properties of a queue message into a validated [`Job`], or into a
//! [`Rejection`] that says exactly why it can never be sent.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::broker::DeadReason;
use crate::tencent::body::{call_overhead, MergeKey};
use crate::tencent::elements::{
    check_one_custom, compact_json, is_custom, parse_body, BodyError, CUSTOM_FIELDS, KNOWN_FIELDS,
};
use crate::tencent::envelope::{self, EnvelopeItem, EnvelopeKey};

use super::config::{CallRules, CustomMerge};

/// A validated broadcast job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The AMQP `message_id`, or a digest of the body where the producer set none.
    pub id: String,
    pub key: MergeKey,
    /// The `MsgBody` elements exactly as the producer wrote them, less
    /// insignificant whitespace.
    pub elements: Vec<Box<RawValue>>,
    /// Its one `TIMCustomElem`, if any, and whether it joins an envelope.
    pub custom: Custom,
    /// The whole body, compacted: what a dead letter carries. A body padded
    /// with whitespace costs the worker its compact size.
    pub body: Box<[u8]>,
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

    /// The size of a call of this job alone.
    pub fn alone_bytes(&self) -> usize {
        let elements = match &self.custom {
            Custom::Envelope(item) => envelope::empty_bytes(&item.key) + item.escaped_bytes,
            Custom::None | Custom::Single => self.elements_bytes(),
        };
        call_overhead(&self.key) + elements
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.deadline.is_some_and(|deadline| now > deadline)
    }
}

/// A job's custom element, which a call may hold only one of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Custom {
    /// No `TIMCustomElem`.
    None,
    /// One, sent as written: it takes the call's custom element.
    Single,
    /// One, alone in its job, joining the call's envelope (envelope mode).
    Envelope(EnvelopeItem),
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
/// and headers; `rules` are what a call may hold.
pub fn decode(
    body: &[u8],
    message_id: Option<&str>,
    deadline_ms: Option<u64>,
    rules: &CallRules,
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
    check_one_custom(&parsed.msg_body).map_err(Rejection::InvalidJob)?;
    // parse_body accepted it, so it is UTF-8.
    let compact = compact_json(std::str::from_utf8(body).unwrap_or_default());
    let id = match message_id.filter(|id| !id.is_empty()) {
        Some(id) => id.to_string(),
        None => body_digest(body),
    };
    let job = Job {
        id,
        key: MergeKey {
            from_account: parsed.from_account,
            cloud_custom_data: parsed.cloud_custom_data,
        },
        elements: raw_elements(&compact)?,
        custom: custom_of(&parsed.msg_body, rules.custom_merge),
        body: compact.into_bytes().into_boxed_slice(),
        deadline: deadline_ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        replays: 0,
    };
    let bytes = job.alone_bytes();
    if bytes > rules.max_bytes {
        return Err(Rejection::TooLarge {
            bytes,
            max: rules.max_bytes,
        });
    }
    if let (true, Some(deadline_ms)) = (job.is_expired(now), deadline_ms) {
        return Err(Rejection::Expired { deadline_ms });
    }
    Ok(job)
}

/// The elements of a compacted body, each as written.
fn raw_elements(compact: &str) -> Result<Vec<Box<RawValue>>, Rejection> {
    #[derive(Deserialize)]
    struct Elements {
        #[serde(rename = "MsgBody")]
        msg_body: Vec<Box<RawValue>>,
    }
    serde_json::from_str::<Elements>(compact)
        .map(|e| e.msg_body)
        .map_err(|e| Rejection::InvalidJob(e.to_string()))
}

/// Which custom element the job holds. In envelope mode, a job made of one
/// custom element with no fields beyond `Data`, `Desc`, `Ext` and `Sound`
/// joins the call's envelope; any other custom element is sent as written.
fn custom_of(msg_body: &[Value], mode: CustomMerge) -> Custom {
    let Some(element) = msg_body.iter().find(|e| is_custom(e)) else {
        return Custom::None;
    };
    let content = &element["MsgContent"];
    let plain = content
        .as_object()
        .is_some_and(|c| c.keys().all(|k| CUSTOM_FIELDS.contains(&k.as_str())));
    if mode == CustomMerge::Separate || msg_body.len() != 1 || !plain {
        return Custom::Single;
    }
    let text = |name: &str| content.get(name).and_then(Value::as_str).map(str::to_owned);
    let key = EnvelopeKey {
        desc: text("Desc"),
        ext: text("Ext"),
        sound: text("Sound"),
    };
    Custom::Envelope(EnvelopeItem::new(key, &text("Data").unwrap_or_default()))
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
        decode(
            body.as_bytes(),
            None,
            None,
            &CallRules::default(),
            SystemTime::now(),
        )
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
            &CallRules::default(),
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
        assert!(decode(body, None, Some(10_001), &CallRules::default(), now).is_ok());
        assert_eq!(
            decode(body, None, Some(9_999), &CallRules::default(), now).unwrap_err(),
            Rejection::Expired { deadline_ms: 9_999 }
        );
    }

    #[test]
    fn elements_go_out_as_written() {
        // Keys out of the documented order, a 30-digit integer in a field the
        // rules do not name, escaped Unicode, and a Data holding JSON.
        let element = r#"{"MsgContent": {"Data": "{\"b\": 1, \"a\": 2}", "Big": 123456789012345678901234567890, "Desc": "caf\u00e9 \ud83d\ude00"}, "MsgType": "TIMCustomElem"}"#;
        let body = format!(r#"{{ "MsgBody" : [ {element} ] }}"#);
        let job = decode_now(&body).unwrap();
        assert_eq!(
            job.elements[0].get(),
            r#"{"MsgContent":{"Data":"{\"b\": 1, \"a\": 2}","Big":123456789012345678901234567890,"Desc":"caf\u00e9 \ud83d\ude00"},"MsgType":"TIMCustomElem"}"#
        );
        assert_eq!(
            std::str::from_utf8(&job.body).unwrap(),
            format!(r#"{{"MsgBody":[{}]}}"#, job.elements[0].get())
        );
    }

    #[test]
    fn a_padded_job_costs_its_compact_size() {
        let padding = " ".repeat(1 << 20);
        let body = format!(
            r#"{{{padding}"MsgBody":{padding}[{{"MsgType":"TIMTextElem",{padding}"MsgContent":{{"Text":"a"}}}}]{padding}}}"#
        );
        let job = decode_now(&body).unwrap();
        let held = job.body.len() + job.elements.iter().map(|e| e.get().len()).sum::<usize>();
        assert!(
            held < 200,
            "holds {held} bytes of a {} byte body",
            body.len()
        );
    }

    #[test]
    fn a_job_with_two_custom_elements_can_never_be_sent() {
        let custom = r#"{"MsgType":"TIMCustomElem","MsgContent":{"Data":"d"}}"#;
        let err = decode_now(&format!(r#"{{"MsgBody":[{custom},{custom}]}}"#)).unwrap_err();
        assert_eq!(err.reason(), DeadReason::InvalidJob);
        assert_eq!(
            err.to_string(),
            "invalid-job: MsgBody holds 2 TIMCustomElem elements; a message may hold only one"
        );
    }

    #[test]
    fn only_plain_lone_custom_elements_join_an_envelope() {
        let envelope = CallRules {
            custom_merge: CustomMerge::Envelope,
            ..CallRules::default()
        };
        let decode_in = |body: &str, rules: &CallRules| {
            decode(body.as_bytes(), None, None, rules, SystemTime::now()).unwrap()
        };
        let plain = r#"{"MsgBody":[{"MsgType":"TIMCustomElem","MsgContent":{"Data":"{\"n\":1}","Desc":"gift"}}]}"#;
        let Custom::Envelope(item) = decode_in(plain, &envelope).custom else {
            panic!("a plain custom job joins the envelope");
        };
        assert_eq!(item.item, r#"{"n":1}"#);
        assert_eq!(item.key.desc.as_deref(), Some("gift"));
        assert_eq!(
            decode_in(plain, &CallRules::default()).custom,
            Custom::Single
        );
        let mixed = r#"{"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"t"}},{"MsgType":"TIMCustomElem","MsgContent":{"Data":"d"}}]}"#;
        assert_eq!(decode_in(mixed, &envelope).custom, Custom::Single);
        let extra =
            r#"{"MsgBody":[{"MsgType":"TIMCustomElem","MsgContent":{"Data":"d","Other":1}}]}"#;
        assert_eq!(decode_in(extra, &envelope).custom, Custom::Single);
        let text = r#"{"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"t"}}]}"#;
        assert_eq!(decode_in(text, &envelope).custom, Custom::None);
    }
}
