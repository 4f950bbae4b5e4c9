//! The rules of a body's fields and message elements, as the documentation
//! gives them. Shared by job decoding (what the worker accepts) and the
//! simulator (what the service accepts), so both read the documentation the
//! same way. Elements are checked against a table of required fields per
//! `MsgType`; fields a table does not name inside `MsgContent` are kept.

use serde_json::{Map, Value};

use crate::text::quote_cut;

/// The top-level fields of a body, checked but not yet trusted.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedBody {
    pub from_account: Option<String>,
    pub random: Option<u32>,
    pub msg_body: Vec<Value>,
    pub cloud_custom_data: Option<String>,
    /// Top-level fields the API does not define, by name.
    pub unknown_fields: Vec<String>,
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("{0}")]
    Invalid(String),
}

/// The top-level field names the API defines.
pub const KNOWN_FIELDS: [&str; 4] = ["From_Account", "Random", "MsgBody", "CloudCustomData"];

/// Parses a body and checks every field and element against the documentation.
/// Unknown top-level fields are reported, not rejected: the caller decides.
pub fn parse_body(bytes: &[u8]) -> Result<ParsedBody, BodyError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| BodyError::NotJson(e.to_string()))?;
    let Value::Object(mut top) = value else {
        return Err(BodyError::Invalid(format!(
            "body must be a JSON object, found {}",
            kind_of(&value)
        )));
    };
    let invalid = BodyError::Invalid;
    let from_account = match top.remove("From_Account") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => {
            return Err(invalid("From_Account must not be empty".into()))
        }
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            return Err(invalid(format!(
                "From_Account must be a string, found {}",
                kind_of(&other)
            )))
        }
    };
    let random = match top.remove("Random") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(r) => Some(r),
            None => {
                return Err(invalid(format!(
                    "Random must be an integer from 0 to 4294967295, found {n}"
                )))
            }
        },
        Some(other) => {
            return Err(invalid(format!(
                "Random must be an integer, found {}",
                kind_of(&other)
            )))
        }
    };
    let msg_body = match top.remove("MsgBody") {
        None | Some(Value::Null) => return Err(invalid("MsgBody is missing".into())),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(invalid("MsgBody is empty".into()))
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(invalid(format!(
                "MsgBody must be an array, found {}",
                kind_of(&other)
            )))
        }
    };
    for (i, element) in msg_body.iter().enumerate() {
        check_element(element).map_err(|e| invalid(format!("MsgBody[{i}].{e}")))?;
    }
    let cloud_custom_data = match top.remove("CloudCustomData") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            return Err(invalid(format!(
                "CloudCustomData must be a string, found {}",
                kind_of(&other)
            )))
        }
    };
    Ok(ParsedBody {
        from_account,
        random,
        msg_body,
        cloud_custom_data,
        unknown_fields: top.keys().cloned().collect(),
    })
}

/// What a `MsgContent` field must hold.
#[derive(Clone, Copy)]
enum FieldKind {
    String,
    Number,
    /// `ImageInfoArray`: objects of `Type`, `Size`, `Width`, `Height`, `URL`.
    ImageInfoArray,
}

use FieldKind::{ImageInfoArray, Number, String as Str};

/// Per `MsgType`: its required fields and its optional ones.
type ElementSpec = (
    &'static str,
    &'static [(&'static str, FieldKind)],
    &'static [(&'static str, FieldKind)],
);

