//! The simulator over real HTTP on loopback, called by the project's own client.

use std::time::Duration;

use broadcast_worker::clock::now_secs;
use broadcast_worker::simulator::{
    DropPoint, Fault, FaultPlan, RepeatBy, Simulator, SimulatorConfig, SimulatorSet,
    SpawnedSimulator, SpawnedSimulatorSet,
};
use broadcast_worker::tencent::body::BroadcastBody;
use broadcast_worker::tencent::client::{ApiClient, ApiConfig, ApiResponse, TransportError};
use broadcast_worker::tencent::usersig::{self, Claims, SecretKey, UserSig};
use serde_json::json;

const APP: u64 = 1400000001;
const ADMIN: &str = "administrator";
const KEY: &str = "simulator-test-key";

async fn start(rate: f64) -> SpawnedSimulator {
    start_with(rate, RepeatBy::default()).await
}

async fn start_with(rate: f64, repeat_by: RepeatBy) -> SpawnedSimulator {
    let mut config = SimulatorConfig::new(APP, ADMIN, SecretKey::new(KEY));
    config.rate = rate;
    config.repeat_by = repeat_by;
    Simulator::new(config)
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator binds a loopback port")
}

fn client(sim: &SpawnedSimulator, identifier: &str, timeout: Duration) -> ApiClient {
    let mut config = ApiConfig::new(sim.base_url(), APP, identifier);
    config.request_timeout = timeout;
    ApiClient::new(&config).unwrap()
}

fn sig_for(key: &str, sdkappid: u64, identifier: &str, time: u64, expire: u64) -> UserSig {
    usersig::sign(
        &SecretKey::new(key),
        &Claims {
            identifier: identifier.into(),
            sdkappid,
            time,
            expire,
            userbuf: None,
        },
    )
}

fn good_sig() -> UserSig {
    sig_for(KEY, APP, ADMIN, now_secs(), 86_400)
}

fn text_body(text: &str, random: u32) -> Vec<u8> {
    BroadcastBody {
        from_account: None,
        random,
        msg_body: vec![json!({"MsgType": "TIMTextElem", "MsgContent": {"Text": text}})],
        cloud_custom_data: None,
    }
    .to_bytes()
}

/// A valid body of exactly `len` bytes.
fn body_of_len(len: usize) -> Vec<u8> {
    let empty = text_body("", 1).len();
    let body = text_body(&"x".repeat(len - empty), 1);
    assert_eq!(body.len(), len);
    body
}

async fn send(client: &ApiClient, sig: &UserSig, body: Vec<u8>) -> ApiResponse {
    client
        .send_broadcast(sig, body)
        .await
        .expect("the simulator answers")
}

#[tokio::test]
async fn delivers_a_signed_call_with_increasing_msg_seq() {
    let sim = start(1000.0).await;
    let c = client(&sim, ADMIN, Duration::from_secs(5));
    let first = send(&c, &good_sig(), text_body("one", 1)).await;
    assert_eq!((first.action_status.as_str(), first.error_code), ("OK", 0));
    let second = send(&c, &good_sig(), text_body("two", 2)).await;
    assert!(second.msg_seq.unwrap() > first.msg_seq.unwrap());
    let deliveries = sim.simulator.deliveries(0, 100);
    assert_eq!(deliveries.len(), 2);
    assert_eq!(
        deliveries[1].body.as_ref().unwrap()["MsgBody"][0]["MsgContent"]["Text"],
        "two"
    );
}

#[tokio::test]
async fn repeats_within_the_window_are_answered_but_not_delivered() {
    let sim = start(1000.0).await;
    let c = client(&sim, ADMIN, Duration::from_secs(5));
    let first = send(&c, &good_sig(), text_body("same", 7)).await;
    let again = send(&c, &good_sig(), text_body("same", 7)).await;
    assert_eq!(again.error_code, 0);
    assert_eq!(again.msg_seq, first.msg_seq);
    // Same content, other Random: a new message.
    let other = send(&c, &good_sig(), text_body("same", 8)).await;
    assert_eq!(other.error_code, 0);
    let stats = sim.simulator.stats();
    assert_eq!(
        (stats.deliveries, stats.repeats_dropped, stats.calls),
        (2, 1, 3)
    );
}

