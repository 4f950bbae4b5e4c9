//! The custom envelope: many jobs' custom payloads carried in the one
//! `TIMCustomElem` a message may hold. Its `Data` is the JSON text of an
//! object with a single key, `batch`: an array of the payloads in order. A
//! payload that is itself a JSON object or array goes in as that JSON (as
//! written, whitespace aside); any other payload goes in as a JSON string.
//! `Desc`, `Ext` and `Sound`, the same for every payload, are carried once.
//!
//! A client decodes `JSON.parse(Data).batch`; nothing is escaped twice.

use serde::Serialize;
use serde_json::value::RawValue;

use super::elements::compact_json;

/// What every payload of one envelope shares.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct EnvelopeKey {
    pub desc: Option<String>,
    pub ext: Option<String>,
    pub sound: Option<String>,
}

/// One payload, ready to join an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeItem {
    pub key: EnvelopeKey,
    /// The payload's JSON text inside the `batch` array.
    pub item: String,
    /// Bytes `item` takes inside the `Data` string once escaped.
    pub escaped_bytes: usize,
}

impl EnvelopeItem {
    /// The payload of a custom element's `Data`.
    pub fn new(key: EnvelopeKey, data: &str) -> Self {
        let item = item_of(data);
        let escaped_bytes = escaped_len(&item);
        Self {
            key,
            item,
            escaped_bytes,
        }
    }
}

/// A payload as it stands in the `batch` array: JSON objects and arrays as
/// themselves, anything else as a string.
pub fn item_of(data: &str) -> String {
    let trimmed = data.trim();
    let is_container = trimmed.starts_with('{') || trimmed.starts_with('[');
    if is_container && serde_json::from_str::<&RawValue>(trimmed).is_ok() {
        compact_json(trimmed)
    } else {
        serde_json::to_string(data).expect("a string serializes")
    }
}

/// The bytes `text` takes inside a JSON string, quotes excluded. Escaping is
/// per character, so the escaped length of a concatenation is the sum of
/// its parts': an envelope's size grows by exactly each item's.
pub fn escaped_len(text: &str) -> usize {
    serde_json::to_string(text)
        .expect("a string serializes")
        .len()
        - 2
}

#[derive(Serialize)]
struct Element<'a> {
    #[serde(rename = "MsgType")]
    msg_type: &'static str,
    #[serde(rename = "MsgContent")]
    msg_content: Content<'a>,
}

#[derive(Serialize)]
struct Content<'a> {
    #[serde(rename = "Data")]
    data: &'a str,
    #[serde(rename = "Desc", skip_serializing_if = "Option::is_none")]
    desc: Option<&'a str>,
    #[serde(rename = "Ext", skip_serializing_if = "Option::is_none")]
    ext: Option<&'a str>,
    #[serde(rename = "Sound", skip_serializing_if = "Option::is_none")]
    sound: Option<&'a str>,
}

fn serialize(key: &EnvelopeKey, data: &str) -> String {
    let element = Element {
        msg_type: "TIMCustomElem",
        msg_content: Content {
            data,
            desc: key.desc.as_deref(),
            ext: key.ext.as_deref(),
            sound: key.sound.as_deref(),
        },
    };
    serde_json::to_string(&element).expect("an envelope serializes")
}

/// The bytes of an envelope element with no item yet: each item then adds
/// its escaped bytes, and a comma after the first.
pub fn empty_bytes(key: &EnvelopeKey) -> usize {
    serialize(key, r#"{"batch":[]}"#).len()
}

/// The envelope element carrying `items`, in order.
pub fn element<'a>(key: &EnvelopeKey, items: impl Iterator<Item = &'a str>) -> Box<RawValue> {
    let mut data = String::from(r#"{"batch":["#);
    for (i, item) in items.enumerate() {
        if i > 0 {
            data.push(',');
        }
        data.push_str(item);
    }
    data.push_str("]}");
    RawValue::from_string(serialize(key, &data)).expect("an envelope is JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn items_keep_json_as_json_and_the_rest_as_strings() {
        assert_eq!(
            item_of(r#" {"b": 1, "a": [1, 2]} "#),
            r#"{"b":1,"a":[1,2]}"#
        );
        assert_eq!(item_of("[1, 2]"), "[1,2]");
        assert_eq!(item_of("hello"), r#""hello""#);
        assert_eq!(item_of("42"), r#""42""#, "scalars stay strings");
        assert_eq!(item_of("{not json"), r#""{not json""#);
        assert_eq!(
            item_of(r#"{"n": 123456789012345678901234567890}"#),
            r#"{"n":123456789012345678901234567890}"#,
            "big integers as written"
        );
    }

    #[test]
    fn the_size_is_exact_and_the_payloads_decode_back() {
        let key = EnvelopeKey {
            desc: Some("gift".into()),
            ext: None,
            sound: Some("ding".into()),
        };
        let datas = [
            r#"{"gift":"rose","n":3,"note":"\"quoted\" \\ é 😀"}"#,
            "plain text\nwith a newline",
            r#"[1,{"x":null}]"#,
        ];
        let items: Vec<EnvelopeItem> = datas
            .iter()
            .map(|d| EnvelopeItem::new(key.clone(), d))
            .collect();
        let built = element(&key, items.iter().map(|i| i.item.as_str()));
        let predicted = empty_bytes(&key)
            + items.iter().map(|i| i.escaped_bytes).sum::<usize>()
            + (items.len() - 1);
        assert_eq!(built.get().len(), predicted);
        let parsed: Value = serde_json::from_str(built.get()).unwrap();
        assert_eq!(parsed["MsgType"], "TIMCustomElem");
        assert_eq!(parsed["MsgContent"]["Desc"], "gift");
        assert_eq!(parsed["MsgContent"]["Sound"], "ding");
        assert!(parsed["MsgContent"].get("Ext").is_none());
        let data: Value =
            serde_json::from_str(parsed["MsgContent"]["Data"].as_str().unwrap()).unwrap();
        assert_eq!(
            data["batch"],
            json!([
                {"gift":"rose","n":3,"note":"\"quoted\" \\ é 😀"},
                "plain text\nwith a newline",
                [1, {"x": null}]
            ])
        );
    }
}
