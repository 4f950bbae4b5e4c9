//! Latest-wins keys (`x-coalesce-key`) against real RabbitMQ, PostgreSQL and
//! the worker's binary: a later job of a key takes the held one's place, the
//! superseded one is acked unsent, recorded and counted; after a kill between
//! the record and the ack, it is still never sent.

use std::time::Duration;

use broadcast_worker::ledger::{JobState, Ledger, Scope};
use lapin::types::{AMQPValue, FieldTable, LongString};
use testkit::*;

const LONG: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

fn coalesce(key: &str) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(
        "x-coalesce-key".into(),
        AMQPValue::LongString(LongString::from(key)),
    );
    table
}

/// a and c and d share the key "score"; b has none. Published before any
/// worker runs, so one session holds them all.
async fn publish_scores(app: &TestApp) {
    for (id, key) in [
        ("a", Some("score")),
        ("b", None),
        ("c", Some("score")),
        ("d", Some("score")),
    ] {
        let body = text_job(id).to_string();
        app.publish_raw(Some(id), body.as_bytes(), key.map(coalesce))
            .await;
    }
}

async fn ledger_for(db: &TestDatabase) -> Ledger {
    let ledger = Ledger::connect_lazy(&db.url()).unwrap();
    ledger.migrate().await.expect("migrations apply");
    ledger
}

/// What the ledger says of `id`: its state and the job that superseded it.
async fn recorded(ledger: &Ledger, id: &str) -> (JobState, Option<String>) {
    let report = ledger.show(id).await.unwrap().expect("the ledger knows it");
    (report.state, report.superseded_by)
}

/// The texts of every call's elements, call by call.
fn calls(app: &TestApp) -> Vec<Vec<String>> {
    app.sim
        .simulator
        .deliveries(0, 100)
        .iter()
        .map(|d| {
            let body = d.body.as_ref().expect("bodies kept");
            body["MsgBody"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["MsgContent"]["Text"].as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn a_later_job_of_a_key_takes_the_held_ones_place_and_the_older_is_settled_unsent() {
    let db = TestDatabase::create("coalesce").await;
    let app = spawn_app("coalesce", 2.0).await;
    publish_scores(&app).await;
    let port = free_port();
    let mut worker = worker_process(
        BIN,
        &app,
        &[
            ("DATABASE_URL", db.url()),
            ("BROADCAST_METRICS_ADDR", format!("127.0.0.1:{port}")),
        ],
    );
    app.wait_for("d and b delivered", LONG, |app| {
        app.delivered_texts().len() >= 2
    })
    .await;
    app.wait_for_len(&app.names.jobs, 0).await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    signal(&worker, "-TERM");
    wait_exit(&mut worker, Duration::from_secs(20)).await;
    // d stands where a stood, before b; a and c were never sent.
    assert_eq!(calls(&app), [["job:d", "job:b"]]);
    let line = format!("broadcast_jobs_superseded_total{{sdkappid=\"{APP}\"}} 2");
    assert!(metrics.contains(&line), "{line} in\n{metrics}");
    assert_eq!(
        app.queue_len(&app.names.dead).await,
        0,
        "nothing dead-lettered"
    );
    let ledger = ledger_for(&db).await;
    assert_eq!(
        recorded(&ledger, "a").await,
        (JobState::Superseded, Some("c".into()))
    );
    assert_eq!(
        recorded(&ledger, "c").await,
        (JobState::Superseded, Some("d".into()))
    );
    assert_eq!(recorded(&ledger, "d").await.0, JobState::Delivered);
    let shown = std::process::Command::new(BIN)
        .args(["jobs", "show", "a"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    let shown = String::from_utf8(shown.stdout).unwrap();
    assert!(
        shown.starts_with("a: superseded at") && shown.contains("by c, never sent"),
        "{shown}"
    );
    // Superseded records are pruned with the rest.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let ours = ledger
        .clone()
        .in_scope(Scope::new(APP, app.names.jobs.clone()));
    assert!(ours.prune(Duration::ZERO, 100).await.unwrap() >= 2);
    assert_eq!(ledger.show("a").await.unwrap(), None);
}

#[tokio::test]
async fn a_superseded_job_is_never_sent_after_a_kill_before_its_ack() {
    let db = TestDatabase::create("coalesce-kill").await;
    let app = spawn_app("coalesce-kill", 2.0).await;
    publish_scores(&app).await;
    let ledger_env = ("DATABASE_URL", db.url());
    let mut doomed = worker_process(
        BIN,
        &app,
        &[
            ledger_env.clone(),
            ("BROADCAST_TEST_CRASH_AT", "after-superseded:1".into()),
        ],
    );
    let status = wait_exit(&mut doomed, LONG).await;
    assert_eq!(
        status.code(),
        Some(137),
        "the worker died at the crash point"
    );
    assert_eq!(
        app.sim.simulator.stats().calls,
        0,
        "nothing sent before the kill"
    );
    // One job at a time: a comes back without the jobs that superseded it,
    // so only the ledger can tell it was.
    let mut survivor = worker_process(BIN, &app, &[ledger_env, ("BROADCAST_PREFETCH", "1".into())]);
    app.wait_for("b and d delivered", LONG, |app| {
        app.delivered_texts().len() >= 2
    })
    .await;
    app.wait_for_len(&app.names.jobs, 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&survivor, "-TERM");
    wait_exit(&mut survivor, Duration::from_secs(20)).await;
    let sent = app.delivered_texts();
    let mut texts: Vec<&str> = sent.keys().map(String::as_str).collect();
    texts.sort();
    assert_eq!(
        texts,
        ["job:b", "job:d"],
        "the superseded a and c never sent"
    );
    assert!(sent.values().all(|&n| n == 1), "each once: {sent:?}");
    let ledger = ledger_for(&db).await;
    assert_eq!(recorded(&ledger, "a").await.0, JobState::Superseded);
    assert_eq!(recorded(&ledger, "c").await.0, JobState::Superseded);
}

#[tokio::test]
async fn a_key_without_a_message_id_or_too_long_is_refused_clearly() {
    let mut app = spawn_app("coalesce-bad", 50.0).await;
    let body = text_job("x").to_string();
    app.publish_raw(None, body.as_bytes(), Some(coalesce("k")))
        .await;
    app.publish_raw(
        Some("long"),
        body.as_bytes(),
        Some(coalesce(&"k".repeat(256))),
    )
    .await;
    app.publish("fine", &text_job("fine")).await;
    app.start_worker();
    app.wait_for_dead(2, LONG).await;
    app.wait_for_elements(1, LONG).await;
    app.stop_worker().await.unwrap();
    let dead = app.take_dead_letters().await;
    let infos: Vec<String> = dead
        .iter()
        .map(|d| format!("{} {}", d.reason, d.error_info))
        .collect();
    assert!(
        infos
            .iter()
            .any(|i| i.starts_with("invalid-job") && i.contains("needs a message_id")),
        "{infos:?}"
    );
    assert!(
        infos
            .iter()
            .any(|i| i.starts_with("invalid-job") && i.contains("1 to 255 bytes, found 256")),
        "{infos:?}"
    );
}
