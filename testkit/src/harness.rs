//! The test app: each test gets its own queue prefix, its own simulator on a
//! loopback port, and a worker it can start and stop. Publishing jobs,
//! waiting on deliveries and queues, and reading dead letters. Queues are
//! deleted when the app is dropped, pass or fail.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use broadcast_worker::broker::{self, QueueNames};
use broadcast_worker::pipeline::{Worker, WorkerConfig, WorkerError};
use broadcast_worker::simulator::{
    Fault, FaultPlan, FaultRule, Simulator, SimulatorConfig, SpawnedSimulator,
};
use broadcast_worker::status::WorkerStatus;
use broadcast_worker::tencent::client::ApiConfig;
use broadcast_worker::tencent::usersig::SecretKey;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
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
    connect_to(AMQP_URL).await
}

/// A connection to the broker at `url` (one address or several).
pub async fn connect_to(url: &str) -> Connection {
    broker::connect(url, "broadcast-worker tests")
        .await
        .unwrap_or_else(|e| panic!("these tests need RabbitMQ at {url} (guest/guest): {e}"))
}

pub fn unique_prefix(test: &str) -> String {
    format!("bwtest-{test}-{:08x}", rand::random::<u32>())
}

type RunningWorker = (
    CancellationToken,
    JoinHandle<Result<(), WorkerError>>,
    Arc<WorkerStatus>,
);

pub struct TestApp {
    pub prefix: String,
    /// The broker the app's queues are on (the shared one, or a cluster's
    /// nodes): the worker's `AMQP_URL`.
    pub broker_url: String,
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
    spawn_app_with(test, rate, |_| {}).await
}

/// The same, with the simulator configured further (its accounts, its
/// reading of the repeat rule, ...).
pub async fn spawn_app_with(
    test: &str,
    rate: f64,
    configure: impl FnOnce(&mut SimulatorConfig),
) -> TestApp {
    spawn_app_named(unique_prefix(test), APP, KEY, rate, configure).await
}

/// A test app with queues under `prefix` (`{prefix}.jobs`, ...) for the app
/// `sdkappid` whose secret key is `key`: a fleet's app, for example.
pub async fn spawn_app_named(
    prefix: String,
    sdkappid: u64,
    key: &str,
    rate: f64,
    configure: impl FnOnce(&mut SimulatorConfig),
) -> TestApp {
    spawn_app_on(AMQP_URL, prefix, sdkappid, key, rate, configure).await
}

/// App `sdkappid` of the fleet under `fleet_prefix`, on its queues as a
/// fleet names them (its own jobs queue, the fleet's dead-letter queue).
pub async fn spawn_fleet_app(
    fleet_prefix: &str,
    sdkappid: u64,
    key: &str,
    rate: f64,
    configure: impl FnOnce(&mut SimulatorConfig),
) -> TestApp {
    spawn_fleet_app_on(AMQP_URL, fleet_prefix, sdkappid, key, rate, configure).await
}

/// The same, on the broker at `broker_url`.
pub async fn spawn_fleet_app_on(
    broker_url: &str,
    fleet_prefix: &str,
    sdkappid: u64,
    key: &str,
    rate: f64,
    configure: impl FnOnce(&mut SimulatorConfig),
) -> TestApp {
    let names = QueueNames::in_fleet(fleet_prefix, sdkappid);
    let prefix = format!("{fleet_prefix}.{sdkappid}");
    spawn_with_names(broker_url, prefix, names, sdkappid, key, rate, configure).await
}

/// The same, on the broker at `broker_url` (a cluster's nodes, say).
pub async fn spawn_app_on(
    broker_url: &str,
    prefix: String,
    sdkappid: u64,
    key: &str,
    rate: f64,
    configure: impl FnOnce(&mut SimulatorConfig),
) -> TestApp {
    let names = QueueNames::new(&prefix);
    spawn_with_names(broker_url, prefix, names, sdkappid, key, rate, configure).await
}

