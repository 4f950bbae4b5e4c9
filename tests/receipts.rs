//! Receipts against real RabbitMQ, PostgreSQL and the simulator: a job
//! published with `reply_to` gets one message there once its fate is final
//! (delivered, dead-lettered, expired), carrying its `correlation_id`; an
//! unroutable one is counted and holds nothing up; RabbitMQ's direct
//! reply-to works; and with the ledger, a worker killed between a job's ack
//! and its receipt leaves it to the next sender.

use std::collections::HashMap;
use std::time::Duration;

use broadcast_worker::broker;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};
use serde_json::Value;
use testkit::*;

const LONG: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

/// A producer's own reply queue (exclusive: gone with its connection).
async fn reply_queue(channel: &Channel, name: &str) -> Consumer {
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name.into(), exclusive, FieldTable::default())
        .await
        .unwrap();
    consume(channel, name).await
}

async fn consume(channel: &Channel, queue: &str) -> Consumer {
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    channel
        .basic_consume(queue.into(), "".into(), no_ack, FieldTable::default())
        .await
        .unwrap()
}

fn asking(id: &str, reply_to: &str, correlation: Option<&str>) -> BasicProperties {
    let mut properties = BasicProperties::default()
        .with_message_id(id.into())
        .with_reply_to(reply_to.into())
        .with_delivery_mode(2);
    if let Some(correlation) = correlation {
        properties = properties.with_correlation_id(correlation.into());
    }
    properties
}

async fn publish(channel: &Channel, queue: &str, body: &[u8], properties: BasicProperties) {
    broker::publish_confirmed(channel, "", queue, body, properties)
        .await
        .expect("publish confirmed");
}

/// The next `n` receipts, by correlation id, with their bodies.
async fn receipts(consumer: &mut Consumer, n: usize) -> HashMap<String, Value> {
    let mut got = HashMap::new();
    while got.len() < n {
        let delivery = tokio::time::timeout(LONG, consumer.next())
            .await
            .expect("a receipt within a minute")
            .expect("the consumer goes on")
            .unwrap();
        let correlation = delivery
            .properties
            .correlation_id()
            .as_ref()
            .expect("a receipt carries a correlation_id")
            .to_string();
        got.insert(correlation, serde_json::from_slice(&delivery.data).unwrap());
    }
    got
}

fn past_deadline() -> FieldTable {
    int_header("x-deadline", 1_000)
}

