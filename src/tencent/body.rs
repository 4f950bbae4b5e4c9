//! The request body of `send_broadcast_msg`: its one type, the exact bytes of
//! a call built from many jobs' elements, the size a call may reach, and the
//! call's `Random`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The largest body the service accepts, in bytes.
pub const MAX_BODY_BYTES: usize = 12_000;

/// The JSON body of a `send_broadcast_msg` call, field names as the API spells
/// them, generic over how elements are held (parsed values, or the raw JSON a
/// producer wrote). Serialization order is fixed, so the same call always has
/// the same bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastBody<E = Value> {
    #[serde(rename = "From_Account", skip_serializing_if = "Option::is_none")]
    pub from_account: Option<String>,
    #[serde(rename = "Random")]
    pub random: u32,
    #[serde(rename = "MsgBody")]
    pub msg_body: Vec<E>,
    #[serde(rename = "CloudCustomData", skip_serializing_if = "Option::is_none")]
    pub cloud_custom_data: Option<String>,
}

impl<E: Serialize> BroadcastBody<E> {
    /// The body as it goes on the wire (compact JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a BroadcastBody always serializes")
    }
}

/// The fields a call shares across all of its elements: jobs that agree on
/// them can travel in one call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct MergeKey {
    #[serde(rename = "From_Account", skip_serializing_if = "Option::is_none")]
    pub from_account: Option<String>,
    #[serde(rename = "CloudCustomData", skip_serializing_if = "Option::is_none")]
    pub cloud_custom_data: Option<String>,
}

/// The exact bytes of a call: the shared fields, `random`, and the elements
/// in order, each forwarded as written.
pub fn call_body<'a>(
    key: &MergeKey,
    random: u32,
    elements: impl Iterator<Item = &'a RawValue>,
) -> Vec<u8> {
    BroadcastBody {
        from_account: key.from_account.clone(),
        random,
        msg_body: elements.collect::<Vec<_>>(),
        cloud_custom_data: key.cloud_custom_data.clone(),
    }
    .to_bytes()
}

/// What a call with these shared fields costs before its elements, with the
/// widest `Random`.
pub fn call_overhead(key: &MergeKey) -> usize {
    call_body(key, u32::MAX, std::iter::empty()).len()
}

/// How long the service treats a second call with the same `Random` (and,
/// on the stricter reading, the same content) as a repeat and drops it.
pub const REPEAT_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// The `candidate`-th `Random` of a call: the first four bytes of a SHA-256
/// over its jobs' ids (and, after the first, the candidate's number), so the
/// same jobs always make the same call and a retry is a repeat the service
/// can drop. A later candidate stands in when an earlier one was used by a
/// different call within the repeat window.
pub fn call_random<'a>(ids: impl Iterator<Item = &'a str>, candidate: u32) -> u32 {
    let mut hasher = Sha256::new();
    for id in ids {
        hasher.update(id.as_bytes());
        hasher.update(b"\n");
    }
    if candidate > 0 {
        hasher.update(format!("#{candidate}").as_bytes());
    }
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// What makes two calls "the same content" whatever their `Random`: a
/// digest of the body, which holds the `Random` at a place that does not
/// depend on it, so it is hashed with that field's digits left out.
pub fn content_digest(body: &[u8], random: u32) -> [u8; 32] {
    let field = format!("\"Random\":{random}");
    let mut hasher = Sha256::new();
    match body
        .windows(field.len())
        .position(|w| w == field.as_bytes())
    {
        Some(at) => {
            hasher.update(&body[..at]);
            hasher.update(&body[at + field.len()..]);
        }
        None => hasher.update(body),
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn randoms_are_derived_and_candidates_differ() {
        let ids = ["a", "b"];
        let first = call_random(ids.into_iter(), 0);
        assert_eq!(first, call_random(ids.into_iter(), 0));
        assert_ne!(first, call_random(ids.into_iter(), 1));
        assert_ne!(
            call_random(ids.into_iter(), 1),
            call_random(ids.into_iter(), 2)
        );
    }

    #[test]
    fn content_digest_ignores_only_the_random() {
        let key = MergeKey {
            from_account: None,
            cloud_custom_data: None,
        };
        let a: Box<RawValue> =
            RawValue::from_string(r#"{"MsgType":"TIMTextElem","MsgContent":{"Text":"x"}}"#.into())
                .unwrap();
        let b: Box<RawValue> =
            RawValue::from_string(r#"{"MsgType":"TIMTextElem","MsgContent":{"Text":"y"}}"#.into())
                .unwrap();
        let body = |r: u32, e: &RawValue| call_body(&key, r, std::iter::once(e));
        assert_eq!(
            content_digest(&body(1, &a), 1),
            content_digest(&body(77, &a), 77)
        );
        assert_ne!(
            content_digest(&body(1, &a), 1),
            content_digest(&body(1, &b), 1)
        );
    }

    #[test]
    fn body_serializes_with_the_api_field_names() {
        let body = BroadcastBody {
            from_account: Some("sys".into()),
            random: 7,
            msg_body: vec![json!({"MsgContent": {"Text": "a"}, "MsgType": "TIMTextElem"})],
            cloud_custom_data: None,
        };
        assert_eq!(
            String::from_utf8(body.to_bytes()).unwrap(),
            r#"{"From_Account":"sys","Random":7,"MsgBody":[{"MsgContent":{"Text":"a"},"MsgType":"TIMTextElem"}]}"#
        );
    }
}
