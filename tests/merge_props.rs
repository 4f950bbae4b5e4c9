//! Properties of the merger over random streams of jobs: no call over the
//! cap, every job in exactly one call, arrival order kept per merge key, no
//! call mixing keys, and the same jobs always giving the same call `Random`.

use std::collections::HashMap;
use std::time::SystemTime;

use broadcast_worker::pipeline::batcher::Batcher;
use broadcast_worker::pipeline::job::{self, Job};
use broadcast_worker::tencent::body::{call_overhead, call_random};
use proptest::prelude::*;
use serde_json::{json, Value};

/// A job: a sender out of a few, custom data or none, 1 to 3 elements of
/// random text (UTF-8 included), sizes from tiny to a few kilobytes.
fn arb_job() -> impl Strategy<Value = (Option<String>, Option<String>, Vec<String>)> {
    (
        proptest::option::of(prop_oneof!["alice", "bob", "系统"].prop_map(String::from)),
        proptest::option::of(prop_oneof!["", "match:1", "tag"].prop_map(String::from)),
        proptest::collection::vec(
            prop_oneof![3 => "\\PC{0,40}", 1 => "[a-z]{500,3000}"],
            1..=3,
        ),
    )
}

fn build(index: usize, (from, data, texts): &(Option<String>, Option<String>, Vec<String>)) -> Job {
    let elements: Vec<Value> = texts
        .iter()
        .map(|t| json!({"MsgType": "TIMTextElem", "MsgContent": {"Text": t}}))
        .collect();
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
        12_000,
        SystemTime::now(),
    )
    .expect("generated jobs are valid")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn calls_respect_the_cap_the_keys_and_the_order(
        specs in proptest::collection::vec(arb_job(), 1..200),
        cap in 2_000usize..=12_000,
        take_every in 1usize..20,
    ) {
        let jobs: Vec<Job> = specs.iter().enumerate().map(|(i, s)| build(i, s)).collect();
        // Jobs whose call alone exceeds this cap would be dead-lettered at decoding.
        let jobs: Vec<Job> = jobs
            .into_iter()
            .filter(|j| call_overhead(&j.key) + j.elements_bytes() <= cap)
            .collect();
        let mut batcher = Batcher::new();
        let mut seen: HashMap<usize, usize> = HashMap::new();
        let mut last_per_key: HashMap<String, usize> = HashMap::new();
        let mut check = |batch: broadcast_worker::pipeline::batcher::Batch<usize>| -> Result<(), TestCaseError> {
            prop_assert!(batch.body.len() <= cap, "call of {} bytes over {cap}", batch.body.len());
            let parsed: Value = serde_json::from_slice(&batch.body).unwrap();
            prop_assert_eq!(parsed["Random"].as_u64(), Some(u64::from(batch.random)));
            prop_assert_eq!(batch.random, call_random(batch.job_ids()));
            let key = format!("{:?}", batch.key);
            for q in &batch.jobs {
                prop_assert_eq!(&q.job.key, &batch.key, "a call mixed merge keys");
                *seen.entry(q.tag).or_insert(0) += 1;
                if let Some(prev) = last_per_key.insert(key.clone(), q.tag) {
                    prop_assert!(q.tag > prev, "job {} sent after {} of its key", q.tag, prev);
                }
            }
            Ok(())
        };
        // Interleave arrivals and takes, as the worker does.
        for (i, job) in jobs.iter().cloned().enumerate() {
            batcher.push(job, i);
            if i % take_every == 0 {
                if let Some(batch) = batcher.take_batch(cap, usize::MAX) {
                    check(batch)?;
                }
            }
        }
        while let Some(batch) = batcher.take_batch(cap, usize::MAX) {
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
                batcher.push(build(i, s), ());
            }
            let mut calls = Vec::new();
            while let Some(batch) = batcher.take_batch(12_000, usize::MAX) {
                calls.push((batch.random, batch.body));
            }
            calls
        };
        prop_assert_eq!(make(), make());
    }
}
