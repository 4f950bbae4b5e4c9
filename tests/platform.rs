//! A platform's fleet: many apps on a replica's few shared connections. A
//! channel error of one app ends its session only (the app beside it on
//! the same connection never notices), five hundred apps added by SIGHUP
//! under load do not stall the running ones, an idle app is known active
//! through its baton, no baton is left behind when the fleet stops, and a
//! channel id the broker closed with an error is clean when it is reused.

use std::process::Child;
use std::time::{Duration, Instant};

use broadcast_worker::broker;
use lapin::options::{BasicQosOptions, ExchangeDeleteOptions};
use serde_json::Value;
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

/// As in tests/fleet.rs: few jobs per call, a wider guard on a loaded machine.
const FOR_A_LOADED_MACHINE: &str = "max_jobs_per_call = 3\nrate_guard_ms = 60";

async fn metrics(port: u16) -> String {
    match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The sum of a gauge over every app, as the replica's metrics give it.
async fn gauge_sum(port: u16, name: &str) -> f64 {
    metrics(port)
        .await
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_gauge(port: u16, name: &str, want: f64, within: Duration) {
    let started = Instant::now();
    loop {
        let sum = gauge_sum(port, name).await;
        if sum == want {
            return;
        }
        assert!(started.elapsed() < within, "{name}: {sum}, not {want}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The longest gap between two calls an app's simulator received.
fn longest_gap_ms(app: &TestApp) -> u64 {
    let calls = app.sim.simulator.calls();
    calls
        .windows(2)
        .map(|w| w[1].received_at_ms - w[0].received_at_ms)
        .max()
        .unwrap_or(0)
}

/// A shared connection opens thousands of channels over a fleet's life, so
/// ids come round again. A channel the broker closed with an error (the
/// passive declare of a queue that is not there, as the retirement of an
/// app's own dead-letter queue makes at every start) once left its id
/// poisoned in lapin: the next channel given that id had every frame
/// rejected with the old 404, and so the session of an unrelated app ended,
/// again and again. With `channel_max=2` the id comes round at once.
#[tokio::test]
async fn a_channel_id_the_broker_closed_with_an_error_is_clean_when_reused() {
    let connection = connect_to(&format!("{AMQP_URL}?channel_max=2")).await;
    let missing = format!("{}.missing", unique_prefix("channel-reuse"));
    let first = connection.create_channel().await.unwrap();
    let poisoned = first.id();
    let refused = broker::inspect(&first, &missing).await.unwrap_err();
    assert!(refused.to_string().contains("NOT_FOUND"), "{refused}");
    let started = Instant::now();
    while first.status().connected() || first.status().closing() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the channel never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(first);
    let mut reused = None;
    for _ in 0..4 {
        let channel = connection
            .create_channel()
            .await
            .expect("a channel opens, on an id the broker closed with an error too");
        if channel.id() == poisoned {
            reused = Some(channel);
            break;
        }
        channel.close(200, "not the id".into()).await.unwrap();
    }
    let channel = reused.expect("with channel_max=2 the id comes round");
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("a new channel on the id works, without the old channel's error");
    broker::inspect(&channel, &format!("{missing}-too"))
        .await
        .expect_err("and a missing queue is still reported");
    let _ = connection.close(200, "".into()).await;
}

async fn stop(replica: &mut Child) {
    signal(replica, "-TERM");
    wait_exit(replica, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_channel_error_of_one_app_leaves_the_app_on_its_connection_sending() {
    // Apps 0 and 3 go over the same one of a replica's three connections.
    let fleet = TestFleet::spawn("platform-channel", 4, 5.0, |_, _| {}).await;
    assert_eq!(fleet_sdkappid(0) % 3, fleet_sdkappid(3) % 3);
    fleet.write_apps_file(&[0, 3], FOR_A_LOADED_MACHINE);
    let (broken, beside) = (&fleet.apps[0], &fleet.apps[3]);
    let jobs = backlog("beside", 150);
    beside.publish_many(&jobs).await;
    let port = free_port();
    let mut replica = fleet.replica(BIN, port, &[]);
    beside
        .wait_for("the app beside under way", Duration::from_secs(30), |a| {
            a.sim.simulator.stats().elements_delivered >= 10
        })
        .await;

    // The broken app's dead-letter exchange goes; a job it must dead-letter
    // then closes its channel (404 NOT_FOUND), ending its session. The next
    // session declares the exchange again and dead-letters the job.
    broken
        .channel
        .exchange_delete(
            broken.names.dlx.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
    broken.publish_raw(Some("not-json"), b"{oops", None).await;
    let started = Instant::now();
    while broken.queue_len(&broken.names.dead).await < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the broken app's next session dead-letters the job"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    beside
        .wait_for(
            "every job of the app beside",
            Duration::from_secs(60),
            |a| a.all_delivered(&jobs),
        )
        .await;
    let text = metrics(port).await;
    stop(&mut replica).await;
    beside.assert_each_delivered_once(&jobs);
    // Its session never ended: each job was received once, none redelivered.
    let received = format!(
        "broadcast_jobs_received_total{{sdkappid=\"{}\"}} 150",
        fleet_sdkappid(3)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(&received[..received.len() - 4]));
    assert_eq!(line, Some(received.as_str()), "each job received once");
    assert_eq!(beside.sim.simulator.stats().frequency_violations, 0);
    // Both queues as the jobs left them: no baton stays behind a stop.
    assert_eq!(beside.queue_len(&beside.names.jobs).await, 0);
    assert_eq!(broken.queue_len(&broken.names.jobs).await, 0);
}

/// Five hundred more apps in the apps file, idle, all with one key file (on
/// a private node: their queues go with it).
fn append_many_apps(fleet: &TestFleet, n: usize, base_url: &str) {
    let key = fleet.dir.join("many.key");
    std::fs::write(&key, "many-secret").unwrap();
    let path = fleet.dir.join("apps.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for i in 0..n {
        let sdkappid = 1_400_900_000 + i as u64;
        text.push_str(&format!(
            "[[app]]\nsdkappid = {sdkappid}\nidentifier = {ADMIN:?}\nsecret_key_file = {:?}\nbase_url = {base_url:?}\nrate = 5\n\n",
            key.display().to_string(),
        ));
    }
    std::fs::write(&path, text).unwrap();
}

// On a private node with the hard open-files limit: 502 apps' quorum queues
// hold about 1,500 of a node's file handles, more than the 927 of a node
// started under a login's 1,024 (README, "Sizing the broker"); past its
// limit a node stops answering handshakes, for every test on it.
#[tokio::test]
async fn sighup_adding_500_apps_under_load_stalls_no_running_app() {
    // Dropped last: the fleet's clean-up runs while the node is up.
    let node = Cluster::start(1);
    let fleet = TestFleet::spawn_on(&node.url(0), "platform-hup", 2, 5.0, |_, _| {}).await;
    fleet.write_apps_file(&[0, 1], FOR_A_LOADED_MACHINE);
    let jobs: Vec<Vec<(String, Value)>> =
        (0..2).map(|i| backlog(&format!("run{i}"), 180)).collect();
    for (app, jobs) in fleet.apps.iter().zip(&jobs) {
        app.publish_many(jobs).await;
    }
    let port = free_port();
    let mut replica = fleet.replica(BIN, port, &[]);
    fleet.apps[0]
        .wait_for("the running apps under way", Duration::from_secs(30), |a| {
            a.sim.simulator.stats().elements_delivered >= 15
        })
        .await;

    // Nobody will send for the new apps: they get no jobs.
    append_many_apps(&fleet, 500, fleet.apps[0].sim.base_url().as_ref());
    signal(&replica, "-HUP");
    wait_gauge(
        port,
        "broadcast_broker_connected",
        502.0,
        Duration::from_secs(90),
    )
    .await;
    // Each idle app knows it is active (its baton), with no job to tell it.
    wait_gauge(port, "broadcast_app_active", 502.0, Duration::from_secs(30)).await;

    for (app, jobs) in fleet.apps.iter().zip(&jobs) {
        app.wait_for("every running job", Duration::from_secs(90), |a| {
            a.all_delivered(jobs)
        })
        .await;
    }
    let stopping = Instant::now();
    stop(&mut replica).await;
    eprintln!(
        "FIGURES 502 apps stopped in {} ms",
        stopping.elapsed().as_millis()
    );
    for (app, jobs) in fleet.apps.iter().zip(&jobs) {
        app.assert_each_delivered_once(jobs);
        assert_eq!(app.sim.simulator.stats().frequency_violations, 0);
        // At 5 calls a second the gaps are 200 ms; a stall shows as seconds.
        let gap = longest_gap_ms(app);
        eprintln!("FIGURES longest gap between calls: {gap} ms");
        assert!(gap < 2_000, "a running app stalled for {gap} ms");
    }
}