const ELEMENT_SPECS: &[ElementSpec] = &[
    ("TIMTextElem", &[("Text", Str)], &[]),
    (
        "TIMCustomElem",
        &[("Data", Str)],
        &[("Desc", Str), ("Ext", Str), ("Sound", Str)],
    ),
    ("TIMFaceElem", &[("Index", Number), ("Data", Str)], &[]),
    (
        "TIMLocationElem",
        &[("Desc", Str), ("Latitude", Number), ("Longitude", Number)],
        &[],
    ),
    (
        "TIMImageElem",
        &[
            ("UUID", Str),
            ("ImageFormat", Number),
            ("ImageInfoArray", ImageInfoArray),
        ],
        &[],
    ),
    (
        "TIMSoundElem",
        &[
            ("Url", Str),
            ("UUID", Str),
            ("Size", Number),
            ("Second", Number),
            ("Download_Flag", Number),
        ],
        &[],
    ),
    (
        "TIMFileElem",
        &[
            ("Url", Str),
            ("UUID", Str),
            ("FileSize", Number),
            ("FileName", Str),
            ("Download_Flag", Number),
        ],
        &[],
    ),
    (
        "TIMVideoFileElem",
        &[
            ("VideoUrl", Str),
            ("VideoUUID", Str),
            ("VideoSize", Number),
            ("VideoSecond", Number),
            ("VideoFormat", Str),
            ("VideoDownloadFlag", Number),
            ("ThumbUrl", Str),
            ("ThumbUUID", Str),
            ("ThumbSize", Number),
            ("ThumbWidth", Number),
            ("ThumbHeight", Number),
            ("ThumbFormat", Str),
            ("ThumbDownloadFlag", Number),
        ],
        &[],
    ),
];

/// Checks one `MsgBody` element. The error names the offending path relative to
/// the element, e.g. `MsgContent.Text missing`.
pub fn check_element(element: &Value) -> Result<(), String> {
    let Value::Object(fields) = element else {
        return Err(format!(
            "element must be an object, found {}",
            kind_of(element)
        ));
    };
    if let Some(extra) = fields
        .keys()
        .find(|k| *k != "MsgType" && *k != "MsgContent")
    {
        return Err(format!(
            "{} is not a field of a message element",
            quote_cut(extra, 64)
        ));
    }
    let msg_type = match fields.get("MsgType") {
        None => return Err("MsgType missing".into()),
        Some(Value::String(t)) => t.as_str(),
        Some(other) => {
            return Err(format!(
                "MsgType must be a string, found {}",
                kind_of(other)
            ))
        }
    };
    let Some((_, required, optional)) = ELEMENT_SPECS.iter().find(|(name, _, _)| *name == msg_type)
    else {
        return Err(format!("MsgType unknown: {}", quote_cut(msg_type, 64)));
    };
    let content = match fields.get("MsgContent") {
        None => return Err("MsgContent missing".into()),
        Some(Value::Object(content)) => content,
        Some(other) => {
            return Err(format!(
                "MsgContent must be an object, found {}",
                kind_of(other)
            ))
        }
    };
    for (name, kind) in required.iter() {
        match content.get(*name) {
            None | Some(Value::Null) => return Err(format!("MsgContent.{name} missing")),
            Some(value) => {
                check_kind(value, *kind).map_err(|e| format!("MsgContent.{name} {e}"))?
            }
        }
    }
    for (name, kind) in optional.iter() {
        if let Some(value) = content.get(*name).filter(|v| !v.is_null()) {
            check_kind(value, *kind).map_err(|e| format!("MsgContent.{name} {e}"))?;
        }
    }
    Ok(())
}

fn check_kind(value: &Value, kind: FieldKind) -> Result<(), String> {
    match (kind, value) {
        (Str, Value::String(_)) | (Number, Value::Number(_)) => Ok(()),
        (Str, other) => Err(format!("must be a string, found {}", kind_of(other))),
        (Number, other) => Err(format!("must be a number, found {}", kind_of(other))),
        (ImageInfoArray, Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                check_image_info(item).map_err(|e| format!("[{i}].{e}"))?;
            }
            Ok(())
        }
        (ImageInfoArray, Value::Array(_)) => Err("must not be empty".into()),
        (ImageInfoArray, other) => Err(format!("must be an array, found {}", kind_of(other))),
    }
}

