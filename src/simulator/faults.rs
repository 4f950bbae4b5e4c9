//! Fault injection: what can go wrong with one call ([`Fault`]), and which
//! calls it happens to ([`FaultPlan`]).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// A fault to apply to one API call instead of (or around) the normal answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Answer this ErrorCode without delivering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    /// Answer this HTTP status with an HTML page, without delivering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Process the call, then hold the answer this long (a slow way back: a
    /// client that times out has in fact been delivered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Drop the connection without an answer, `before` or `after` processing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<DropPoint>,
    /// Process the call, then answer with bytes that are not JSON.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub garbage: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DropPoint {
    Before,
    After,
}

/// Which calls get a fault. A scripted fault is used first, one per call; then
/// `always`; then, with `probability`, one of `random_faults` picked at random.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPlan {
    /// One entry per call, in order; an entry of `{}` lets that call through.
    #[serde(default)]
    pub script: VecDeque<Fault>,
    #[serde(default)]
    pub always: Option<Fault>,
    #[serde(default)]
    pub probability: f64,
    #[serde(default)]
    pub random_faults: Vec<Fault>,
    /// A call whose raw body contains a rule's text gets its fault, every
    /// time, before any of the above (a job the service will never accept).
    #[serde(default)]
    pub rules: Vec<FaultRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    pub body_contains: String,
    pub fault: Fault,
}

impl FaultPlan {
    /// The fault for the call with this raw body, if any; uses up a scripted one.
    pub(super) fn next(&mut self, body: &[u8]) -> Option<Fault> {
        if let Some(rule) = self
            .rules
            .iter()
            .find(|rule| contains(body, rule.body_contains.as_bytes()))
        {
            return Some(rule.fault.clone());
        }
        if let Some(fault) = self.script.pop_front() {
            return Some(fault);
        }
        if let Some(fault) = &self.always {
            return Some(fault.clone());
        }
        if self.probability > 0.0
            && !self.random_faults.is_empty()
            && rand::random::<f64>() < self.probability
        {
            let i = rand::random_range(0..self.random_faults.len());
            return Some(self.random_faults[i].clone());
        }
        None
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
