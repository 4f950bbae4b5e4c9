//! The urgent lane under a backlog: a backlog of ~100-byte ordinary jobs
//! drained at 5 calls/s twice, once alone and once with 50 urgent jobs
//! published at random moments while it drains. Measured: each urgent job's
//! publish-to-delivery latency (from just before its publish to the
//! simulator's arrival time of the call that carried it; one clock), p50 /
//! p99 / max, against the target of two bucket periods plus 50 ms; and the
//! backlog's drain time with urgent traffic against without. Real RabbitMQ,
//! the simulator on loopback, one worker in process (without the ledger,
//! prefetch 1,000), the release build.
//!
//! `cargo bench --bench urgent` prints the table and writes it into
//! BENCHMARKS.md; `BENCH_URGENT_JOBS` changes the backlog (100,000).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use broadcast_worker::clock::unix_ms;
use serde_json::{json, Value};
use testkit::*;

const URGENT: usize = 50;
const RATE: f64 = 5.0;

fn ordinary(i: usize) -> Vec<u8> {
    let text = format!("job:o{i} gift {} from Player{}", i % 31, i % 89);
    json!({"From_Account": "system", "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}]})
        .to_string()
        .into_bytes()
}

fn urgent(i: usize) -> Value {
    json!({"From_Account": "system", "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": format!("job:u{i} the stream ends now")}}]})
}

/// When each element's job arrived at the simulator (unix ms), by its text's
/// first word.
fn arrivals(app: &TestApp) -> HashMap<String, (u64, usize)> {
    let mut seen: HashMap<String, (u64, usize)> = HashMap::new();
    for d in app.sim.simulator.deliveries(0, usize::MAX) {
        let body: &Value = d.body.as_ref().expect("bodies kept");
        for e in body["MsgBody"].as_array().unwrap() {
            if let Some(word) = e["MsgContent"]["Text"]
                .as_str()
                .and_then(|t| t.split(' ').next())
            {
                let entry = seen
                    .entry(word.to_string())
                    .or_insert((d.received_at_ms, 0));
                entry.1 += 1;
            }
        }
    }
    seen
}

struct Drain {
    secs: f64,
    /// Publish-to-delivery of each urgent job, ms.
    latencies: Vec<u64>,
    arrivals: HashMap<String, (u64, usize)>,
    frequency_limited: u64,
}

/// Publishes `n` ordinary jobs, starts one worker, and publishes an urgent
/// job at each of `moments` (after the start) while it drains.
async fn drain(n: usize, moments: &[Duration]) -> Drain {
    let mut app = spawn_app("bench-urgent", RATE).await;
    app.config.prefetch = 1000;
    app.sim.simulator.reset();
    let jobs = (0..n).map(|i| (format!("o-{i}"), ordinary(i)));
    app.publish_bulk(jobs).await;
    let started = Instant::now();
    app.start_worker();
    let mut published = Vec::new();
    let mut next = 0;
    // Done when both queues are empty and nothing more arrives for 2 s.
    let mut last = (0, Instant::now());
    let mut check_at = Instant::now() + Duration::from_millis(500);
    loop {
        let due = moments.get(next).map(|m| started + *m);
        match due {
            Some(due) if due < check_at => {
                tokio::time::sleep_until(due.into()).await;
                let at = unix_ms(SystemTime::now());
                app.publish_urgent(&format!("u-{next}"), &urgent(next))
                    .await;
                published.push(at);
                next += 1;
                continue;
            }
            _ => tokio::time::sleep_until(check_at.into()).await,
        }
        check_at = Instant::now() + Duration::from_millis(500);
        let calls = app.sim.simulator.stats().deliveries;
        if calls != last.0 {
            last = (calls, Instant::now());
        } else if next == moments.len()
            && last.1.elapsed() > Duration::from_secs(2)
            && app.queue_len(&app.names.jobs).await == 0
            && app.queue_len(&app.names.urgent).await == 0
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
    let arrivals = arrivals(&app);
    let latencies = published
        .iter()
        .enumerate()
        .map(|(i, at)| {
            let (received, _) = arrivals
                .get(&format!("job:u{i}"))
                .unwrap_or_else(|| panic!("urgent job {i} delivered"));
            received.saturating_sub(*at)
        })
        .collect();
    Drain {
        secs,
        latencies,
        arrivals,
        frequency_limited: app.sim.simulator.stats().frequency_violations,
    }
}

/// The nearest-rank percentile `p` of sorted `values`.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::main]
async fn main() {
    let n = std::env::var("BENCH_URGENT_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let alone = drain(n, &[]).await;
    // Random moments over the drain's first 90%, in order.
    let span = alone.secs * 0.9;
    let mut moments: Vec<Duration> = (0..URGENT)
        .map(|_| Duration::from_secs_f64(rand::random_range(1.0..span.max(2.0))))
        .collect();
    moments.sort();
    let with_urgent = drain(n, &moments).await;
    for run in [&alone, &with_urgent] {
        let missing = (0..n)
            .filter(|i| !run.arrivals.contains_key(&format!("job:o{i}")))
            .count();
        let doubled = run.arrivals.values().filter(|(_, c)| *c > 1).count();
        assert_eq!((missing, doubled), (0, 0), "every ordinary job once");
    }
    let mut sorted = with_urgent.latencies.clone();
    sorted.sort();
    eprintln!("urgent latencies, ms, sorted: {sorted:?}");
    let period_ms = 1000.0 / RATE;
    let target = (2.0 * period_ms + 50.0) as u64;
    let change = 100.0 * (with_urgent.secs - alone.secs) / alone.secs;
    let rows = vec![
        (
            format!("urgent jobs' publish-to-delivery, {URGENT} published at random moments during the drain: p50 / p99 / max"),
            format!(
                "{} / {} / {} ms (target p99 ≤ {target} ms)",
                percentile(&sorted, 0.50),
                percentile(&sorted, 0.99),
                sorted.last().copied().unwrap_or(0)
            ),
        ),
        (
            format!("drain of {n} ordinary jobs (~100 bytes) at {RATE} calls/s: alone / with the urgent jobs"),
            format!("{:.1} s / {:.1} s ({change:+.2}%; target within 1%)", alone.secs, with_urgent.secs),
        ),
        (
            "ordinary jobs lost or sent twice; frequency-limit answers (both runs)".into(),
            format!("0; {}", alone.frequency_limited + with_urgent.frequency_limited),
        ),
    ];
    let table = markdown_table(&rows);
    println!("{table}");
    let section = format!(
        "## The urgent lane under a backlog: `cargo bench --bench urgent`\n\nRun on {}: {}. One worker in process, no ledger, prefetch 1,000; latency from just before the urgent job's publish to the simulator's arrival time of its call.\n\n{table}",
        today(),
        machine()
    );
    write_section(
        concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md"),
        "urgent",
        &section,
    );
}
