//! No job lost or stuck because of how it is identified: ids scoped to their
//! app and queue when deployments share a ledger, jobs without `message_id`
//! sent again when published again yet recognised when redelivered, a
//! `message_id` the ledger cannot hold, and a ledger upgraded in place with
//! calls in flight. Each test has its own database and queues.

use std::sync::atomic::Ordering;
use std::time::Duration;

use broadcast_worker::ledger::{CallJob, Ledger, Scope};
use broadcast_worker::pipeline::job::body_digest;
use broadcast_worker::tencent::body::content_digest;
use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use serde_json::Value;
use testkit::*;

const LONG: Duration = Duration::from_secs(90);
const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");
/// A second app, beside testkit's `APP`.
const APP_B: u64 = 1400000008;

async fn ledger_for(db: &TestDatabase) -> Ledger {
    let ledger = Ledger::connect_lazy(&db.url()).unwrap();
    ledger.migrate().await.expect("migrations apply");
    ledger
}

/// `jobs show` against `db`, with no scope from the environment.
fn jobs_show(db: &TestDatabase, args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let mut command = std::process::Command::new(BIN);
    command
        .args(["jobs", "show"])
        .args(args)
        .env("DATABASE_URL", db.url())
        .env_remove("TIM_SDKAPPID")
        .env_remove("BROADCAST_QUEUE_PREFIX");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// Publishes each body without a `message_id`.
async fn publish_nameless(app: &TestApp, jobs: &[(String, Value)]) {
    for (_, body) in jobs {
        app.publish_raw(None, body.to_string().as_bytes(), None)
            .await;
    }
}

/// Takes `n` jobs off the queue without acking them and closes the channel:
/// the broker puts them back, marked redelivered, as after a worker's death.
async fn deliver_and_return(app: &TestApp, n: usize) {
    let channel = app.connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            app.names.jobs.as_str().into(),
            "returns-everything".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..n {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a job arrives")
            .expect("consumer open")
            .unwrap();
        assert!(!delivery.redelivered);
    }
    channel.close(200, "returned".into()).await.unwrap();
    app.wait_for_len(&app.names.jobs, n as u32).await;
}

/// Jobs m0..m199 whose texts say which app they are for.
fn numbered(tag: &str) -> Vec<(String, Value)> {
    (0..200)
        .map(|i| {
            let id = format!("m{i}");
            let body = text_job(&format!("{tag}:{id}"));
            (id, body)
        })
        .collect()
}

#[tokio::test]
async fn two_apps_sharing_a_ledger_each_deliver_their_own_jobs_once() {
    let db = TestDatabase::create("two-apps").await;
    let ledger = ledger_for(&db).await;
    let mut a = spawn_app("scope-a", 50.0).await;
    let mut b = spawn_app_with("scope-b", 50.0, |sim| sim.sdkappid = APP_B).await;
    b.config.api.sdkappid = APP_B;
    let (jobs_a, jobs_b) = (numbered("a"), numbered("b"));
    for (app, jobs) in [(&mut a, &jobs_a), (&mut b, &jobs_b)] {
        app.config.ledger = Some(ledger.clone());
        app.publish_many(jobs).await;
        app.start_worker();
        app.wait_for("every job delivered", LONG, |app| app.all_delivered(jobs))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.stop_worker().await.unwrap();
        app.assert_each_delivered_once(jobs);
        assert_eq!(app.queue_len(&app.names.jobs).await, 0);
        assert_eq!(app.queue_len(&app.names.dead).await, 0);
    }
    assert_eq!(
        a.sim.simulator.stats().elements_delivered + b.sim.simulator.stats().elements_delivered,
        400,
        "each app's simulator saw its own 200 jobs"
    );

    // `jobs show m5` names a job in each scope: the operator must pick one.
    let ambiguous = jobs_show(&db, &["m5"], &[]);
    assert!(!ambiguous.status.success());
    let said = String::from_utf8_lossy(&ambiguous.stderr);
    assert!(
        said.contains(&format!("app {APP} queue {}", a.names.jobs))
            && said.contains(&format!("app {APP_B} queue {}", b.names.jobs))
            && said.contains("add --sdkappid (TIM_SDKAPPID) or --queue-prefix"),
        "{said}"
    );
    for (args, env) in [
        (vec!["m5", "--sdkappid", "1400000008"], vec![]),
        (vec!["m5", "--queue-prefix", a.prefix.as_str()], vec![]),
        (
            vec!["m5", "--json"],
            vec![("TIM_SDKAPPID", APP.to_string())],
        ),
    ] {
        let picked = jobs_show(&db, &args, &env);
        let out = String::from_utf8_lossy(&picked.stdout);
        assert!(picked.status.success(), "{args:?}: {out}");
        assert!(out.contains("delivered"), "{args:?}: {out}");
    }
    let json = jobs_show(&db, &["m5", "--json", "--sdkappid", "1400000008"], &[]);
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        (report["app"].as_u64(), report["queue"].as_str()),
        (Some(APP_B), Some(b.names.jobs.as_str()))
    );
}

