//! `broadcast-worker dlq` against real RabbitMQ: list, show, replay, purge,
//! and a replay interrupted midway.

use std::process::{Command, Output};
use std::time::Duration;

use broadcast_worker::ledger::{JobState, Ledger};
use broadcast_worker::tencent::simulator::{Fault, FaultPlan, FaultRule};
use serde_json::Value;
use testkit::*;

const LONG: Duration = Duration::from_secs(60);

fn dlq(app: &TestApp, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_broadcast-worker"));
    command
        .arg("dlq")
        .args(args)
        .env("AMQP_URL", AMQP_URL)
        .env("BROADCAST_QUEUE_PREFIX", &app.prefix)
        .env_remove("BROADCAST_TEST_CRASH_AT");
    for (k, v) in extra {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn list_json(app: &TestApp, args: &[&str]) -> Value {
    let mut all = vec!["list", "--json"];
    all.extend_from_slice(args);
    let out = dlq(app, &all, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn poison_rule() -> FaultPlan {
    FaultPlan {
        rules: vec![FaultRule {
            body_contains: "POISON".into(),
            fault: Fault {
                code: Some(10004),
                ..Fault::default()
            },
        }],
        ..FaultPlan::default()
    }
}

/// Fills the dead-letter queue with 3 invalid-json and `rejected` refused jobs.
async fn app_with_dead_letters(test: &str, rejected: usize) -> TestApp {
    let mut app = spawn_app(test, 100.0).await;
    app.sim.simulator.set_faults(poison_rule());
    for i in 0..3 {
        app.publish_raw(Some(&format!("bad-json-{i}")), b"{not json", None)
            .await;
    }
    for i in 0..rejected {
        let mut body = text_job(&format!("POISON-{i}"));
        // A sender each, so that every refused job is its own call.
        body["From_Account"] = format!("sender-{i}").into();
        app.publish(&format!("rejected-{i}"), &body).await;
    }
    app.start_worker();
    app.wait_for_dead(3 + rejected as u32, LONG).await;
    app.stop_worker().await.unwrap();
    app
}

#[tokio::test]
async fn list_summarizes_and_filters_without_changing_the_queue() {
    let app = app_with_dead_letters("dlq-list", 2).await;
    let first = list_json(&app, &[]);
    assert_eq!(first["total"], 5);
    let summary = first["summary"].as_array().unwrap();
    assert!(
        summary.contains(&serde_json::json!({"reason": "invalid-json", "code": "-", "count": 3})),
        "{summary:?}"
    );
    assert!(
        summary.contains(&serde_json::json!({"reason": "rejected", "code": "10004", "count": 2})),
        "{summary:?}"
    );
    // Reading twice gives the same jobs in the same order: nothing removed or reordered.
    let ids = |v: &Value| -> Vec<String> {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    let second = list_json(&app, &[]);
    assert_eq!(ids(&first), ids(&second));
    app.wait_for_len(&app.names.dead, 5).await;
    let mut newest = ids(&list_json(&app, &["--newest-first"]));
    newest.reverse();
    assert_eq!(newest, ids(&first));
    let rejected = list_json(&app, &["--reason", "rejected"]);
    assert_eq!(rejected["jobs"].as_array().unwrap().len(), 2);
    let by_code = list_json(&app, &["--code", "10004", "--newer-than-secs", "3600"]);
    assert_eq!(by_code["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(
        list_json(&app, &["--older-than-secs", "3600"])["jobs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let human = stdout(&dlq(&app, &["list"], &[]));
    assert!(human.contains("5 of 5 dead letters match"), "{human}");
    assert!(human.contains("rejected/10004: 2"), "{human}");
}

#[tokio::test]
async fn show_prints_the_whole_job_and_why() {
    let app = app_with_dead_letters("dlq-show", 1).await;
    let out = dlq(&app, &["show", "rejected-0"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["why"]["reason"], "rejected");
    assert_eq!(report["properties"]["headers"]["x-error-code"], 10004);
    assert_eq!(report["properties"]["headers"]["x-reason"], "rejected");
    assert_eq!(
        report["body"]["MsgBody"][0]["MsgContent"]["Text"],
        "job:POISON-0"
    );
    let missing = dlq(&app, &["show", "nope"], &[]);
    assert!(!missing.status.success());
    app.wait_for_len(&app.names.dead, 4).await; // "show removes nothing"
}

#[tokio::test]
async fn replay_moves_selected_jobs_back_and_the_worker_sends_them() {
    let db = TestDatabase::create("dlq-replay").await;
    let mut app = app_with_dead_letters("dlq-replay", 2).await;
    let ledger = Ledger::connect_lazy(&db.url()).unwrap();
    ledger.migrate().await.unwrap();
    app.config.ledger = Some(ledger.clone());

    let dry = dlq(&app, &["replay", "--reason", "rejected", "--dry-run"], &[]);
    assert!(
        stdout(&dry).contains("would replay 2 job(s); nothing moved"),
        "{}",
        stdout(&dry)
    );
    app.wait_for_len(&app.names.dead, 5).await;
    let refused = dlq(&app, &["replay"], &[]);
    assert!(!refused.status.success(), "a replay must say which jobs");

    // The cause is fixed: the service takes them now.
    app.sim.simulator.set_faults(FaultPlan::default());
    let out = dlq(&app, &["replay", "--reason", "rejected"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("replayed 2 job(s)"));
    app.wait_for_len(&app.names.dead, 3).await;
    app.wait_for_len(&app.names.jobs, 2).await;

    app.start_worker();
    app.wait_for_elements(2, LONG).await;
    app.stop_worker().await.unwrap();
    let texts = app.delivered_texts();
    assert_eq!(
        (texts.get("job:POISON-0"), texts.get("job:POISON-1")),
        (Some(&1), Some(&1))
    );
    let report = ledger.show("rejected-1").await.unwrap().unwrap();
    assert_eq!(
        report.state,
        JobState::Delivered,
        "the replay was sent, not acked as already dead-lettered"
    );
}

#[tokio::test]
async fn a_replayed_job_keeps_its_id_and_counts_its_replays() {
    let app = app_with_dead_letters("dlq-count", 1).await;
    let out = dlq(&app, &["replay", "--id", "rejected-0"], &[]);
    assert!(out.status.success());
    let delivery = app.consume(1).await.remove(0);
    assert_eq!(
        delivery.properties.message_id().as_ref().unwrap().as_str(),
        "rejected-0"
    );
    assert_eq!(
        broadcast_worker::broker::header_i64(&delivery.properties, "x-replays"),
        Some(1)
    );
    assert_eq!(
        broadcast_worker::broker::header_str(&delivery.properties, "x-reason"),
        None,
        "why-headers dropped"
    );
}

#[tokio::test]
async fn purge_needs_yes_and_prints_what_it_removed() {
    let app = app_with_dead_letters("dlq-purge", 1).await;
    let refused = dlq(&app, &["purge", "--reason", "invalid-json"], &[]);
    assert!(!refused.status.success());
    app.wait_for_len(&app.names.dead, 4).await;
    let out = dlq(&app, &["purge", "--reason", "invalid-json", "--yes"], &[]);
    assert!(out.status.success());
    let text = stdout(&out);
    for i in 0..3 {
        assert!(text.contains(&format!("removed bad-json-{i}")), "{text}");
    }
    app.wait_for_len(&app.names.dead, 1).await;
    let left = list_json(&app, &[]);
    assert_eq!(left["jobs"][0]["id"], "rejected-0");
}

#[tokio::test]
async fn an_interrupted_replay_loses_and_doubles_nothing() {
    let db = TestDatabase::create("dlq-interrupt").await;
    let mut app = app_with_dead_letters("dlq-interrupt", 8).await;
    let ledger = Ledger::connect_lazy(&db.url()).unwrap();
    ledger.migrate().await.unwrap();
    app.config.ledger = Some(ledger);
    app.sim.simulator.set_faults(FaultPlan::default());

    // Killed after the 4th publish was confirmed, before its removal.
    let interrupted = dlq(
        &app,
        &["replay", "--reason", "rejected"],
        &[("BROADCAST_TEST_CRASH_AT", "after-publish:4")],
    );
    assert_eq!(interrupted.status.code(), Some(137));
    app.wait_for_len(&app.names.jobs, 4).await;
    app.wait_for_len(&app.names.dead, 3 + 5).await; // "three removed; the fourth is still here"

    // Run again to the end: the fourth goes out a second time, same id and count.
    let out = dlq(&app, &["replay", "--reason", "rejected"], &[]);
    assert!(out.status.success());
    app.wait_for_len(&app.names.dead, 3).await;
    app.wait_for_len(&app.names.jobs, 9).await;

    app.start_worker();
    app.wait_for_elements(8, LONG).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.stop_worker().await.unwrap();
    let texts = app.delivered_texts();
    for i in 0..8 {
        assert_eq!(
            texts.get(&format!("job:POISON-{i}")),
            Some(&1),
            "POISON-{i} delivered exactly once"
        );
    }
    app.wait_for_len(&app.names.jobs, 0).await; // "the copy was acked as already settled"
}

#[tokio::test]
async fn an_interrupted_list_changes_nothing() {
    let app = app_with_dead_letters("dlq-kill-list", 2).await;
    let before = list_json(&app, &[]);
    // A list killed while it holds every message unacked.
    let mut child = Command::new(env!("CARGO_BIN_EXE_broadcast-worker"))
        .args(["dlq", "list"])
        .env("AMQP_URL", AMQP_URL)
        .env("BROADCAST_QUEUE_PREFIX", &app.prefix)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let _ = child.kill();
    let _ = child.wait();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = list_json(&app, &[]);
    assert_eq!(after["total"], 5);
    let ids = |v: &Value| -> Vec<String> {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&before), ids(&after), "same jobs, same order");
}
