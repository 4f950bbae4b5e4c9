//! A job's AMQP properties as the worker reads them: its id, its deadline
//! and its replay count, checked before the body. Text properties and header
//! names that were not UTF-8 arrive with U+FFFD in place of their bytes (see
//! `vendor/README.md`): such a job is refused, naming the property, rather
//! than given an id that is not the producer's.

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

use crate::broker::{self, headers};

/// What the worker takes from a job's properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobProperties {
    pub message_id: Option<String>,
    pub deadline_ms: Option<u64>,
    /// Times an operator replayed it (`x-replays`); anything but a count is 0.
    pub replays: u32,
    /// Its latest-wins key (`x-coalesce-key`).
    pub coalesce_key: Option<String>,
    /// Where its receipt goes, and the id it is to carry.
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
}

/// The longest latest-wins key, in bytes.
pub const MAX_COALESCE_KEY_BYTES: usize = 255;

/// Reads the properties; `Err` is the `invalid-job` reason.
pub fn read(properties: &BasicProperties) -> Result<JobProperties, String> {
    check_text(properties)?;
    let deadline_ms = broker::header_time_ms(properties, headers::DEADLINE)?;
    let replays = broker::header_i64(properties, headers::REPLAYS)
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(0);
    let message_id = properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned());
    let coalesce_key = coalesce_key(properties, message_id.is_some())?;
    let text =
        |value: &Option<lapin::types::ShortString>| value.as_ref().map(|v| v.as_str().to_owned());
    Ok(JobProperties {
        message_id,
        deadline_ms,
        replays,
        coalesce_key,
        reply_to: text(properties.reply_to()),
        correlation_id: text(properties.correlation_id()),
    })
}

/// The latest-wins key: text of 1 to 255 bytes, on a job with a
/// `message_id` (what supersedes what is recorded by id, and a job without
/// one has no lasting id).
fn coalesce_key(properties: &BasicProperties, has_id: bool) -> Result<Option<String>, String> {
    let name = headers::COALESCE_KEY;
    let Some(value) = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
    else {
        return Ok(None);
    };
    let key = match value {
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        // Sized before it is copied: a producer's header can be as large as a frame.
        AMQPValue::LongString(s) if s.as_bytes().len() > MAX_COALESCE_KEY_BYTES => {
            return Err(format!(
                "{name} must be 1 to {MAX_COALESCE_KEY_BYTES} bytes, found {}",
                s.as_bytes().len()
            ))
        }
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .map_err(|_| format!("{name} must be UTF-8 text"))?
            .to_owned(),
        other => return Err(format!("{name} must be a string, found {}", kind(other))),
    };
    if key.is_empty() || key.len() > MAX_COALESCE_KEY_BYTES {
        return Err(format!(
            "{name} must be 1 to {MAX_COALESCE_KEY_BYTES} bytes, found {}",
            key.len()
        ));
    }
    if !has_id {
        return Err(format!(
            "{name} needs a message_id: which job superseded which is kept by id"
        ));
    }
    Ok(Some(key))
}

/// An AMQP value's kind, as an error names it.
fn kind(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "a boolean",
        AMQPValue::FieldTable(_) => "a table",
        AMQPValue::FieldArray(_) => "an array",
        AMQPValue::Void => "void",
        AMQPValue::ByteArray(_) => "bytes",
        _ => "a number",
    }
}

const NOT_TEXT: &str = "was not UTF-8 (its bytes arrive as U+FFFD): a job's properties and header names must be UTF-8 text";

/// Every short-string property, and every header name, is text.
fn check_text(properties: &BasicProperties) -> Result<(), String> {
    let named = [
        ("message_id", properties.message_id()),
        ("correlation_id", properties.correlation_id()),
        ("reply_to", properties.reply_to()),
        ("content_type", properties.content_type()),
        ("content_encoding", properties.content_encoding()),
        ("expiration", properties.expiration()),
        ("type", properties.kind()),
        ("user_id", properties.user_id()),
        ("app_id", properties.app_id()),
        ("cluster_id", properties.cluster_id()),
    ];
    for (name, value) in named {
        if value.as_ref().is_some_and(|v| is_lossy(v.as_str())) {
            return Err(format!("the property {name} {NOT_TEXT}"));
        }
    }
    match properties.headers() {
        Some(table) => check_table(table, "headers"),
        None => Ok(()),
    }
}

/// Names (and short-string values) within a table, nested tables included.
fn check_table(table: &FieldTable, within: &str) -> Result<(), String> {
    for (key, value) in table.inner() {
        if is_lossy(key.as_str()) {
            let shown = crate::text::quote_cut(key.as_str(), 64);
            return Err(format!(
                "the name of a header in {within}, {shown}, {NOT_TEXT}"
            ));
        }
        check_value(value, &format!("{within}.{key}"))?;
    }
    Ok(())
}

fn check_value(value: &AMQPValue, at: &str) -> Result<(), String> {
    match value {
        AMQPValue::ShortString(text) if is_lossy(text.as_str()) => {
            Err(format!("the header {at} {NOT_TEXT}"))
        }
        AMQPValue::FieldTable(table) => check_table(table, at),
        AMQPValue::FieldArray(array) => array
            .as_slice()
            .iter()
            .try_for_each(|item| check_value(item, at)),
        _ => Ok(()),
    }
}

