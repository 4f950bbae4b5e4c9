//! End-to-end figures against real RabbitMQ and the simulator on loopback:
//! how full the calls are, how close a burst drains to the quota's bound, and
//! how long a lone job takes at idle. Run with `cargo bench --bench drain`.
//! Prints a Markdown table; `BENCH_OUT=FILE` also writes it to FILE.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use broadcast_worker::api::{ApiConfig, MAX_BODY_BYTES};
use broadcast_worker::broker::{self, QueueNames};
use broadcast_worker::simulator::{Simulator, SimulatorConfig, SpawnedSimulator};
use broadcast_worker::usersig::SecretKey;
use broadcast_worker::worker::{Worker, WorkerConfig};
use lapin::options::{BasicPublishOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::BasicProperties;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const APP: u64 = 1400000009;
const ADMIN: &str = "administrator";
const KEY: &str = "bench-key";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A realistic ~100-byte job: text or custom elements, a few senders.
fn job(i: usize) -> Value {
    let from = ["system", "match-bot", "gift-bot"][i % 7 % 3];
    let element = if i.is_multiple_of(2) {
        json!({"MsgType": "TIMTextElem", "MsgContent": {"Text": format!("job:{i} Player{} scored!", i % 997)}})
    } else {
        json!({"MsgType": "TIMCustomElem", "MsgContent": {"Data": format!("job:{i} {{\"gift\":{}}}", i % 31)}})
    };
    json!({"From_Account": from, "MsgBody": [element]})
}

fn job_marker(element: &Value) -> Option<usize> {
    let text = element["MsgContent"]["Text"]
        .as_str()
        .or(element["MsgContent"]["Data"].as_str())?;
    text.strip_prefix("job:")?.split(' ').next()?.parse().ok()
}

struct Bench {
    prefix: String,
    sim: SpawnedSimulator,
    connection: lapin::Connection,
    channel: lapin::Channel,
    config: WorkerConfig,
}

async fn setup(name: &str, rate: f64) -> Bench {
    let prefix = format!("bwbench-{name}-{:08x}", rand::random::<u32>());
    let mut sim_config = SimulatorConfig::new(APP, ADMIN, SecretKey::new(KEY));
    sim_config.rate = rate;
    let sim = Simulator::new(sim_config)
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut config = WorkerConfig::new(
        AMQP_URL.into(),
        &prefix,
        ApiConfig::new(sim.base_url(), APP, ADMIN),
        SecretKey::new(KEY),
    );
    config.rate = rate;
    let connection = broker::connect(AMQP_URL, "bench")
        .await
        .expect("RabbitMQ at 127.0.0.1:5672");
    config.topology.declare(&connection).await.unwrap();
    let channel = broker::confirm_channel(&connection).await.unwrap();
    Bench {
        prefix,
        sim,
        connection,
        channel,
        config,
    }
}

impl Bench {
    async fn publish(&self, jobs: &[(usize, Value)]) -> HashMap<usize, u64> {
        let mut sent_at = HashMap::new();
        for chunk in jobs.chunks(500) {
            let mut confirms = Vec::new();
            for (i, body) in chunk {
                sent_at.insert(*i, now_ms());
                confirms.push(
                    self.channel
                        .basic_publish(
                            "".into(),
                            QueueNames::new(&self.prefix).jobs.as_str().into(),
                            BasicPublishOptions::default(),
                            body.to_string().as_bytes(),
                            BasicProperties::default().with_message_id(format!("bench-{i}").into()),
                        )
                        .await
                        .unwrap(),
                );
            }
            for c in confirms {
                c.await.unwrap();
            }
        }
        sent_at
    }

    async fn cleanup(self) {
        let names = QueueNames::new(&self.prefix);
        let ch = self.connection.create_channel().await.unwrap();
        let _ = ch
            .queue_delete(names.jobs.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = ch
            .queue_delete(names.dead.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = ch
            .exchange_delete(names.dlx.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// Calls needed to send these jobs in order (per merge key), each filled
/// until the next job would not fit.
fn packing_minimum(jobs: &[(usize, Value)]) -> usize {
    let mut open: HashMap<String, usize> = HashMap::new();
    let mut calls = 0;
    for (_, body) in jobs {
        let key = format!("{}|{}", body["From_Account"], body["CloudCustomData"]);
        let element = body["MsgBody"][0].to_string().len();
        let size = open.entry(key.clone()).or_insert(0);
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
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn burst(n: usize, rate: f64, rows: &mut Vec<(String, String)>) {
    let bench = setup("burst", rate).await;
    let jobs: Vec<(usize, Value)> = (0..n).map(|i| (i, job(i))).collect();
    let worker = Worker::new(bench.config.clone()).unwrap();
    let token = CancellationToken::new();
    let handle = tokio::spawn(worker.run(token.clone()));
    let started = Instant::now();
    let sent_at = bench.publish(&jobs).await;
    let publish_time = started.elapsed();
    while bench.sim.simulator.stats().elements_delivered < n as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = started.elapsed();
    token.cancel();
    let _ = handle.await;
    let stats = bench.sim.simulator.stats();
    let deliveries = bench.sim.simulator.deliveries(0, usize::MAX);
    let total_bytes: usize = deliveries.iter().map(|d| d.bytes).sum();
    let mut latencies: Vec<u64> = Vec::new();
    for d in &deliveries {
        for element in d.body.as_ref().unwrap()["MsgBody"].as_array().unwrap() {
            if let Some(i) = job_marker(element) {
                latencies.push(d.received_at_ms.saturating_sub(sent_at[&i]));
            }
        }
    }
    latencies.sort_unstable();
    let minimum = packing_minimum(&jobs);
    let bound = minimum as f64 / rate;
    rows.push((
        format!("burst of {n} jobs at {rate} calls/s: calls made / in-order packing minimum"),
        format!("{} / {minimum}", stats.deliveries),
    ));
    rows.push((
        "mean body bytes per call (share of 12,000)".into(),
        format!(
            "{:.0} ({:.1}%)",
            total_bytes as f64 / stats.deliveries as f64,
            100.0 * total_bytes as f64 / (stats.deliveries as f64 * 12_000.0)
        ),
    ));
    rows.push((
        "drain time / arithmetic bound (minimum calls / rate)".into(),
        format!(
            "{:.2} s / {bound:.2} s ({:+.1}%), publishing took {:.2} s",
            drain.as_secs_f64(),
            100.0 * (drain.as_secs_f64() / bound - 1.0),
            publish_time.as_secs_f64()
        ),
    ));
    rows.push((
        "frequency-limit answers".into(),
        stats.frequency_violations.to_string(),
    ));
    rows.push((
        "enqueue-to-delivery latency p50 / p99 / max".into(),
        format!(
            "{} / {} / {} ms",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().unwrap()
        ),
    ));
    bench.cleanup().await;
}

async fn idle(n: usize, rows: &mut Vec<(String, String)>) {
    let bench = setup("idle", 5.0).await;
    let worker = Worker::new(bench.config.clone()).unwrap();
    let token = CancellationToken::new();
    let handle = tokio::spawn(worker.run(token.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::new();
    for i in 0..n {
        let sent = bench.publish(&[(i, job(i))]).await[&i];
        while bench.sim.simulator.stats().elements_delivered < (i + 1) as u64 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let d = bench.sim.simulator.deliveries(i as u64, 1);
        latencies.push(d[0].received_at_ms.saturating_sub(sent));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    token.cancel();
    let _ = handle.await;
    latencies.sort_unstable();
    rows.push((
        format!("idle: lone job enqueue-to-delivery p50 / p99 ({n} jobs, 250 ms apart)"),
        format!(
            "{} / {} ms",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        ),
    ));
    bench.cleanup().await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; a name filter may follow.
    let only: Option<&String> = args.iter().skip(1).find(|a| !a.starts_with("--"));
    let mut rows = Vec::new();
    let run = |name: &str| only.is_none_or(|o| name.contains(o.as_str()));
    if run("burst") {
        let n: usize = std::env::var("BENCH_BURST_JOBS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        burst(n, 5.0, &mut rows).await;
    }
    if run("idle") {
        idle(40, &mut rows).await;
    }
    let mut table = String::from("| figure | value |\n|---|---|\n");
    for (k, v) in &rows {
        table.push_str(&format!("| {k} | {v} |\n"));
    }
    println!("{table}");
    if let Ok(path) = std::env::var("BENCH_OUT") {
        std::fs::write(path, &table).unwrap();
    }
}
