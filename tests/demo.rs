//! `broadcast-worker demo`, the README's first command without Docker: the
//! simulator and a worker in one process, with the ledger, a sample burst
//! with one job of each kind that can never be sent, settled whole.

use std::process::Command;

use testkit::*;

#[tokio::test]
async fn the_demo_settles_its_burst_and_prints_the_console() {
    let prefix = unique_prefix("demo");
    let db = TestDatabase::create("demo").await;
    let port = free_port();
    let output = tokio::task::spawn_blocking({
        let (prefix, url) = (prefix.clone(), db.url());
        move || {
            Command::new(env!("CARGO_BIN_EXE_broadcast-worker"))
                .args(["demo", "--jobs", "60", "--rate", "20", "--exit-when-done"])
                .args(["--queue-prefix", &prefix])
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .env("AMQP_URL", AMQP_URL)
                .env("DATABASE_URL", url)
                .env_remove("BROADCAST_CONSOLE_TOKEN")
                .env_remove("BROADCAST_APPS_FILE")
                .output()
                .expect("the binary runs")
        }
    })
    .await
    .unwrap();
    delete_topology(&prefix);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("delivered 60/65  dead-lettered 5"),
        "every job settled: {stderr}"
    );
    for reason in [
        "invalid-json: 1",
        "invalid-job: 2",
        "expired: 1",
        "rejected/70107: 1",
    ] {
        assert!(stdout.contains(reason), "{reason} in {stdout}");
    }
    assert!(stdout.contains(&format!("console:  http://127.0.0.1:{port}/")));
    let token = stdout
        .lines()
        .find_map(|line| line.strip_prefix("token:"))
        .expect("a token printed")
        .trim();
    assert_eq!(token.len(), 32, "a drawn token: {token}");
    assert!(stdout.contains("0 frequency-limit answers"), "{stdout}");
}

#[test]
fn the_demo_never_empties_a_real_workers_queues() {
    let output = Command::new(env!("CARGO_BIN_EXE_broadcast-worker"))
        .args(["demo", "--queue-prefix", "broadcast", "--exit-when-done"])
        .env("AMQP_URL", AMQP_URL)
        .output()
        .expect("the binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--queue-prefix must contain \"demo\""),
        "{stderr}"
    );
}