fn check_image_info(item: &Value) -> Result<(), String> {
    let Value::Object(info) = item else {
        return Err(format!("must be an object, found {}", kind_of(item)));
    };
    let fields: [(&str, FieldKind); 5] = [
        ("Type", Number),
        ("Size", Number),
        ("Width", Number),
        ("Height", Number),
        ("URL", Str),
    ];
    check_fields(info, &fields)
}

fn check_fields(object: &Map<String, Value>, fields: &[(&str, FieldKind)]) -> Result<(), String> {
    for (name, kind) in fields {
        match object.get(*name) {
            None | Some(Value::Null) => return Err(format!("{name} missing")),
            Some(value) => check_kind(value, *kind).map_err(|e| format!("{name} {e}"))?,
        }
    }
    Ok(())
}

/// The `MsgType` of the one element a message may hold only once.
pub const CUSTOM_ELEM: &str = "TIMCustomElem";

/// The `MsgContent` fields a custom element defines.
pub const CUSTOM_FIELDS: [&str; 4] = ["Data", "Desc", "Ext", "Sound"];

/// Whether an element is a `TIMCustomElem`.
pub fn is_custom(element: &Value) -> bool {
    element.get("MsgType").and_then(Value::as_str) == Some(CUSTOM_ELEM)
}

/// The rule of the service's "Message Formats" page: a message holds at most
/// one `TIMCustomElem` (other element types are unlimited).
pub fn check_one_custom(msg_body: &[Value]) -> Result<(), String> {
    let customs = msg_body.iter().filter(|e| is_custom(e)).count();
    if customs > 1 {
        return Err(format!(
            "MsgBody holds {customs} {CUSTOM_ELEM} elements; a message may hold only one"
        ));
    }
    Ok(())
}

/// JSON text without its insignificant whitespace; everything else (key
/// order, duplicate keys, the spelling of numbers and escapes) as written.
/// Only for text already known to be valid JSON.
pub fn compact_json(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for &byte in text.as_bytes() {
        if in_string {
            out.push(byte);
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            in_string = byte == b'"';
            out.push(byte);
        }
    }
    // Only ASCII whitespace was left out, so the bytes are still UTF-8.
    String::from_utf8(out).expect("removing ASCII whitespace keeps UTF-8")
}

