//! A job: one broadcast a producer asked for. Decoding turns the bytes and
//! properties of a queue message into a validated [`Job`], or into a
//! [`Rejection`] that says exactly why it can never be sent.
//!
//! A job's id is its AMQP `message_id`. A message without one is a broadcast
//! of its own at each fresh publish: it gets an id of its own arrival, its
//! body's digest and something unique, and keeps the digest by which a
//! redelivered copy finds the arrival it repeats (see [`Job::copy_digest`]).

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
use crate::text::quote_cut;

use super::config::{CallRules, CustomMerge};

/// A validated broadcast job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The AMQP `message_id`, or where the producer set none, the body's
    /// digest and a suffix unique to this arrival.
    pub id: String,
    /// Without `message_id`: the body's digest ([`body_digest`]).
    pub digest: Option<String>,
    /// The broker delivered this message before (to a worker that died or
    /// lost its connection).
    pub redelivered: bool,
    /// Recording its call found it taken: the ledger knows it after all
    /// (a producer's second publish, a replay run twice), so it is looked
    /// up though its delivery was fresh.
    pub recheck: bool,
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
    /// Its latest-wins key (`x-coalesce-key`): a later job of the same key
    /// takes its place while it waits.
    pub coalesce: Option<String>,
    /// It came from the app's urgent lane: sent before any ordinary job.
    pub urgent: bool,
    /// Where its receipt goes (`reply_to`), if its producer asked for one.
    pub reply: Option<super::receipt::ReplyTo>,
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

    /// For a redelivered job without `message_id`: the digest by which the
    /// ledger finds the arrival it repeats, whose id it then takes. A fresh
    /// publish of the same body is a new broadcast and needs no look-up.
    pub fn copy_digest(&self) -> Option<&str> {
        self.digest.as_deref().filter(|_| self.redelivered)
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

/// The longest job id, in bytes: what an AMQP short string can hold.
pub const MAX_ID_BYTES: usize = 255;

/// Decodes a message. `message_id` and `deadline_ms` come from its properties
/// and headers; `rules` are what a call may hold.
pub fn decode(
    body: &[u8],
    message_id: Option<&str>,
    deadline_ms: Option<u64>,
    rules: &CallRules,
    now: SystemTime,
) -> Result<Job, Rejection> {
    if let Some(id) = message_id {
        check_message_id(id).map_err(Rejection::InvalidJob)?;
    }
    let parsed = parse_body(body).map_err(|e| match e {
        BodyError::NotJson(e) => Rejection::InvalidJson(e),
        BodyError::Invalid(e) => Rejection::InvalidJob(e),
    })?;
    if let Some(field) = parsed.unknown_fields.first() {
        return Err(Rejection::InvalidJob(format!(
            "unknown field {} (a job has only {})",
            quote_cut(field, 64),
            KNOWN_FIELDS.join(", ")
        )));
    }
    check_one_custom(&parsed.msg_body).map_err(Rejection::InvalidJob)?;
    // parse_body accepted it, so it is UTF-8.
    let compact = compact_json(std::str::from_utf8(body).unwrap_or_default());
    let (id, digest) = match message_id {
        Some(id) => (id.to_string(), None),
        None => {
            let digest = body_digest(body);
            (arrival_id(&digest), Some(digest))
        }
    };
    let job = Job {
        id,
        digest,
        redelivered: false,
        recheck: false,
        key: MergeKey {
            from_account: parsed.from_account,
            cloud_custom_data: parsed.cloud_custom_data,
        },
        elements: raw_elements(&compact)?,
        custom: custom_of(&parsed.msg_body, rules.custom_merge),
        body: compact.into_bytes().into_boxed_slice(),
        deadline: deadline_ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        replays: 0,
        coalesce: None,
        urgent: false,
        reply: None,
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

/// A job id is text the ledger can hold and an operator can type: 1 to 255
/// bytes, no control characters (PostgreSQL refuses NUL in text, and one
/// such id must not stop the worker). Checked before any SQL.
pub fn check_message_id(id: &str) -> Result<(), String> {
    const RULE: &str = "a job id must be 1 to 255 bytes of text without control characters";
    if id.is_empty() {
        return Err(format!("message_id is empty: {RULE}"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!("message_id is {} bytes long: {RULE}", id.len()));
    }
    if let Some((at, c)) = id.char_indices().find(|(_, c)| c.is_control()) {
        return Err(format!(
            "message_id {id:?} holds the control character U+{:04X} at byte {at}: {RULE}",
            u32::from(c)
        ));
    }
    Ok(())
}

/// The digest of a body, `sha256:` and 32 hex digits: what identified a job
/// without `message_id` before arrivals had ids of their own, and still
/// finds them.
pub fn body_digest(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The id of one arrival of a job without `message_id`: its digest and 64
/// random bits. Its call's `Random` derives from it, so a fresh publish of a
/// body sent within the repeat window is not taken for a repeat.
pub fn arrival_id(digest: &str) -> String {
    format!("{digest}~{:016x}", rand::random::<u64>())
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
    fn ids_come_from_message_id_or_each_arrival_of_the_body() {
        let body = r#"{"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"a"}}]}"#;
        let with_id = decode(
            body.as_bytes(),
            Some("job-1"),
            None,
            &CallRules::default(),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!((with_id.id.as_str(), with_id.digest), ("job-1", None));
        // Two publishes of one body are two broadcasts, with one digest.
        let a = decode_now(body).unwrap();
        let b = decode_now(body).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(a.digest, b.digest);
        let digest = a.digest.clone().unwrap();
        assert!(digest.starts_with("sha256:") && a.id.starts_with(&format!("{digest}~")));
        assert_eq!(digest, body_digest(body.as_bytes()));
        assert_eq!(
            a.copy_digest(),
            None,
            "a fresh arrival is looked up by nothing"
        );
        let copy = Job {
            redelivered: true,
            ..a
        };
        assert_eq!(copy.copy_digest(), Some(digest.as_str()));
        let other = decode_now(
            r#"{"Random":5,"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"a"}}]}"#,
        )
        .unwrap();
        assert_ne!(b.digest, other.digest, "Random takes part in the digest");
    }

    #[test]
    fn unusable_message_ids_are_refused_before_any_sql() {
        let body = br#"{"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"a"}}]}"#;
        let decode_id = |id: &str| {
            decode(
                body,
                Some(id),
                None,
                &CallRules::default(),
                SystemTime::now(),
            )
            .map(|job| job.id)
            .map_err(|e| e.to_string())
        };
        assert_eq!(decode_id("m-1").unwrap(), "m-1");
        assert_eq!(decode_id(&"x".repeat(255)).unwrap().len(), 255);
        assert_eq!(
            decode_id("bad\0id").unwrap_err(),
            "invalid-job: message_id \"bad\\0id\" holds the control character U+0000 at byte 3: \
             a job id must be 1 to 255 bytes of text without control characters"
        );
        for bad in ["", "tab\there", "line\n", "del\u{7f}", "c1\u{85}"] {
            let err = decode_id(bad).unwrap_err();
            assert!(err.starts_with("invalid-job: message_id"), "{bad:?}: {err}");
        }
        assert!(decode_id(&"x".repeat(256))
            .unwrap_err()
            .contains("message_id is 256 bytes long"));
        // Text beyond ASCII is fine.
        assert!(decode_id("café-😀").is_ok());
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
