//! One odd message never stops an app: headers near the broker's frame size,
//! reasons quoting long producer text, properties that are not UTF-8, and
//! deadlines typed as floats or strings. Each case is published with 20 good
//! jobs behind it, against real RabbitMQ and the simulator.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use broadcast_worker::broker::{self, frame, headers};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use serde_json::{json, Value};
use testkit::*;

const LONG: Duration = Duration::from_secs(30);

/// Twenty good jobs, published after the odd one.
async fn publish_good(app: &TestApp) -> Vec<(String, Value)> {
    let good: Vec<(String, Value)> = (0..20)
        .map(|i| (format!("good-{i}"), text_job(&format!("good-{i}"))))
        .collect();
    app.publish_many(&good).await;
    good
}

fn padded_headers(bytes: usize) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(
        "x-pad".into(),
        AMQPValue::LongString(LongString::from("p".repeat(bytes))),
    );
    table
}

#[tokio::test]
async fn a_17_kb_header_is_taken_in_and_the_jobs_behind_it_are_sent() {
    let mut app = spawn_app("bad-header", 50.0).await;
    let padded = text_job("padded");
    app.publish_raw(
        Some("padded"),
        padded.to_string().as_bytes(),
        Some(padded_headers(17_000)),
    )
    .await;
    let good = publish_good(&app).await;
    app.start_worker();
    // The padded job is a good job too: its body is all the service sees.
    let mut all = good.clone();
    all.push(("padded".into(), padded));
    app.wait_for("every job delivered", LONG, |app| app.all_delivered(&all))
        .await;
    app.assert_each_delivered_once(&all);
    assert_eq!(app.queue_len(&app.names.dead).await, 0);
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn a_reason_quoting_17_kb_of_msg_type_is_bounded_and_dead_lettered() {
    let mut app = spawn_app("bad-reason", 50.0).await;
    let long_type =
        json!({"MsgBody": [{"MsgType": "T".repeat(17_000), "MsgContent": {"Text": "x"}}]});
    app.publish("long-type", &long_type).await;
    let good = publish_good(&app).await;
    app.start_worker();
    app.wait_for("every good job delivered", LONG, |app| {
        app.all_delivered(&good)
    })
    .await;
    app.wait_for_dead(1, LONG).await;
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "invalid-job");
    assert!(dead[0].error_info.len() <= frame::MAX_HEADER_TEXT);
    assert!(
        dead[0].error_info.contains("MsgType unknown")
            && dead[0].error_info.contains("(17000 bytes)"),
        "{}",
        dead[0].error_info
    );
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn headers_too_large_for_a_dead_letter_are_left_off_and_named() {
    let mut app = spawn_app("bad-huge-header", 50.0).await;
    // Almost the broker's whole frame (131,072 bytes), on a job that can
    // never be sent: its dead letter cannot carry the header as well as the
    // reasons, and still leave room for what the broker adds.
    let mut table = padded_headers(129_000);
    table.insert("x-trace".into(), AMQPValue::LongString("t-1".into()));
    app.publish_raw(Some("huge"), b"not json", Some(table))
        .await;
    let good = publish_good(&app).await;
    app.start_worker();
    app.wait_for("every good job delivered", LONG, |app| {
        app.all_delivered(&good)
    })
    .await;
    app.wait_for_dead(1, LONG).await;
    let channel = app.connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(app.names.dead.as_str().into(), Default::default())
        .await
        .unwrap()
        .expect("the dead letter");
    let properties = &message.delivery.properties;
    assert!(frame::properties_bytes(properties) <= frame::properties_room(131_072));
    assert_eq!(
        broker::header_str(properties, headers::DROPPED_HEADERS).as_deref(),
        Some("x-pad (129011 bytes)")
    );
    assert_eq!(broker::header_str(properties, "x-pad"), None);
    assert_eq!(
        broker::header_str(properties, "x-trace").as_deref(),
        Some("t-1")
    );
    assert_eq!(
        broker::header_str(properties, headers::REASON).as_deref(),
        Some("invalid-json")
    );
    assert_eq!(message.delivery.data, b"not json");
    app.stop_worker().await.unwrap();
}

/// Eight bytes a client library writes as text, and the eight that are not
/// UTF-8 which the proxy puts in their place.
const PLACEHOLDER: &[u8] = b"NOT-UTF8";
const NOT_UTF8: &[u8] = b"\xff\xfe-odd-\xff";

/// A connection whose every `NOT-UTF8` reaches the broker as bytes that
/// are not UTF-8 (RabbitMQ passes them through unchecked).
async fn rewriting_channel(proxy: &TcpProxy) -> (lapin::Connection, lapin::Channel) {
    proxy.rewrite(PLACEHOLDER, NOT_UTF8);
    let connection = broker::connect(&proxy.amqp_url(), "bad-input test")
        .await
        .unwrap();
    let channel = broker::confirm_channel(&connection).await.unwrap();
    (connection, channel)
}

#[tokio::test]
async fn a_message_id_or_header_name_that_is_not_utf8_is_dead_lettered_naming_it() {
    let mut app = spawn_app("bad-utf8", 50.0).await;
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let (_connection, channel) = rewriting_channel(&proxy).await;
    let odd_id = BasicProperties::default().with_message_id("NOT-UTF8".into());
    let body = text_job("odd-id").to_string();
    broker::publish_confirmed(&channel, "", &app.names.jobs, body.as_bytes(), odd_id)
        .await
        .unwrap();
    let mut table = FieldTable::default();
    table.insert("x-NOT-UTF8".into(), AMQPValue::Boolean(true));
    let odd_key = BasicProperties::default()
        .with_message_id("odd-key".into())
        .with_headers(table);
    let body = text_job("odd-key").to_string();
    broker::publish_confirmed(&channel, "", &app.names.jobs, body.as_bytes(), odd_key)
        .await
        .unwrap();
    let good = publish_good(&app).await;
    app.start_worker();
    app.wait_for("every good job delivered", LONG, |app| {
        app.all_delivered(&good)
    })
    .await;
    app.wait_for_dead(2, LONG).await;
    let mut dead = app.take_dead_letters().await;
    dead.sort_by_key(|d| d.error_info.clone());
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| d.reason == "invalid-job"), "{dead:?}");
    assert!(
        dead[0]
            .error_info
            .contains("the name of a header in headers"),
        "{}",
        dead[0].error_info
    );
    assert!(
        dead[1]
            .error_info
            .contains("the property message_id was not UTF-8"),
        "{}",
        dead[1].error_info
    );
    let texts = app.delivered_texts();
    assert!(!texts.contains_key("job:odd-id") && !texts.contains_key("job:odd-key"));
    app.stop_worker().await.unwrap();
}

