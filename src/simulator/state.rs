//! What the simulated service remembers between calls: counters ([`Stats`]),
//! deliveries, the call log, the frequency window, the repeat filter and the
//! fault plan.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::faults::{Fault, FaultPlan};

/// One call to the API path as the simulator answered it, for
/// `/simulator/calls` (the last [`CALL_LOG_LEN`] are kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Unix time in milliseconds when the call arrived.
    pub received_at_ms: u64,
    /// The body's `Random`, when the body had one.
    pub random: Option<u32>,
    pub bytes: usize,
    /// The ErrorCode answered; absent when the answer was an HTTP error, a
    /// dropped connection or garbage.
    pub error_code: Option<i64>,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
}

pub const CALL_LOG_LEN: usize = 100_000;

/// What the simulator has seen, for `/simulator/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests to the API path.
    pub calls: u64,
    /// Messages delivered (repeats not counted).
    pub deliveries: u64,
    /// Calls answered OK but not delivered again: repeats by the configured
    /// [`super::app::RepeatBy`].
    pub repeats_dropped: u64,
    /// Answers given with each ErrorCode (0 included).
    pub answers_by_code: BTreeMap<i64, u64>,
    /// Calls refused with 10023.
    pub frequency_violations: u64,
    /// Answers that were an HTTP error status.
    pub http_errors: u64,
    pub dropped_connections: u64,
    pub garbage_answers: u64,
    /// The largest request body received, in bytes.
    pub largest_body: usize,
    /// The largest body delivered, in bytes.
    pub largest_delivered_body: usize,
    /// Message elements delivered, summed over deliveries.
    pub elements_delivered: u64,
    /// Requests to other paths.
    pub other_paths: u64,
}

/// One delivered message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub msg_seq: u64,
    /// Unix time in milliseconds when the call arrived.
    pub received_at_ms: u64,
    pub bytes: usize,
    /// The request body as JSON (absent when bodies are not kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The request body exactly as received (lossy UTF-8; absent when bodies
    /// are not kept): `body` reorders keys and rounds big numbers, so byte for
    /// byte comparisons need this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_body: Option<String>,
}

/// The simulated service's memory, behind the [`super::app::Simulator`]'s lock.
pub(super) struct ServiceState {
    next_msg_seq: u64,
    /// Arrival times of the calls that passed the frequency limit, newest last.
    recent_calls: VecDeque<Instant>,
    /// Content key -> its delivery's MsgSeq, for the repeat filter.
    seen: HashMap<[u8; 32], u64>,
    /// When each key in `seen` was delivered, oldest first, to expire them.
    seen_order: VecDeque<(Instant, [u8; 32])>,
    pub(super) deliveries: Vec<Delivery>,
    pub(super) calls: VecDeque<CallRecord>,
    pub(super) stats: Stats,
    pub(super) faults: FaultPlan,
}

impl ServiceState {
    pub(super) fn new() -> Self {
        Self {
            next_msg_seq: 1,
            recent_calls: VecDeque::new(),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            deliveries: Vec::new(),
            calls: VecDeque::new(),
            stats: Stats::default(),
            faults: FaultPlan::default(),
        }
    }

    /// The frequency limit: admits and records the call, or refuses it.
    pub(super) fn admit(&mut self, rate: f64, at: Instant) -> bool {
        let (window, limit) = if rate >= 1.0 {
            (Duration::from_secs(1), rate.floor() as usize)
        } else {
            (Duration::from_secs_f64(1.0 / rate.max(1e-9)), 1)
        };
        while let Some(&first) = self.recent_calls.front() {
            if at.duration_since(first) >= window {
                self.recent_calls.pop_front();
            } else {
                break;
            }
        }
        if self.recent_calls.len() >= limit {
            return false;
        }
        self.recent_calls.push_back(at);
        true
    }

    /// Ends the repeat filter for deliveries older than `window` at `at`.
    pub(super) fn forget_before(&mut self, at: Instant, window: Duration) {
        while let Some(&(first, key)) = self.seen_order.front() {
            if at.duration_since(first) >= window {
                self.seen_order.pop_front();
                self.seen.remove(&key);
            } else {
                break;
            }
        }
    }

    /// The MsgSeq of an earlier delivery of the same content, while the
    /// repeat filter remembers it.
    pub(super) fn repeat_of(&self, key: &[u8; 32]) -> Option<u64> {
        self.seen.get(key).copied()
    }

    /// Takes the next MsgSeq for content first delivered `at`, and remembers
    /// it for the repeat filter.
    pub(super) fn assign_msg_seq(&mut self, key: [u8; 32], at: Instant) -> u64 {
        let msg_seq = self.next_msg_seq;
        self.next_msg_seq += 1;
        self.seen.insert(key, msg_seq);
        self.seen_order.push_back((at, key));
        msg_seq
    }

    /// Appends to the call log, dropping the oldest past [`CALL_LOG_LEN`].
    pub(super) fn log_call(&mut self, record: CallRecord) {
        if self.calls.len() >= CALL_LOG_LEN {
            self.calls.pop_front();
        }
        self.calls.push_back(record);
    }
}

/// What makes two calls "the same message": sender, elements, custom data and
/// `Random`. Maps serialize with sorted keys, so key order does not matter.
pub(super) fn content_key(
    from: &Option<String>,
    msg_body: &[Value],
    cloud_custom_data: &Option<String>,
    random: u32,
) -> [u8; 32] {
    let canonical = json!([from, msg_body, cloud_custom_data, random]).to_string();
    Sha256::digest(canonical.as_bytes()).into()
}

/// What makes two calls "the same message" under [`super::app::RepeatBy::Random`]:
/// the `Random` alone. Tagged so it never equals a [`content_key`].
pub(super) fn random_key(random: u32) -> [u8; 32] {
    let canonical = json!(["Random", random]).to_string();
    Sha256::digest(canonical.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequency_window_slides() {
        let mut state = ServiceState::new();
        let t0 = Instant::now();
        assert!(state.admit(2.0, t0));
        assert!(state.admit(2.0, t0 + Duration::from_millis(500)));
        assert!(!state.admit(2.0, t0 + Duration::from_millis(999)));
        assert!(state.admit(2.0, t0 + Duration::from_millis(1000)));
        assert!(!state.admit(2.0, t0 + Duration::from_millis(1400)));
        assert!(state.admit(2.0, t0 + Duration::from_millis(1500)));
        // Below one call a second, the window widens.
        let mut slow = ServiceState::new();
        assert!(slow.admit(0.5, t0));
        assert!(!slow.admit(0.5, t0 + Duration::from_millis(1999)));
        assert!(slow.admit(0.5, t0 + Duration::from_millis(2000)));
    }

    #[test]
    fn content_key_ignores_key_order_but_not_random() {
        let a: Value =
            serde_json::from_str(r#"[{"MsgType":"TIMTextElem","MsgContent":{"Text":"x"}}]"#)
                .unwrap();
        let b: Value =
            serde_json::from_str(r#"[{"MsgContent":{"Text":"x"},"MsgType":"TIMTextElem"}]"#)
                .unwrap();
        let (a, b) = (a.as_array().unwrap().clone(), b.as_array().unwrap().clone());
        assert_eq!(
            content_key(&None, &a, &None, 1),
            content_key(&None, &b, &None, 1)
        );
        assert_ne!(
            content_key(&None, &a, &None, 1),
            content_key(&None, &a, &None, 2)
        );
        assert_ne!(
            content_key(&None, &a, &None, 1),
            content_key(&Some("x".into()), &a, &None, 1)
        );
    }
}
