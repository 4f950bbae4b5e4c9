//! What the real service accepts, against a simulator that enforces it: one
//! custom element per message (and the envelope that lets custom jobs still
//! share a call), elements forwarded exactly as written, `Random`s never
//! reused by different content, and refusals that split only where a job can
//! be at fault.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use broadcast_worker::ledger::{JobState, Ledger};
use broadcast_worker::pipeline::CustomMerge;
use broadcast_worker::simulator::{Fault, FaultPlan, RepeatBy};
use broadcast_worker::tencent::body::call_random;
use serde_json::{json, Value};
use testkit::*;

const LONG: Duration = Duration::from_secs(60);

fn custom_job(data: &str, desc: Option<&str>) -> Value {
    let mut content = json!({ "Data": data });
    if let Some(desc) = desc {
        content["Desc"] = desc.into();
    }
    json!({"MsgBody": [{"MsgType": "TIMCustomElem", "MsgContent": content}]})
}

fn image_job(id: &str) -> Value {
    json!({"MsgBody": [{"MsgType": "TIMImageElem", "MsgContent": {
        "UUID": format!("img:{id}"), "ImageFormat": 1,
        "ImageInfoArray": [{"Type": 1, "Size": 100, "Width": 10, "Height": 10, "URL": "https://example.invalid/i.png"}]
    }}]})
}

/// Every element the simulator delivered, in delivery order, as JSON.
fn delivered_elements(app: &TestApp) -> Vec<Value> {
    app.sim
        .simulator
        .deliveries(0, usize::MAX)
        .into_iter()
        .flat_map(|d| d.body.unwrap()["MsgBody"].as_array().unwrap().clone())
        .collect()
}

