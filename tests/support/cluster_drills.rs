//! The cluster drills shared by `tests/cluster.rs` and `benches/cluster.rs`:
//! on a three-node cluster, a drain of 3,000 jobs (10 a call, 5 calls/s,
//! the ledger, two replica processes) with the node both replicas use
//! killed, or with each node restarted in turn; each comes to a [`Drain`]
//! (jobs not delivered once, frequency-limit answers, dead letters, and the
//! time from each loss to the next delivery).

#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use broadcast_worker::broker;
use serde_json::Value;
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");
pub const LONG: Duration = Duration::from_secs(120);

/// A cluster of three with TLS listeners (peers verified) signed by `ca`.
pub fn cluster_with_tls(ca: &TestCa) -> Cluster {
    let status = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&ca.dir)
        .status()
        .unwrap();
    assert!(status.success());
    let tls = NodeTls {
        ca_file: ca.ca_file.clone(),
        cert_file: ca.server_cert.clone(),
        key_file: ca.server_key.clone(),
        verify_peer: true,
    };
    Cluster::start_with(3, Some(tls))
}

/// Today's figures of one drain with a loss in the middle.
pub struct Drain {
    /// Jobs delivered other than once (lost or doubled), by id.
    pub wrong: Vec<String>,
    pub frequency_answers: u64,
    pub dead_letters: u32,
    /// For each loss: milliseconds from it to the next delivery.
    pub resumed_ms: Vec<u64>,
}

impl Drain {
    pub fn assert_clean(&self, what: &str) {
        assert!(
            self.wrong.is_empty(),
            "{what}: not delivered once: {:?}",
            self.wrong
        );
        assert_eq!(self.frequency_answers, 0, "{what}: frequency-limit answers");
        assert_eq!(self.dead_letters, 0, "{what}: dead letters");
        for (i, ms) in self.resumed_ms.iter().enumerate() {
            assert!(
                *ms < 30_000,
                "{what}: loss {i}: sending again after {ms} ms"
            );
        }
        eprintln!(
            "FIGURES {what}: sending again {:?} ms after each loss",
            self.resumed_ms
        );
    }
}

pub fn now_ms() -> u64 {
    broadcast_worker::clock::unix_ms(SystemTime::now())
}

/// The latest delivery the simulator received, unix ms.
fn last_delivery_ms(app: &TestApp) -> u64 {
    app.sim
        .simulator
        .deliveries(0, usize::MAX)
        .last()
        .map_or(0, |d| d.received_at_ms)
}

/// Waits for the first delivery after `since_ms`; its distance from it.
async fn resumed_after(app: &TestApp, since_ms: u64) -> u64 {
    app.wait_for("sending again", LONG, |app| {
        last_delivery_ms(app) > since_ms
    })
    .await;
    let first = app
        .sim
        .simulator
        .deliveries(0, usize::MAX)
        .iter()
        .map(|d| d.received_at_ms)
        .filter(|at| *at > since_ms)
        .min()
        .unwrap();
    first - since_ms
}

/// A replica of `app` with the ledger, its ops endpoint on `port`.
fn replica(app: &TestApp, db: &TestDatabase, port: u16) -> std::process::Child {
    worker_process(
        BIN,
        app,
        &[
            ("DATABASE_URL", db.url()),
            ("BROADCAST_METRICS_ADDR", format!("127.0.0.1:{port}")),
            ("BROADCAST_MAX_JOBS_PER_CALL", "10".to_string()),
        ],
    )
}

/// The broker node a replica's session is on (`host:port/vhost`).
async fn node_of(port: u16) -> Option<String> {
    let body: Value = readyz(port).await?;
    let apps = body["apps"].as_object()?;
    apps.values().next()?["broker_node"]
        .as_str()
        .map(str::to_owned)
}

