//! Delivering once: the PostgreSQL ledger against kills at every point of the
//! cycle, standby takeover, a loop of random kills, and a lost database. Each
//! test has its own database and queues; the simulator counts deliveries after
//! its repeat filter.

use std::sync::atomic::Ordering;
use std::time::Duration;

use broadcast_worker::ledger::{CallJob, JobState, Ledger, Ownership, Scope};
use broadcast_worker::pipeline::InDoubtPolicy;
use broadcast_worker::tencent::body::content_digest;
use serde_json::Value;
use testkit::*;

const LONG: Duration = Duration::from_secs(90);
const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

async fn ledger_for(db: &TestDatabase) -> Ledger {
    let ledger = Ledger::connect_lazy(&db.url()).unwrap();
    ledger.migrate().await.expect("migrations apply");
    ledger
}

fn call_jobs(ids: &[&str]) -> Vec<CallJob> {
    ids.iter()
        .map(|id| CallJob {
            id: id.to_string(),
            replays: 0,
            digest: None,
        })
        .collect()
}

/// Kills the worker at `point` on the second call, restarts it (or lets a
/// standby take over), and checks every job went out exactly once.
async fn crash_and_recover(point: &str, standby_takes_over: bool) {
    let test = format!(
        "crash-{point}-{}",
        if standby_takes_over {
            "standby"
        } else {
            "restart"
        }
    );
    let db = TestDatabase::create(&test).await;
    let app = spawn_app(&test, 5.0).await;
    let jobs = backlog(point, 300);
    app.publish_many(&jobs).await;
    let ledger_env = ("DATABASE_URL", db.url());
    let mut doomed = worker_process(
        BIN,
        &app,
        &[
            ledger_env.clone(),
            ("BROADCAST_TEST_CRASH_AT", format!("{point}:2")),
        ],
    );
    let mut standby = None;
    if standby_takes_over {
        app.wait_for("the first call", LONG, |app| {
            app.sim.simulator.stats().calls >= 1
        })
        .await;
        standby = Some(worker_process(BIN, &app, std::slice::from_ref(&ledger_env)));
    }
    let status = wait_exit(&mut doomed, LONG).await;
    assert_eq!(
        status.code(),
        Some(137),
        "the worker died at the crash point"
    );
    let mut survivor = match standby {
        Some(standby) => standby,
        None => worker_process(BIN, &app, &[ledger_env]),
    };
    app.wait_for("every job delivered", LONG, |app| app.all_delivered(&jobs))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&survivor, "-TERM");
    wait_exit(&mut survivor, Duration::from_secs(20)).await;
    app.assert_each_delivered_once(&jobs);
    assert_eq!(app.queue_len(&app.names.jobs).await, 0, "every job acked");
    assert_eq!(
        app.queue_len(&app.names.dead).await,
        0,
        "nothing dead-lettered"
    );
    // The quota held across the kill: the survivor's first call kept a full
    // period from the moment it became the app's sender.
    assert_eq!(app.sim.simulator.stats().frequency_violations, 0);
    let repeats = app.sim.simulator.stats().repeats_dropped;
    match point {
        // The call answered OK before the crash was sent again verbatim, and
        // the service dropped the copy.
        "after-call" => assert!(repeats >= 1, "the resend was a repeat"),
        // The ledger knew: the redelivered jobs were acked without a call.
        "after-ledger" => assert_eq!(repeats, 0, "no call was repeated"),
        _ => {}
    }
    let ledger = ledger_for(&db).await;
    let report = ledger
        .show(&jobs[0].0)
        .await
        .unwrap()
        .expect("the ledger knows the job");
    assert_eq!(report.state, JobState::Delivered);
    assert!(report.msg_seq.is_some());
}

#[tokio::test]
async fn a_kill_before_the_call_loses_and_doubles_nothing() {
    crash_and_recover("before-call", false).await;
}

#[tokio::test]
async fn a_kill_after_the_call_before_the_ledger_loses_and_doubles_nothing() {
    crash_and_recover("after-call", false).await;
}

#[tokio::test]
async fn a_kill_after_the_ledger_before_the_acks_loses_and_doubles_nothing() {
    crash_and_recover("after-ledger", false).await;
}

