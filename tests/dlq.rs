//! `broadcast-worker dlq` against real RabbitMQ: list, show, replay, purge,
//! a replay interrupted midway; dead letters that outlive the jobs'
//! expiration and any number of readings; and reading that holds only what
//! it prints.

use std::process::{Command, Output};
use std::time::Duration;

use broadcast_worker::broker::{self, QueueNames, Topology};
use broadcast_worker::ledger::{JobState, Ledger};
use broadcast_worker::simulator::{Fault, FaultPlan, FaultRule};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
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

fn show_json(app: &TestApp, id: &str) -> Value {
    let out = dlq(app, &["show", id], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// Publishes a raw job with an AMQP expiration (milliseconds).
async fn publish_expiring(app: &TestApp, id: &str, body: &[u8], expiration_ms: u64) {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(id.into())
        .with_expiration(expiration_ms.to_string().into());
    broker::publish_confirmed(&app.channel, "", &app.names.jobs, body, properties)
        .await
        .expect("publish confirmed");
}

#[tokio::test]
async fn a_dead_letter_outlives_the_jobs_expiration() {
    let mut app = spawn_app("dlq-ttl", 100.0).await;
    app.sim.simulator.set_faults(FaultPlan {
        rules: vec![FaultRule {
            body_contains: "MODERATED".into(),
            fault: Fault {
                code: Some(80001),
                ..Fault::default()
            },
        }],
        ..FaultPlan::default()
    });
    // One dead-lettered on decoding, one refused by the service: both paths.
    publish_expiring(&app, "ttl-bad-json", b"{not json", 5000).await;
    let refused = text_job("MODERATED").to_string();
    publish_expiring(&app, "ttl-refused", refused.as_bytes(), 5000).await;
    app.start_worker();
    app.wait_for_dead(2, LONG).await;
    app.stop_worker().await.unwrap();

    // Well past the 5 s they would have lasted with the job's expiration.
    tokio::time::sleep(Duration::from_secs(8)).await;
    app.wait_for_len(&app.names.dead, 2).await;
    for (id, reason) in [
        ("ttl-bad-json", "invalid-json"),
        ("ttl-refused", "rejected"),
    ] {
        let report = show_json(&app, id);
        assert_eq!(report["why"]["reason"], reason);
        assert_eq!(report["properties"]["expiration"], Value::Null, "{report}");
        assert_eq!(
            report["properties"]["headers"]["x-original-expiration"], "5000",
            "{report}"
        );
    }

    // A replay sends the job back without the header (nor an expiration).
    let out = dlq(&app, &["replay", "--id", "ttl-refused"], &[]);
    assert!(out.status.success());
    let delivery = app.consume(1).await.remove(0);
    assert_eq!(delivery.properties.expiration(), &None);
    assert_eq!(
        broker::header_str(&delivery.properties, "x-original-expiration"),
        None
    );
}

/// What RabbitMQ does with a job whose AMQP expiration passes while it waits
/// in the jobs queue: it dead-letters it itself (the queue's
/// `x-dead-letter-exchange`), without its `expiration`, so it stays.
#[tokio::test]
async fn a_job_expiring_in_the_jobs_queue_is_dead_lettered_by_the_broker() {
    let app = spawn_app("dlq-broker-ttl", 100.0).await;
    publish_expiring(&app, "stale", br#"{"MsgBody":[]}"#, 1000).await;
    app.wait_for_dead(1, Duration::from_secs(15)).await;
    assert_eq!(app.queue_len(&app.names.jobs).await, 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.wait_for_len(&app.names.dead, 1).await;

    let report = show_json(&app, "stale");
    assert_eq!(report["why"]["reason"], "broker:expired");
    assert_eq!(report["properties"]["expiration"], Value::Null, "{report}");
    let death = &report["properties"]["headers"]["x-death"][0];
    assert_eq!(death["reason"], "expired", "{report}");
    assert_eq!(death["original-expiration"], "1000", "{report}");
    assert_eq!(death["queue"], app.names.jobs.as_str(), "{report}");
    let listed = list_json(&app, &["--reason", "broker:expired"]);
    assert_eq!(listed["jobs"][0]["id"], "stale");
}

/// The dead-letter queue's arguments as the worker declares them.
fn dead_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(2_147_483_647));
    args
}

/// Declares `queue` durable with `args`: Ok only if it is new or already has
/// exactly these arguments (RabbitMQ refuses an inequivalent declaration).
async fn declare_with(
    connection: &lapin::Connection,
    queue: &str,
    args: FieldTable,
) -> Result<(), String> {
    let channel = connection.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await;
    let _ = channel.close(200, "".into()).await;
    declared.map(|_| ()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn reading_the_dead_letter_queue_25_times_loses_nothing() {
    let app = app_with_dead_letters("dlq-reread", 2).await;
    declare_with(&app.connection, &app.names.dead, dead_arguments())
        .await
        .expect("the dead-letter queue has exactly the chosen arguments");
    // Each reading gives every message back, and the queue counts it as a
    // delivery: past RabbitMQ 4.x's default limit of 20.
    for reading in 0..25 {
        let listed = list_json(&app, &[]);
        assert_eq!(listed["total"], 5, "reading {reading}");
        app.wait_for_len(&app.names.dead, 5).await;
    }
    let report = show_json(&app, "rejected-1");
    if let Some(count) = report["properties"]["headers"]["x-delivery-count"].as_i64() {
        assert!(count >= 25, "every reading counted: {report}");
    }
    app.wait_for_len(&app.names.dead, 5).await;
}

/// Deletes a prefix's queues and exchange when dropped, pass or fail.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        delete_topology(&self.0);
    }
}

#[tokio::test]
async fn a_dead_letter_queue_declared_by_an_earlier_version_is_kept() {
    let prefix = unique_prefix("dlq-upgrade");
    let _cleanup = Cleanup(prefix.clone());
    let names = QueueNames::new(&prefix);
    let connection = connect().await;
    let mut old = FieldTable::default();
    old.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    declare_with(&connection, &names.dead, old).await.unwrap();
    let channel = broker::confirm_channel(&connection).await.unwrap();
    broker::publish_confirmed(
        &channel,
        "",
        &names.dead,
        b"kept",
        BasicProperties::default(),
    )
    .await
    .unwrap();

    let topology = Topology {
        names: names.clone(),
        delivery_limit: 20,
    };
    topology
        .declare(&connection)
        .await
        .expect("the worker starts with the queue as it is");
    topology.declare(&connection).await.expect("and again");
    // The exchange is bound to it: a dead letter reaches it.
    broker::publish_confirmed(&channel, &names.dlx, "", b"new", BasicProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    for _ in 0..100 {
        let queue = channel
            .queue_declare(names.dead.as_str().into(), passive, FieldTable::default())
            .await
            .unwrap();
        if queue.message_count() == 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{} does not hold its old and its new dead letter",
        names.dead
    );
}

/// Publishes `n` dead letters straight to the dead-letter exchange, with the
/// worker's headers and bodies of `body_len` bytes, 100 confirms at a time.
async fn fill_dead(app: &TestApp, n: usize, body_len: usize) {
    let dead_letter = |i: usize| {
        let mut headers = FieldTable::default();
        headers.insert("x-reason".into(), AMQPValue::LongString("rejected".into()));
        headers.insert("x-error-code".into(), AMQPValue::LongLongInt(80001));
        headers.insert(
            "x-error-info".into(),
            AMQPValue::LongString("moderated".into()),
        );
        headers.insert("x-attempts".into(), AMQPValue::LongLongInt(1));
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(format!("big-{i:05}").into())
            .with_headers(headers);
        (vec![b'x'; body_len], properties)
    };
    app.publish_dead_letters((0..n).map(dead_letter), 100).await;
}

/// Runs a `dlq` command measured: its exit code, standard output, and peak
/// in MiB.
async fn dlq_measured(app: &TestApp, args: &[&str]) -> (Option<i32>, String, f64) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_broadcast-worker"));
    command
        .arg("dlq")
        .args(args)
        .env("AMQP_URL", AMQP_URL)
        .env("BROADCAST_QUEUE_PREFIX", &app.prefix)
        .env_remove("BROADCAST_TEST_CRASH_AT");
    let run = run_measured(command).await;
    (run.status.code(), run.stdout, run.peak_mib)
}

/// 64 MiB of dead letters; each command may hold what it prints, not that.
#[tokio::test]
async fn reading_holds_only_what_it_prints() {
    const N: usize = 256;
    const BODY: usize = 256 * 1024;
    // A quarter of the queue over the command's own size with nothing to read.
    const MARGIN_MIB: f64 = 16.0;
    let app = spawn_app("dlq-memory", 100.0).await;
    let (code, _, empty) = dlq_measured(&app, &["list"]).await;
    assert_eq!(code, Some(0));
    fill_dead(&app, N, BODY).await;
    app.wait_for_len(&app.names.dead, N as u32).await;

    // Newest first while the queue is in publishing order (a reading gives
    // more than a handful back in no particular order).
    let args = ["list", "--newest-first", "--limit", "2", "--json"];
    let (code, out, newest) = dlq_measured(&app, &args).await;
    assert_eq!(code, Some(0));
    let listed: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [format!("big-{:05}", N - 1), format!("big-{:05}", N - 2)]
    );

    let (code, out, list) = dlq_measured(&app, &["list", "--limit", "3", "--json"]).await;
    assert_eq!(code, Some(0));
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["total"], N);
    assert_eq!(
        listed["summary"][0]["count"], N,
        "the summary counts them all"
    );
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 3);

    let last = format!("big-{:05}", N - 1);
    let (code, out, show) = dlq_measured(&app, &["show", &last]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains(&last));
    let (code, out, missing) = dlq_measured(&app, &["show", "nope"]).await;
    assert_eq!(code, Some(1), "{out}");

    let args = ["replay", "--id", &last, "--dry-run"];
    let (code, out, replay) = dlq_measured(&app, &args).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("would replay 1 job(s)"), "{out}");
    let (code, out, purge) = dlq_measured(&app, &["purge", "--id", &last]).await;
    assert_eq!(code, Some(1));
    assert!(out.contains(&format!("would remove {last}")), "{out}");

    let peaks = [list, newest, show, missing, replay, purge];
    assert!(
        peaks.iter().all(|&p| p < empty + MARGIN_MIB),
        "peak resident memory (MiB) of list, newest-first, show, show missing, replay, purge: \
         {peaks:.1?}; {empty:.1} with an empty queue; the queue holds {} MiB",
        N * BODY / (1024 * 1024)
    );
    app.wait_for_len(&app.names.dead, N as u32).await;
}