/// `dlq ARGS`, which must end within 30 s (a client that cannot parse a
/// delivery may wait for it forever).
fn dlq(app: &TestApp, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_broadcast-worker"))
        .arg("dlq")
        .args(args)
        .env("AMQP_URL", AMQP_URL)
        .env("BROADCAST_QUEUE_PREFIX", &app.prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("dlq {args:?} did not end within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn a_dead_letter_that_is_not_utf8_is_read_and_replayed_by_the_dlq_tools() {
    let mut app = spawn_app("bad-utf8-dlq", 50.0).await;
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let (_connection, channel) = rewriting_channel(&proxy).await;
    // As RabbitMQ would have dead-lettered it itself: the raw bytes, no
    // worker headers.
    let odd_id = BasicProperties::default().with_message_id("NOT-UTF8".into());
    let body = text_job("odd-id").to_string();
    broker::publish_confirmed(&channel, &app.names.dlx, "", body.as_bytes(), odd_id)
        .await
        .unwrap();
    let listed = dlq(&app, &["list", "--json"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listing: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let jobs = listing["jobs"].as_array().expect("a listing");
    assert_eq!(jobs.len(), 1, "{listing}");
    assert_eq!(jobs[0]["id"], "\u{fffd}\u{fffd}-odd-\u{fffd}");
    let replayed = dlq(&app, &["replay", "--all"]);
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    // Replayed, the worker reads it and dead-letters it with its reason.
    app.start_worker();
    app.wait_for_dead(1, LONG).await;
    let dead = app.take_dead_letters().await;
    assert_eq!(dead[0].reason, "invalid-job", "{dead:?}");
    assert!(dead[0].error_info.contains("message_id"));
    assert_eq!(app.sim.simulator.stats().calls, 0);
    app.stop_worker().await.unwrap();
}

fn deadline(value: AMQPValue) -> Option<FieldTable> {
    let mut table = FieldTable::default();
    table.insert(headers::DEADLINE.into(), value);
    Some(table)
}

#[tokio::test]
async fn deadlines_as_floats_or_numeric_strings_are_kept_and_others_refused() {
    let mut app = spawn_app("bad-deadline", 50.0).await;
    let now_ms = broadcast_worker::clock::now_ms() as f64;
    let past = now_ms - 60_000.0;
    let future = now_ms + 600_000.0;
    let cases = [
        ("past-float", AMQPValue::Double(past + 0.5)),
        (
            "past-text",
            AMQPValue::LongString(format!("{past:.1}").into()),
        ),
        ("future-float", AMQPValue::Double(future + 0.5)),
        (
            "future-text",
            AMQPValue::LongString(format!("{future:.1}").into()),
        ),
        ("word", AMQPValue::LongString("tomorrow".into())),
    ];
    for (id, value) in cases {
        app.publish_raw(
            Some(id),
            text_job(id).to_string().as_bytes(),
            deadline(value),
        )
        .await;
    }
    let good = publish_good(&app).await;
    app.start_worker();
    let mut sent = good.clone();
    for id in ["future-float", "future-text"] {
        sent.push((id.to_string(), text_job(id)));
    }
    app.wait_for("the good jobs delivered", LONG, |app| {
        app.all_delivered(&sent)
    })
    .await;
    app.wait_for_dead(3, LONG).await;
    let mut dead: Vec<(String, String)> = app
        .take_dead_letters()
        .await
        .into_iter()
        .map(|d| (d.id.unwrap(), d.reason))
        .collect();
    dead.sort();
    assert_eq!(
        dead,
        [
            ("past-float".to_string(), "expired".to_string()),
            ("past-text".into(), "expired".into()),
            ("word".into(), "invalid-job".into()),
        ]
    );
    let texts = app.delivered_texts();
    for id in ["past-float", "past-text", "word"] {
        assert!(!texts.contains_key(&format!("job:{id}")), "{id} was sent");
    }
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn the_console_reads_and_purges_a_dead_letter_that_is_not_utf8() {
    let app = spawn_app("bad-utf8-console", 50.0).await;
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let (_connection, channel) = rewriting_channel(&proxy).await;
    let odd_id = BasicProperties::default().with_message_id("NOT-UTF8".into());
    broker::publish_confirmed(&channel, &app.names.dlx, "", b"{}", odd_id)
        .await
        .unwrap();
    app.wait_for_len(&app.names.dead, 1).await;
    let worker = console_worker(
        env!("CARGO_BIN_EXE_broadcast-worker"),
        &app,
        &[("BROADCAST_CONSOLE_TOKEN", CONSOLE_TOKEN)],
    );
    let client = console_client();
    let (status, listing) =
        console_api(&client, &format!("{}/api/apps/{APP}/dead", worker.url)).await;
    assert_eq!(status, 200, "{listing}");
    let id = "\u{fffd}\u{fffd}-odd-\u{fffd}";
    assert_eq!(listing["jobs"][0]["id"], id, "{listing}");
    let (status, purged) = console_api_post(
        &client,
        &format!("{}/api/apps/{APP}/purge", worker.url),
        json!({"ids": [id], "expected": 1}),
    )
    .await;
    assert_eq!(status, 200, "{purged}");
    app.wait_for_len(&app.names.dead, 0).await;
    worker.stop().await;
}