#[tokio::test]
async fn a_standby_takes_over_after_a_kill_before_the_call() {
    crash_and_recover("before-call", true).await;
}

#[tokio::test]
async fn a_standby_takes_over_after_a_kill_after_the_call() {
    crash_and_recover("after-call", true).await;
}

#[tokio::test]
async fn a_standby_takes_over_after_a_kill_after_the_ledger() {
    crash_and_recover("after-ledger", true).await;
}

#[tokio::test]
async fn twenty_random_kills_of_two_replicas_lose_and_double_nothing() {
    let db = TestDatabase::create("kill-loop").await;
    // Each kill of the active replica returns its prefetched jobs with one
    // more delivery counted: the default broker limit is far above that.
    let app = spawn_app("kill-loop", 20.0).await;
    let jobs = backlog("loop", 2000);
    app.publish_many(&jobs).await;
    let env = [
        ("DATABASE_URL", db.url()),
        ("BROADCAST_MAX_BATCH_BYTES", "1500".to_string()),
        ("BROADCAST_PREFETCH", "200".to_string()),
    ];
    let mut replicas = [
        worker_process(BIN, &app, &env),
        worker_process(BIN, &app, &env),
    ];
    let mut kills = 0;
    while kills < 20 {
        tokio::time::sleep(Duration::from_millis(150 + rand::random::<u64>() % 300)).await;
        let victim = rand::random::<u32>() as usize % 2;
        signal(&replicas[victim], "-KILL");
        wait_exit(&mut replicas[victim], Duration::from_secs(5)).await;
        replicas[victim] = worker_process(BIN, &app, &env);
        kills += 1;
    }
    let delivered_during_kills = app.sim.simulator.stats().elements_delivered;
    app.wait_for("every job delivered", Duration::from_secs(120), |app| {
        app.all_delivered(&jobs)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for replica in &mut replicas {
        signal(replica, "-TERM");
        wait_exit(replica, Duration::from_secs(20)).await;
    }
    let stats = app.sim.simulator.stats();
    eprintln!(
        "kill loop: {kills} kills, {delivered_during_kills} of 2000 delivered while killing, repeats dropped by the service: {}, frequency-limit answers: {}",
        stats.repeats_dropped, stats.frequency_violations
    );
    app.assert_each_delivered_once(&jobs);
    assert_eq!(app.queue_len(&app.names.jobs).await, 0);
    assert_eq!(app.queue_len(&app.names.dead).await, 0);
    // Each replica that became the sender kept a period from that moment.
    assert_eq!(stats.frequency_violations, 0, "the quota held across kills");
}

#[tokio::test]
async fn losing_the_database_stops_sending_and_resumes_without_loss_or_repeat() {
    let db = TestDatabase::create("db-loss").await;
    ledger_for(&db).await;
    let proxy = TcpProxy::start("127.0.0.1:5432").await;
    let mut app = spawn_app("db-loss", 5.0).await;
    app.config.ledger = Some(Ledger::connect_lazy(&db.url_via(proxy.addr)).unwrap());
    let jobs = backlog("dbloss", 400);
    app.publish_many(&jobs).await;
    app.start_worker();
    let status = app.status();
    app.wait_for("some calls", LONG, |app| {
        app.sim.simulator.stats().deliveries >= 2
    })
    .await;
    proxy.set_down(true);
    app.wait_for("the worker to notice", LONG, |_| {
        status.ledger_down.load(Ordering::Relaxed)
    })
    .await;
    let calls_when_down = app.sim.simulator.stats().calls;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // At most the call already under way when the database went.
    assert!(
        app.sim.simulator.stats().calls <= calls_when_down + 1,
        "no sending while the ledger is down"
    );
    assert!(
        status.ledger_down.load(Ordering::Relaxed),
        "reported while down"
    );
    proxy.set_down(false);
    app.wait_for_elements(400, LONG).await;
    assert!(!status.ledger_down.load(Ordering::Relaxed), "recovered");
    app.stop_worker().await.unwrap();
    app.assert_each_delivered_once(&jobs);
    assert_eq!(app.queue_len(&app.names.jobs).await, 0);
}

#[tokio::test]
async fn a_job_the_ledger_knows_as_delivered_is_acked_without_a_call() {
    let db = TestDatabase::create("known").await;
    let mut app = spawn_app("known", 50.0).await;
    app.config.ledger = Some(ledger_for(&db).await);
    app.publish("dup-1", &text_job("dup-1")).await;
    app.start_worker();
    app.wait_for_elements(1, LONG).await;
    // The producer publishes the same job again (same message_id).
    app.publish("dup-1", &text_job("dup-1")).await;
    app.publish("other", &text_job("other")).await;
    app.wait_for_elements(2, LONG).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.queue_len(&app.names.jobs).await,
        0,
        "the duplicate was acked"
    );
    assert_eq!(
        app.sim.simulator.stats().calls,
        2,
        "no call for the duplicate"
    );
    assert_eq!(app.delivered_texts().get("job:dup-1"), Some(&1));
    app.stop_worker().await.unwrap();
}

/// Records `ids` as one call in flight of `app`'s worker, made `age_secs`
/// ago, as a worker that then died would have left it.
async fn leave_call_in_flight(
    app: &TestApp,
    ledger: &Ledger,
    db: &TestDatabase,
    ids: &[&str],
    age_secs: u64,
) -> Vec<u8> {
    let ledger = ledger.clone().in_scope(app.config.ledger_scope());
    let session = ledger.open_session().await.unwrap();
    let jobs: Vec<Value> = ids.iter().map(|id| text_job(id)).collect();
    let elements: Vec<Value> = jobs.iter().map(|j| j["MsgBody"][0].clone()).collect();
    let body = serde_json::json!({"Random": 12345, "MsgBody": elements})
        .to_string()
        .into_bytes();
    let call = session
        .begin_call(
            &body,
            12345,
            &content_digest(&body, 12345),
            &call_jobs(ids),
            None,
        )
        .await
        .unwrap()
        .recorded()
        .expect("the Random is free");
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    // Made `age_secs` ago, and attempted then (so in doubt since).
    sqlx::query(
        "UPDATE calls SET created_at = now() - make_interval(secs => $2), \
             doubt_since = now() - make_interval(secs => $2), \
             attempted_at = now() - make_interval(secs => $2) WHERE id = $1",
    )
    .bind(call)
    .bind(age_secs as f64)
    .execute(&mut conn)
    .await
    .unwrap();
    body
}

#[tokio::test]
async fn a_young_call_in_flight_is_resent_verbatim_and_its_jobs_acked() {
    let db = TestDatabase::create("resend").await;
    let mut app = spawn_app("resend", 50.0).await;
    let ledger = ledger_for(&db).await;
    app.config.ledger = Some(ledger.clone());
    let body = leave_call_in_flight(&app, &ledger, &db, &["r-1", "r-2", "r-3"], 10).await;
    for id in ["r-1", "r-2", "r-3"] {
        app.publish(id, &text_job(id)).await;
    }
    app.start_worker();
    app.wait_for_elements(3, LONG).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deliveries = app.sim.simulator.deliveries(0, 10);
    assert_eq!(deliveries.len(), 1, "one call");
    assert_eq!(deliveries[0].bytes, body.len());
    assert_eq!(
        deliveries[0].body.as_ref().unwrap()["Random"],
        12345,
        "the recorded Random"
    );
    assert_eq!(app.queue_len(&app.names.jobs).await, 0);
    assert_eq!(
        ledger.show("r-2").await.unwrap().unwrap().state,
        JobState::Delivered
    );
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn an_old_call_in_flight_is_dead_lettered_as_in_doubt_or_resent_as_configured() {
    for policy in [InDoubtPolicy::DeadLetter, InDoubtPolicy::Resend] {
        let db = TestDatabase::create("in-doubt").await;
        let mut app = spawn_app("in-doubt", 50.0).await;
        let ledger = ledger_for(&db).await;
        app.config.ledger = Some(ledger.clone());
        app.config.in_doubt = policy;
        leave_call_in_flight(&app, &ledger, &db, &["old-1"], 400).await;
        app.publish("old-1", &text_job("old-1")).await;
        app.start_worker();
        match policy {
            InDoubtPolicy::DeadLetter => {
                app.wait_for_dead(1, LONG).await;
                let dead = app.take_dead_letters().await;
                assert_eq!(dead[0].reason, "in-doubt");
                assert_eq!(app.sim.simulator.stats().calls, 0);
                let report = ledger.show("old-1").await.unwrap().unwrap();
                assert_eq!(
                    (report.state, report.reason.as_deref()),
                    (JobState::DeadLettered, Some("in-doubt"))
                );
            }
            InDoubtPolicy::Resend => {
                app.wait_for_elements(1, LONG).await;
                assert_eq!(app.queue_len(&app.names.dead).await, 0);
            }
        }
        app.stop_worker().await.unwrap();
    }
}

#[tokio::test]
async fn jobs_show_answers_where_a_broadcast_is() {
    let db = TestDatabase::create("show").await;
    let mut app = spawn_app("show", 50.0).await;
    app.config.ledger = Some(ledger_for(&db).await);
    app.sim
        .simulator
        .set_faults(broadcast_worker::simulator::FaultPlan {
            rules: vec![broadcast_worker::simulator::FaultRule {
                body_contains: "BANNED".into(),
                fault: broadcast_worker::simulator::Fault {
                    code: Some(80001),
                    ..Default::default()
                },
            }],
            ..Default::default()
        });
    app.publish("s-1", &text_job("s-1")).await;
    app.publish("s-2", &text_job("s-2")).await;
    let mut banned = text_job("BANNED");
    banned["From_Account"] = "troll".into();
    app.publish("s-bad", &banned).await;
    app.start_worker();
    app.wait_for_elements(2, LONG).await;
    app.wait_for_dead(1, LONG).await;
    app.stop_worker().await.unwrap();
    let run = |id: &str| {
        std::process::Command::new(BIN)
            .args(["jobs", "show", id])
            .env("DATABASE_URL", db.url())
            .output()
            .unwrap()
    };
    let delivered = String::from_utf8(run("s-1").stdout).unwrap();
    assert!(delivered.contains("s-1: delivered at"), "{delivered}");
    // s-1 and s-2 share the first call, unless the broker handed s-2 over
    // after that call left.
    let first_call = app.sim.simulator.deliveries(0, 1)[0].body.clone().unwrap();
    let together = first_call["MsgBody"].as_array().unwrap().len() == 2;
    let others = if together { 1 } else { 0 };
    assert!(
        delivered.contains("MsgSeq 1,")
            && delivered.contains(&format!("with {others} other job(s)")),
        "{delivered}"
    );
    let dead = String::from_utf8(run("s-bad").stdout).unwrap();
    assert!(
        dead.contains("dead-lettered") && dead.contains("rejected, ErrorCode 80001"),
        "{dead}"
    );
    let unknown = run("never-sent");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("knows no job"));
}

#[tokio::test]
async fn records_older_than_the_retention_are_pruned_settled_or_in_doubt() {
    let db = TestDatabase::create("prune").await;
    let ledger = ledger_for(&db).await;
    let ours = ledger.clone().in_scope(Scope::new(APP, "prune.jobs"));
    let theirs = ledger.clone().in_scope(Scope::new(APP + 1, "other.jobs"));
    let (our_sender, their_sender) = (
        ours.open_session().await.unwrap(),
        theirs.open_session().await.unwrap(),
    );
    // p-0..p-3 delivered, p-4 and p-5 in flight; q-0 another app's, delivered.
    for i in 0..6 {
        let id = format!("p-{i}");
        let call = our_sender
            .begin_call(b"{}", i, &[i as u8; 32], &call_jobs(&[&id]), None)
            .await
            .unwrap()
            .recorded()
            .expect("the Random is free");
        if i < 4 {
            let held = our_sender
                .call_delivered(call, Some(u64::from(i)))
                .await
                .unwrap();
            assert_eq!(held, Ownership::Held);
        }
    }
    let call = their_sender
        .begin_call(b"{}", 9, &[9; 32], &call_jobs(&["q-0"]), None)
        .await
        .unwrap()
        .recorded()
        .unwrap();
    let held = their_sender.call_delivered(call, Some(9)).await.unwrap();
    assert_eq!(held, Ownership::Held);
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    // Old: p-0, p-1, p-2 (delivered), p-4 (in flight: in doubt for a week), q-0.
    let old = "('p-0', 'p-1', 'p-2', 'p-4', 'q-0')";
    sqlx::query(&format!(
        "UPDATE jobs SET updated_at = now() - interval '8 days' WHERE job_id IN {old}"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(&format!(
        "UPDATE calls SET created_at = now() - interval '8 days', \
             settled_at = CASE WHEN settled_at IS NULL THEN NULL ELSE now() - interval '8 days' END \
         WHERE id IN (SELECT call_id FROM jobs WHERE job_id IN {old})"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let week = Duration::from_secs(7 * 86_400);
    // Small batches: two jobs at a time.
    let mut removed = 0;
    loop {
        let n = ours.prune(week, 2).await.unwrap();
        if n == 0 {
            break;
        }
        removed += n;
    }
    assert_eq!(
        removed, 8,
        "three old delivered jobs, one old job in flight, and their four calls"
    );
    assert!(ours.show("p-0").await.unwrap().is_none());
    assert!(
        ours.show("p-4").await.unwrap().is_none(),
        "a call in flight for longer than the retention goes with its jobs"
    );
    let calls: i64 = sqlx::query_scalar("SELECT count(*) FROM calls WHERE app = $1")
        .bind(APP as i64)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(calls, 2, "the calls of p-3 and p-5 stay");
    assert!(
        ours.show("p-3").await.unwrap().is_some(),
        "recent records stay"
    );
    assert!(
        ours.show("p-5").await.unwrap().is_some(),
        "recent calls in flight stay"
    );
    assert!(
        theirs.show("q-0").await.unwrap().is_some(),
        "another deployment's records follow its own retention"
    );
}

#[tokio::test]
async fn a_call_that_may_have_been_delivered_is_dead_lettered_whole() {
    let db = TestDatabase::create("settle-whole").await;
    let app = spawn_app("settle-whole", 50.0).await;
    // Every attempt fails transiently: with one attempt allowed, the first
    // call's jobs are dead-lettered as retries-exhausted, and the worker dies
    // once their dead letters are out, before the ledger records them.
    app.sim
        .simulator
        .set_faults(broadcast_worker::simulator::FaultPlan {
            always: Some(broadcast_worker::simulator::Fault {
                code: Some(70500),
                ..Default::default()
            }),
            ..Default::default()
        });
    let jobs = backlog("whole", 5);
    app.publish_many(&jobs).await;
    let env = [
        ("DATABASE_URL", db.url()),
        ("BROADCAST_MAX_ATTEMPTS", "1".to_string()),
    ];
    let mut doomed_env = env.to_vec();
    doomed_env.push((
        "BROADCAST_TEST_CRASH_AT",
        "after-dead-letters:1".to_string(),
    ));
    let mut doomed = worker_process(BIN, &app, &doomed_env);
    assert_eq!(wait_exit(&mut doomed, LONG).await.code(), Some(137));
    let first: Vec<String> = app
        .take_dead_letters()
        .await
        .into_iter()
        .map(|d| d.id.unwrap())
        .collect();
    assert!(!first.is_empty());
    // The service would take the call now: a resend would deliver it.
    app.sim.simulator.set_faults(Default::default());
    let mut survivor = worker_process(BIN, &app, &env);
    app.wait_for_dead(first.len() as u32, LONG).await;
    let again = app.take_dead_letters().await;
    let mut again_ids: Vec<String> = again.iter().map(|d| d.id.clone().unwrap()).collect();
    again_ids.sort();
    let mut first_sorted = first.clone();
    first_sorted.sort();
    assert_eq!(
        again_ids, first_sorted,
        "the call's jobs came back in doubt"
    );
    assert!(again.iter().all(|d| d.reason == "in-doubt"), "{again:?}");
    let others: Vec<(String, Value)> = jobs
        .iter()
        .filter(|(id, _)| !first.contains(id))
        .cloned()
        .collect();
    app.wait_for("the other jobs delivered", LONG, |app| {
        app.all_delivered(&others)
    })
    .await;
    let texts = app.delivered_texts();
    for (id, body) in &jobs {
        let delivered = texts.get(&text_of(body)).copied().unwrap_or(0);
        let want = usize::from(!first.contains(id));
        assert_eq!(delivered, want, "{id} delivered {delivered} times");
    }
    signal(&survivor, "-TERM");
    wait_exit(&mut survivor, Duration::from_secs(20)).await;
}
