//! The ledger over TLS: a private PostgreSQL that accepts TLS only, with a
//! certificate from the test's own CA. `sslmode=verify-full` with that CA as
//! `sslrootcert` works for the worker and the CLI; another CA is refused
//! with an error that says so, and a plain connection is refused.

use std::time::Duration;

use broadcast_worker::ledger::Ledger;
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");
const LONG: Duration = Duration::from_secs(60);

fn cli(args: &[&str], database_url: &str) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", database_url)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_ledger_verifies_postgres_against_the_named_ca() {
    let dir = std::env::temp_dir().join(format!("bw-pg-tls-{}", std::process::id()));
    let ca = TestCa::create(&dir, "ledger");
    let server = PostgresNode::start_tls(&ca);
    let url = server.verify_full_url(&ca.ca_file);

    let migrated = cli(&["migrate"], &url);
    assert!(
        migrated.status.success(),
        "migrate over TLS: {}",
        String::from_utf8_lossy(&migrated.stderr)
    );

    // A worker with the ledger over TLS delivers and records its jobs.
    let mut app = spawn_app("ledger-tls", 10.0).await;
    app.config.ledger = Some(Ledger::connect_lazy(&url).unwrap());
    let jobs = backlog("lt", 5);
    app.publish_many(&jobs).await;
    app.start_worker();
    app.wait_for("every job delivered", LONG, |app| app.all_delivered(&jobs))
        .await;
    app.stop_worker().await.unwrap();
    app.assert_each_delivered_once(&jobs);
    let shown = cli(&["jobs", "show", &jobs[0].0], &url);
    let shown_text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(shown_text.contains("delivered"), "{shown_text}");

    // Another CA: refused, and the error says it is the certificate.
    let other = TestCa::create(&dir.join("other"), "other");
    let refused = cli(&["migrate"], &server.verify_full_url(&other.ca_file));
    assert!(!refused.status.success(), "a server the CA did not sign");
    let stderr = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(stderr.contains("certificate"), "{stderr}");

    // Without TLS the server refuses: the TLS above was real.
    let plain = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=disable",
        server.port
    );
    let refused = cli(&["migrate"], &plain);
    assert!(!refused.status.success(), "a plain connection");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