#[tokio::test]
async fn a_random_is_claimed_per_app() {
    let db = TestDatabase::create("random-per-app").await;
    let ledger = ledger_for(&db).await;
    let job = |id: &str| CallJob {
        id: id.into(),
        replays: 0,
        digest: None,
    };
    let in_scope = |app, queue: &str| ledger.clone().in_scope(Scope::new(app, queue));
    let claim = |ledger: Ledger, content: u8| async move {
        let session = ledger.open_session().await.unwrap();
        session
            .begin_call(b"{}", 7, &[content; 32], &[job("r")], None)
            .await
            .unwrap()
            .recorded()
    };
    assert!(claim(in_scope(APP, "a.jobs"), 1).await.is_some());
    assert!(
        claim(in_scope(APP_B, "b.jobs"), 2).await.is_some(),
        "another app's service does not know the first call"
    );
    assert!(
        claim(in_scope(APP, "other.jobs"), 3).await.is_none(),
        "the same app's repeat filter covers all its queues"
    );
}

#[tokio::test]
async fn a_body_without_message_id_published_again_is_sent_again() {
    let db = TestDatabase::create("nameless-again").await;
    let mut app = spawn_app("nameless-again", 50.0).await;
    app.config.ledger = Some(ledger_for(&db).await);
    let job = vec![("announcement".to_string(), text_job("announcement"))];
    app.start_worker();
    publish_nameless(&app, &job).await;
    app.wait_for_elements(1, LONG).await;
    // An hour later, as far as the worker can tell: the first is settled.
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_nameless(&app, &job).await;
    app.wait_for_elements(2, LONG).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.stop_worker().await.unwrap();
    let deliveries = app.sim.simulator.deliveries(0, 10);
    assert_eq!(deliveries.len(), 2, "two broadcasts");
    let random = |i: usize| deliveries[i].body.as_ref().unwrap()["Random"].clone();
    assert_ne!(random(0), random(1), "under different Randoms");
    assert_eq!(app.sim.simulator.stats().repeats_dropped, 0);
    assert_eq!(app.queue_len(&app.names.jobs).await, 0);
    // The body's digest names both arrivals.
    let digest = body_digest(job[0].1.to_string().as_bytes());
    let show = jobs_show(&db, &[&digest], &[]);
    assert!(!show.status.success());
    let said = String::from_utf8_lossy(&show.stderr);
    assert!(
        said.contains("names 2 jobs") && said.contains("full id"),
        "{said}"
    );
}

#[tokio::test]
async fn a_kill_after_a_call_of_jobs_without_message_id_loses_and_doubles_nothing() {
    let db = TestDatabase::create("nameless-crash").await;
    let app = spawn_app("nameless-crash", 5.0).await;
    let mut jobs = backlog("nameless", 300);
    // Two bodies published twice: twin-a twice in a row, twin-b at the head
    // and at the end of the queue (same body, in the first call or not).
    let twin = |name: &str| (name.to_string(), text_job(name));
    jobs.insert(0, twin("twin-a"));
    jobs.insert(1, twin("twin-a"));
    jobs.insert(2, twin("twin-b"));
    jobs.push(twin("twin-b"));
    publish_nameless(&app, &jobs).await;
    let ledger_env = ("DATABASE_URL", db.url());
    let crash = ("BROADCAST_TEST_CRASH_AT", "after-call:1".to_string());
    let mut doomed = worker_process(BIN, &app, &[ledger_env.clone(), crash]);
    let status = wait_exit(&mut doomed, LONG).await;
    assert_eq!(
        status.code(),
        Some(137),
        "the worker died after its first call"
    );
    let mut survivor = worker_process(BIN, &app, &[ledger_env]);
    app.wait_for("every job delivered", LONG, |app| {
        let texts = app.delivered_texts();
        app.all_delivered(&jobs) && texts.get("job:twin-b") == Some(&2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&survivor, "-TERM");
    wait_exit(&mut survivor, Duration::from_secs(20)).await;
    let texts = app.delivered_texts();
    app.assert_each_delivered_once(&jobs[3..303]);
    assert_eq!(
        texts.get("job:twin-a"),
        Some(&2),
        "published twice, sent twice"
    );
    assert_eq!(
        texts.get("job:twin-b"),
        Some(&2),
        "published twice, sent twice"
    );
    assert!(
        app.sim.simulator.stats().repeats_dropped >= 1,
        "the first call was resent verbatim and dropped as a repeat"
    );
    assert_eq!(app.queue_len(&app.names.jobs).await, 0, "every job acked");
    assert_eq!(app.queue_len(&app.names.dead).await, 0);
}

#[tokio::test]
async fn a_message_id_the_ledger_cannot_hold_is_dead_lettered_and_the_rest_delivered() {
    let db = TestDatabase::create("nul-id").await;
    let mut app = spawn_app("nul-id", 50.0).await;
    app.config.ledger = Some(ledger_for(&db).await);
    let good = backlog("good", 40);
    app.publish_many(&good[..20]).await;
    app.publish("bad\0id", &text_job("bad")).await;
    app.publish_many(&good[20..]).await;
    app.start_worker();
    let status = app.status();
    app.wait_for("the good jobs", LONG, |app| app.all_delivered(&good))
        .await;
    app.wait_for_dead(1, LONG).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!status.ledger_down.load(Ordering::Relaxed));
    app.stop_worker().await.unwrap();
    app.assert_each_delivered_once(&good);
    assert_eq!(app.sim.simulator.stats().elements_delivered, 40);
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "invalid-job");
    assert!(
        dead[0].error_info.contains("message_id") && dead[0].error_info.contains("U+0000"),
        "{}",
        dead[0].error_info
    );
    assert_eq!(app.queue_len(&app.names.jobs).await, 0);
}

