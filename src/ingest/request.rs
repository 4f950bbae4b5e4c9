//! A posted job as the endpoint reads it: its body validated by the same
//! code as the worker's decoder, its headers (`Idempotency-Key`,
//! `X-Deadline`, `X-Coalesce-Key`, `X-Urgent`) turned into the message the
//! worker expects. Pure: no I/O.

use std::time::{Duration, SystemTime};

use lapin::BasicProperties;

use crate::clock;
use crate::ops::enqueue::{message_properties, new_job_id};
use crate::pipeline::job::{self, Rejection};
use crate::pipeline::{CallRules, MAX_COALESCE_KEY_BYTES};

use super::error::IngestError;

/// What a producer asks besides the body (a single POST's headers, or a
/// batch item's fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asked {
    pub idempotency_key: Option<String>,
    /// Unix milliseconds.
    pub deadline_ms: Option<u64>,
    pub coalesce_key: Option<String>,
    #[serde(default)]
    pub urgent: bool,
}

/// A job ready to publish: its id, its compact body, its properties, and
/// whether it goes to the urgent lane.
#[derive(Debug, Clone)]
pub struct Ready {
    pub id: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub urgent: bool,
    /// Whether the id is the producer's (an idempotency key).
    pub keyed: bool,
}

/// A job body and what was asked of it, checked as the worker will check
/// it; `Err` is the one mistake the producer gets back.
pub fn prepare(body: &[u8], asked: &Asked, rules: &CallRules) -> Result<Ready, IngestError> {
    let (id, keyed) = match &asked.idempotency_key {
        Some(key) => (checked_key(key)?, true),
        None => (new_job_id(), false),
    };
    let deadline = asked.deadline_ms;
    if deadline.is_some_and(|ms| ms > i64::MAX as u64) {
        return Err(IngestError::Invalid("X-Deadline is not a time".into()));
    }
    if let Some(key) = &asked.coalesce_key {
        if key.is_empty() || key.len() > MAX_COALESCE_KEY_BYTES {
            return Err(IngestError::Invalid(format!(
                "X-Coalesce-Key must be 1 to {MAX_COALESCE_KEY_BYTES} bytes, found {}",
                key.len()
            )));
        }
        if !keyed {
            return Err(IngestError::Invalid(
                "X-Coalesce-Key needs an Idempotency-Key: which job superseded which is kept by id"
                    .into(),
            ));
        }
    }
    let decoded = job::decode(body, Some(&id), deadline, rules, SystemTime::now());
    let job = decoded.map_err(|rejection| match rejection {
        Rejection::TooLarge { .. } => IngestError::TooLarge(rejection.to_string()),
        Rejection::InvalidJson(e) => IngestError::Invalid(format!("the body is not JSON: {e}")),
        Rejection::InvalidJob(e) => {
            IngestError::Invalid(format!("not a job the worker takes: {e}"))
        }
        Rejection::Expired { .. } => {
            IngestError::Invalid(format!("X-Deadline is already past: {rejection}"))
        }
    })?;
    // The id and the key were checked above.
    let properties = message_properties(&id, deadline, asked.coalesce_key.as_deref())
        .map_err(IngestError::Invalid)?;
    Ok(Ready {
        properties,
        body: job.body.into_vec(),
        id,
        urgent: asked.urgent,
        keyed,
    })
}

/// An idempotency key as a `message_id`: 1 to 255 bytes of text without
/// control characters.
fn checked_key(key: &str) -> Result<String, IngestError> {
    if key.is_empty() || key.len() > 255 || key.chars().any(char::is_control) {
        return Err(IngestError::Invalid(
            "Idempotency-Key must be 1 to 255 bytes of text without control characters".into(),
        ));
    }
    Ok(key.to_owned())
}