async fn spawn_with_names(
    broker_url: &str,
    prefix: String,
    names: QueueNames,
    sdkappid: u64,
    key: &str,
    rate: f64,
    configure: impl FnOnce(&mut SimulatorConfig),
) -> TestApp {
    let mut sim_config = SimulatorConfig::new(sdkappid, ADMIN, SecretKey::new(key));
    sim_config.rate = rate;
    configure(&mut sim_config);
    let sim = Simulator::new(sim_config)
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator binds");
    let api = ApiConfig::new(sim.base_url(), sdkappid, ADMIN);
    let mut config = WorkerConfig::new(broker_url.into(), &prefix, api, SecretKey::new(key));
    config.topology.names = names.clone();
    config.rate = rate;
    config.policy.backoff_min = Duration::from_millis(50);
    config.policy.backoff_max = Duration::from_millis(400);
    config.policy.app_fault_probe = Duration::from_millis(300);
    config.slow_down.hold = Duration::from_secs(2);
    config.reconnect_max = Duration::from_secs(2);
    let connection = connect_to(broker_url).await;
    config
        .topology
        .declare(&connection)
        .await
        .expect("topology declares");
    let channel = broker::confirm_channel(&connection).await.unwrap();
    TestApp {
        names,
        prefix,
        broker_url: broker_url.to_string(),
        sim,
        config,
        connection,
        channel,
        worker: None,
    }
}

/// A fault plan under which the service refuses, with `code`, every call
/// whose body contains `text` (a job it will never accept).
pub fn refuse_bodies_containing(text: &str, code: i64) -> FaultPlan {
    FaultPlan {
        rules: vec![FaultRule {
            body_contains: text.into(),
            fault: Fault {
                code: Some(code),
                ..Fault::default()
            },
        }],
        ..FaultPlan::default()
    }
}

