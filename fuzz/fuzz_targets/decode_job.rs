//! Any bytes through the job decoder: it must accept them or reject them with
//! a reason, never panic; an accepted job must fit a call on its own.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use broadcast_worker::pipeline::{CallRules, CustomMerge};
use broadcast_worker::pipeline::job::{self, Rejection};
use broadcast_worker::pipeline::batcher::Batcher;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = UNIX_EPOCH + Duration::from_secs(1_764_000_000);
    for custom_merge in [CustomMerge::Separate, CustomMerge::Envelope] {
        let rules = CallRules {
            custom_merge,
            ..CallRules::default()
        };
        match job::decode(data, None, None, &rules, now) {
            Ok(job) => {
                // A decoded job always makes a call within the cap, alone,
                // with at most one custom element.
                let mut batcher = Batcher::new();
                batcher.push(job, ());
                let batch = batcher.take_batch(&rules).expect("one job makes one call");
                assert!(batch.body.len() <= 12_000, "a call of {} bytes", batch.body.len());
                let body: serde_json::Value =
                    serde_json::from_slice(&batch.body).expect("a call body is JSON");
                let customs = body["MsgBody"]
                    .as_array()
                    .expect("MsgBody is an array")
                    .iter()
                    .filter(|e| e["MsgType"] == "TIMCustomElem")
                    .count();
                assert!(customs <= 1, "{customs} custom elements");
            }
            Err(rejection) => {
                assert!(!rejection.to_string().is_empty());
                assert!(matches!(
                    rejection,
                    Rejection::InvalidJson(_) | Rejection::InvalidJob(_) | Rejection::TooLarge { .. }
                ));
            }
        }
    }
});