fn is_lossy(text: &str) -> bool {
    text.contains(char::REPLACEMENT_CHARACTER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString, ShortString};

    fn with_header(name: &str, value: AMQPValue) -> BasicProperties {
        let mut table = FieldTable::default();
        table.insert(ShortString::from(name), value);
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn reads_the_id_the_deadline_and_the_replays() {
        let mut table = FieldTable::default();
        table.insert("x-deadline".into(), AMQPValue::Double(1_764_000_000_000.5));
        table.insert("x-replays".into(), AMQPValue::LongLongInt(2));
        let properties = BasicProperties::default()
            .with_message_id("job-1".into())
            .with_reply_to("replies".into())
            .with_correlation_id("c-1".into())
            .with_headers(table);
        assert_eq!(
            read(&properties),
            Ok(JobProperties {
                message_id: Some("job-1".into()),
                deadline_ms: Some(1_764_000_000_000),
                replays: 2,
                coalesce_key: None,
                reply_to: Some("replies".into()),
                correlation_id: Some("c-1".into()),
            })
        );
        assert_eq!(
            read(&BasicProperties::default()),
            Ok(JobProperties::default())
        );
    }

    #[test]
    fn a_coalesce_key_is_short_text_on_a_job_with_an_id() {
        let keyed = |value: AMQPValue, id: Option<&str>| {
            let mut properties = with_header("x-coalesce-key", value);
            if let Some(id) = id {
                properties = properties.with_message_id(id.into());
            }
            read(&properties).map(|p| p.coalesce_key)
        };
        let long = |t: &str| AMQPValue::LongString(LongString::from(t));
        assert_eq!(
            keyed(long("score:match-7"), Some("j1")),
            Ok(Some("score:match-7".into()))
        );
        assert_eq!(
            keyed(AMQPValue::ShortString("k".into()), Some("j1")),
            Ok(Some("k".into()))
        );
        assert_eq!(
            keyed(long(&"k".repeat(255)), Some("j1"))
                .unwrap()
                .unwrap()
                .len(),
            255
        );
        for (bad, says) in [
            (long(""), "1 to 255 bytes"),
            (long(&"k".repeat(256)), "1 to 255 bytes, found 256"),
            (
                AMQPValue::LongLongInt(7),
                "must be a string, found a number",
            ),
            (AMQPValue::LongString(LongString::from(vec![0xff])), "UTF-8"),
        ] {
            let refused = keyed(bad, Some("j1")).unwrap_err();
            assert!(
                refused.starts_with("x-coalesce-key") && refused.contains(says),
                "{refused}"
            );
        }
        let no_id = keyed(long("k"), None).unwrap_err();
        assert!(no_id.contains("needs a message_id"), "{no_id}");
    }

    #[test]
    fn a_deadline_is_a_number_a_decimal_string_or_a_timestamp() {
        let deadline =
            |value: AMQPValue| read(&with_header("x-deadline", value)).map(|p| p.deadline_ms);
        let ms = Some(1_764_000_000_000);
        assert_eq!(deadline(AMQPValue::LongLongInt(1_764_000_000_000)), Ok(ms));
        assert_eq!(deadline(AMQPValue::Double(1_764_000_000_000.9)), Ok(ms));
        assert_eq!(
            deadline(AMQPValue::Float(1.0e12)),
            Ok(Some(999_999_995_904))
        );
        let text = |t: &str| AMQPValue::LongString(LongString::from(t));
        assert_eq!(deadline(text("1764000000000.5")), Ok(ms));
        assert_eq!(deadline(text(" 1764000000000 ")), Ok(ms));
        assert_eq!(deadline(text("1.764e12")), Ok(ms));
        assert_eq!(deadline(AMQPValue::Timestamp(1_764_000_000)), Ok(ms));
        assert_eq!(
            deadline(AMQPValue::DecimalValue(lapin::types::DecimalValue {
                scale: 1,
                value: 1_000_000_005
            })),
            Ok(Some(100_000_000))
        );
        for bad in [
            text("tomorrow"),
            text(""),
            text("NaN"),
            text("-5"),
            AMQPValue::Double(f64::INFINITY),
            AMQPValue::Double(-1.0),
            AMQPValue::LongLongInt(-1),
            AMQPValue::Boolean(true),
            AMQPValue::Void,
        ] {
            let refused = deadline(bad.clone());
            assert!(
                refused.as_ref().is_err_and(|e| e.starts_with("x-deadline")),
                "{bad:?}: {refused:?}"
            );
        }
    }

    #[test]
    fn text_that_was_not_utf8_is_refused_naming_where() {
        let lossy = "\u{fffd}\u{fffd}odd";
        let id = BasicProperties::default().with_message_id(lossy.into());
        let refused = read(&id).unwrap_err();
        assert!(
            refused.starts_with("the property message_id was not UTF-8"),
            "{refused}"
        );
        let reply = BasicProperties::default().with_reply_to(lossy.into());
        assert!(read(&reply).unwrap_err().contains("reply_to"));
        let key = with_header(lossy, AMQPValue::Boolean(true));
        assert!(read(&key)
            .unwrap_err()
            .contains("the name of a header in headers"));
        let mut inner = FieldTable::default();
        inner.insert("k".into(), AMQPValue::ShortString(lossy.into()));
        let nested = with_header(
            "x-trace",
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(inner)])),
        );
        assert!(read(&nested).unwrap_err().contains("headers.x-trace.k"));
        // Long strings are bytes, kept as they came: not a reason to refuse.
        let bytes = with_header(
            "x-bytes",
            AMQPValue::LongString(LongString::from(vec![0xff, 0xfe])),
        );
        assert!(read(&bytes).is_ok());
    }
}
