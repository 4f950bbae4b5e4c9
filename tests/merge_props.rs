//! Properties of the merger over random streams of jobs: no call over the
//! cap, every job in exactly one call, arrival order kept per merge key, no
//! call mixing keys, never a second `TIMCustomElem` in a call, envelopes that
//! decode back to their jobs' payloads in order, and the same jobs always
//! giving the same call `Random`.

use std::collections::HashMap;
use std::time::SystemTime;

use broadcast_worker::pipeline::batcher::{Batch, Batcher};
use broadcast_worker::pipeline::job::{self, Custom, Job};
use broadcast_worker::pipeline::{CallRules, CustomMerge};
use broadcast_worker::tencent::body::call_random;
use proptest::prelude::*;
use serde_json::{json, Value};

/// A job's shape: its sender, its custom data, its text elements and, maybe,
/// one custom element (its `Data` and `Desc`).
type Spec = (
    Option<String>,
    Option<String>,
    Vec<String>,
    Option<(String, Option<String>)>,
);

/// A job: a sender out of a few, custom data or none, 0 to 3 elements of
/// random text (UTF-8 included), sizes from tiny to a few kilobytes, and half
/// the time a custom element whose Data is JSON or text.
fn arb_job() -> impl Strategy<Value = Spec> {
    (
        proptest::option::of(prop_oneof!["alice", "bob", "系统"].prop_map(String::from)),
        proptest::option::of(prop_oneof!["", "match:1", "tag"].prop_map(String::from)),
        proptest::collection::vec(
            prop_oneof![3 => "\\PC{0,40}", 1 => "[a-z]{500,3000}"],
            0..=3,
        ),
        proptest::option::of((
            prop_oneof![
                "\\PC{0,40}",
                "[a-z]{1,20}".prop_map(|k| format!(r#"{{"{k}": [1, "x\"y"], "n": 1}}"#)),
            ],
            proptest::option::of(prop_oneof!["gift", "score"].prop_map(String::from)),
        )),
    )
        .prop_filter("a job has an element", |(_, _, texts, custom)| {
            !texts.is_empty() || custom.is_some()
        })
}

fn build(index: usize, (from, data, texts, custom): &Spec, rules: &CallRules) -> Job {
    let mut elements: Vec<Value> = texts
        .iter()
        .map(|t| json!({"MsgType": "TIMTextElem", "MsgContent": {"Text": t}}))
        .collect();
    if let Some((payload, desc)) = custom {
        let mut content = json!({"Data": payload});
        if let Some(desc) = desc {
            content["Desc"] = desc.as_str().into();
        }
        elements.push(json!({"MsgType": "TIMCustomElem", "MsgContent": content}));
    }
    let mut body = json!({"MsgBody": elements});
    if let Some(from) = from {
        body["From_Account"] = from.as_str().into();
    }
    if let Some(data) = data {
        body["CloudCustomData"] = data.as_str().into();
    }
    job::decode(
        body.to_string().as_bytes(),
        Some(&format!("job-{index}")),
        None,
        rules,
        SystemTime::now(),
    )
    .expect("generated jobs are valid")
}

/// The call's custom elements, and the payloads of its envelope if it has one.
fn customs(batch: &Batch<usize>) -> (usize, Option<Vec<Value>>) {
    let parsed: Value = serde_json::from_slice(&batch.body).unwrap();
    let customs: Vec<&Value> = parsed["MsgBody"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["MsgType"] == "TIMCustomElem")
        .collect();
    let envelope = customs.first().and_then(|c| {
        let data: Value = serde_json::from_str(c["MsgContent"]["Data"].as_str()?).ok()?;
        data.get("batch")?.as_array().cloned()
    });
    (customs.len(), envelope)
}

/// The payload a job put in an envelope, as a client decodes it.
fn payload(job: &Job) -> Option<Value> {
    match &job.custom {
        Custom::Envelope(item) => Some(serde_json::from_str(&item.item).unwrap()),
        Custom::None | Custom::Single => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn calls_respect_the_cap_the_keys_the_order_and_the_custom_rule(
        specs in proptest::collection::vec(arb_job(), 1..200),
        cap in 2_000usize..=12_000,
        take_every in 1usize..20,
        envelope in any::<bool>(),
    ) {
        let custom_merge = if envelope { CustomMerge::Envelope } else { CustomMerge::Separate };
        let rules = CallRules { custom_merge, ..CallRules::default() };
        let capped = CallRules { max_bytes: cap, ..rules };
        let jobs: Vec<Job> = specs.iter().enumerate().map(|(i, s)| build(i, s, &rules)).collect();
        // Jobs whose call alone exceeds this cap would be dead-lettered at decoding.
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| j.alone_bytes() <= cap).collect();
        let mut batcher = Batcher::new();
        let mut seen: HashMap<usize, usize> = HashMap::new();
        let mut last_per_key: HashMap<String, usize> = HashMap::new();
        let mut check = |batch: Batch<usize>| -> Result<(), TestCaseError> {
            prop_assert!(batch.body.len() <= cap, "call of {} bytes over {cap}", batch.body.len());
            let parsed: Value = serde_json::from_slice(&batch.body).unwrap();
            prop_assert_eq!(parsed["Random"].as_u64(), Some(u64::from(batch.random)));
            prop_assert_eq!(batch.random, call_random(batch.job_ids(), 0));
            let (custom_elements, envelope) = customs(&batch);
            prop_assert!(custom_elements <= 1, "{custom_elements} custom elements in a call");
            let payloads: Vec<Value> = batch.jobs.iter().filter_map(|q| payload(&q.job)).collect();
            if !payloads.is_empty() {
                prop_assert_eq!(envelope, Some(payloads), "the envelope holds its jobs' payloads in order");
            }
            let key = format!("{:?}", batch.key);
            for q in &batch.jobs {
                prop_assert_eq!(&q.job.key, &batch.key, "a call mixed merge keys");
                *seen.entry(q.delivery).or_insert(0) += 1;
                if let Some(prev) = last_per_key.insert(key.clone(), q.delivery) {
                    prop_assert!(q.delivery > prev, "job {} sent after {} of its key", q.delivery, prev);
                }
            }
            Ok(())
        };
        // Interleave arrivals and takes, as the worker does.
        for (i, job) in jobs.iter().cloned().enumerate() {
            batcher.push(job, i);
            if i % take_every == 0 {
                if let Some(batch) = batcher.take_batch(&capped) {
                    check(batch)?;
                }
            }
        }
        while let Some(batch) = batcher.take_batch(&capped) {
            check(batch)?;
        }
        prop_assert_eq!(seen.len(), jobs.len(), "every job in a call");
        prop_assert!(seen.values().all(|&n| n == 1), "no job in two calls");
    }

    #[test]
    fn the_same_jobs_always_make_the_same_call(specs in proptest::collection::vec(arb_job(), 1..50)) {
        let make = || {
            let mut batcher = Batcher::new();
            for (i, s) in specs.iter().enumerate() {
                batcher.push(build(i, s, &CallRules::default()), ());
            }
            let mut calls = Vec::new();
            while let Some(batch) = batcher.take_batch(&CallRules::default()) {
                calls.push((batch.random, batch.body));
            }
            calls
        };
        prop_assert_eq!(make(), make());
    }
}
