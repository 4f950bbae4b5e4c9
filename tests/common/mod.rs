//! Test harness: each test gets its own queue prefix, its own simulator on a
//! loopback port, and a worker it can start and stop. Queues are deleted when
//! the app is dropped, pass or fail.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use broadcast_worker::broker::{self, QueueNames};
use broadcast_worker::ops::telemetry::WorkerStatus;
use broadcast_worker::pipeline::{Worker, WorkerConfig, WorkerError};
use broadcast_worker::tencent::client::ApiConfig;
use broadcast_worker::tencent::simulator::{Simulator, SimulatorConfig, SpawnedSimulator};
use broadcast_worker::tencent::usersig::SecretKey;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const APP: u64 = 1400000007;
pub const ADMIN: &str = "administrator";
pub const KEY: &str = "worker-test-secret";

pub async fn connect() -> Connection {
    broker::connect(AMQP_URL, "broadcast-worker tests")
        .await
        .unwrap_or_else(|e| {
            panic!("these tests need RabbitMQ at 127.0.0.1:5672 (guest/guest): {e}")
        })
}

pub fn unique_prefix(test: &str) -> String {
    format!("bwtest-{test}-{:08x}", rand::random::<u32>())
}

type RunningWorker = (
    CancellationToken,
    JoinHandle<Result<(), WorkerError>>,
    std::sync::Arc<WorkerStatus>,
);

pub struct TestApp {
    pub prefix: String,
    pub names: QueueNames,
    pub sim: SpawnedSimulator,
    pub config: WorkerConfig,
    pub connection: Connection,
    pub channel: Channel,
    worker: Option<RunningWorker>,
}

/// A simulator at `rate` and a worker config pointing at it; the worker is not
/// started yet, so tests can queue jobs first.
pub async fn spawn_app(test: &str, rate: f64) -> TestApp {
    let prefix = unique_prefix(test);
    let mut sim_config = SimulatorConfig::new(APP, ADMIN, SecretKey::new(KEY));
    sim_config.rate = rate;
    let sim = Simulator::new(sim_config)
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator binds");
    let api = ApiConfig::new(sim.base_url(), APP, ADMIN);
    let mut config = WorkerConfig::new(AMQP_URL.into(), &prefix, api, SecretKey::new(KEY));
    config.rate = rate;
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(400);
    config.app_fault_probe = Duration::from_millis(300);
    config.slow_down.hold = Duration::from_secs(2);
    config.reconnect_max = Duration::from_secs(2);
    let connection = connect().await;
    config
        .topology
        .declare(&connection)
        .await
        .expect("topology declares");
    let channel = broker::confirm_channel(&connection).await.unwrap();
    TestApp {
        names: QueueNames::new(&prefix),
        prefix,
        sim,
        config,
        connection,
        channel,
        worker: None,
    }
}

/// A text job whose element names its id, so deliveries can be traced back.
pub fn text_job(id: &str) -> Value {
    json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": format!("job:{id}")}}]})
}

impl TestApp {
    pub fn start_worker(&mut self) {
        assert!(self.worker.is_none(), "worker already running");
        let worker = Worker::new(self.config.clone()).expect("worker builds");
        let status = worker.status();
        let token = CancellationToken::new();
        let handle = tokio::spawn(worker.run(token.clone()));
        self.worker = Some((token, handle, status));
    }

    pub fn status(&self) -> std::sync::Arc<WorkerStatus> {
        self.worker.as_ref().expect("worker running").2.clone()
    }

    pub async fn stop_worker(&mut self) -> Result<(), WorkerError> {
        let (token, handle, _) = self.worker.take().expect("worker running");
        token.cancel();
        tokio::time::timeout(Duration::from_secs(20), handle)
            .await
            .expect("worker stops within 20 s")
            .expect("worker task does not panic")
    }