async fn wait_node_of(port: u16) -> String {
    for _ in 0..200 {
        if let Some(node) = node_of(port).await {
            return node;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the replica on port {port} names no broker node");
}

fn index_of(cluster: &Cluster, node: &str) -> usize {
    cluster
        .nodes
        .iter()
        .position(|n| node.starts_with(&format!("127.0.0.1:{}/", n.amqp_port)))
        .unwrap_or_else(|| panic!("{node} is not a node of the cluster"))
}

pub async fn the_node_list_is_one_amqp_url(cluster: &Cluster) {
    let mut app = spawn_app_on(
        &cluster.amqp_urls(),
        unique_prefix("cluster-list"),
        APP,
        KEY,
        20.0,
        |_| {},
    )
    .await;
    let jobs = backlog("list", 50);
    app.publish_many(&jobs).await;
    app.start_worker();
    app.wait_for("the jobs delivered", LONG, |app| app.all_delivered(&jobs))
        .await;
    app.stop_worker().await.unwrap();
    app.assert_each_delivered_once(&jobs);
}

/// Two replicas on one node; that node killed once they are sending.
pub async fn a_killed_node(cluster: &Cluster) -> Drain {
    let db = TestDatabase::create("cluster-kill").await;
    let urls = cluster.amqp_urls();
    let app = spawn_app_on(&urls, unique_prefix("cluster-kill"), APP, KEY, 5.0, |_| {}).await;
    let jobs = backlog("kill", 3000);
    app.publish_many(&jobs).await;
    let (ports, mut replicas) = two_replicas_on_one_node(&app, &db).await;
    let node = wait_node_of(ports[0]).await;
    app.wait_for_elements(300, LONG).await;
    let killed_at = now_ms();
    cluster.kill(index_of(cluster, &node));
    let resumed = resumed_after(&app, killed_at).await;
    app.wait_for("every job delivered", LONG, |app| app.all_delivered(&jobs))
        .await;
    let restarted = index_of(cluster, &node);
    cluster.restart(restarted);
    finish(&app, &jobs, &mut replicas, vec![resumed]).await
}

/// Two replicas (anywhere); each node stopped and started in turn.
pub async fn a_rolling_restart(cluster: &Cluster) -> Drain {
    let db = TestDatabase::create("cluster-roll").await;
    let app = spawn_app_on(
        &cluster.amqp_urls(),
        unique_prefix("cluster-roll"),
        APP,
        KEY,
        5.0,
        |_| {},
    )
    .await;
    let jobs = backlog("roll", 3000);
    app.publish_many(&jobs).await;
    let ports = [free_port(), free_port()];
    let mut replicas: Vec<_> = ports.iter().map(|p| replica(&app, &db, *p)).collect();
    app.wait_for_elements(200, LONG).await;
    let mut resumed = Vec::new();
    for i in 0..cluster.nodes.len() {
        let stopped_at = now_ms();
        cluster.stop(i);
        resumed.push(resumed_after(&app, stopped_at).await);
        cluster.restart(i);
    }
    app.wait_for("every job delivered", LONG, |app| app.all_delivered(&jobs))
        .await;
    finish(&app, &jobs, &mut replicas, resumed).await
}

/// Starts two replicas, restarting the second until its session is on the
/// first's node (the rotation starts each process at random).
async fn two_replicas_on_one_node(
    app: &TestApp,
    db: &TestDatabase,
) -> ([u16; 2], Vec<std::process::Child>) {
    let ports = [free_port(), free_port()];
    let mut first = replica(app, db, ports[0]);
    let node = wait_node_of(ports[0]).await;
    for _ in 0..30 {
        let mut second = replica(app, db, ports[1]);
        if wait_node_of(ports[1]).await == node {
            return (ports, vec![first, second]);
        }
        signal(&second, "-TERM");
        wait_exit(&mut second, Duration::from_secs(20)).await;
    }
    let _ = first.kill();
    let _ = first.wait();
    panic!("the second replica never connected to {node}");
}

/// Stops the replicas and counts what the drain came to.
async fn finish(
    app: &TestApp,
    jobs: &[(String, Value)],
    replicas: &mut [std::process::Child],
    resumed_ms: Vec<u64>,
) -> Drain {
    tokio::time::sleep(Duration::from_millis(500)).await;
    for replica in replicas.iter_mut() {
        signal(replica, "-TERM");
        wait_exit(replica, Duration::from_secs(30)).await;
    }
    let texts = app.delivered_texts();
    let wrong = jobs
        .iter()
        .filter(|(_, body)| texts.get(&text_of(body)).copied().unwrap_or(0) != 1)
        .map(|(id, _)| id.clone())
        .collect();
    let connection = connect_to(&app.broker_url).await;
    let channel = connection.create_channel().await.unwrap();
    let dead_letters = broker::ready_count(&channel, &app.names.dead)
        .await
        .unwrap();
    let _ = connection.close(200, "".into()).await;
    Drain {
        wrong,
        frequency_answers: app.sim.simulator.stats().frequency_violations,
        dead_letters,
        resumed_ms,
    }
}