#[tokio::test]
async fn each_producer_hears_what_became_of_its_job() {
    let mut app = spawn_app("receipts", 5.0).await;
    app.sim
        .simulator
        .set_faults(refuse_bodies_containing("refuse-me", 80001));
    let producer = app.connection.create_channel().await.unwrap();
    let reply_name = format!("{}.replies", app.prefix);
    let mut replies = reply_queue(&producer, &reply_name).await;
    let jobs = &app.names.jobs.clone();
    let ok = text_job("ok").to_string();
    publish(
        &app.channel,
        jobs,
        ok.as_bytes(),
        asking("j-ok", &reply_name, Some("c-ok")),
    )
    .await;
    let refused = text_job("refuse-me").to_string();
    publish(
        &app.channel,
        jobs,
        refused.as_bytes(),
        asking("j-refused", &reply_name, None),
    )
    .await;
    let expired = text_job("late").to_string();
    let late = asking("j-expired", &reply_name, Some("c-expired")).with_headers(past_deadline());
    publish(&app.channel, jobs, expired.as_bytes(), late).await;
    publish(
        &app.channel,
        jobs,
        b"not json",
        asking("j-bad", &reply_name, None),
    )
    .await;
    // A later update of a latest-wins key supersedes the one held.
    for id in ["j-s1", "j-s2"] {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-coalesce-key".into(),
            lapin::types::AMQPValue::LongString("score".into()),
        );
        let body = text_job(id).to_string();
        let properties = asking(id, &reply_name, None).with_headers(headers);
        publish(&app.channel, jobs, body.as_bytes(), properties).await;
    }
    // Nobody's queue: counted, and the job is delivered all the same.
    let gone = text_job("gone").to_string();
    publish(
        &app.channel,
        jobs,
        gone.as_bytes(),
        asking("j-gone", "no-such-queue", None),
    )
    .await;
    // Direct reply-to: published on the channel that consumes it.
    let direct = app.connection.create_channel().await.unwrap();
    let mut direct_replies = consume(&direct, "amq.rabbitmq.reply-to").await;
    let direct_job = text_job("direct").to_string();
    let properties = asking("j-direct", "amq.rabbitmq.reply-to", Some("c-direct"));
    direct
        .basic_publish(
            "".into(),
            jobs.as_str().into(),
            Default::default(),
            direct_job.as_bytes(),
            properties,
        )
        .await
        .unwrap();

    app.start_worker();
    let got = receipts(&mut replies, 6).await;
    let delivered = &got["c-ok"];
    assert_eq!(delivered["outcome"], "delivered", "{delivered}");
    assert_eq!(delivered["message_id"], "j-ok");
    assert_eq!(delivered["sdkappid"], APP);
    assert!(delivered["MsgSeq"].as_u64().unwrap() >= 1);
    assert!(delivered["Random"].is_u64());
    assert!(delivered["at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    // Without a correlation_id, the message_id stands for it.
    let refused = &got["j-refused"];
    assert_eq!(refused["outcome"], "dead-lettered", "{refused}");
    assert_eq!(
        (refused["reason"].as_str(), refused["code"].as_i64()),
        (Some("rejected"), Some(80001))
    );
    assert!(refused.get("MsgSeq").is_none());
    let expired = &got["c-expired"];
    assert_eq!(
        (expired["outcome"].as_str(), expired["reason"].as_str()),
        (Some("expired"), Some("expired"))
    );
    let bad = &got["j-bad"];
    assert_eq!(
        (bad["outcome"].as_str(), bad["reason"].as_str()),
        (Some("dead-lettered"), Some("invalid-json"))
    );
    let superseded = &got["j-s1"];
    assert_eq!(superseded["outcome"], "superseded", "{superseded}");
    assert_eq!(superseded["superseded_by"], "j-s2");
    assert_eq!(got["j-s2"]["outcome"], "delivered");
    let direct_got = receipts(&mut direct_replies, 1).await;
    assert_eq!(direct_got["c-direct"]["outcome"], "delivered");

    app.wait_for("the job without a reply queue", LONG, |app| {
        app.delivered_texts().contains_key("job:gone")
    })
    .await;
    app.stop_worker().await.unwrap();
    assert_eq!(app.queue_len(jobs).await, 0, "every job settled");
    assert_eq!(
        app.queue_len(&app.names.dead).await,
        3,
        "refused, expired, bad"
    );
}

#[tokio::test]
async fn a_receipt_unpublished_when_its_worker_died_is_published_by_the_next() {
    let db = TestDatabase::create("receipts-kill").await;
    let app = spawn_app("receipts-kill", 5.0).await;
    let producer = app.connection.create_channel().await.unwrap();
    let reply_name = format!("{}.replies", app.prefix);
    let mut replies = reply_queue(&producer, &reply_name).await;
    let body = text_job("kept").to_string();
    let jobs = &app.names.jobs;
    publish(
        &app.channel,
        jobs,
        body.as_bytes(),
        asking("j-kept", &reply_name, None),
    )
    .await;
    let env = [("DATABASE_URL", db.url())];
    // Dies once its jobs are settled and acked, before their receipts.
    let crash = [
        ("DATABASE_URL", db.url()),
        ("BROADCAST_TEST_CRASH_AT", "before-receipts:1".to_string()),
    ];
    let mut first = worker_process(BIN, &app, &crash);
    wait_exit(&mut first, LONG).await;
    assert!(
        app.delivered_texts().contains_key("job:kept"),
        "delivered before the crash"
    );
    assert_eq!(app.queue_len(jobs).await, 0, "acked before the crash");
    let nothing = tokio::time::timeout(Duration::from_millis(500), replies.next()).await;
    assert!(nothing.is_err(), "no receipt from the worker that died");
    // The next sender publishes it, though no job comes (it is active by
    // the baton).
    let mut second = worker_process(BIN, &app, &env);
    let got = receipts(&mut replies, 1).await;
    let receipt = &got["j-kept"];
    assert_eq!(receipt["outcome"], "delivered", "{receipt}");
    assert_eq!(receipt["message_id"], "j-kept");
    assert!(receipt["MsgSeq"].as_u64().is_some());
    signal(&second, "-TERM");
    wait_exit(&mut second, Duration::from_secs(20)).await;
    let deliveries = app.sim.simulator.stats().deliveries;
    assert_eq!(deliveries, 1, "sent once");
}

/// A `reply_to` RabbitMQ 3.10 cannot route and answers by closing the
/// publishing connection (541 INTERNAL_ERROR): a direct reply-to name whose
/// key decodes to a channel of no live node.
const FORGED_DIRECT_REPLY_TO: &str =
    "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAyNzEyODkyMwAAYqAAAAAAY+8J3w==.xyz";

#[tokio::test]
async fn a_forged_direct_reply_to_costs_its_own_receipt_only() {
    let mut app = spawn_app("receipts-forged", 5.0).await;
    let producer = app.connection.create_channel().await.unwrap();
    let reply_name = format!("{}.replies", app.prefix);
    let mut replies = reply_queue(&producer, &reply_name).await;
    let jobs = app.names.jobs.clone();
    let forged = text_job("forged").to_string();
    publish(
        &app.channel,
        &jobs,
        forged.as_bytes(),
        asking("j-forged", FORGED_DIRECT_REPLY_TO, None),
    )
    .await;
    let honest = text_job("honest").to_string();
    publish(
        &app.channel,
        &jobs,
        honest.as_bytes(),
        asking("j-honest", &reply_name, None),
    )
    .await;
    app.start_worker();
    let got = receipts(&mut replies, 1).await;
    assert_eq!(got["j-honest"]["outcome"], "delivered");
    // The session goes on: a later job is sent and its receipt arrives.
    let later = text_job("later").to_string();
    publish(
        &app.channel,
        &jobs,
        later.as_bytes(),
        asking("j-later", &reply_name, None),
    )
    .await;
    let got = receipts(&mut replies, 1).await;
    assert_eq!(got["j-later"]["outcome"], "delivered");
    app.stop_worker().await.unwrap();
    let texts = app.delivered_texts();
    for text in ["job:forged", "job:honest", "job:later"] {
        assert_eq!(texts.get(text), Some(&1), "{text} sent once: {texts:?}");
    }
    assert_eq!(app.queue_len(&jobs).await, 0);
}
