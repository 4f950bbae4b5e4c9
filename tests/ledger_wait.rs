//! A worker whose ledger database cannot be reached at start waits for it
//! (retrying its migrations) instead of exiting: on an orchestrator, exiting
//! would be a crash loop for as long as the database is away.

use std::time::Duration;

use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

#[tokio::test]
async fn a_worker_waits_for_an_unreachable_ledger_instead_of_exiting() {
    let app = spawn_app("ledger-wait", 5.0).await;
    let nowhere = format!("postgres://root@127.0.0.1:{}/test", free_port());
    let mut worker = worker_process(BIN, &app, &[("DATABASE_URL", nowhere)]);
    // sqlx's pool gives up on a connection after a few seconds; the worker
    // must outlive several such failures.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let exited = worker.try_wait().unwrap();
    assert!(
        exited.is_none(),
        "the worker exited while the ledger was away: {exited:?}"
    );
    signal(&worker, "-TERM");
    wait_exit(&mut worker, Duration::from_secs(20)).await;
}