/// A text job whose element names its id, so deliveries can be traced back.
pub fn text_job(id: &str) -> Value {
    json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": format!("job:{id}")}}]})
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

/// A header table with one integer entry.
pub fn int_header(name: &str, value: i64) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(name.into(), AMQPValue::LongLongInt(value));
    table
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

    pub fn status(&self) -> Arc<WorkerStatus> {
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

    /// Publishes a job to the app's urgent lane.
    pub async fn publish_urgent(&self, id: &str, body: &Value) {
        let properties = BasicProperties::default()
            .with_message_id(id.into())
            .with_delivery_mode(2);
        let body = body.to_string();
        broker::publish_confirmed(
            &self.channel,
            "",
            &self.names.urgent,
            body.as_bytes(),
            properties,
        )
        .await
        .expect("publish confirmed");
    }

    /// The texts of every call's elements, call by call, in the order sent.
    pub fn calls(&self) -> Vec<Vec<String>> {
        self.sim
            .simulator
            .deliveries(0, usize::MAX)
            .iter()
            .map(|d| {
                d.body.as_ref().expect("bodies kept")["MsgBody"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|e| e["MsgContent"]["Text"].as_str().map(str::to_string))
                    .collect()
            })
            .collect()
    }

    pub async fn publish(&self, id: &str, body: &Value) {
        self.publish_raw(Some(id), body.to_string().as_bytes(), None)
            .await;
    }

    /// Publishes many jobs with pipelined confirms.
    pub async fn publish_many(&self, jobs: &[(String, Value)]) {
        self.publish_bulk(
            jobs.iter()
                .map(|(id, body)| (id.clone(), body.to_string().into_bytes())),
        )
        .await;
    }

    /// Publishes many jobs with pipelined confirms, 2,000 at a time.
    pub async fn publish_bulk(&self, jobs: impl Iterator<Item = (String, Vec<u8>)>) {
        let messages = jobs.map(|(id, body)| {
            let properties = BasicProperties::default()
                .with_message_id(id.as_str().into())
                .with_delivery_mode(2);
            (body, properties)
        });
        self.publish_pipelined("", &self.names.jobs, messages, 2000)
            .await;
    }

    /// Publishes ready-made jobs (bodies with their properties) to the jobs
    /// queue, with pipelined confirms.
    pub async fn publish_bulk_with(&self, jobs: impl Iterator<Item = (Vec<u8>, BasicProperties)>) {
        self.publish_pipelined("", &self.names.jobs, jobs, 2000)
            .await;
    }

    /// Publishes ready-made dead letters straight to the dead-letter
    /// exchange, `window` confirms outstanding at a time.
    pub async fn publish_dead_letters(
        &self,
        dead_letters: impl Iterator<Item = (Vec<u8>, BasicProperties)>,
        window: usize,
    ) {
        self.publish_pipelined(&self.names.dlx, "", dead_letters, window)
            .await;
    }

    async fn publish_pipelined(
        &self,
        exchange: &str,
        routing_key: &str,
        messages: impl Iterator<Item = (Vec<u8>, BasicProperties)>,
        window: usize,
    ) {
        let mut pending = Vec::with_capacity(window);
        for (body, properties) in messages {
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    properties,
                )
                .await
                .unwrap();
            pending.push(confirm);
            if pending.len() >= window {
                for confirm in pending.drain(..) {
                    broker::check_confirmation(exchange, confirm.await.unwrap()).unwrap();
                }
            }
        }
        for confirm in pending {
            broker::check_confirmation(exchange, confirm.await.unwrap()).unwrap();
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

    /// Polls a queue's ready messages until `done` holds for their number;
    /// the last number if `timeout` passes first.
    async fn poll_len(
        &self,
        queue: &str,
        timeout: Duration,
        done: impl Fn(u32) -> bool,
    ) -> Result<(), u32> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let len = self.queue_len(queue).await;
            if done(len) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(len);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a queue holds exactly `n` ready messages (returns to a
    /// quorum queue are applied asynchronously).
    pub async fn wait_for_len(&self, queue: &str, n: u32) {
        if let Err(len) = self
            .poll_len(queue, Duration::from_secs(10), |len| len == n)
            .await
        {
            panic!("{queue} holds {len}, not {n}");
        }
    }

    pub async fn wait_for_dead(&self, n: u32, timeout: Duration) {
        if let Err(len) = self
            .poll_len(&self.names.dead, timeout, |len| len >= n)
            .await
        {
            panic!("timed out waiting for {n} dead letters (have {len})");
        }
    }

    /// Consumes and acks `n` jobs from the jobs queue (single active consumer
    /// queues do not allow basic.get).
    pub async fn consume(&self, n: usize) -> Vec<lapin::message::Delivery> {
        let channel = self.connection.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                self.names.jobs.as_str().into(),
                "test-consumer".into(),
                BasicConsumeOptions::default(),
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

    /// Every message ready in the jobs queue, read and returned to it
    /// (consumed unacked, then the channel closed). No other consumer may
    /// be on the queue.
    pub async fn peek_jobs(&self) -> Vec<lapin::message::Delivery> {
        let n = self.queue_len(&self.names.jobs).await as usize;
        let channel = self.connection.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                self.names.jobs.as_str().into(),
                "test-peek".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        while out.len() < n {
            let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .expect("a message arrives")
                .expect("consumer open")
                .unwrap();
            out.push(delivery);
        }
        let _ = channel.close(200, "".into()).await;
        out
    }

    /// How many jobs wait in the jobs queue: what [`TestApp::peek_jobs`]
    /// reads, less batons (a stopped session's baton may return to the
    /// queue with its channel). No other consumer may be on the queue.
    pub async fn jobs_waiting(&self) -> usize {
        let left = self.peek_jobs().await;
        left.iter()
            .filter(|d| !broadcast_worker::pipeline::is_baton(d))
            .count()
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

/// A dead letter with the headers the worker put on it.
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
        delete_topology_on(&self.broker_url, &self.prefix);
    }
}

/// Deletes a prefix's queues and exchange, from any context (Drop included).
pub fn delete_topology(prefix: &str) {
    delete_topology_on(AMQP_URL, prefix);
}

/// The same, on the broker at `url`.
pub fn delete_topology_on(url: &str, prefix: &str) {
    let names = QueueNames::new(prefix);
    let url = url.to_string();
    run_detached(async move {
        let Ok(connection) = broker::connect(&url, "broadcast-worker test cleanup").await else {
            return;
        };
        if let Ok(channel) = connection.create_channel().await {
            for queue in [&names.jobs, &names.urgent, &names.dead] {
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
}

/// Deletes one queue, from any context (Drop included).
pub fn delete_queue(queue: &str) {
    delete_queue_on(AMQP_URL, queue);
}

/// The same, on the broker at `url`.
pub fn delete_queue_on(url: &str, queue: &str) {
    let (url, queue) = (url.to_string(), queue.to_string());
    run_detached(async move {
        let Ok(connection) = broker::connect(&url, "broadcast-worker test cleanup").await else {
            return;
        };
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = connection.close(200, "".into()).await;
    });
}

/// Runs `cleanup` to the end on a thread and runtime of its own, so it works
/// from any context (Drop included, inside or outside a runtime).
pub(crate) fn run_detached(cleanup: impl Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(cleanup);
    })
    .join();
}
