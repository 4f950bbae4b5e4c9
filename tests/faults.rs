//! Hardening: faults on every connection and bad input at volume. Each test
//! prints what it sent, delivered, dead-lettered, duplicated and lost.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use broadcast_worker::ledger::Ledger;
use broadcast_worker::simulator::{DropPoint, Fault, FaultPlan};
use serde_json::{json, Value};
use testkit::*;

const LONG: Duration = Duration::from_secs(120);

/// Sent, delivered once, delivered more than once, never delivered.
fn tally(app: &TestApp, jobs: &[(String, Value)]) -> (usize, usize, usize, usize) {
    let texts = app.delivered_texts();
    let count = |b: &Value| texts.get(&text_of(b)).copied().unwrap_or(0);
    let once = jobs.iter().filter(|(_, b)| count(b) == 1).count();
    let twice = jobs.iter().filter(|(_, b)| count(b) > 1).count();
    let lost = jobs.iter().filter(|(_, b)| count(b) == 0).count();
    (jobs.len(), once, twice, lost)
}

fn report(scenario: &str, app: &TestApp, jobs: &[(String, Value)], dead: usize) {
    let (sent, once, twice, lost) = tally(app, jobs);
    eprintln!("FIGURES {scenario}: sent {sent}, delivered once {once}, dead-lettered {dead}, duplicated {twice}, lost {lost}");
}

async fn with_ledger(app: &mut TestApp, db: &TestDatabase) {
    let ledger = Ledger::connect_lazy(&db.url()).unwrap();
    ledger.migrate().await.unwrap();
    app.config.ledger = Some(ledger);
}

#[tokio::test]
async fn a_cut_stalled_or_slow_broker_link_loses_and_doubles_nothing() {
    let db = TestDatabase::create("broker-faults").await;
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let mut app = spawn_app("broker-faults", 10.0).await;
    with_ledger(&mut app, &db).await;
    // Short heartbeats, so a stalled link is noticed in seconds.
    app.config.amqp_url = format!("{}?heartbeat=2&connection_timeout=3000", proxy.amqp_url());
    app.config.call.max_bytes = 2_000;
    let jobs = backlog("bf", 1500);
    app.publish_many(&jobs).await;
    app.start_worker();
    let status = app.status();
    let progress = |app: &TestApp| app.sim.simulator.stats().elements_delivered;

    app.wait_for("some calls", LONG, |app| progress(app) >= 100)
        .await;
    proxy.faults.stalled.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(8)).await;
    proxy.faults.stalled.store(false, Ordering::SeqCst);
    let after_stall = progress(&app);
    app.wait_for("calls after the stall", LONG, |app| {
        progress(app) >= after_stall + 100
    })
    .await;

    proxy.faults.delay_ms.store(40, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.faults.delay_ms.store(0, Ordering::SeqCst);

    proxy.cut_all();
    app.wait_for("every job delivered", LONG, |app| app.all_delivered(&jobs))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        status.consuming.load(Ordering::Relaxed),
        "recovered by itself"
    );
    app.stop_worker().await.unwrap();
    report(
        "broker link cut, stalled 8 s, slowed 40 ms/chunk (ledger)",
        &app,
        &jobs,
        0,
    );
    assert!(
        proxy.accepted.load(Ordering::SeqCst) >= 2,
        "the stall or the cut forced a reconnect"
    );
    app.assert_each_delivered_once(&jobs);
    assert_eq!(app.queue_len(&app.names.jobs).await, 0);
}

#[tokio::test]
async fn a_flaky_api_loses_and_doubles_nothing() {
    let db = TestDatabase::create("api-faults").await;
    let mut app = spawn_app("api-faults", 20.0).await;
    with_ledger(&mut app, &db).await;
    app.config.api.request_timeout = Duration::from_millis(400);
    app.config.policy.max_attempts = 100;
    app.config.call.max_bytes = 3_000;
    app.sim.simulator.set_faults(FaultPlan {
        probability: 0.4,
        random_faults: vec![
            // Slower than the timeout: processed, so the retry is a repeat.
            Fault {
                delay_ms: Some(700),
                ..Fault::default()
            },
            Fault {
                drop: Some(DropPoint::Before),
                ..Fault::default()
            },
            Fault {
                drop: Some(DropPoint::After),
                ..Fault::default()
            },
            Fault {
                garbage: true,
                ..Fault::default()
            },
            Fault {
                http_status: Some(502),
                ..Fault::default()
            },
            Fault {
                code: Some(70500),
                ..Fault::default()
            },
        ],
        ..FaultPlan::default()
    });
    let jobs = backlog("af", 800);
    app.publish_many(&jobs).await;
    app.start_worker();
    app.wait_for("every job delivered", LONG, |app| app.all_delivered(&jobs))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.stop_worker().await.unwrap();
    let stats = app.sim.simulator.stats();
    eprintln!(
        "FIGURES flaky API: {} calls, {} repeats dropped by the service, {} dropped connections, {} garbage answers",
        stats.calls, stats.repeats_dropped, stats.dropped_connections, stats.garbage_answers
    );
    report(
        "flaky API, 40% of calls faulty (ledger)",
        &app,
        &jobs,
        app.queue_len(&app.names.dead).await as usize,
    );
    assert!(
        stats.repeats_dropped > 0,
        "some retries were repeats the service dropped"
    );
    app.assert_each_delivered_once(&jobs);
    assert_eq!(app.queue_len(&app.names.dead).await, 0);
}

