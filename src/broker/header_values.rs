//! Reading a header's value however the producer typed it: integers of any
//! width, floats, decimals, numeric strings and AMQP timestamps (times in
//! unix milliseconds), and text.

use lapin::types::AMQPValue;
use lapin::BasicProperties;

/// Reads an integer header however the producer typed it. Every time header
/// here is in unix milliseconds, so an AMQP timestamp (seconds) is scaled
/// (for a producer's deadline, see [`header_time_ms`]).
pub fn header_i64(properties: &BasicProperties, name: &str) -> Option<i64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok().map(|s| s * 1000),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).trim().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

/// Reads a time header in unix milliseconds, however the producer typed
/// it: an integer, a float (`time.time() * 1000`), a decimal, a numeric
/// string, or an AMQP timestamp (seconds). A fraction of a millisecond is
/// dropped. `Err` says why a value is not a time; a missing header is `None`.
pub fn header_time_ms(properties: &BasicProperties, name: &str) -> Result<Option<u64>, String> {
    let Some(value) = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
    else {
        return Ok(None);
    };
    let number = match value {
        AMQPValue::ShortShortInt(v) => f64::from(*v),
        AMQPValue::ShortShortUInt(v) => f64::from(*v),
        AMQPValue::ShortInt(v) => f64::from(*v),
        AMQPValue::ShortUInt(v) => f64::from(*v),
        AMQPValue::LongInt(v) => f64::from(*v),
        AMQPValue::LongUInt(v) => f64::from(*v),
        AMQPValue::LongLongInt(v) => return exact_ms(name, *v).map(Some),
        AMQPValue::Float(v) => f64::from(*v),
        AMQPValue::Double(v) => *v,
        AMQPValue::DecimalValue(d) => f64::from(d.value) / 10f64.powi(i32::from(d.scale)),
        AMQPValue::Timestamp(seconds) => {
            return seconds.checked_mul(1000).map(Some).ok_or_else(|| {
                format!("{name} is the AMQP timestamp {seconds}, too far in the future")
            })
        }
        AMQPValue::LongString(text) => {
            return text_ms(name, &String::from_utf8_lossy(text.as_bytes())).map(Some)
        }
        AMQPValue::ShortString(text) => return text_ms(name, text.as_str()).map(Some),
        other => {
            return Err(format!(
            "{name} is a {}, not a time: give unix milliseconds as a number or a numeric string",
            other.get_type()
        ))
        }
    };
    float_ms(name, number).map(Some)
}

/// An integer header as unix milliseconds.
fn exact_ms(name: &str, ms: i64) -> Result<u64, String> {
    u64::try_from(ms).map_err(|_| format!("{name} {ms} is before 1970: not a time"))
}

/// A numeric string as unix milliseconds: an integer exactly, else a float.
fn text_ms(name: &str, text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return exact_ms(name, ms);
    }
    match text.parse::<f64>() {
        Ok(number) if !text.is_empty() => float_ms(name, number),
        _ => Err(format!(
            "{name} {} is not a number: give unix milliseconds as a number or a numeric string",
            crate::text::quote_cut(text, 64)
        )),
    }
}

/// A float as unix milliseconds, its fraction dropped.
fn float_ms(name: &str, number: f64) -> Result<u64, String> {
    // 2^53: every integer below is exact in a float; unix milliseconds
    // reach it in the year 287,396.
    if number.is_finite() && (0.0..9_007_199_254_740_992.0).contains(&number) {
        Ok(number.floor() as u64)
    } else {
        Err(format!(
            "{name} {number} is not a time in unix milliseconds"
        ))
    }
}

/// Reads a string header.
pub fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}