#[tokio::test]
async fn repeat_by_random_drops_the_same_random_whatever_the_content() {
    let sim = start_with(1000.0, RepeatBy::Random).await;
    let c = client(&sim, ADMIN, Duration::from_secs(5));
    let first = send(&c, &good_sig(), text_body("first", 7)).await;
    let again = send(&c, &good_sig(), text_body("other content", 7)).await;
    assert_eq!((again.action_status.as_str(), again.error_code), ("OK", 0));
    assert_eq!(again.msg_seq, first.msg_seq);
    let stats = sim.simulator.stats();
    assert_eq!((stats.deliveries, stats.repeats_dropped), (1, 1));
    let deliveries = sim.simulator.deliveries(0, 100);
    assert_eq!(deliveries.len(), 1);
    assert_eq!(
        deliveries[0].body.as_ref().unwrap()["MsgBody"][0]["MsgContent"]["Text"],
        "first"
    );

    // The default reading: other content under the same Random is a new message.
    let sim = start(1000.0).await;
    let c = client(&sim, ADMIN, Duration::from_secs(5));
    let first = send(&c, &good_sig(), text_body("first", 7)).await;
    let again = send(&c, &good_sig(), text_body("other content", 7)).await;
    assert_eq!(again.error_code, 0);
    assert_ne!(again.msg_seq, first.msg_seq);
    let stats = sim.simulator.stats();
    assert_eq!((stats.deliveries, stats.repeats_dropped), (2, 0));
}

#[tokio::test]
async fn usersig_failures_get_their_codes() {
    let sim = start(1000.0).await;
    let c = client(&sim, ADMIN, Duration::from_secs(5));
    let now = now_secs();
    let cases = [
        (sig_for("wrong-key", APP, ADMIN, now, 3600), 70009),
        (sig_for(KEY, APP, ADMIN, now - 7200, 3600), 70001),
        (UserSig::from_string("not-a-usersig"), 70003),
        (sig_for(KEY, APP + 1, ADMIN, now, 3600), 70014),
        (sig_for(KEY, APP, "someone", now, 3600), 70013),
    ];
    for (sig, code) in cases {
        assert_eq!(send(&c, &sig, text_body("x", 1)).await.error_code, code);
    }
    // A valid UserSig for an account that is not the admin.
    let other = client(&sim, "ops", Duration::from_secs(5));
    assert_eq!(
        send(
            &other,
            &sig_for(KEY, APP, "ops", now, 3600),
            text_body("x", 1)
        )
        .await
        .error_code,
        10007
    );
    assert_eq!(sim.simulator.stats().deliveries, 0);
}

#[tokio::test]
async fn body_checks_get_their_codes() {
    let sim = start(1000.0).await;
    let c = client(&sim, ADMIN, Duration::from_secs(5));
    let sig = good_sig();
    assert_eq!(send(&c, &sig, body_of_len(12_000)).await.error_code, 0);
    assert_eq!(send(&c, &sig, body_of_len(12_001)).await.error_code, 80002);
    assert_eq!(
        send(&c, &sig, b"{\"MsgBody\": [".to_vec()).await.error_code,
        60003
    );
    let bad = [
        json!({"Random": 1, "MsgBody": [{"MsgType": "TIMNoSuchElem", "MsgContent": {}}]}),
        json!({"Random": 1, "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {}}]}),
        json!({"Random": 1, "MsgBody": []}),
        json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "no random"}}]}),
        json!({"Random": 1, "MsgBody": [{"MsgType": "TIMFaceElem", "MsgContent": {"Index": "one", "Data": "d"}}]}),
    ];
    for body in bad {
        let answer = send(&c, &sig, serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(answer.error_code, 10004, "{body}: {}", answer.error_info);
        assert_eq!(answer.action_status, "FAIL");
    }
    let stats = sim.simulator.stats();
    assert_eq!(stats.deliveries, 1);
    assert_eq!(stats.largest_delivered_body, 12_000);
    assert_eq!(stats.largest_body, 12_001);
}