/// Reads `X-Deadline`: unix milliseconds (an integer), or a number of
/// seconds from now with an `s` suffix ("30s").
pub fn deadline_header(value: &str) -> Result<u64, IngestError> {
    let refused = || {
        IngestError::Invalid(format!(
            "X-Deadline must be unix milliseconds or seconds from now such as \"30s\", found {value:?}"
        ))
    };
    if let Some(secs) = value.strip_suffix('s') {
        let secs: f64 = secs.parse().map_err(|_| refused())?;
        let ahead = Duration::try_from_secs_f64(secs).map_err(|_| refused())?;
        let at = SystemTime::now().checked_add(ahead).ok_or_else(refused)?;
        if ahead.is_zero() {
            return Err(refused());
        }
        return Ok(clock::unix_ms(at));
    }
    value.parse::<u64>().map_err(|_| refused())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::AMQPValue;

    const JOB: &[u8] =
        br#"{"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}]}"#;

    #[test]
    fn a_good_job_becomes_the_message_the_worker_expects() {
        let asked = Asked {
            idempotency_key: Some("order-42".into()),
            deadline_ms: Some(4_000_000_000_000),
            coalesce_key: Some("score".into()),
            urgent: true,
        };
        let ready = prepare(JOB, &asked, &CallRules::default()).unwrap();
        assert_eq!(ready.id, "order-42");
        assert!(ready.urgent && ready.keyed);
        assert_eq!(
            ready.body,
            br#"{"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"hi"}}]}"#
        );
        let read = crate::pipeline::job::decode(
            &ready.body,
            Some("order-42"),
            None,
            &CallRules::default(),
            SystemTime::now(),
        );
        assert!(read.is_ok());
        let headers = ready.properties.headers().clone().unwrap();
        assert_eq!(
            headers.inner()["x-deadline"],
            AMQPValue::LongLongInt(4_000_000_000_000)
        );
        assert_eq!(
            headers.inner()["x-coalesce-key"],
            AMQPValue::LongString("score".into())
        );
        let random = prepare(JOB, &Asked::default(), &CallRules::default()).unwrap();
        assert_eq!(random.id.len(), 32, "a random id without a key");
        assert!(!random.keyed);
    }

    #[test]
    fn each_mistake_is_one_clear_refusal() {
        let rules = CallRules::default();
        let invalid = |body: &[u8], asked: Asked| match prepare(body, &asked, &rules) {
            Err(IngestError::Invalid(why)) => why,
            other => panic!("expected a 400, got {other:?}"),
        };
        assert!(invalid(b"not json", Asked::default()).contains("JSON"));
        let key = |k: &str| Asked {
            idempotency_key: Some(k.into()),
            ..Asked::default()
        };
        assert!(invalid(JOB, key("")).contains("Idempotency-Key"));
        assert!(invalid(JOB, key("a\u{0}b")).contains("control"));
        assert!(invalid(JOB, key(&"k".repeat(256))).contains("255"));
        let coalesce = Asked {
            coalesce_key: Some("score".into()),
            ..Asked::default()
        };
        assert!(invalid(JOB, coalesce).contains("needs an Idempotency-Key"));
        let past = Asked {
            deadline_ms: Some(1_000),
            ..Asked::default()
        };
        assert!(invalid(JOB, past).contains("already past"));
        let big = format!(
            r#"{{"MsgBody": [{{"MsgType": "TIMTextElem", "MsgContent": {{"Text": "{}"}}}}]}}"#,
            "x".repeat(13_000)
        );
        assert!(matches!(
            prepare(big.as_bytes(), &Asked::default(), &rules),
            Err(IngestError::TooLarge(_))
        ));
        assert!(deadline_header("soon").is_err());
        assert!(deadline_header("-5s").is_err());
        assert!(deadline_header("0s").is_err());
        assert!(deadline_header("1e300s").is_err(), "no overflow");
        assert!(deadline_header("NaNs").is_err());
        assert_eq!(deadline_header("1764000000000").unwrap(), 1_764_000_000_000);
        assert!(deadline_header("30s").unwrap() > clock::unix_ms(SystemTime::now()));
    }
}
