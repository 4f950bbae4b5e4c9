//! The worker on a three-node RabbitMQ cluster of private nodes (the
//! testkit's; one cluster for this test binary, its scenarios in turn):
//! the nodes given as one comma-separated `AMQP_URL`; the node both
//! replicas use killed in the middle of a drain; each node restarted in
//! turn (a rolling upgrade) in the middle of a drain; TLS to the nodes with
//! a CA and a client certificate of the test's own, and a wrong CA refused.
//! Drains are of 3,000 jobs, 10 a call, at 5 calls/s, with the ledger and
//! two replicas: every job is delivered once, with no frequency-limit
//! answer and no dead letter, and sending resumes within 30 s of each loss.

use std::time::{Duration, SystemTime};

use broadcast_worker::broker;
use serde_json::Value;
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");
const LONG: Duration = Duration::from_secs(120);

#[test]
fn on_a_three_node_cluster() {
    let dir = std::env::temp_dir().join(format!("bw-cluster-tls-{}", std::process::id()));
    let ca = TestCa::create(&dir, "cluster");
    let status = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let tls = NodeTls {
        ca_file: ca.ca_file.clone(),
        cert_file: ca.server_cert.clone(),
        key_file: ca.server_key.clone(),
        verify_peer: true,
    };
    let cluster = Cluster::start_with(3, Some(tls));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        the_node_list_is_one_amqp_url(&cluster).await;
        a_killed_node_loses_and_doubles_nothing(&cluster).await;
        a_rolling_restart_loses_and_doubles_nothing(&cluster).await;
        tls_to_the_nodes_with_a_ca_and_a_client_certificate(&cluster, &ca).await;
    });
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Today's figures of one drain with a loss in the middle.
struct Drain {
    /// Jobs delivered other than once (lost or doubled), by id.
    wrong: Vec<String>,
    frequency_answers: u64,
    dead_letters: u32,
    /// For each loss: milliseconds from it to the next delivery.
    resumed_ms: Vec<u64>,
}

impl Drain {
    fn assert_clean(&self, what: &str) {
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

fn now_ms() -> u64 {
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

async fn the_node_list_is_one_amqp_url(cluster: &Cluster) {
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
async fn a_killed_node_loses_and_doubles_nothing(cluster: &Cluster) {
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
    let drain = finish(&app, &jobs, &mut replicas, vec![resumed]).await;
    drain.assert_clean("node killed");
}

/// Two replicas (anywhere); each node stopped and started in turn.
async fn a_rolling_restart_loses_and_doubles_nothing(cluster: &Cluster) {
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
    let drain = finish(&app, &jobs, &mut replicas, resumed).await;
    drain.assert_clean("rolling restart");
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

async fn tls_to_the_nodes_with_a_ca_and_a_client_certificate(cluster: &Cluster, ca: &TestCa) {
    let tls_urls: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("amqps://guest:guest@localhost:{}/%2f", n.tls_port.unwrap()))
        .collect();
    let mut app = spawn_app_on(
        &cluster.amqp_urls(),
        unique_prefix("cluster-tls"),
        APP,
        KEY,
        20.0,
        |_| {},
    )
    .await;
    let jobs = backlog("tls", 20);
    app.publish_many(&jobs).await;
    // The worker over TLS only, with the CA and client certificate as the
    // URI's parameters.
    app.config.amqp_url = tls_urls
        .iter()
        .map(|url| {
            format!(
                "{url}?cacertfile={}&certfile={}&keyfile={}",
                ca.ca_file.display(),
                ca.client_cert.display(),
                ca.client_key.display()
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    app.start_worker();
    app.wait_for("the jobs delivered over TLS", LONG, |app| {
        app.all_delivered(&jobs)
    })
    .await;
    app.stop_worker().await.unwrap();
    app.assert_each_delivered_once(&jobs);

    // The CLI, with AMQP_CA_FILE and the client certificate's variables.
    let dlq = |ca_file: &std::path::Path| {
        std::process::Command::new(BIN)
            .args(["dlq", "list"])
            .env("AMQP_URL", tls_urls.join(","))
            .env("AMQP_CA_FILE", ca_file)
            .env("AMQP_CERT_FILE", &ca.client_cert)
            .env("AMQP_KEY_FILE", &ca.client_key)
            .env("BROADCAST_QUEUE_PREFIX", &app.prefix)
            .output()
            .unwrap()
    };
    let listed = dlq(&ca.ca_file);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    // Another CA: refused, naming each node and what was wrong, no password.
    let other = TestCa::create(&ca.dir.join("other"), "other");
    let refused = dlq(&other.ca_file);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("cannot connect to RabbitMQ at any address"),
        "{stderr}"
    );
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    assert!(
        stderr.contains(&format!("localhost:{}", cluster.nodes[0].tls_port.unwrap())),
        "{stderr}"
    );
    assert!(!stderr.contains("guest:guest"), "{stderr}");
}
