//! The ingest endpoint (`broadcast-worker ingest`, the release build) on
//! this machine, publishing to the local RabbitMQ with confirms: jobs/s
//! accepted by single POSTs from 32 concurrent clients, by batches of 500
//! from 4, and with the ledger (an Idempotency-Key per job: its claim and
//! its mark in PostgreSQL); and the latency of a single POST at idle (one
//! client, one request at a time), p50 / p99, measured by the client.
//!
//! `cargo bench --bench ingest` prints the table and writes it into
//! BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");
const TOKEN: &str = "bench-token-for-every-app-0001";

fn job(i: usize) -> serde_json::Value {
    json!({"From_Account": "system", "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": format!("gift {i} from Player{}", i % 89)}}]})
}

struct Endpoint(std::process::Child, String);

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start(app: &TestApp, database: Option<String>) -> Endpoint {
    let dir = std::env::temp_dir().join(format!("{}-bench-ingest", app.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokens"), format!("* {TOKEN}\n")).unwrap();
    let port = free_port();
    let mut command = std::process::Command::new(BIN);
    command
        .arg("ingest")
        .env("AMQP_URL", AMQP_URL)
        .env("BROADCAST_QUEUE_PREFIX", &app.prefix)
        .env("TIM_SDKAPPID", APP.to_string())
        .env("BROADCAST_INGEST_ADDR", format!("127.0.0.1:{port}"))
        .env("BROADCAST_INGEST_TOKENS_FILE", dir.join("tokens"))
        .env("BROADCAST_INGEST_REQUESTS_PER_SECOND", "1000000")
        .env_remove("BROADCAST_APPS_FILE")
        .env_remove("DATABASE_URL")
        .stderr(std::process::Stdio::null());
    if let Some(url) = database {
        command.env("DATABASE_URL", url);
    }
    let endpoint = Endpoint(command.spawn().unwrap(), format!("http://127.0.0.1:{port}"));
    for _ in 0..100 {
        if reqwest::get(format!("{}/healthz", endpoint.1))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    endpoint
}

/// Posts `n` single jobs from `clients` concurrent clients; jobs/s.
async fn singles(base: &str, n: usize, clients: usize, keyed: bool) -> f64 {
    let client = reqwest::Client::new();
    let url = Arc::new(format!("{base}/v1/apps/{APP}/broadcasts"));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                for i in (c..n).step_by(clients) {
                    let mut request = client.post(url.as_str()).bearer_auth(TOKEN).json(&job(i));
                    if keyed {
                        request = request.header("Idempotency-Key", format!("k-{i}"));
                    }
                    let status = request.send().await.unwrap().status();
                    assert_eq!(status, 202);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Posts `batches` batches of `size` jobs from `clients` concurrent clients; jobs/s.
async fn batched(base: &str, batches: usize, size: usize, clients: usize) -> f64 {
    let client = reqwest::Client::new();
    let url = Arc::new(format!("{base}/v1/apps/{APP}/broadcasts:batch"));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                for b in (c..batches).step_by(clients) {
                    let jobs: Vec<_> = (0..size)
                        .map(|i| json!({"job": job(b * size + i)}))
                        .collect();
                    let response = client
                        .post(url.as_str())
                        .bearer_auth(TOKEN)
                        .json(&json!({"jobs": jobs}))
                        .send()
                        .await
                        .unwrap();
                    let body: serde_json::Value = response.json().await.unwrap();
                    assert!(body["results"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|r| r["status"] == 202));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (batches * size) as f64 / started.elapsed().as_secs_f64()
}

/// One client, one POST at a time: each request's time, ms, sorted.
async fn latencies(base: &str, n: usize) -> Vec<f64> {
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/apps/{APP}/broadcasts");
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let status = client
            .post(&url)
            .bearer_auth(TOKEN)
            .json(&job(i))
            .send()
            .await
            .unwrap()
            .status();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 202);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    times.sort_by(f64::total_cmp);
    times
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::main]
async fn main() {
    let app = spawn_app("bench-ingest", 5.0).await;
    let endpoint = start(&app, None).await;
    // Warm up: the connection, the queues declared.
    singles(&endpoint.1, 200, 4, false).await;
    let idle = latencies(&endpoint.1, 500).await;
    let single = singles(&endpoint.1, 20_000, 32, false).await;
    let batch = batched(&endpoint.1, 80, 500, 4).await;
    drop(endpoint);
    let db = TestDatabase::create("bench-ingest").await;
    let ledgered = start(&app, Some(db.url())).await;
    singles(&ledgered.1, 200, 4, false).await;
    let keyed = singles(&ledgered.1, 10_000, 32, true).await;
    drop(ledgered);
    let rows = vec![
        (
            "single POSTs, 32 concurrent clients, no ledger: jobs accepted per second".to_string(),
            format!("{single:.0}"),
        ),
        (
            "batches of 500 jobs, 4 concurrent clients: jobs accepted per second".into(),
            format!("{batch:.0}"),
        ),
        (
            "single POSTs with an Idempotency-Key each and the ledger, 32 clients: jobs per second"
                .into(),
            format!("{keyed:.0}"),
        ),
        (
            "one single POST at idle (500, one at a time): p50 / p99 / max".into(),
            format!(
                "{:.2} / {:.2} / {:.2} ms",
                percentile(&idle, 0.5),
                percentile(&idle, 0.99),
                idle.last().copied().unwrap_or(0.0)
            ),
        ),
    ];
    let table = markdown_table(&rows);
    println!("{table}");
    let section = format!(
        "## The ingest endpoint: `cargo bench --bench ingest`\n\nRun on {}: {}. The release build's `ingest` and the client on the same 2 cores, RabbitMQ 3.10 (publisher confirms, a quorum queue) and PostgreSQL on the same machine; every answer a 202 after the broker's confirm.\n\n{table}",
        today(),
        machine()
    );
    write_section(
        concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md"),
        "ingest",
        &section,
    );
}