/// Answers other than OK the simulator gave.
fn refusals(app: &TestApp) -> u64 {
    let stats = app.sim.simulator.stats();
    stats
        .answers_by_code
        .iter()
        .filter(|(code, _)| **code != 0)
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test]
async fn a_mixed_burst_goes_out_once_with_one_custom_element_per_call_and_no_refusal() {
    let mut app = spawn_app("mixed", 50.0).await;
    let jobs: Vec<(String, Value)> = (0..300)
        .map(|i| {
            let id = format!("m-{i:03}");
            let body = match i % 3 {
                0 => custom_job(&format!(r#"{{"custom":"{id}"}}"#), None),
                1 => text_job(&id),
                _ => image_job(&id),
            };
            (id, body)
        })
        .collect();
    app.publish_many(&jobs).await;
    app.start_worker();
    app.wait_for_elements(300, LONG).await;
    let elements = delivered_elements(&app);
    assert_eq!(elements.len(), 300, "each job delivered once");
    let mut seen = HashSet::new();
    for e in &elements {
        let content = &e["MsgContent"];
        let tag = content["Text"]
            .as_str()
            .or(content["UUID"].as_str())
            .or(content["Data"].as_str())
            .unwrap()
            .to_string();
        assert!(seen.insert(tag.clone()), "{tag} delivered twice");
    }
    for delivery in app.sim.simulator.deliveries(0, usize::MAX) {
        let customs = delivery.body.unwrap()["MsgBody"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["MsgType"] == "TIMCustomElem")
            .count();
        assert!(customs <= 1, "a call with {customs} custom elements");
    }
    assert_eq!(refusals(&app), 0, "{:?}", app.sim.simulator.stats());
    // One custom element per call: 100 custom jobs need 100 calls, and the
    // text and image jobs ride along in them (a few more calls if the broker
    // hands the burst over in portions).
    let calls = app.sim.simulator.stats().deliveries;
    assert!((100..=150).contains(&calls), "{calls} calls");
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn an_envelope_carries_many_custom_payloads_that_decode_back_in_order() {
    let mut app = spawn_app("envelope", 50.0).await;
    app.config.call.custom_merge = CustomMerge::Envelope;
    let datas: Vec<String> = (0..200)
        .map(|i| match i % 4 {
            0 => format!(r#"{{"gift":"rose","n":{i},"big":123456789012345678901234567890}}"#),
            1 => format!("plain text {i} with \"quotes\" and é"),
            2 => format!(r#"[{i}, {{"nested": "yes"}}]"#),
            _ => format!("{i}"),
        })
        .collect();
    let jobs: Vec<(String, Value)> = datas
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("e-{i:03}"), custom_job(d, Some("gift"))))
        .collect();
    app.publish_many(&jobs).await;
    app.start_worker();
    app.wait_for("every payload delivered", LONG, |app| {
        envelope_payloads(app).len() >= 200
    })
    .await;
    let payloads = envelope_payloads(&app);
    let want: Vec<Value> = datas
        .iter()
        .map(|d| match serde_json::from_str::<Value>(d) {
            Ok(v) if v.is_object() || v.is_array() => v,
            _ => Value::String(d.clone()),
        })
        .collect();
    assert_eq!(payloads, want, "every Data back, in order, once");
    for element in delivered_elements(&app) {
        assert_eq!(element["MsgContent"]["Desc"], "gift", "Desc carried once");
    }
    // The 30-digit integer went out as written, not as a float.
    let raw: String = app
        .sim
        .simulator
        .deliveries(0, usize::MAX)
        .iter()
        .map(|d| d.raw_body.clone().unwrap())
        .collect();
    assert!(raw.contains(r#"\"big\":123456789012345678901234567890"#));
    let stats = app.sim.simulator.stats();
    assert!(
        stats.deliveries <= 10,
        "200 small payloads in {} calls",
        stats.deliveries
    );
    assert_eq!(refusals(&app), 0);
    app.stop_worker().await.unwrap();
}

/// The payloads of every envelope delivered, in delivery order.
fn envelope_payloads(app: &TestApp) -> Vec<Value> {
    delivered_elements(app)
        .iter()
        .filter(|e| e["MsgType"] == "TIMCustomElem")
        .flat_map(|e| {
            let data: Value =
                serde_json::from_str(e["MsgContent"]["Data"].as_str().unwrap()).unwrap();
            data["batch"].as_array().unwrap().clone()
        })
        .collect()
}

#[tokio::test]
async fn a_job_with_two_custom_elements_is_dead_lettered_and_the_rest_go_on() {
    let mut app = spawn_app("two-customs", 50.0).await;
    let custom = json!({"MsgType": "TIMCustomElem", "MsgContent": {"Data": "d"}});
    app.publish("double", &json!({ "MsgBody": [custom.clone(), custom] }))
        .await;
    app.publish("fine", &text_job("fine")).await;
    app.start_worker();
    app.wait_for_dead(1, LONG).await;
    app.wait_for_elements(1, LONG).await;
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id.as_deref(), Some("double"));
    assert_eq!(dead[0].reason, "invalid-job");
    assert_eq!(
        dead[0].error_info,
        "invalid-job: MsgBody holds 2 TIMCustomElem elements; a message may hold only one"
    );
    assert_eq!(app.sim.simulator.stats().calls, 1, "never sent");
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn elements_reach_the_service_exactly_as_the_producer_wrote_them() {
    let mut app = spawn_app("verbatim", 50.0).await;
    let element = r#"{"MsgContent":{"Text":"caf\u00e9 \ud83d\ude00","Big":123456789012345678901234567890},"MsgType":"TIMTextElem"}"#;
    let custom =
        r#"{"MsgType":"TIMCustomElem","MsgContent":{"Ext":"e","Data":"{\"z\": 1, \"a\": [2]}"}}"#;
    // Whitespace around them is insignificant and goes; nothing else does.
    let body = format!("{{ \"MsgBody\" : [ {element} ,\n {custom} ] }}");
    app.publish_raw(Some("v-1"), body.as_bytes(), None).await;
    app.start_worker();
    app.wait_for_elements(2, LONG).await;
    let delivery = &app.sim.simulator.deliveries(0, 1)[0];
    let raw = delivery.raw_body.as_deref().unwrap();
    assert!(raw.contains(&format!("[{element},{custom}]")), "sent {raw}");
    app.stop_worker().await.unwrap();
}

/// Two job ids whose one-job calls derive the same first `Random`.
fn colliding_ids() -> (String, String) {
    let mut seen: HashMap<u32, String> = HashMap::new();
    for i in 0.. {
        let id = format!("collide-{i}");
        let random = call_random(std::iter::once(id.as_str()), 0);
        if let Some(other) = seen.insert(random, id.clone()) {
            return (other, id);
        }
    }
    unreachable!()
}

/// Sends `first`, then `second` once `first` is delivered.
async fn send_one_after_the_other(app: &mut TestApp, first: &str, second: &str) {
    app.publish(first, &text_job(first)).await;
    app.wait_for_elements(1, LONG).await;
    app.publish(second, &text_job(second)).await;
}

#[tokio::test]
async fn a_colliding_random_is_never_reused_by_different_content() {
    let (a, b) = colliding_ids();
    // The stricter reading: the same Random alone marks a repeat.
    let mut app = spawn_app_with("collide", 50.0, |sim| sim.repeat_by = RepeatBy::Random).await;
    app.start_worker();
    send_one_after_the_other(&mut app, &a, &b).await;
    app.wait_for_elements(2, LONG).await;
    let texts = app.delivered_texts();
    assert_eq!(texts.len(), 2, "both delivered: {texts:?}");
    let randoms: HashSet<Option<u32>> =
        app.sim.simulator.calls().iter().map(|c| c.random).collect();
    assert_eq!(randoms.len(), 2, "two calls, two Randoms");
    assert_eq!(app.sim.simulator.stats().repeats_dropped, 0);
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn with_the_ledger_a_random_stays_claimed_across_a_restart() {
    let (a, b) = colliding_ids();
    let db = TestDatabase::create("collide-ledger").await;
    let ledger = Ledger::connect_lazy(&db.url()).unwrap();
    ledger.migrate().await.unwrap();
    let mut app = spawn_app_with("collide-ledger", 50.0, |sim| {
        sim.repeat_by = RepeatBy::Random
    })
    .await;
    app.config.ledger = Some(ledger.clone());
    app.start_worker();
    app.publish(&a, &text_job(&a)).await;
    app.wait_for_elements(1, LONG).await;
    // A new worker remembers nothing in memory: only the ledger knows.
    app.stop_worker().await.unwrap();
    app.start_worker();
    app.publish(&b, &text_job(&b)).await;
    app.wait_for_elements(2, LONG).await;
    assert_eq!(app.delivered_texts().len(), 2);
    let calls = app.sim.simulator.calls();
    assert_ne!(calls[0].random, calls[1].random);
    // A retry of the second call keeps the Random it was given. The ledger
    // records the delivery just after the service answers: wait for it.
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let state = ledger.show(&b).await.unwrap().map(|r| r.state);
        if state == Some(JobState::Delivered) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ledger never recorded the delivery: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn a_sender_that_does_not_exist_dead_letters_the_whole_call_in_one_call() {
    let mut app = spawn_app_with("ghost", 50.0, |sim| {
        sim.known_accounts = Some(["system".to_string()].into_iter().collect());
    })
    .await;
    let jobs: Vec<(String, Value)> = (0..100)
        .map(|i| {
            let id = format!("g-{i:03}");
            let mut body = text_job(&id);
            body["From_Account"] = "ghost".into();
            (id, body)
        })
        .collect();
    app.publish_many(&jobs).await;
    app.start_worker();
    app.wait_for_dead(100, LONG).await;
    let dead = app.take_dead_letters().await;
    assert!(dead
        .iter()
        .all(|d| d.reason == "rejected" && d.error_code == Some(70107)));
    let calls = app.sim.simulator.stats().calls;
    let distinct_calls = app
        .sim
        .simulator
        .calls()
        .iter()
        .map(|c| c.random)
        .collect::<HashSet<_>>()
        .len() as u64;
    // However the broker handed the burst over (one portion, or a few), no
    // call was retried or split: splitting would take about 200 calls.
    assert_eq!(calls, distinct_calls, "no call retried");
    assert!(
        calls <= 5,
        "{calls} calls for 100 jobs of one unknown sender"
    );
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn a_refusal_of_the_request_itself_halts_and_dead_letters_nothing() {
    let mut app = spawn_app("bad-request", 50.0).await;
    app.sim.simulator.set_faults(FaultPlan {
        always: Some(Fault {
            code: Some(60002),
            ..Fault::default()
        }),
        ..FaultPlan::default()
    });
    for i in 0..5 {
        app.publish(&format!("r-{i}"), &text_job(&format!("r-{i}")))
            .await;
    }
    app.start_worker();
    let status = app.status();
    app.wait_for("a probe after the halt", LONG, |app| {
        app.sim.simulator.stats().calls >= 2
    })
    .await;
    assert!(status.halted.load(Ordering::Relaxed));
    assert_eq!(app.queue_len(&app.names.dead).await, 0);
    app.sim.simulator.set_faults(FaultPlan::default());
    app.wait_for_elements(5, LONG).await;
    assert_eq!(app.delivered_texts().len(), 5);
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn bisection_settles_each_half_as_it_is_answered() {
    let db = TestDatabase::create("bisect-settle").await;
    let ledger = Ledger::connect_lazy(&db.url()).unwrap();
    ledger.migrate().await.unwrap();
    // Two calls a second: the search for the one bad job takes seconds.
    let mut app = spawn_app("bisect-settle", 2.0).await;
    app.config.ledger = Some(ledger.clone());
    app.sim
        .simulator
        .set_faults(refuse_bodies_containing("POISON", 80001));
    let mut jobs: Vec<(String, Value)> = (0..99)
        .map(|i| (format!("b-{i:03}"), text_job(&format!("b-{i:03}"))))
        .collect();
    jobs.push(("b-poison".into(), text_job("POISON")));
    app.publish_many(&jobs).await;
    app.start_worker();
    // The first half (b-000..b-049) is delivered by the second call.
    app.wait_for_elements(50, LONG).await;
    let mut settled_early = false;
    for _ in 0..20 {
        if ledger.show("b-000").await.unwrap().map(|r| r.state) == Some(JobState::Delivered) {
            settled_early = app.queue_len(&app.names.dead).await == 0;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        settled_early,
        "the delivered half was settled while the search went on"
    );
    app.wait_for_dead(1, LONG).await;
    app.wait_for_elements(99, LONG).await;
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id.as_deref(), Some("b-poison"));
    // About 2 log2(100) calls to find one job among a hundred (15 when the
    // hundred form one call; a few more if the broker hands them over in
    // portions).
    let calls = app.sim.simulator.stats().calls;
    assert!(calls <= 20, "{calls} calls");
    app.stop_worker().await.unwrap();
}

#[tokio::test]
async fn a_refused_envelope_splits_until_the_bad_payload_stands_alone() {
    let mut app = spawn_app("envelope-split", 50.0).await;
    app.config.call.custom_merge = CustomMerge::Envelope;
    app.sim
        .simulator
        .set_faults(refuse_bodies_containing("POISON", 80001));
    // Twenty custom jobs, one envelope (or two, if the broker hands some over
    // after the first call left: the search is only shorter).
    let datas: Vec<String> = (0..20)
        .map(|i| {
            if i == 13 {
                "POISON".to_string()
            } else {
                format!(r#"{{"n":{i}}}"#)
            }
        })
        .collect();
    let jobs: Vec<(String, Value)> = datas
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("s-{i:02}"), custom_job(d, None)))
        .collect();
    app.publish_many(&jobs).await;
    app.start_worker();
    app.wait_for_dead(1, LONG).await;
    app.wait_for("19 payloads delivered", LONG, |app| {
        envelope_payloads(app).len() >= 19
    })
    .await;
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id.as_deref(), Some("s-13"));
    assert_eq!(dead[0].error_code, Some(80001));
    // The dead letter is the job itself, not the envelope.
    let body: Value = serde_json::from_slice(&dead[0].body).unwrap();
    assert_eq!(body["MsgBody"][0]["MsgContent"]["Data"], "POISON");
    let mut delivered: Vec<u64> = envelope_payloads(&app)
        .iter()
        .map(|p| p["n"].as_u64().unwrap())
        .collect();
    delivered.sort_unstable();
    assert_eq!(delivered, (0..20).filter(|i| *i != 13).collect::<Vec<_>>());
    app.stop_worker().await.unwrap();
}
