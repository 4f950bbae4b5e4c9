//! A whole dead letter as JSON, as `dlq show` prints it and the console
//! shows it: why it died, its body (as JSON when it is JSON), its
//! properties and every header, each AMQP value as its JSON counterpart.

use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;

use super::DeadJob;

impl DeadJob {
    /// The whole dead letter, for `dlq show`: why it died, its body (as JSON
    /// when it is JSON), its properties and every header.
    pub fn report(&self) -> Value {
        let body = serde_json::from_slice::<Value>(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()));
        let p = &self.properties;
        let headers = p
            .headers()
            .as_ref()
            .map_or_else(|| serde_json::json!({}), table_to_json);
        serde_json::json!({
            "id": self.id,
            "why": self.info,
            "body": body,
            "properties": {
                "message_id": p.message_id().as_ref().map(|s| s.to_string()),
                "content_type": p.content_type().as_ref().map(|s| s.to_string()),
                "timestamp": p.timestamp(),
                "expiration": p.expiration().as_ref().map(|s| s.to_string()),
                "delivery_mode": p.delivery_mode(),
                "headers": headers,
            },
        })
    }
}

/// An AMQP header value as JSON.
fn amqp_to_json(value: &AMQPValue) -> Value {
    use AMQPValue as V;
    match value {
        V::Boolean(b) => (*b).into(),
        V::ShortShortInt(v) => (*v).into(),
        V::ShortShortUInt(v) => (*v).into(),
        V::ShortInt(v) => (*v).into(),
        V::ShortUInt(v) => (*v).into(),
        V::LongInt(v) => (*v).into(),
        V::LongUInt(v) => (*v).into(),
        V::LongLongInt(v) => (*v).into(),
        V::Float(v) => (*v).into(),
        V::Double(v) => (*v).into(),
        V::Timestamp(v) => (*v).into(),
        V::ShortString(s) => s.as_str().into(),
        V::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned().into(),
        V::FieldArray(items) => items.as_slice().iter().map(amqp_to_json).collect(),
        V::FieldTable(table) => table_to_json(table),
        V::Void => Value::Null,
        other => format!("{other:?}").into(),
    }
}

fn table_to_json(table: &FieldTable) -> Value {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.to_string(), amqp_to_json(v)))
        .collect()
}