#[tokio::test]
async fn a_long_api_outage_keeps_every_job_and_full_rate_returns() {
    let mut app = spawn_app("outage", 5.0).await;
    // Time shortened: backoff capped at a second, an outage of 20 s.
    app.config.policy.max_attempts = 1_000;
    app.config.policy.backoff_max = Duration::from_secs(1);
    app.sim.simulator.set_faults(FaultPlan {
        always: Some(Fault {
            http_status: Some(503),
            ..Fault::default()
        }),
        ..FaultPlan::default()
    });
    let jobs = backlog("out", 1200);
    app.publish_many(&jobs).await;
    app.start_worker();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(app.sim.simulator.stats().deliveries, 0);
    assert_eq!(
        app.queue_len(&app.names.dead).await,
        0,
        "nothing dead-lettered during the outage"
    );
    app.sim.simulator.set_faults(FaultPlan::default());
    app.wait_for("delivery resumes", LONG, |app| {
        app.sim.simulator.stats().deliveries >= 1
    })
    .await;
    // Full rate again: over the next 4 s, close to 5 calls a second.
    let first = app.sim.simulator.stats().deliveries;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let in_window = app.sim.simulator.stats().deliveries - first;
    assert!(
        in_window >= 10,
        "only {in_window} calls in 4 s after the outage at 5 calls/s"
    );
    app.wait_for("every job delivered", LONG, |app| app.all_delivered(&jobs))
        .await;
    app.stop_worker().await.unwrap();
    report("API down 20 s (HTTP 503)", &app, &jobs, 0);
    app.assert_each_delivered_once(&jobs);
}

#[tokio::test]
async fn bad_input_at_volume_is_dead_lettered_while_the_good_flows() {
    let mut app = spawn_app("bad-volume", 50.0).await;
    let mut good = Vec::new();
    let mut expected_reason: HashMap<String, &str> = HashMap::new();
    let mut stream: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..10_000 {
        if i % 4 == 3 {
            let (reason, body) = malformed(i / 4, i);
            let id = format!("bad-{i}");
            expected_reason.insert(id.clone(), reason);
            stream.push((id, body));
        } else {
            let id = format!("good-{i}");
            let body = text_job(&id);
            stream.push((id.clone(), body.to_string().into_bytes()));
            good.push((id, body));
        }
    }
    app.publish_bulk(stream.into_iter()).await;
    let started = Instant::now();
    app.start_worker();
    app.wait_for_elements(good.len() as u64, LONG).await;
    let elapsed = started.elapsed();
    app.wait_for_dead(2_500, LONG).await;
    app.stop_worker().await.unwrap();
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 2_500);
    for d in &dead {
        let id = d.id.as_ref().unwrap();
        assert_eq!(
            Some(&d.reason.as_str()),
            expected_reason.get(id),
            "{id}: {}",
            d.error_info
        );
    }
    report("10,000 jobs, a quarter malformed", &app, &good, dead.len());
    eprintln!(
        "FIGURES bad input: 7,500 good jobs delivered in {:.1} s in {} calls",
        elapsed.as_secs_f64(),
        app.sim.simulator.stats().deliveries
    );
    app.assert_each_delivered_once(&good);
    // The good ones still go out in (nearly) full calls: the bad ones never
    // reach the sender, where each would cost calls of its own. The margin is
    // for a loaded machine, where the sender may go before its call is full.
    let bytes: usize = good
        .iter()
        .map(|(_, b)| b["MsgBody"][0].to_string().len() + 1)
        .sum();
    let minimum = bytes.div_ceil(12_000 - 40);
    assert!(
        app.sim.simulator.stats().deliveries as usize <= minimum + minimum / 4 + 2,
        "{} calls for about {minimum}",
        app.sim.simulator.stats().deliveries
    );
}

/// Five kinds of malformed job, in turn, with the reason each must get.
fn malformed(kind: usize, i: usize) -> (&'static str, Vec<u8>) {
    let body = |v: Value| v.to_string().into_bytes();
    match kind % 5 {
        0 => ("invalid-json", format!("{{\"MsgBody\": [{i}").into_bytes()),
        1 => ("invalid-job", body(json!({"MsgBody": []}))),
        2 => (
            "invalid-job",
            body(json!({"MsgBody": [{"MsgType": "TIMNope", "MsgContent": {"Text": i}}]})),
        ),
        3 => (
            "invalid-job",
            body(json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": i}}]})),
        ),
        _ => (
            "too-large",
            body(
                json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "x".repeat(13_000)}}]}),
            ),
        ),
    }
}