    /// Publishes raw bodies with the given ids (None: no message_id) and headers.
    pub async fn publish_raw(&self, id: Option<&str>, body: &[u8], headers: Option<FieldTable>) {
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(id) = id {
            properties = properties.with_message_id(id.into());
        }
        if let Some(headers) = headers {
            properties = properties.with_headers(headers);
        }
        broker::publish_confirmed(&self.channel, "", &self.names.jobs, body, properties)
            .await
            .expect("publish confirmed");
    }

    pub async fn publish(&self, id: &str, body: &Value) {
        self.publish_raw(Some(id), body.to_string().as_bytes(), None)
            .await;
    }

    /// Publishes many jobs with pipelined confirms.
    pub async fn publish_many(&self, jobs: &[(String, Value)]) {
        let mut confirms = Vec::new();
        for (id, body) in jobs {
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    self.names.jobs.as_str().into(),
                    lapin::options::BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body.to_string().as_bytes(),
                    BasicProperties::default()
                        .with_message_id(id.as_str().into())
                        .with_delivery_mode(2),
                )
                .await
                .unwrap();
            confirms.push(confirm);
        }
        for confirm in confirms {
            broker::check_confirmation("jobs", confirm.await.unwrap()).unwrap();
        }
    }

    /// Every delivered element's text, counted.
    pub fn delivered_texts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for delivery in self.sim.simulator.deliveries(0, usize::MAX) {
            for element in delivery.body.unwrap()["MsgBody"].as_array().unwrap() {
                if let Some(text) = element["MsgContent"]["Text"].as_str() {
                    *counts.entry(text.to_string()).or_insert(0) += 1;
                }
            }
        }
        counts
    }

    /// Waits until `done` holds, polling; panics with `what` after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_for_elements(&self, n: u64, timeout: Duration) {
        self.wait_for(&format!("{n} delivered elements"), timeout, |app| {
            app.sim.simulator.stats().elements_delivered >= n
        })
        .await;
    }

    /// Messages ready in a queue.
    pub async fn queue_len(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.unwrap();
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = channel.close(200, "".into()).await;
        q.message_count()
    }

    /// Waits until a queue holds exactly `n` ready messages (returns to a
    /// quorum queue are applied asynchronously).
    pub async fn wait_for_len(&self, queue: &str, n: u32) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let len = self.queue_len(queue).await;
            if len == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue} holds {len}, not {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_for_dead(&self, n: u32, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let len = self.queue_len(&self.names.dead).await;
            if len >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} dead letters (have {len})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Consumes and acks `n` jobs from the jobs queue (single active consumer
    /// queues do not allow basic.get).
    pub async fn consume(&self, n: usize) -> Vec<lapin::message::Delivery> {
        use futures_util::StreamExt;
        let channel = self.connection.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                self.names.jobs.as_str().into(),
                "test-consumer".into(),
                lapin::options::BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        while out.len() < n {
            let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .expect("a job arrives")
                .expect("consumer open")
                .unwrap();
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            out.push(delivery);
        }
        let _ = channel.close(200, "".into()).await;
        out
    }

    /// Takes every dead letter off the dead queue.
    pub async fn take_dead_letters(&self) -> Vec<DeadMessage> {
        let channel = self.connection.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(message) = channel
            .basic_get(self.names.dead.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            let delivery = message.delivery;
            out.push(DeadMessage {
                id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str().to_string()),
                reason: broker::header_str(&delivery.properties, "x-reason").unwrap_or_default(),
                error_code: broker::header_i64(&delivery.properties, "x-error-code"),
                error_info: broker::header_str(&delivery.properties, "x-error-info")
                    .unwrap_or_default(),
                attempts: broker::header_i64(&delivery.properties, "x-attempts"),
                first_seen: broker::header_i64(&delivery.properties, "x-first-seen"),
                body: delivery.data.clone(),
            });
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
        }
        let _ = channel.close(200, "".into()).await;
        out
    }
}

