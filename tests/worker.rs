//! The worker against real RabbitMQ and the project's simulator.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use broadcast_worker::simulator::{Fault, FaultPlan};
use serde_json::{json, Value};
use testkit::*;

const LONG: Duration = Duration::from_secs(60);

/// Calls needed to send these elements in order, each call filled until the
/// next job would not fit: computed here from the API's body layout.
fn packing_minimum(jobs: &[Value], cap: usize) -> usize {
    let overhead = r#"{"Random":4294967295,"MsgBody":[]}"#.len();
    let mut calls = 0;
    let mut size = 0;
    for job in jobs {
        let elements = job["MsgBody"].as_array().unwrap();
        let bytes: usize =
            elements.iter().map(|e| e.to_string().len()).sum::<usize>() + elements.len() - 1;
        if calls == 0 || size + 1 + bytes > cap {
            calls += 1;
            size = overhead + bytes;
        } else {
            size += 1 + bytes;
        }
    }
    calls
}

#[tokio::test]
async fn a_burst_is_packed_into_full_calls_and_delivered_once() {
    let mut app = spawn_app("burst", 2.0).await;
    // The test shares two cores with a dozen others: give the bucket more
    // margin against scheduling jitter than a dedicated worker needs.
    app.config.rate_guard = Duration::from_millis(50);
    app.start_worker();
    let jobs: Vec<(String, Value)> = (0..1200)
        .map(|i| {
            let id = format!("burst-{i:05}");
            let mut body = text_job(&id);
            // Vary the size a little, like real traffic.
            body["MsgBody"][0]["MsgContent"]["Text"] =
                format!("job:{id} {}", "x".repeat(40 + i % 50)).into();
            (id, body)
        })
        .collect();
    app.publish_many(&jobs).await;
    app.wait_for_elements(1200, LONG).await;
    // Let any stray extra call land before counting.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let stats = app.sim.simulator.stats();
    let texts = app.delivered_texts();
    for (id, body) in &jobs {
        let text = body["MsgBody"][0]["MsgContent"]["Text"].as_str().unwrap();
        assert_eq!(texts.get(text), Some(&1), "job {id} delivered exactly once");
    }
    assert_eq!(stats.elements_delivered, 1200);
    let arrivals: Vec<(u64, Option<i64>)> = app
        .sim
        .simulator
        .calls()
        .iter()
        .map(|c| (c.received_at_ms, c.error_code))
        .collect();
    assert_eq!(
        stats.frequency_violations, 0,
        "no frequency-limit answers: {arrivals:?}"
    );
    assert!(
        stats.largest_body <= 12_000,
        "largest call {} bytes",
        stats.largest_body
    );
    let bodies: Vec<Value> = jobs.iter().map(|(_, b)| b.clone()).collect();
    let minimum = packing_minimum(&bodies, 12_000);
    assert!(
        stats.deliveries as usize <= minimum + 2,
        "{} calls for a packing minimum of {minimum}",
        stats.deliveries
    );
    assert_eq!(stats.calls, stats.deliveries, "no retries were needed");
    assert!(app.take_dead_letters().await.is_empty());
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn order_is_kept_per_sender_and_senders_never_share_a_call() {
    let mut app = spawn_app("order", 5.0).await;
    let senders = ["alice", "bob", "carol"];
    let jobs: Vec<(String, Value)> = (0..450)
        .map(|i| {
            let id = format!("order-{i:04}");
            let mut body = text_job(&id);
            body["From_Account"] = senders[i % 3].into();
            if i.is_multiple_of(5) {
                body["CloudCustomData"] = "tagged".into();
            }
            (id, body)
        })
        .collect();
    app.publish_many(&jobs).await;
    app.start_worker();
    app.wait_for_elements(450, LONG).await;

    let mut last_seen: HashMap<(String, String), usize> = HashMap::new();
    for delivery in app.sim.simulator.deliveries(0, usize::MAX) {
        let body = delivery.body.unwrap();
        let from = body["From_Account"].as_str().unwrap().to_string();
        let data = body["CloudCustomData"].as_str().unwrap_or("").to_string();
        for element in body["MsgBody"].as_array().unwrap() {
            let text = element["MsgContent"]["Text"].as_str().unwrap();
            let n: usize = text.trim_start_matches("job:order-").parse().unwrap();
            assert_eq!(
                senders[n % 3],
                from,
                "job {n} travelled in a call of another sender"
            );
            assert_eq!(
                n.is_multiple_of(5),
                data == "tagged",
                "job {n} travelled with other custom data"
            );
            let key = (from.clone(), data.clone());
            if let Some(prev) = last_seen.insert(key, n) {
                assert!(n > prev, "job {n} delivered after {prev} of the same key");
            }
        }
    }
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn every_kind_of_bad_input_is_dead_lettered_with_its_reason() {
    let mut app = spawn_app("bad-input", 50.0).await;
    app.publish("good-1", &text_job("good-1")).await;
    let bad: Vec<(&str, String, &str, &str)> = vec![
        ("not-json", "{\"MsgBody\": [".into(), "invalid-json", "invalid-json"),
        ("no-body", json!({"From_Account": "x"}).to_string(), "invalid-job", "MsgBody is missing"),
        ("empty-body", json!({"MsgBody": []}).to_string(), "invalid-job", "MsgBody is empty"),
        (
            "unknown-type",
            json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "ok"}}, {"MsgType": "TIMHoloElem", "MsgContent": {}}]}).to_string(),
            "invalid-job",
            "MsgBody[1].MsgType unknown",
        ),
        (
            "missing-field",
            json!({"MsgBody": [{"MsgType": "TIMLocationElem", "MsgContent": {"Desc": "x", "Latitude": 1.0}}]}).to_string(),
            "invalid-job",
            "MsgBody[0].MsgContent.Longitude missing",
        ),
        (
            "wrong-type",
            json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": 42}}]}).to_string(),
            "invalid-job",
            "MsgBody[0].MsgContent.Text must be a string, found a number",
        ),
        (
            "unknown-field",
            json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "a"}}], "Priority": "High"}).to_string(),
            "invalid-job",
            "unknown field \"Priority\"",
        ),
        (
            "too-large",
            json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "z".repeat(12_100)}}]}).to_string(),
            "too-large",
            "over 12000",
        ),
    ];
    for (id, body, _, _) in &bad {
        app.publish_raw(Some(id), body.as_bytes(), None).await;
    }
    // A deadline already past.
    app.publish_raw(
        Some("expired"),
        text_job("expired").to_string().as_bytes(),
        Some(int_header("x-deadline", 1_000)),
    )
    .await;
    app.publish("good-2", &text_job("good-2")).await;
    app.start_worker();
    app.wait_for_elements(2, LONG).await;
    app.wait_for_dead(bad.len() as u32 + 1, LONG).await;

    let dead: HashMap<String, DeadMessage> = app
        .take_dead_letters()
        .await
        .into_iter()
        .map(|d| (d.id.clone().unwrap(), d))
        .collect();
    for (id, body, reason, info) in &bad {
        let d = dead
            .get(*id)
            .unwrap_or_else(|| panic!("{id} not dead-lettered"));
        assert_eq!(&d.reason, reason, "{id}");
        assert!(
            d.error_info.contains(info),
            "{id}: {:?} lacks {info:?}",
            d.error_info
        );
        assert_eq!(d.body, body.as_bytes(), "{id}: the original body is kept");
        assert_eq!(d.attempts, Some(0));
        assert!(d.first_seen.unwrap() > 1_700_000_000_000);
    }
    assert_eq!(dead["expired"].reason, "expired");
    let texts = app.delivered_texts();
    assert_eq!(
        (texts.get("job:good-1"), texts.get("job:good-2")),
        (Some(&1), Some(&1))
    );
    assert_eq!(texts.len(), 2);
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn a_transient_error_is_retried_with_the_same_random() {
    let mut app = spawn_app("transient", 50.0).await;
    app.sim.simulator.set_faults(FaultPlan {
        script: vec![
            Fault {
                code: Some(10002),
                ..Fault::default()
            },
            Fault {
                http_status: Some(502),
                ..Fault::default()
            },
        ]
        .into(),
        ..FaultPlan::default()
    });
    // One job of three elements: a call whose body is known before the
    // worker starts (separate jobs might reach it in separate calls).
    let elements: Vec<Value> = (0..3)
        .map(|i| json!({"MsgType": "TIMTextElem", "MsgContent": {"Text": format!("job:t-{i}")}}))
        .collect();
    app.publish("t", &json!({ "MsgBody": elements })).await;
    app.start_worker();
    app.wait_for_elements(3, LONG).await;
    let calls = app.sim.simulator.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(calls[0].error_code, Some(10002));
    assert_eq!(calls[1].error_code, None, "HTTP 502");
    assert_eq!(calls[2].error_code, Some(0));
    assert!(
        calls.iter().all(|c| c.random == calls[0].random),
        "same Random on every attempt"
    );
    assert_eq!(app.sim.simulator.stats().deliveries, 1);
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn a_refused_merged_call_is_split_until_only_the_offender_is_dead_lettered() {
    let mut app = spawn_app("bisect", 50.0).await;
    app.sim
        .simulator
        .set_faults(refuse_bodies_containing("POISON", 10004));
    let ids: Vec<String> = (0..9).map(|i| format!("b-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let body = if i == 6 {
            text_job("POISON")
        } else {
            text_job(id)
        };
        app.publish(id, &body).await;
    }
    app.start_worker();
    app.wait_for_elements(8, LONG).await;
    app.wait_for_dead(1, LONG).await;
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id.as_deref(), Some("b-6"));
    assert_eq!(
        (dead[0].reason.as_str(), dead[0].error_code),
        ("rejected", Some(10004))
    );
    let texts = app.delivered_texts();
    for (i, id) in ids.iter().enumerate() {
        let want = if i == 6 { None } else { Some(&1) };
        assert_eq!(texts.get(&format!("job:{id}")), want, "{id}");
    }
    // A merged call was refused, then split: some refused call carried
    // more than the poisoned job alone (about 90 bytes).
    let refused: Vec<usize> = app
        .sim
        .simulator
        .calls()
        .iter()
        .filter(|c| c.error_code == Some(10004))
        .map(|c| c.bytes)
        .collect();
    assert!(
        refused.len() >= 2 && refused.iter().any(|&b| b > 150),
        "{refused:?}"
    );
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn an_expired_usersig_is_renewed_and_the_call_delivered() {
    let mut app = spawn_app("resign", 50.0).await;
    app.sim.simulator.set_faults(FaultPlan {
        script: vec![Fault {
            code: Some(70001),
            ..Fault::default()
        }]
        .into(),
        ..FaultPlan::default()
    });
    app.publish("r-1", &text_job("r-1")).await;
    app.start_worker();
    app.wait_for_elements(1, LONG).await;
    let codes: Vec<Option<i64>> = app
        .sim
        .simulator
        .calls()
        .iter()
        .map(|c| c.error_code)
        .collect();
    assert_eq!(codes, [Some(70001), Some(0)]);
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn a_frequency_limit_pauses_the_sender_without_counting_against_the_job() {
    let mut app = spawn_app("freq", 50.0).await;
    // One transient failure would dead-letter the job; rate limits must not.
    app.config.policy.max_attempts = 1;
    app.config.slow_down.pause = Duration::from_millis(500);
    app.sim.simulator.set_faults(FaultPlan {
        script: vec![
            Fault {
                code: Some(10023),
                ..Fault::default()
            },
            Fault {
                code: Some(60007),
                ..Fault::default()
            },
        ]
        .into(),
        ..FaultPlan::default()
    });
    for i in 0..20 {
        app.publish(&format!("f-{i}"), &text_job(&format!("f-{i}")))
            .await;
    }
    app.start_worker();
    app.wait_for_elements(20, LONG).await;
    let calls = app.sim.simulator.calls();
    assert_eq!(calls[0].error_code, Some(10023));
    // The pause: the retry came at least the configured pause later.
    assert!(
        calls[1].received_at_ms - calls[0].received_at_ms >= 450,
        "{calls:?}"
    );
    assert!(
        calls[2].received_at_ms - calls[1].received_at_ms >= 450,
        "{calls:?}"
    );
    assert!(app.take_dead_letters().await.is_empty());
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn an_app_wide_fault_halts_keeps_every_job_and_resumes_by_itself() {
    let mut app = spawn_app("appfault", 50.0).await;
    app.sim.simulator.set_faults(FaultPlan {
        always: Some(Fault {
            code: Some(10007),
            ..Fault::default()
        }),
        ..FaultPlan::default()
    });
    for i in 0..5 {
        app.publish(&format!("h-{i}"), &text_job(&format!("h-{i}")))
            .await;
    }
    app.start_worker();
    let status = app.status();
    app.wait_for("three probes", LONG, |app| {
        app.sim.simulator.stats().calls >= 3
    })
    .await;
    assert!(status.halted.load(Ordering::Relaxed), "reported as halted");
    assert_eq!(app.sim.simulator.stats().deliveries, 0);
    assert_eq!(
        app.queue_len(&app.names.dead).await,
        0,
        "nothing dead-lettered"
    );
    // Probes are spaced by the probe interval, not hammering the service.
    let calls = app.sim.simulator.calls();
    assert!(calls[2].received_at_ms - calls[1].received_at_ms >= 250);

    app.sim.simulator.set_faults(FaultPlan::default());
    app.wait_for_elements(5, LONG).await;
    // The worker reads the answer a moment after the simulator counts it.
    app.wait_for("the halt lifted", LONG, |_| {
        !status.halted.load(Ordering::Relaxed)
    })
    .await;
    assert_eq!(app.delivered_texts().len(), 5);
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn persistent_transient_errors_exhaust_into_dead_letters() {
    let mut app = spawn_app("exhaust", 50.0).await;
    app.config.policy.max_attempts = 3;
    app.sim.simulator.set_faults(FaultPlan {
        always: Some(Fault {
            code: Some(70500),
            ..Fault::default()
        }),
        ..FaultPlan::default()
    });
    app.publish("e-1", &text_job("e-1")).await;
    app.publish("e-2", &text_job("e-2")).await;
    app.start_worker();
    app.wait_for_dead(2, LONG).await;
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 2);
    for d in &dead {
        assert_eq!(
            (d.reason.as_str(), d.error_code, d.attempts),
            ("retries-exhausted", Some(70500), Some(3))
        );
    }
    // Both jobs were queued before the worker started, but the broker may
    // hand the second over after the first call left: each call (one Random)
    // is attempted exactly three times, and no more.
    let mut attempts: HashMap<Option<u32>, u32> = HashMap::new();
    for call in app.sim.simulator.calls() {
        *attempts.entry(call.random).or_default() += 1;
    }
    assert!(
        !attempts.is_empty() && attempts.values().all(|&n| n == 3),
        "{attempts:?}"
    );
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn app_faults_can_be_configured_to_dead_letter() {
    let mut app = spawn_app("appfault-dl", 50.0).await;
    app.config.policy.on_app_fault = broadcast_worker::pipeline::AppFaultPolicy::DeadLetter;
    app.sim.simulator.set_faults(FaultPlan {
        script: vec![Fault {
            code: Some(70009),
            ..Fault::default()
        }]
        .into(),
        ..FaultPlan::default()
    });
    app.publish("d-1", &text_job("d-1")).await;
    app.start_worker();
    app.wait_for_dead(1, LONG).await;
    let dead = app.take_dead_letters().await;
    assert_eq!(
        (dead[0].reason.as_str(), dead[0].error_code),
        ("rejected", Some(70009))
    );
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn shutdown_leaves_unsent_jobs_in_the_queue() {
    let mut app = spawn_app("shutdown", 1.0).await;
    let jobs: Vec<(String, Value)> = (0..400)
        .map(|i| {
            (
                format!("s-{i}"),
                text_job(&format!("s-{i} {}", "p".repeat(150))),
            )
        })
        .collect();
    app.publish_many(&jobs).await;
    app.start_worker();
    app.wait_for("the first call", LONG, |app| {
        app.sim.simulator.stats().deliveries >= 1
    })
    .await;
    app.stop_worker().await.unwrap();
    let delivered = app.sim.simulator.stats().elements_delivered;
    assert!(delivered < 400, "the test needs a backlog left at shutdown");
    // Settled jobs were acked; the rest went back to the queue.
    let mut left = 0;
    for _ in 0..50 {
        left = app.queue_len(&app.names.jobs).await as u64;
        if left + delivered == 400 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        left + delivered,
        400,
        "{delivered} delivered + {left} queued"
    );
}

#[tokio::test]
async fn a_queue_with_other_arguments_is_a_clear_error() {
    let prefix = unique_prefix("conflict");
    let connection = connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            format!("{prefix}.jobs").as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let api = broadcast_worker::tencent::client::ApiConfig::new(
        "http://127.0.0.1:9/".parse().unwrap(),
        APP,
        ADMIN,
    );
    let config = broadcast_worker::pipeline::WorkerConfig::new(
        AMQP_URL.into(),
        &prefix,
        api,
        broadcast_worker::tencent::usersig::SecretKey::new(KEY),
    );
    let worker = broadcast_worker::pipeline::Worker::new(config).unwrap();
    let result =
        tokio::time::timeout(Duration::from_secs(20), worker.run(Default::default())).await;
    delete_topology(&prefix);
    let err = result.expect("fails at once").unwrap_err().to_string();
    assert!(err.contains(&format!("{prefix}.jobs")), "{err}");
    assert!(
        err.contains("inequivalent arg"),
        "the broker's words name the argument: {err}"
    );
}

#[tokio::test]
async fn a_lost_broker_connection_is_reestablished_and_nothing_is_lost() {
    let mut app = spawn_app("broker-loss", 4.0).await;
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    app.config.amqp_url = proxy.amqp_url();
    let jobs: Vec<(String, Value)> = (0..500)
        .map(|i| {
            (
                format!("l-{i}"),
                text_job(&format!("l-{i} {}", "q".repeat(120))),
            )
        })
        .collect();
    app.publish_many(&jobs).await;
    app.start_worker();
    app.wait_for("some calls", LONG, |app| {
        app.sim.simulator.stats().deliveries >= 2
    })
    .await;
    proxy.cut_all();
    app.wait_for("some calls after the cut", LONG, |app| {
        app.sim.simulator.stats().deliveries >= 4
    })
    .await;
    proxy.cut_all();
    app.wait_for("every job delivered", LONG, |app| {
        let texts = app.delivered_texts();
        jobs.iter().all(|(_, body)| {
            texts.contains_key(body["MsgBody"][0]["MsgContent"]["Text"].as_str().unwrap())
        })
    })
    .await;
    assert!(
        app.status().consuming.load(Ordering::Relaxed),
        "consuming again after the cuts"
    );
    assert!(
        proxy.accepted.load(Ordering::SeqCst) >= 3,
        "the worker reconnected after each cut"
    );
    app.stop_worker().await.unwrap();
    assert_eq!(app.queue_len(&app.names.jobs).await, 0);
}

/// A jobs queue declared by an earlier version (delivery limit 20) is used
/// as it is, with what it holds; one that also differs in anything else is
/// still an error.
#[tokio::test]
async fn a_jobs_queue_declared_with_another_delivery_limit_is_kept() {
    use broadcast_worker::broker::{self, QueueNames, Topology};
    let prefix = unique_prefix("limit-upgrade");
    let connection = connect().await;
    let names = QueueNames::new(&prefix);
    let topology = |delivery_limit| Topology {
        names: names.clone(),
        delivery_limit,
    };
    topology(20).declare(&connection).await.unwrap();
    let channel = broker::confirm_channel(&connection).await.unwrap();
    broker::publish_confirmed(
        &channel,
        "",
        &names.jobs,
        br#"{"MsgBody":[]}"#,
        lapin::BasicProperties::default(),
    )
    .await
    .unwrap();
    let kept = topology(1000).declare(&connection).await;
    let again = topology(1000).declare(&connection).await;
    let held = {
        let channel = connection.create_channel().await.unwrap();
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        channel
            .queue_declare(
                names.jobs.as_str().into(),
                passive,
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    };

    // Another queue: limit 20, and no single active consumer.
    let other = unique_prefix("limit-and-more");
    let other_names = QueueNames::new(&other);
    let mut args = lapin::types::FieldTable::default();
    for (key, value) in [
        (
            "x-queue-type",
            lapin::types::AMQPValue::LongString("quorum".into()),
        ),
        ("x-delivery-limit", lapin::types::AMQPValue::LongLongInt(20)),
    ] {
        args.insert(key.into(), value);
    }
    connection
        .create_channel()
        .await
        .unwrap()
        .queue_declare(
            other_names.jobs.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    let refused = Topology {
        names: other_names,
        delivery_limit: 1000,
    }
    .declare(&connection)
    .await;
    delete_topology(&prefix);
    delete_topology(&other);

    kept.expect("the worker starts with the queue as it is");
    again.expect("and again");
    assert_eq!(held, 1, "the queue keeps what it holds");
    let err = refused
        .expect_err("other differences are still refused")
        .to_string();
    assert!(err.contains("inequivalent arg"), "{err}");
}