/// A JSON type's name, for error messages.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(body: Value) -> Result<ParsedBody, BodyError> {
        parse_body(&serde_json::to_vec(&body).unwrap())
    }

    #[test]
    fn accepts_every_documented_element() {
        let body = json!({"Random": 1, "MsgBody": [
            {"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}},
            {"MsgType": "TIMCustomElem", "MsgContent": {"Data": "d", "Desc": "x", "Ext": "e", "Sound": "s"}},
            {"MsgType": "TIMFaceElem", "MsgContent": {"Index": 1, "Data": "content"}},
            {"MsgType": "TIMLocationElem", "MsgContent": {"Desc": "here", "Latitude": 22.5, "Longitude": 113.9}},
            {"MsgType": "TIMImageElem", "MsgContent": {"UUID": "u", "ImageFormat": 1, "ImageInfoArray": [
                {"Type": 1, "Size": 10, "Width": 2, "Height": 3, "URL": "https://example.invalid/a.png"}]}},
            {"MsgType": "TIMSoundElem", "MsgContent": {"Url": "u", "UUID": "id", "Size": 1, "Second": 2, "Download_Flag": 2}},
            {"MsgType": "TIMFileElem", "MsgContent": {"Url": "u", "UUID": "id", "FileSize": 1, "FileName": "f", "Download_Flag": 2}},
            {"MsgType": "TIMVideoFileElem", "MsgContent": {"VideoUrl": "u", "VideoUUID": "v", "VideoSize": 1, "VideoSecond": 2,
                "VideoFormat": "mp4", "VideoDownloadFlag": 2, "ThumbUrl": "t", "ThumbUUID": "tu", "ThumbSize": 1,
                "ThumbWidth": 2, "ThumbHeight": 3, "ThumbFormat": "JPG", "ThumbDownloadFlag": 2}}
        ]});
        let parsed = check(body).unwrap();
        assert_eq!(parsed.msg_body.len(), 8);
        assert_eq!(parsed.random, Some(1));
    }

    #[test]
    fn names_the_offending_path() {
        let cases = [
            (json!({"MsgBody": []}), "MsgBody is empty"),
            (json!({"From_Account": "a"}), "MsgBody is missing"),
            (
                json!({"MsgBody": {}}),
                "MsgBody must be an array, found an object",
            ),
            (
                json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "a"}}, {"MsgType": "TIMNopeElem", "MsgContent": {}}]}),
                "MsgBody[1].MsgType unknown: \"TIMNopeElem\"",
            ),
            (
                json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {}}]}),
                "MsgBody[0].MsgContent.Text missing",
            ),
            (
                json!({"MsgBody": [{"MsgType": "TIMFaceElem", "MsgContent": {"Index": "1", "Data": "d"}}]}),
                "MsgBody[0].MsgContent.Index must be a number, found a string",
            ),
            (
                json!({"MsgBody": [{"MsgType": "TIMImageElem", "MsgContent": {"UUID": "u", "ImageFormat": 1, "ImageInfoArray": [{"Type": 1}]}}]}),
                "MsgBody[0].MsgContent.ImageInfoArray [0].Size missing",
            ),
            (
                json!({"Random": -1, "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "a"}}]}),
                "Random must be an integer from 0 to 4294967295, found -1",
            ),
            (
                json!({"Random": 4294967296u64, "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "a"}}]}),
                "Random must be an integer from 0 to 4294967295, found 4294967296",
            ),
            (
                json!({"From_Account": 5, "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "a"}}]}),
                "From_Account must be a string, found a number",
            ),
            (
                json!({"CloudCustomData": {}, "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "a"}}]}),
                "CloudCustomData must be a string, found an object",
            ),
            (json!([1]), "body must be a JSON object, found an array"),
        ];
        for (body, want) in cases {
            assert_eq!(
                check(body.clone()),
                Err(BodyError::Invalid(want.into())),
                "{body}"
            );
        }
    }

    #[test]
    fn compaction_removes_only_insignificant_whitespace() {
        let text = " { \"b\" : [ 1 , 2 ] ,\n\t\"a\" : \" spaced \\\" string \\\\\" , \"n\": 123456789012345678901234567890 } ";
        let compact = compact_json(text);
        assert_eq!(
            compact,
            r#"{"b":[1,2],"a":" spaced \" string \\","n":123456789012345678901234567890}"#
        );
        let reparsed: Value = serde_json::from_str(&compact).unwrap();
        assert_eq!(reparsed, serde_json::from_str::<Value>(text).unwrap());
    }

    #[test]
    fn at_most_one_custom_element() {
        let custom = json!({"MsgType": "TIMCustomElem", "MsgContent": {"Data": "d"}});
        let text = json!({"MsgType": "TIMTextElem", "MsgContent": {"Text": "t"}});
        assert!(check_one_custom(&[custom.clone(), text.clone(), text.clone()]).is_ok());
        assert_eq!(
            check_one_custom(&[custom.clone(), text, custom]),
            Err("MsgBody holds 2 TIMCustomElem elements; a message may hold only one".into())
        );
    }

    #[test]
    fn reports_unknown_top_level_fields_and_rejects_non_json() {
        let parsed =
            check(json!({"Extra": 1, "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "a"}}]}))
                .unwrap();
        assert_eq!(parsed.unknown_fields, vec!["Extra".to_string()]);
        assert!(matches!(
            parse_body(b"{\"MsgBody\": ["),
            Err(BodyError::NotJson(_))
        ));
    }
}