#[tokio::test]
async fn a_message_holds_at_most_one_custom_element() {
    let sim = start(1000.0).await;
    let c = client(&sim, ADMIN, Duration::from_secs(5));
    let sig = good_sig();
    let custom = json!({"MsgType": "TIMCustomElem", "MsgContent": {"Data": "d"}});
    let text = json!({"MsgType": "TIMTextElem", "MsgContent": {"Text": "t"}});
    let two = json!({"Random": 1, "MsgBody": [custom, text, custom]});
    let answer = send(&c, &sig, serde_json::to_vec(&two).unwrap()).await;
    assert_eq!(
        (
            answer.action_status.as_str(),
            answer.error_code,
            answer.error_info.as_str()
        ),
        (
            "FAIL",
            10004,
            "MsgBody holds 2 TIMCustomElem elements; a message may hold only one"
        )
    );
    // Checked with the body's elements, before its Random.
    let no_random = json!({"MsgBody": [custom, custom]});
    let answer = send(&c, &sig, serde_json::to_vec(&no_random).unwrap()).await;
    assert_eq!(answer.error_code, 10004);
    assert!(
        answer.error_info.starts_with("MsgBody holds 2"),
        "{}",
        answer.error_info
    );
    assert_eq!(sim.simulator.stats().deliveries, 0);
    assert!(sim.simulator.deliveries(0, 100).is_empty());
    // One custom element among text elements is a message.
    let one = json!({"Random": 2, "MsgBody": [text, custom, text]});
    let answer = send(&c, &sig, serde_json::to_vec(&one).unwrap()).await;
    assert_eq!((answer.error_code, answer.msg_seq), (0, Some(1)));
    let stats = sim.simulator.stats();
    assert_eq!((stats.deliveries, stats.elements_delivered), (1, 3));
}

#[tokio::test]
async fn deliveries_keep_the_body_byte_for_byte() {
    let sim = start(1000.0).await;
    let c = client(&sim, ADMIN, Duration::from_secs(5));
    // Keys out of the usual order, odd spacing and an integer no f64 holds:
    // a parse and reserialize would change every one of these.
    let sent = concat!(
        r#"{"MsgBody": [{"MsgType":"TIMTextElem","MsgContent":{"Big":123456789012345678901234567890,"Text":"x"}}],"#,
        r#"  "Random":5}"#
    );
    let answer = send(&c, &good_sig(), sent.as_bytes().to_vec()).await;
    assert_eq!(answer.error_code, 0, "{}", answer.error_info);
    let deliveries = sim.simulator.deliveries(0, 100);
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].raw_body.as_deref(), Some(sent));
    assert_eq!(deliveries[0].bytes, sent.len());
    // And as served over HTTP.
    let served: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/simulator/deliveries?after=0", sim.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served[0]["raw_body"], sent);
}

#[tokio::test]
async fn frequency_limit_refuses_the_second_call_in_a_second() {
    let sim = start(1.0).await;
    let c = client(&sim, ADMIN, Duration::from_secs(5));
    assert_eq!(send(&c, &good_sig(), text_body("a", 1)).await.error_code, 0);
    assert_eq!(
        send(&c, &good_sig(), text_body("b", 2)).await.error_code,
        10023
    );
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(send(&c, &good_sig(), text_body("b", 2)).await.error_code, 0);
    let stats = sim.simulator.stats();
    assert_eq!(stats.frequency_violations, 1);
    assert_eq!(stats.answers_by_code.get(&10023), Some(&1));
}

