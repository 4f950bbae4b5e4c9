//! A platform's fleet: many apps on a replica's few shared connections. A
//! channel error of one app ends its session only (the app beside it on
//! the same connection never notices), five hundred apps added by SIGHUP
//! under load do not stall the running ones, an idle app is known active
//! through its baton, and no baton is left behind when the fleet stops.

use std::process::Child;
use std::time::{Duration, Instant};

use lapin::options::ExchangeDeleteOptions;
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

/// Five hundred more apps in the apps file, idle, all with one key file.
struct ManyApps {
    prefixes: Vec<String>,
}

impl ManyApps {
    fn append(fleet: &TestFleet, n: usize, base_url: &str) -> Self {
        let key = fleet.dir.join("many.key");
        std::fs::write(&key, "many-secret").unwrap();
        let path = fleet.dir.join("apps.toml");
        let mut text = std::fs::read_to_string(&path).unwrap();
        let mut prefixes = Vec::with_capacity(n);
        for i in 0..n {
            let sdkappid = 1_400_900_000 + i as u64;
            text.push_str(&format!(
                "[[app]]\nsdkappid = {sdkappid}\nidentifier = {ADMIN:?}\nsecret_key_file = {:?}\nbase_url = {base_url:?}\nrate = 5\n\n",
                key.display().to_string(),
            ));
            prefixes.push(format!("{}.{sdkappid}", fleet.prefix));
        }
        std::fs::write(&path, text).unwrap();
        Self { prefixes }
    }
}

impl Drop for ManyApps {
    fn drop(&mut self) {
        for prefix in &self.prefixes {
            delete_topology(prefix);
        }
    }
}

// Outside CI (`cargo test --test platform -- --ignored`): 500 more quorum
// queues beside the rest of the suite's load. With 1,000 (before the fleet
// shared one dead-letter queue), the shared 3.10 node on this 2-core machine
// stopped answering handshakes in two of its runs.
#[tokio::test]
#[ignore = "500 more quorum queues on the shared broker: run by hand, see the comment"]
async fn sighup_adding_500_apps_under_load_stalls_no_running_app() {
    let fleet = TestFleet::spawn("platform-hup", 2, 5.0, |_, _| {}).await;
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
    let many = ManyApps::append(&fleet, 500, fleet.apps[0].sim.base_url().as_ref());
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
    drop(many);
}