#[derive(Debug, Clone)]
pub struct DeadMessage {
    pub id: Option<String>,
    pub reason: String,
    pub error_code: Option<i64>,
    pub error_info: String,
    pub attempts: Option<i64>,
    pub first_seen: Option<i64>,
    pub body: Vec<u8>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some((token, handle, _)) = self.worker.take() {
            token.cancel();
            handle.abort();
        }
        delete_topology(&self.prefix);
    }
}

/// Deletes a prefix's queues and exchange, from any context (Drop included).
pub fn delete_topology(prefix: &str) {
    let names = QueueNames::new(prefix);
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let Ok(connection) = broker::connect(AMQP_URL, "broadcast-worker test cleanup").await
            else {
                return;
            };
            if let Ok(channel) = connection.create_channel().await {
                for queue in [&names.jobs, &names.dead] {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                let _ = channel
                    .exchange_delete(names.dlx.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = connection.close(200, "".into()).await;
        });
    })
    .join();
}

/// A header table with one integer entry.
pub fn int_header(name: &str, value: i64) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(name.into(), AMQPValue::LongLongInt(value));
    table
}

/// A TCP proxy between the worker and RabbitMQ, so a test can cut the
/// worker's connection without touching the shared broker.
pub struct TcpProxy {
    pub addr: std::net::SocketAddr,
    /// Connections accepted so far.
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// While set, new connections are closed at once.
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Stalls and delays applied to the bytes in flight.
    pub faults: std::sync::Arc<ProxyFaults>,
    cut: tokio::sync::watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: &str) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let upstream = upstream.to_string();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let refusing = down.clone();
        let faults = std::sync::Arc::new(ProxyFaults::default());
        let proxy_faults = faults.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if refusing.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let upstream = upstream.clone();
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                let faults = faults.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        _ = pump(client_read, server_write, faults.clone()) => {}
                        _ = pump(server_read, client_write, faults) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        TcpProxy {
            addr,
            accepted,
            faults: proxy_faults,
            down,
            cut,
            task,
        }
    }

    /// Drops every connection open now (new ones are accepted).
    pub fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Cuts every connection and refuses new ones until `set_down(false)`.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
        if down {
            self.cut_all();
        }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A database of the test's own on the shared PostgreSQL, dropped at the end.
pub struct TestDatabase {
    pub name: String,
}

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

impl TestDatabase {
    pub async fn create(test: &str) -> TestDatabase {
        use sqlx::Connection;
        let name = format!(
            "bwtest_{}_{:08x}",
            test.replace('-', "_"),
            rand::random::<u32>()
        );
        let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL).await.unwrap_or_else(|e| {
            panic!("these tests need PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth): {e}")
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let _ = admin.close().await;
        TestDatabase { name }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    /// The URL through a proxy at `addr`.
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        format!("postgres://postgres@{addr}/{}", self.name)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut admin) = sqlx::PgConnection::connect(PG_ADMIN_URL).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

/// `broadcast-worker run` as a child process against this app's queues and
/// simulator, with extra environment.
pub fn worker_process(app: &TestApp, extra: &[(&str, String)]) -> std::process::Child {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_broadcast-worker"));
    command
        .arg("run")
        .env("AMQP_URL", &app.config.amqp_url)
        .env("BROADCAST_QUEUE_PREFIX", &app.prefix)
        .env("TIM_BASE_URL", app.sim.base_url().as_str())
        .env("TIM_SDKAPPID", APP.to_string())
        .env("TIM_IDENTIFIER", ADMIN)
        .env("TIM_SECRET_KEY", KEY)
        .env("BROADCAST_RATE", app.config.rate.to_string())
        .env(
            "BROADCAST_DELIVERY_LIMIT",
            app.config.topology.delivery_limit.to_string(),
        )
        .env("BROADCAST_METRICS_ADDR", "127.0.0.1:0")
        .env_remove("TIM_SECRET_KEY_FILE")
        .env_remove("DATABASE_URL")
        .env_remove("BROADCAST_TEST_CRASH_AT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (key, value) in extra {
        command.env(key, value);
    }
    command.spawn().expect("the worker binary starts")
}

pub fn signal(child: &std::process::Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub async fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Jobs of about 200 bytes each, traceable by their text.
pub fn backlog(prefix: &str, n: usize) -> Vec<(String, Value)> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i:04}");
            let mut body = text_job(&id);
            body["MsgBody"][0]["MsgContent"]["Text"] =
                format!("job:{id} {}", "w".repeat(150)).into();
            (id, body)
        })
        .collect()
}

