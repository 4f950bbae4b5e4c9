//! How close the worker comes to what the quota physically allows, against
//! one call per job; its latency at idle; its ingest ceiling against a bare
//! consumer; and its memory with small and huge backlogs. Real RabbitMQ, the
//! simulator on loopback, the release build.
//!
//! `cargo bench --bench drain` runs every scenario, prints the table and writes
//! it into BENCHMARKS.md. A name narrows it (`cargo bench --bench drain idle`);
//! `BENCH_BACKLOG_JOBS` and `BENCH_MEMORY_JOBS` change the sizes.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use broadcast_worker::tencent::body::MAX_BODY_BYTES;
use futures_util::StreamExt;
use serde_json::{json, Value};
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A realistic job of about 100 bytes, mostly from one sender, some from two
/// others. Its text carries its number and the time it was published. Text
/// elements only: since a message holds one custom element, custom mixes are
/// measured on their own (`cargo bench --bench rules`).
fn job(i: usize, published_ms: u64) -> Value {
    let from = match i % 10 {
        0..=6 => "system",
        7 | 8 => "match-bot",
        _ => "gift-bot",
    };
    let element = if i.is_multiple_of(2) {
        json!({"MsgType": "TIMTextElem", "MsgContent": {"Text": format!("job:{i}@{published_ms} Player{} scored", i % 997)}})
    } else {
        json!({"MsgType": "TIMTextElem", "MsgContent": {"Text": format!("job:{i}@{published_ms} gift {} from Player{}", i % 31, i % 89)}})
    };
    json!({"From_Account": from, "MsgBody": [element]})
}

/// (job number, publish time) from a delivered element.
fn marker(element: &Value) -> Option<(usize, u64)> {
    let content = &element["MsgContent"];
    let text = content["Text"].as_str()?;
    let (i, rest) = text.strip_prefix("job:")?.split_once('@')?;
    Some((i.parse().ok()?, rest.split(' ').next()?.parse().ok()?))
}

async fn publish_jobs(app: &TestApp, range: std::ops::Range<usize>) -> Vec<Value> {
    let published = now_ms();
    let bodies: Vec<Value> = range.clone().map(|i| job(i, published)).collect();
    app.publish_bulk(
        range
            .zip(bodies.iter())
            .map(|(i, b)| (format!("bench-{i}"), b.to_string().into_bytes())),
    )
    .await;
    bodies
}