/// Two identical announcements published without `message_id` are two
/// broadcasts; dead-lettered and replayed, they stay two, and each is
/// delivered once, with the ledger, even when the replay runs twice.
#[tokio::test]
async fn replaying_two_dead_letters_of_one_body_without_ids_delivers_both() {
    let db = TestDatabase::create("dlq-idless").await;
    let mut app = spawn_app("dlq-idless", 50.0).await;
    let ledger = Ledger::connect_lazy(&db.url()).unwrap();
    ledger.migrate().await.unwrap();
    app.config.ledger = Some(ledger);
    app.sim
        .simulator
        .set_faults(refuse_bodies_containing("ANNOUNCE", 80001));
    let body = text_job("ANNOUNCE").to_string();
    app.publish_raw(None, body.as_bytes(), None).await;
    app.publish_raw(None, body.as_bytes(), None).await;
    app.start_worker();
    app.wait_for_dead(2, LONG).await;
    let listing = list_json(&app, &[]);
    let ids: Vec<&str> = listing["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1], "each dead letter is a job of its own");
    app.sim.simulator.set_faults(FaultPlan::default());
    // One is replayed as an interrupted replay leaves it, twice (published,
    // then published again before its removal); the other by the CLI.
    let channel = app.connection.create_channel().await.unwrap();
    let first = broadcast_worker::ops::dlq::next(&channel, &app.names.dead_queue(), &mut 0)
        .await
        .unwrap()
        .unwrap();
    for _ in 0..2 {
        let properties = broadcast_worker::ops::dlq::replay_properties(&first);
        broker::publish_confirmed(&app.channel, "", &app.names.jobs, &first.body, properties)
            .await
            .unwrap();
    }
    first.remove().await.unwrap();
    let _ = channel.close(200, "".into()).await;
    let out = dlq(&app, &["replay", "--all"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.wait_for("both announcements delivered", LONG, |app| {
        app.delivered_texts().get("job:ANNOUNCE") == Some(&2)
    })
    .await;
    // The replay published twice was one job: nothing more comes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.delivered_texts().get("job:ANNOUNCE"), Some(&2));
    assert_eq!(app.queue_len(&app.names.dead).await, 0);
    app.stop_worker().await.unwrap();
}
