//! Latest-wins keys under a backlog: the same backlog of ~100-byte jobs
//! drained at 5 calls/s twice, once without keys and once with one job in
//! five carrying one of 20 `x-coalesce-key`s (an update of a score that only
//! matters in its latest value). Measured: calls made and drain time of
//! each, jobs superseded (published less delivered: nothing is
//! dead-lettered), and for every key whether its last published value was
//! delivered. Real RabbitMQ, the simulator on loopback, one worker in
//! process (without the ledger), the release build.
//!
//! `cargo bench --bench coalesce` prints the table and writes it into
//! BENCHMARKS.md; `BENCH_COALESCE_JOBS` changes the backlog (100,000).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use serde_json::{json, Value};
use testkit::*;

const KEYS: usize = 20;

/// Job `i`: every fifth carries the key `score-{i / 5 % 20}`.
fn key_of(i: usize) -> Option<String> {
    i.is_multiple_of(5)
        .then(|| format!("score-{}", i / 5 % KEYS))
}

fn body(i: usize) -> Vec<u8> {
    let text = match key_of(i) {
        Some(key) => format!("job:{i} {key} is now {}", i * 7 % 1000),
        None => format!("job:{i} gift {} from Player{}", i % 31, i % 89),
    };
    json!({"From_Account": "system", "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}]})
        .to_string()
        .into_bytes()
}

/// The job numbers in the simulator's deliveries, in order.
fn delivered(app: &TestApp) -> Vec<usize> {
    app.sim
        .simulator
        .deliveries(0, usize::MAX)
        .iter()
        .flat_map(|d| {
            let body: &Value = d.body.as_ref().expect("bodies kept");
            body["MsgBody"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| {
                    let text = e["MsgContent"]["Text"].as_str()?;
                    text.strip_prefix("job:")?.split(' ').next()?.parse().ok()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

struct Drain {
    calls: u64,
    secs: f64,
    delivered: Vec<usize>,
    frequency_limited: u64,
}

/// Publishes `n` jobs (with keys or not), then drains them with one worker.
async fn drain(n: usize, keyed: bool) -> Drain {
    let mut app = spawn_app("bench-coalesce", 5.0).await;
    app.sim.simulator.reset();
    let jobs = (0..n).map(|i| {
        let mut properties = BasicProperties::default()
            .with_message_id(format!("c-{i}").as_str().into())
            .with_delivery_mode(2);
        if let (true, Some(key)) = (keyed, key_of(i)) {
            let mut headers = FieldTable::default();
            headers.insert(
                "x-coalesce-key".into(),
                AMQPValue::LongString(LongString::from(key.as_str())),
            );
            properties = properties.with_headers(headers);
        }
        (body(i), properties)
    });
    app.publish_bulk_with(jobs).await;
    let started = Instant::now();
    app.start_worker();
    // Done when the queue is empty and nothing more arrives for 2 s.
    let mut last = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let calls = app.sim.simulator.stats().deliveries;
        if calls != last.0 {
            last = (calls, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2)
            && app.queue_len(&app.names.jobs).await == 0
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "drained within an hour"
        );
    }
    let secs = last.1.duration_since(started).as_secs_f64();
    app.stop_worker().await.unwrap();
    let stats = app.sim.simulator.stats();
    Drain {
        calls: stats.deliveries,
        secs,
        delivered: delivered(&app),
        frequency_limited: stats.frequency_violations,
    }
}

#[tokio::main]
async fn main() {
    let n = std::env::var("BENCH_COALESCE_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let plain = drain(n, false).await;
    let keyed = drain(n, true).await;
    assert_eq!(plain.delivered.len(), n, "without keys every job is sent");
    let mut counts: HashMap<usize, usize> = HashMap::new();
    for &i in &keyed.delivered {
        *counts.entry(i).or_default() += 1;
    }
    let doubled = counts.values().filter(|&&c| c > 1).count();
    let unkeyed_lost = (0..n)
        .filter(|&i| key_of(i).is_none() && !counts.contains_key(&i))
        .count();
    let last_of_key: HashMap<String, usize> =
        (0..n).filter_map(|i| key_of(i).map(|k| (k, i))).collect();
    let latest_lost = last_of_key
        .values()
        .filter(|i| !counts.contains_key(i))
        .count();
    let superseded = n - keyed.delivered.len();
    let rows = vec![
        (
            format!("backlog of {n} jobs (~100 bytes) at 5 calls/s, no keys: calls made, drain time"),
            format!("{} calls, {:.1} s", plain.calls, plain.secs),
        ),
        (
            format!("the same with 1 in 5 jobs carrying one of {KEYS} coalesce keys: calls made, drain time"),
            format!("{} calls, {:.1} s", keyed.calls, keyed.secs),
        ),
        (
            format!("jobs superseded (of {} keyed)", n / 5),
            format!("{superseded} ({:.1}%)", 100.0 * superseded as f64 / (n / 5) as f64),
        ),
        (
            format!("keys whose last published value was not delivered (of {KEYS}); unkeyed jobs lost; jobs sent twice"),
            format!("{latest_lost}; {unkeyed_lost}; {doubled}"),
        ),
        (
            "frequency-limit answers (both runs)".into(),
            (plain.frequency_limited + keyed.frequency_limited).to_string(),
        ),
    ];
    let table = markdown_table(&rows);
    println!("{table}");
    let section = format!(
        "## Latest-wins keys under a backlog: `cargo bench --bench coalesce`\n\nRun on {}: {}. One worker in process, no ledger, prefetch 1,000.\n\n{table}",
        today(),
        machine()
    );
    write_section(
        concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md"),
        "coalesce",
        &section,
    );
}