/// Calls needed to send these jobs in order, per merge key, each filled until
/// the next job would not fit: the arithmetic bound.
fn packing_minimum(jobs: &[Value]) -> usize {
    let mut open: HashMap<String, usize> = HashMap::new();
    let mut calls = 0;
    for body in jobs {
        let key = body["From_Account"].to_string();
        let element = body["MsgBody"][0].to_string().len();
        let size = open.entry(key).or_insert(0);
        if *size == 0 || *size + 1 + element > MAX_BODY_BYTES {
            calls += 1;
            let overhead =
                json!({"From_Account": body["From_Account"], "Random": u32::MAX, "MsgBody": []})
                    .to_string()
                    .len();
            *size = overhead + element;
        } else {
            *size += 1 + element;
        }
    }
    calls
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Latencies (ms) from publish to arrival at the simulator, sorted.
fn latencies(app: &TestApp) -> Vec<u64> {
    let mut out = Vec::new();
    for delivery in app.sim.simulator.deliveries(0, usize::MAX) {
        for element in delivery.body.as_ref().unwrap()["MsgBody"]
            .as_array()
            .unwrap()
        {
            if let Some((_, published)) = marker(element) {
                out.push(delivery.received_at_ms.saturating_sub(published));
            }
        }
    }
    out.sort_unstable();
    out
}

type Rows = Vec<(String, String)>;

async fn backlog_and_baseline(n: usize, rate: f64, rows: &mut Rows) {
    let mut app = spawn_app("bench-backlog", rate).await;
    app.sim.simulator.reset();
    let jobs = publish_jobs(&app, 0..n).await;
    let started = Instant::now();
    app.start_worker();
    app.wait_for_elements(n as u64, Duration::from_secs(3600))
        .await;
    let drain = started.elapsed().as_secs_f64();
    app.stop_worker().await.unwrap();
    let stats = app.sim.simulator.stats();
    let bytes: usize = app
        .sim
        .simulator
        .deliveries(0, usize::MAX)
        .iter()
        .map(|d| d.bytes)
        .sum();
    let minimum = packing_minimum(&jobs);
    // The first call goes at once; each further one waits a period.
    let bound = (minimum - 1) as f64 / rate;
    let lat = latencies(&app);
    let fill = 100.0 * bytes as f64 / (stats.deliveries as f64 * MAX_BODY_BYTES as f64);
    rows.push((format!("backlog of {n} jobs (~100 bytes, 3 senders) at {rate} calls/s: calls made / in-order packing minimum"), format!("{} / {minimum}", stats.deliveries)));
    rows.push((
        "mean body bytes per call (share of 12,000)".into(),
        format!("{:.0} ({fill:.1}%)", bytes as f64 / stats.deliveries as f64),
    ));
    rows.push((
        "drain time / arithmetic bound ((minimum - 1) / rate)".into(),
        format!(
            "{drain:.1} s / {bound:.1} s ({:+.2}%)",
            100.0 * (drain / bound - 1.0)
        ),
    ));
    rows.push((
        "frequency-limit answers".into(),
        stats.frequency_violations.to_string(),
    ));
    rows.push((
        "enqueue-to-delivery latency p50 / p99 / max (all queued at the start)".into(),
        format!(
            "{:.1} / {:.1} / {:.1} s",
            percentile(&lat, 0.5) as f64 / 1000.0,
            percentile(&lat, 0.99) as f64 / 1000.0,
            percentile(&lat, 1.0) as f64 / 1000.0
        ),
    ));

    // Baseline, same run: the first 1,000 jobs, one per call, same rate and limiter.
    let base_n = 1000.min(n);
    app.sim.simulator.reset();
    app.config.call.max_jobs = 1;
    publish_jobs(&app, 0..base_n).await;
    let started = Instant::now();
    app.start_worker();
    app.wait_for_elements(base_n as u64, Duration::from_secs(3600))
        .await;
    let base_time = started.elapsed().as_secs_f64();
    app.stop_worker().await.unwrap();
    let base_stats = app.sim.simulator.stats();
    let extrapolated = base_time * n as f64 / base_n as f64;
    rows.push((
        format!("baseline, one job per call: first {base_n} jobs, calls / time"),
        format!(
            "{} calls / {base_time:.1} s ({} frequency-limit answers)",
            base_stats.deliveries, base_stats.frequency_violations
        ),
    ));
    rows.push((
        format!("baseline extrapolated to all {n} jobs / merged drain: ratio"),
        format!(
            "{:.0} s ({:.1} h) / {drain:.1} s: {:.0}x",
            extrapolated,
            extrapolated / 3600.0,
            extrapolated / drain
        ),
    ));
}

async fn idle(n: usize, rows: &mut Rows) {
    // The broker's own hop, publish to a bare consumer, for comparison.
    let app = spawn_app("bench-hop", 5.0).await;
    let channel = app.connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            app.names.jobs.as_str().into(),
            "hop".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let mut hops = Vec::new();
    for i in 0..n {
        let sent = Instant::now();
        app.publish(&format!("hop-{i}"), &job(i, now_ms())).await;
        let delivery = consumer.next().await.unwrap().unwrap();
        hops.push(sent.elapsed().as_micros() as u64);
        delivery.acker.ack(Default::default()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(consumer);
    let _ = channel.close(200, "".into()).await;
    hops.sort_unstable();

    let mut app = spawn_app("bench-idle", 5.0).await;
    app.start_worker();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut total = Vec::new();
    for i in 0..n {
        let sent = Instant::now();
        app.publish(&format!("idle-{i}"), &job(i, now_ms())).await;
        while app.sim.simulator.stats().elements_delivered < (i + 1) as u64 {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        total.push(sent.elapsed().as_micros() as u64);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    app.stop_worker().await.unwrap();
    total.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    rows.push((
        format!("idle: lone job publish-to-simulator p50 / p99 ({n} jobs, 250 ms apart)"),
        format!(
            "{:.2} / {:.2} ms",
            ms(percentile(&total, 0.5)),
            ms(percentile(&total, 0.99))
        ),
    ));
    rows.push((
        "idle: broker's own hop, publish-to-bare-consumer p50 / p99".into(),
        format!(
            "{:.2} / {:.2} ms",
            ms(percentile(&hops, 0.5)),
            ms(percentile(&hops, 0.99))
        ),
    ));
    rows.push(("idle: the worker's own time (p50 difference: decode, permit, sign, HTTP to the simulator and back)".into(), format!("{:.2} ms", ms(percentile(&total, 0.5)) - ms(percentile(&hops, 0.5)))));
}

async fn ingest(n: usize, rows: &mut Rows) {
    // The broker's ceiling: a bare consumer that only acks.
    let bare = spawn_app("bench-bare", 5.0).await;
    publish_jobs(&bare, 0..n).await;
    let channel = bare.connection.create_channel().await.unwrap();
    channel.basic_qos(1000, Default::default()).await.unwrap();
    let mut consumer = channel
        .basic_consume(
            bare.names.jobs.as_str().into(),
            "bare".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    for _ in 0..n {
        let delivery = consumer.next().await.unwrap().unwrap();
        delivery.acker.ack(Default::default()).await.unwrap();
    }
    let bare_rate = n as f64 / started.elapsed().as_secs_f64();
    drop(consumer);
    let _ = channel.close(200, "".into()).await;

    // The worker, as its own process, with the quota out of the way.
    let mut app = spawn_app("bench-ingest", 1.0e9).await;
    app.config.rate = 1.0e6;
    app.sim.simulator.reset();
    publish_jobs(&app, 0..n).await;
    let started = Instant::now();
    let mut worker = worker_process(BIN, &app, &[]);
    let pid = worker.id();
    app.wait_for_elements(n as u64, Duration::from_secs(600))
        .await;
    while app.queue_len(&app.names.jobs).await > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).unwrap_or(f64::NAN);
    signal(&worker, "-TERM");
    wait_exit(&mut worker, Duration::from_secs(20)).await;
    let stats = app.sim.simulator.stats();
    let rate = n as f64 / elapsed;
    rows.push((
        format!("ingest ceiling: {n} jobs consumed, merged, sent and acked (quota out of the way)"),
        format!("{rate:.0} jobs/s in {} calls", stats.deliveries),
    ));
    rows.push((
        "ingest: bare consumer that only acks, same queue setup".into(),
        format!("{bare_rate:.0} jobs/s"),
    ));
    rows.push((
        "ingest: worker / bare consumer".into(),
        format!("{:.0}%", 100.0 * rate / bare_rate),
    ));
    rows.push((
        "ingest: worker CPU seconds per 1,000 jobs".into(),
        format!("{:.3} s", cpu * 1000.0 / n as f64),
    ));
}

async fn memory(sizes: &[usize], rows: &mut Rows) {
    for &n in sizes {
        let app = spawn_app("bench-memory", 5.0).await;
        publish_jobs(&app, 0..n).await;
        let mut worker = worker_process(BIN, &app, &[]);
        let pid = worker.id();
        tokio::time::sleep(Duration::from_secs(15)).await;
        let peak = peak_rss_kib(pid).unwrap_or(0);
        signal(&worker, "-TERM");
        wait_exit(&mut worker, Duration::from_secs(20)).await;
        rows.push((
            format!("peak resident memory of the worker, {n} jobs queued (15 s at 5 calls/s)"),
            format!("{:.1} MiB", peak as f64 / 1024.0),
        ));
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let only: Option<&String> = args.iter().skip(1).find(|a| !a.starts_with("--"));
    let run = |name: &str| only.is_none_or(|o| name.contains(o.as_str()));
    let mut rows: Rows = Vec::new();
    let backlog_jobs = env_usize("BENCH_BACKLOG_JOBS", 100_000);
    if run("backlog") {
        backlog_and_baseline(backlog_jobs, 5.0, &mut rows).await;
    }
    if run("idle") {
        idle(40, &mut rows).await;
    }
    if run("ingest") {
        ingest(env_usize("BENCH_INGEST_JOBS", 100_000), &mut rows).await;
    }
    if run("memory") {
        memory(
            &[10_000, env_usize("BENCH_MEMORY_JOBS", 1_000_000)],
            &mut rows,
        )
        .await;
    }
    let table = markdown_table(&rows);
    println!("{table}");
    if only.is_none() {
        let section = format!(
            "## Throughput, latency, memory: `cargo bench --bench drain`\n\nRun on {}: {}.\n\n{table}",
            today(),
            machine()
        );
        write_section(
            concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md"),
            "drain",
            &section,
        );
    }
}