pub fn text_of(body: &Value) -> String {
    body["MsgBody"][0]["MsgContent"]["Text"]
        .as_str()
        .unwrap()
        .to_string()
}

impl TestApp {
    /// Asserts every job was delivered exactly once, as the simulator counts
    /// deliveries after its repeat filter.
    pub fn assert_each_delivered_once(&self, jobs: &[(String, Value)]) {
        let texts = self.delivered_texts();
        let mut wrong = Vec::new();
        for (id, body) in jobs {
            let n = texts.get(&text_of(body)).copied().unwrap_or(0);
            if n != 1 {
                wrong.push(format!("{id}: {n}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "jobs not delivered exactly once: {wrong:?}"
        );
    }

    pub fn all_delivered(&self, jobs: &[(String, Value)]) -> bool {
        let texts = self.delivered_texts();
        jobs.iter()
            .all(|(_, body)| texts.contains_key(&text_of(body)))
    }
}

impl TestApp {
    /// Publishes many bodies with a bounded window of confirms (for large
    /// backlogs in benchmarks).
    pub async fn publish_bulk(&self, jobs: impl Iterator<Item = (String, Vec<u8>)>) {
        let mut window = Vec::with_capacity(2000);
        for (id, body) in jobs {
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    self.names.jobs.as_str().into(),
                    lapin::options::BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default()
                        .with_message_id(id.as_str().into())
                        .with_delivery_mode(2),
                )
                .await
                .unwrap();
            window.push(confirm);
            if window.len() == 2000 {
                for confirm in window.drain(..) {
                    broker::check_confirmation("jobs", confirm.await.unwrap()).unwrap();
                }
            }
        }
        for confirm in window {
            broker::check_confirmation("jobs", confirm.await.unwrap()).unwrap();
        }
    }
}

/// Replaces (or appends) the section `name` of a Markdown file, between
/// `<!-- name:start -->` and `<!-- name:end -->`.
pub fn write_section(path: &str, name: &str, content: &str) {
    let start = format!("<!-- {name}:start -->");
    let end = format!("<!-- {name}:end -->");
    let block = format!("{start}\n{}\n{end}", content.trim_end());
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let text = match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{}{}", &text[..a], block, &text[b + end.len()..]),
        _ => format!("{}\n\n{}\n", text.trim_end(), block),
    };
    std::fs::write(path, text).unwrap();
}

/// A two-column Markdown table of a benchmark's figures.
pub fn markdown_table(rows: &[(String, String)]) -> String {
    let mut table = String::from("| figure | value |\n|---|---|\n");
    for (figure, value) in rows {
        table.push_str(&format!("| {figure} | {value} |\n"));
    }
    table
}

/// The machine a benchmark ran on, in one line.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let rabbit = std::process::Command::new("rabbitmqctl")
        .arg("version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB, RabbitMQ {rabbit} and PostgreSQL on the same machine, release build")
}

/// Resident memory high-water mark of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// What the proxy does to bytes in flight: hold them (a stalled link) or
/// delay each chunk (a slow one).
#[derive(Default)]
pub struct ProxyFaults {
    pub stalled: std::sync::atomic::AtomicBool,
    pub delay_ms: std::sync::atomic::AtomicU64,
}

/// Copies one direction, chunk by chunk, under the proxy's faults.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: std::sync::Arc<ProxyFaults>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while faults.stalled.load(SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let delay = faults.delay_ms.load(SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