/// The ledger's first three migrations, as a worker before scopes left it.
const OLD_MIGRATIONS: [&str; 3] = [
    include_str!("../migrations/20261125000001_ledger.sql"),
    include_str!("../migrations/20261125000002_replays.sql"),
    include_str!("../migrations/20261126000001_random_claims.sql"),
];

/// A `calls` row as a worker before scopes wrote it.
async fn old_call(conn: &mut sqlx::PgConnection, body: Vec<u8>, random: u32, state: &str) -> i64 {
    let digest = content_digest(&body, random).to_vec();
    sqlx::query_scalar(
        "INSERT INTO calls (body, random, job_count, state, content_digest) \
         VALUES ($1, $2, 1, $3, $4) RETURNING id",
    )
    .bind(body)
    .bind(i64::from(random))
    .bind(state)
    .bind(digest)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// A ledger as a worker before scopes left it: a call in flight of u-1, u-2
/// and a job without message_id (then known by its digest), and u-3
/// delivered. Returns the call's body.
async fn a_ledger_from_before_scopes(db: &TestDatabase, nameless: &Value) -> Vec<u8> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    for migration in OLD_MIGRATIONS {
        sqlx::raw_sql(migration).execute(&mut conn).await.unwrap();
    }
    let elements: Vec<Value> = [text_job("u-1"), text_job("u-2"), nameless.clone()]
        .iter()
        .map(|j| j["MsgBody"][0].clone())
        .collect();
    let body = serde_json::json!({"Random": 4242, "MsgBody": elements})
        .to_string()
        .into_bytes();
    let in_flight = old_call(&mut conn, body.clone(), 4242, "in_flight").await;
    let delivered = old_call(&mut conn, b"{}".to_vec(), 1, "delivered").await;
    let digest = body_digest(nameless.to_string().as_bytes());
    for (id, call, state) in [
        ("u-1", in_flight, "in_flight"),
        ("u-2", in_flight, "in_flight"),
        (digest.as_str(), in_flight, "in_flight"),
        ("u-3", delivered, "delivered"),
    ] {
        sqlx::query("INSERT INTO jobs (job_id, call_id, state) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(call)
            .bind(state)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    body
}

#[tokio::test]
async fn an_upgrade_keeps_the_calls_in_flight_and_settled_jobs_of_before() {
    let db = TestDatabase::create("upgrade").await;
    let nameless = text_job("u-nameless");
    let body = a_ledger_from_before_scopes(&db, &nameless).await;
    let ledger = ledger_for(&db).await;
    // The worker died: its jobs come back, redelivered.
    let mut app = spawn_app("upgrade", 50.0).await;
    app.config.ledger = Some(ledger.clone());
    for id in ["u-1", "u-2", "u-3"] {
        app.publish(id, &text_job(id)).await;
    }
    app.publish_raw(None, nameless.to_string().as_bytes(), None)
        .await;
    deliver_and_return(&app, 4).await;
    app.start_worker();
    app.wait_for_elements(3, LONG).await;
    app.wait_for_len(&app.names.jobs, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.stop_worker().await.unwrap();
    let deliveries = app.sim.simulator.deliveries(0, 10);
    assert_eq!(deliveries.len(), 1, "one call: the one in flight");
    assert_eq!(
        deliveries[0].raw_body.as_deref().map(str::as_bytes),
        Some(&body[..]),
        "resent verbatim"
    );
    assert_eq!(
        app.sim.simulator.stats().calls,
        1,
        "u-3 acked without a call"
    );
    let digest = body_digest(nameless.to_string().as_bytes());
    for id in ["u-1", digest.as_str(), "u-3"] {
        let report = ledger.show(id).await.unwrap().expect("still known");
        assert_eq!(report.state, broadcast_worker::ledger::JobState::Delivered);
    }
}