#[test]
fn a_secret_key_read_from_a_file_is_never_echoed() {
    use std::io::Write;
    let path = std::env::temp_dir().join(format!("bw-faults-key-{}", std::process::id()));
    let secret = format!("file-only-secret-{:08x}", rand::random::<u32>());
    std::fs::File::create(&path)
        .unwrap()
        .write_all(secret.as_bytes())
        .unwrap();
    // A configuration error after the key is read: every message it prints.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_broadcast-worker"))
        .args(["run", "--rate", "0"])
        .env("TIM_SDKAPPID", "1")
        .env("TIM_IDENTIFIER", "admin")
        .env("TIM_SECRET_KEY_FILE", &path)
        .env_remove("TIM_SECRET_KEY")
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(!all.contains(&secret), "{all}");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_broadcast-worker"))
        .args(["run", "--help"])
        .env("TIM_SECRET_KEY", &secret)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&help.stdout).contains(&secret),
        "--help shows the key from the environment"
    );
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_replica_that_lost_its_broker_session_stops_sending_at_once() {
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let mut app = spawn_app("session-lost", 20.0).await;
    app.config.amqp_url = proxy.amqp_url();
    app.config.policy.max_attempts = 1_000;
    app.config.policy.backoff_min = Duration::from_millis(20);
    app.config.policy.backoff_max = Duration::from_millis(20);
    // The service fails every call: the worker keeps retrying one call.
    app.sim.simulator.set_faults(FaultPlan {
        always: Some(Fault {
            code: Some(10002),
            ..Fault::default()
        }),
        ..FaultPlan::default()
    });
    app.publish("held", &text_job("held")).await;
    app.start_worker();
    app.wait_for("a few retries", LONG, |app| {
        app.sim.simulator.stats().calls >= 5
    })
    .await;
    // The broker goes (and stays away): another replica would now be the
    // active consumer, so this one must not send again.
    proxy.set_down(true);
    let at_cut = app.sim.simulator.stats().calls;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = app.sim.simulator.stats().calls - at_cut;
    eprintln!("FIGURES session-lost: calls after the cut {after}");
    assert!(after <= 1, "{after} calls after the session was lost");
    proxy.set_down(false);
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn no_attempt_comes_after_the_repeat_window_whatever_waited_in_between() {
    let mut app = spawn_app("repeat-window", 20.0).await;
    app.config.api.request_timeout = Duration::from_millis(300);
    app.config.resend_window = Duration::from_millis(1_500);
    // The first attempt is delivered but answers too late (a timeout: it may
    // have gone through); then the app is halted (10007) and probed.
    app.sim.simulator.set_faults(FaultPlan {
        script: vec![Fault {
            delay_ms: Some(800),
            ..Fault::default()
        }]
        .into(),
        always: Some(Fault {
            code: Some(10007),
            ..Fault::default()
        }),
        ..FaultPlan::default()
    });
    app.publish("late", &text_job("late")).await;
    app.start_worker();
    app.wait_for_dead(1, LONG).await;
    let dead = app.take_dead_letters().await;
    assert_eq!(dead[0].reason, "in-doubt", "{}", dead[0].error_info);
    let calls = app.sim.simulator.calls();
    let first = calls[0].received_at_ms;
    let last = calls.iter().map(|c| c.received_at_ms).max().unwrap();
    eprintln!(
        "FIGURES repeat-window: {} attempts over {} ms",
        calls.len(),
        last - first
    );
    assert!(calls.len() >= 2, "probed while halted");
    assert!(
        last - first < 1_500,
        "an attempt {} ms after the first",
        last - first
    );
    assert_eq!(app.sim.simulator.stats().deliveries, 1);
    app.stop_worker().await.unwrap();
}

/// A connection lost in the middle of declaring the queues is a lost
/// session like any other: the worker connects again, declares again and
/// delivers, rather than taking it for a conflict and stopping for good.
#[tokio::test]
async fn a_declare_cut_midway_is_retried() {
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let mut app = spawn_app("declare-cut", 10.0).await;
    app.config.amqp_url = proxy.amqp_url();
    proxy.cut_on(app.names.jobs.as_bytes());
    let jobs = backlog("dc", 5);
    app.publish_many(&jobs).await;
    app.start_worker();
    app.wait_for("every job delivered", LONG, |app| app.all_delivered(&jobs))
        .await;
    assert!(proxy.cut_done(), "the declare was cut");
    assert!(
        proxy.accepted.load(Ordering::SeqCst) >= 2,
        "connected again after the cut"
    );
    app.assert_each_delivered_once(&jobs);
    app.stop_worker().await.unwrap();
}