#[tokio::test]
async fn other_paths_and_methods_are_refused() {
    let sim = start(1000.0).await;
    let http = reqwest::Client::new();
    let other: ApiResponse = http
        .post(format!(
            "http://{}/v4/group_open_http_svc/no_such_command?x=1",
            sim.addr
        ))
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(other.error_code, 10003);
    let c = client(&sim, ADMIN, Duration::from_secs(5));
    let url = c.request_url(&good_sig());
    let get: ApiResponse = http
        .get(url.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(get.error_code, 60002);
    // Each query parameter is required.
    for missing in ["sdkappid", "identifier", "usersig", "random", "contenttype"] {
        let mut stripped = url.clone();
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .into_owned()
            .filter(|(k, _)| k != missing)
            .collect();
        stripped.query_pairs_mut().clear().extend_pairs(kept);
        let answer: ApiResponse = http
            .post(stripped)
            .body(text_body("x", 1))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let want = if missing == "sdkappid" { 60012 } else { 60002 };
        assert_eq!(answer.error_code, want, "without {missing}");
    }
}

#[tokio::test]
async fn scripted_faults_apply_in_order() {
    let sim = start(1000.0).await;
    let c = client(&sim, ADMIN, Duration::from_secs(5));
    sim.simulator.set_faults(FaultPlan {
        script: vec![
            Fault {
                code: Some(10002),
                ..Fault::default()
            },
            Fault {
                http_status: Some(500),
                ..Fault::default()
            },
            Fault {
                garbage: true,
                ..Fault::default()
            },
            Fault {
                drop: Some(DropPoint::Before),
                ..Fault::default()
            },
            Fault::default(),
        ]
        .into(),
        ..FaultPlan::default()
    });
    let sig = good_sig();
    assert_eq!(send(&c, &sig, text_body("f", 1)).await.error_code, 10002);
    assert_eq!(
        c.send_broadcast(&sig, text_body("f", 1)).await,
        Err(TransportError::Status { status: 500 })
    );
    assert!(matches!(
        c.send_broadcast(&sig, text_body("f", 1)).await,
        Err(TransportError::InvalidResponse(_))
    ));
    let dropped = c.send_broadcast(&sig, text_body("f", 1)).await;
    assert!(
        dropped.is_err(),
        "a dropped connection is a transport error: {dropped:?}"
    );
    // The garbage answer came after delivery, so this one is a repeat.
    assert_eq!(send(&c, &sig, text_body("f", 1)).await.error_code, 0);
    let stats = sim.simulator.stats();
    assert_eq!((stats.deliveries, stats.repeats_dropped), (1, 1));
    assert_eq!(
        (
            stats.http_errors,
            stats.garbage_answers,
            stats.dropped_connections
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn a_slow_answer_times_out_without_leaking_the_usersig() {
    let sim = start(1000.0).await;
    let c = client(&sim, ADMIN, Duration::from_millis(300));
    sim.simulator.set_faults(FaultPlan {
        script: vec![Fault {
            delay_ms: Some(1_000),
            ..Fault::default()
        }]
        .into(),
        ..FaultPlan::default()
    });
    let sig = good_sig();
    let err = c
        .send_broadcast(&sig, text_body("slow", 3))
        .await
        .unwrap_err();
    assert_eq!(err, TransportError::Timeout);
    // The call was processed before the answer was held: the retry is a repeat.
    assert_eq!(send(&c, &sig, text_body("slow", 3)).await.error_code, 0);
    let stats = sim.simulator.stats();
    assert_eq!((stats.deliveries, stats.repeats_dropped), (1, 1));
    assert!(!format!("{err} {err:?}").contains(sig.expose()));
}

#[tokio::test]
async fn transport_errors_never_carry_the_usersig() {
    // A port nothing listens on: bind, learn the port, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = ApiConfig::new(
        format!("http://127.0.0.1:{port}/").parse().unwrap(),
        APP,
        ADMIN,
    );
    let c = ApiClient::new(&config).unwrap();
    let sig = good_sig();
    let err = c.send_broadcast(&sig, text_body("x", 1)).await.unwrap_err();
    assert!(matches!(err, TransportError::Connect(_)), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains(sig.expose()) && !text.contains("usersig"),
        "{text}"
    );
}

#[tokio::test]
async fn random_faults_follow_the_probability() {
    let sim = start(100_000.0).await;
    let c = client(&sim, ADMIN, Duration::from_secs(5));
    sim.simulator.set_faults(FaultPlan {
        probability: 0.5,
        random_faults: vec![Fault {
            code: Some(70500),
            ..Fault::default()
        }],
        ..FaultPlan::default()
    });
    let sig = good_sig();
    let mut failed = 0;
    for i in 0..200 {
        if send(&c, &sig, text_body("p", i)).await.error_code == 70500 {
            failed += 1;
        }
    }
    // Binomial(200, 0.5): outside 60..140 has probability below 1e-8.
    assert!((60..140).contains(&failed), "{failed} of 200 failed");
    assert_eq!(sim.simulator.stats().deliveries, 200 - failed);
}

#[tokio::test]
async fn stats_and_deliveries_are_served_over_http() {
    let sim = start(1000.0).await;
    let c = client(&sim, ADMIN, Duration::from_secs(5));
    send(&c, &good_sig(), text_body("served", 9)).await;
    let http = reqwest::Client::new();
    let stats: serde_json::Value = http
        .get(format!("http://{}/simulator/stats", sim.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["deliveries"], 1);
    assert_eq!(stats["answers_by_code"]["0"], 1);
    let deliveries: serde_json::Value = http
        .get(format!("http://{}/simulator/deliveries?after=0", sim.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        deliveries[0]["body"]["MsgBody"][0]["MsgContent"]["Text"],
        "served"
    );
    let plan = json!({"always": {"code": 10007}});
    let status = http
        .post(format!("http://{}/simulator/faults", sim.addr))
        .json(&plan)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    assert_eq!(
        send(&c, &good_sig(), text_body("x", 10)).await.error_code,
        10007
    );
    http.delete(format!("http://{}/simulator/faults", sim.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(
        send(&c, &good_sig(), text_body("x", 10)).await.error_code,
        0
    );
    http.post(format!("http://{}/simulator/reset", sim.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(sim.simulator.stats().deliveries, 0);
}

// Two apps on one listener, each with its own key, admin and rate.
const APP_B: u64 = 1400000002;
const ADMIN_B: &str = "ops-admin";
const KEY_B: &str = "simulator-test-key-b";

async fn start_two(rate_a: f64, rate_b: f64) -> SpawnedSimulatorSet {
    let mut a = SimulatorConfig::new(APP, ADMIN, SecretKey::new(KEY));
    a.rate = rate_a;
    let mut b = SimulatorConfig::new(APP_B, ADMIN_B, SecretKey::new(KEY_B));
    b.rate = rate_b;
    SimulatorSet::new([a, b])
        .expect("two apps make a set")
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator binds a loopback port")
}

fn app_client(sims: &SpawnedSimulatorSet, sdkappid: u64, identifier: &str) -> ApiClient {
    ApiClient::new(&ApiConfig::new(sims.base_url(), sdkappid, identifier)).unwrap()
}

async fn get_json(sims: &SpawnedSimulatorSet, path: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("http://{}{path}", sims.addr))
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn two_apps_each_take_their_own_calls_at_their_own_rate() {
    let sims = start_two(1.0, 1.0).await;
    let a = app_client(&sims, APP, ADMIN);
    let b = app_client(&sims, APP_B, ADMIN_B);
    let sig_b = sig_for(KEY_B, APP_B, ADMIN_B, now_secs(), 3600);
    // One call each within the same second: each app has its own window.
    let sent_a = send(&a, &good_sig(), text_body("for a", 1)).await;
    let sent_b = send(&b, &sig_b, text_body("for b", 1)).await;
    assert_eq!((sent_a.error_code, sent_b.error_code), (0, 0));
    // Each app numbers its own deliveries.
    assert_eq!((sent_a.msg_seq, sent_b.msg_seq), (Some(1), Some(1)));
    // The second call in that second is over A's limit, and A's alone.
    assert_eq!(
        send(&a, &good_sig(), text_body("again", 2))
            .await
            .error_code,
        10023
    );

    let (stats_a, stats_b) = (sims.app(APP).stats(), sims.app(APP_B).stats());
    assert_eq!((stats_a.calls, stats_a.deliveries), (2, 1));
    assert_eq!(stats_a.frequency_violations, 1);
    assert_eq!((stats_b.calls, stats_b.deliveries), (1, 1));
    assert_eq!(stats_b.frequency_violations, 0);
    let text = |sdkappid| {
        sims.app(sdkappid).deliveries(0, 10)[0]
            .body
            .as_ref()
            .unwrap()["MsgBody"][0]["MsgContent"]["Text"]
            .clone()
    };
    assert_eq!((text(APP), text(APP_B)), (json!("for a"), json!("for b")));

    // Over HTTP: every app's counters by SDKAppID, or one app's.
    let (status, every) = get_json(&sims, "/simulator/stats").await;
    assert_eq!(status, 200);
    assert_eq!(every[APP.to_string()]["deliveries"], 1);
    assert_eq!(every[APP.to_string()]["frequency_violations"], 1);
    assert_eq!(every[APP_B.to_string()]["deliveries"], 1);
    assert_eq!(every.as_object().unwrap().len(), 2);
    let (_, one) = get_json(&sims, &format!("/simulator/stats?sdkappid={APP_B}")).await;
    assert_eq!(
        (one["calls"].as_u64(), one["deliveries"].as_u64()),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn a_call_is_checked_against_the_app_its_sdkappid_names() {
    let sims = start_two(1000.0, 1000.0).await;
    let b = app_client(&sims, APP_B, ADMIN_B);
    let now = now_secs();
    // Signed with A's key for B: B's key does not verify it.
    let a_key_for_b = sig_for(KEY, APP_B, ADMIN_B, now, 3600);
    assert_eq!(
        send(&b, &a_key_for_b, text_body("x", 1)).await.error_code,
        70009
    );
    // A's own UserSig presented to B is for another app.
    assert_eq!(
        send(&b, &good_sig(), text_body("x", 2)).await.error_code,
        70014
    );
    // B's key for A's admin: B's admin is someone else.
    let b_for_other_admin = sig_for(KEY_B, APP_B, ADMIN, now, 3600);
    let b_as_a_admin = app_client(&sims, APP_B, ADMIN);
    assert_eq!(
        send(&b_as_a_admin, &b_for_other_admin, text_body("x", 3))
            .await
            .error_code,
        10007
    );

    // An SDKAppID no app has, signed with a key the service knows.
    let unknown = app_client(&sims, 1400000999, ADMIN);
    let sig = sig_for(KEY, 1400000999, ADMIN, now, 3600);
    assert_eq!(
        send(&unknown, &sig, text_body("x", 4)).await.error_code,
        70020
    );
    // No SDKAppID at all, and one that is not a number.
    let http = reqwest::Client::new();
    let url = b.request_url(&sig_for(KEY_B, APP_B, ADMIN_B, now, 3600));
    for (sdkappid, want) in [(None, 60012), (Some("b"), 60006)] {
        let mut changed = url.clone();
        let mut kept: Vec<(String, String)> = url
            .query_pairs()
            .into_owned()
            .filter(|(k, _)| k != "sdkappid")
            .collect();
        if let Some(v) = sdkappid {
            kept.push(("sdkappid".into(), v.into()));
        }
        changed.query_pairs_mut().clear().extend_pairs(kept);
        let answer: ApiResponse = http
            .post(changed)
            .body(text_body("x", 5))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer.error_code, want, "sdkappid {sdkappid:?}");
    }

    // Nothing was delivered; the calls B was named in are B's, the rest no app's.
    let (stats_a, stats_b) = (sims.app(APP).stats(), sims.app(APP_B).stats());
    assert_eq!((stats_a.calls, stats_a.deliveries), (0, 0));
    assert_eq!((stats_b.calls, stats_b.deliveries), (3, 0));
    assert_eq!(stats_b.answers_by_code.get(&70009), Some(&1));
}

#[tokio::test]
async fn with_several_apps_the_simulator_endpoints_need_one_named() {
    let sims = start_two(1000.0, 1000.0).await;
    let http = reqwest::Client::new();
    let at = |path: &str| format!("http://{}{path}", sims.addr);
    let plan = json!({"always": {"code": 10002}});
    let unnamed = [
        http.get(at("/simulator/deliveries?after=0")),
        http.get(at("/simulator/calls")),
        http.post(at("/simulator/faults")).json(&plan),
        http.delete(at("/simulator/faults")),
        http.post(at("/simulator/reset")),
    ];
    for request in unnamed {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body["error"],
            format!("several apps are simulated here ({APP}, {APP_B}): say which with ?sdkappid=")
        );
    }
    let (status, body) = get_json(&sims, "/simulator/calls?sdkappid=7").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no app with sdkappid 7 is simulated here");

    // A fault plan for B touches B alone; a reset of A forgets A's alone.
    let status = http
        .post(at(&format!("/simulator/faults?sdkappid={APP_B}")))
        .json(&plan)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    let a = app_client(&sims, APP, ADMIN);
    let b = app_client(&sims, APP_B, ADMIN_B);
    let sig_b = sig_for(KEY_B, APP_B, ADMIN_B, now_secs(), 3600);
    assert_eq!(send(&a, &good_sig(), text_body("a", 1)).await.error_code, 0);
    assert_eq!(send(&b, &sig_b, text_body("b", 1)).await.error_code, 10002);
    let (_, calls_b) = get_json(&sims, &format!("/simulator/calls?sdkappid={APP_B}")).await;
    assert_eq!(calls_b.as_array().unwrap().len(), 1);
    assert_eq!(calls_b[0]["error_code"], 10002);
    let (_, deliveries_a) = get_json(
        &sims,
        &format!("/simulator/deliveries?sdkappid={APP}&after=0"),
    )
    .await;
    assert_eq!(
        deliveries_a[0]["body"]["MsgBody"][0]["MsgContent"]["Text"],
        "a"
    );
    http.post(at(&format!("/simulator/reset?sdkappid={APP}")))
        .send()
        .await
        .unwrap();
    assert_eq!(sims.app(APP).stats().calls, 0);
    assert_eq!(sims.app(APP_B).stats().calls, 1);
}
