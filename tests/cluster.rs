//! The worker on a three-node RabbitMQ cluster of private nodes (the
//! testkit's; one cluster for this test binary, its scenarios in turn):
//! the nodes given as one comma-separated `AMQP_URL`; the node both
//! replicas use killed in the middle of a drain; each node restarted in
//! turn (a rolling upgrade) in the middle of a drain; TLS to the nodes with
//! a CA and a client certificate of the test's own, and a wrong CA refused.
//! Drains (see `support/cluster_drills.rs`): every job is delivered once,
//! with no frequency-limit answer and no dead letter, and sending resumes
//! within 30 s of each loss.

#[path = "support/cluster_drills.rs"]
mod drills;

use drills::*;
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

#[test]
fn on_a_three_node_cluster() {
    let dir = std::env::temp_dir().join(format!("bw-cluster-tls-{}", std::process::id()));
    let ca = TestCa::create(&dir, "cluster");
    let cluster = cluster_with_tls(&ca);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        the_node_list_is_one_amqp_url(&cluster).await;
        a_killed_node(&cluster).await.assert_clean("node killed");
        a_rolling_restart(&cluster)
            .await
            .assert_clean("rolling restart");
        tls_to_the_nodes_with_a_ca_and_a_client_certificate(&cluster, &ca).await;
    });
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
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
