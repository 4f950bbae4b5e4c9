//! Many apps, many replicas: every app of an apps file served by worker
//! processes (`run --apps-file`), each app on its own queues and simulator.
//! Jobs go out once and to their own app, the senders spread over the
//! replicas and move when one dies or joins, a halted app holds up no other,
//! and SIGHUP adds and removes apps under load.

use std::collections::BTreeSet;
use std::process::Child;
use std::time::{Duration, Instant};

use broadcast_worker::pipeline::is_baton;
use broadcast_worker::simulator::{Fault, FaultPlan};
use serde_json::Value;
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

/// Few jobs per call, so the work lasts; and a wider guard against jitter:
/// the simulators timestamp arrivals in a test process that shares two cores
/// with several replicas, and a call handled 30 ms late looks 30 ms early
/// to the next one's window.
const FOR_A_LOADED_MACHINE: &str = "max_jobs_per_call = 3\nrate_guard_ms = 60";

/// Every app's jobs, traceable to their app by their text.
fn jobs_per_app(apps: usize, n: usize) -> Vec<Vec<(String, Value)>> {
    (0..apps).map(|i| backlog(&format!("app{i}"), n)).collect()
}

/// The active apps of each replica, polled until `ok` holds for them (the
/// replicas that do not answer count as active for none); panics with
/// `what` after `within`. Returns the sets and how long it took.
async fn wait_for_spread(
    ports: &[u16],
    within: Duration,
    what: &str,
    ok: impl Fn(&[Vec<u64>]) -> bool,
) -> (Vec<Vec<u64>>, Duration) {
    let started = Instant::now();
    loop {
        let mut sets = Vec::new();
        for port in ports {
            sets.push(active_apps(*port).await);
        }
        if ok(&sets) {
            return (sets, started.elapsed());
        }
        assert!(started.elapsed() < within, "{what}: {sets:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The apps that still have jobs to deliver.
fn busy(fleet: &TestFleet, jobs: &[Vec<(String, Value)>]) -> BTreeSet<u64> {
    (0..fleet.apps.len())
        .filter(|&i| !fleet.apps[i].all_delivered(&jobs[i]))
        .map(fleet_sdkappid)
        .collect()
}

/// Every busy app is active on one of `sets`, and none on two.
fn covers(sets: &[Vec<u64>], busy: &BTreeSet<u64>) -> bool {
    let all: Vec<u64> = sets.iter().flatten().copied().collect();
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    unique.len() == all.len() && busy.iter().all(|app| unique.contains(app))
}

async fn stop(replica: &mut Child) {
    signal(replica, "-TERM");
    wait_exit(replica, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn six_apps_on_three_replicas_deliver_once_and_stay_spread_through_kills() {
    let db = TestDatabase::create("fleet-six").await;
    let fleet = TestFleet::spawn("fleet-six", 6, 2.0, |_, _| {}).await;
    // About 50 s of work for each app: 300 jobs, 3 per call, 2 calls a second.
    fleet.write_apps_file(&[0, 1, 2, 3, 4, 5], FOR_A_LOADED_MACHINE);
    let jobs = jobs_per_app(6, 300);
    for (app, jobs) in fleet.apps.iter().zip(&jobs) {
        app.publish_many(jobs).await;
    }
    let env = [("DATABASE_URL", db.url())];
    let ports = [free_port(), free_port(), free_port()];
    let mut replicas: Vec<Child> = ports.iter().map(|p| fleet.replica(BIN, *p, &env)).collect();

    // Six apps, three replicas: at most ceil(6/3) + 1 = 3 each, within 60 s.
    let spread = |sets: &[Vec<u64>]| sets.iter().all(|s| s.len() <= 3);
    let (sets, took) =
        wait_for_spread(&ports, Duration::from_secs(60), "spread at start", |sets| {
            spread(sets) && covers(sets, &busy(&fleet, &jobs))
        })
        .await;
    eprintln!("spread at start after {took:?}: {sets:?}");

    for round in 0..2 {
        let victim = round;
        signal(&replicas[victim], "-KILL");
        wait_exit(&mut replicas[victim], Duration::from_secs(5)).await;
        let survivors: Vec<u16> = (0..3).filter(|&r| r != victim).map(|r| ports[r]).collect();
        // Taken over within 10 s; two replicas: at most 3 + 1 each.
        let (sets, took) =
            wait_for_spread(&survivors, Duration::from_secs(10), "takeover", |sets| {
                sets.iter().all(|s| s.len() <= 4) && covers(sets, &busy(&fleet, &jobs))
            })
            .await;
        eprintln!("round {round}: taken over in {took:?}: {sets:?}");
        replicas[victim] = fleet.replica(BIN, ports[victim], &env);
        let (sets, took) = wait_for_spread(
            &ports,
            Duration::from_secs(60),
            "spread after a join",
            |sets| spread(sets) && covers(sets, &busy(&fleet, &jobs)),
        )
        .await;
        eprintln!("round {round}: spread again in {took:?}: {sets:?}");
    }

    for (i, app) in fleet.apps.iter().enumerate() {
        app.wait_for("every job of the app", Duration::from_secs(120), |a| {
            a.all_delivered(&jobs[i])
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for replica in &mut replicas {
        stop(replica).await;
    }
    for (i, app) in fleet.apps.iter().enumerate() {
        app.assert_each_delivered_once(&jobs[i]);
        let own = format!("job:app{i}-");
        assert!(
            app.delivered_texts().keys().all(|t| t.starts_with(&own)),
            "app {i} received only its own jobs"
        );
        assert_eq!(app.queue_len(&app.names.jobs).await, 0);
        assert_eq!(app.queue_len(&app.names.dead).await, 0);
    }
    assert_eq!(
        fleet.total_frequency_violations(),
        0,
        "no app over its quota"
    );
}

#[tokio::test]
async fn a_halted_app_holds_up_no_other() {
    let fleet = TestFleet::spawn("fleet-halt", 3, 5.0, |_, _| {}).await;
    fleet.apps[2].sim.simulator.set_faults(FaultPlan {
        always: Some(Fault {
            code: Some(10007),
            ..Fault::default()
        }),
        ..FaultPlan::default()
    });
    // The same guard as FOR_A_LOADED_MACHINE: 5 calls in 1.06 s, 4.7 a second.
    fleet.write_apps_file(&[0, 1, 2], "max_jobs_per_call = 2\nrate_guard_ms = 60");
    let jobs = jobs_per_app(3, 100);
    for (app, jobs) in fleet.apps.iter().zip(&jobs) {
        app.publish_many(jobs).await;
    }
    let port = free_port();
    let mut replica = fleet.replica(BIN, port, &[]);
    for (app, jobs) in fleet.apps.iter().zip(&jobs).take(2) {
        app.wait_for("the healthy app's jobs", Duration::from_secs(60), |a| {
            a.all_delivered(jobs)
        })
        .await;
    }
    let body = readyz(port).await.expect("the replica answers");
    let halted = &body["apps"][fleet_sdkappid(2).to_string()];
    assert_eq!(halted["halted_by_app_fault"], true, "{body}");
    assert_eq!(
        body["apps"][fleet_sdkappid(0).to_string()]["ready"],
        true,
        "{body}"
    );
    stop(&mut replica).await;

    for (i, (app, jobs)) in fleet.apps.iter().zip(&jobs).take(2).enumerate() {
        app.assert_each_delivered_once(jobs);
        // 50 calls at 5 a second: the busy stretch runs at the full rate.
        let calls = app.sim.simulator.calls();
        let first = calls.first().unwrap().received_at_ms;
        let last = calls.last().unwrap().received_at_ms;
        let rate = (calls.len() - 1) as f64 / ((last - first) as f64 / 1000.0);
        eprintln!("app {i}: {} calls at {rate:.2} a second", calls.len());
        assert!(
            rate > 4.5,
            "app {i} sent at {rate:.2} calls a second, not 5"
        );
        assert_eq!(app.sim.simulator.stats().frequency_violations, 0);
    }
    let halted = &fleet.apps[2];
    assert_eq!(halted.sim.simulator.stats().deliveries, 0);
    assert_eq!(
        halted.queue_len(&halted.names.dead).await,
        0,
        "nothing dead-lettered"
    );
    // Jobs, not batons: a stopping session may leave its baton behind.
    assert_eq!(
        halted.jobs_waiting().await,
        100,
        "every job of the halted app kept"
    );
}

#[tokio::test]
async fn sighup_adds_and_removes_apps_under_load_and_refuses_a_bad_file() {
    let fleet = TestFleet::spawn("fleet-hup", 3, 2.0, |_, _| {}).await;
    // A and B to start with; 100 jobs each, 3 per call: 17 s of work.
    fleet.write_apps_file(&[0, 1], FOR_A_LOADED_MACHINE);
    let jobs = jobs_per_app(3, 100);
    for (app, jobs) in fleet.apps.iter().zip(&jobs) {
        app.publish_many(jobs).await;
    }
    let port = free_port();
    let mut replica = fleet.replica(BIN, port, &[]);
    let (a, b, c) = (&fleet.apps[0], &fleet.apps[1], &fleet.apps[2]);
    b.wait_for("B under way", Duration::from_secs(30), |b| {
        b.sim.simulator.stats().elements_delivered >= 10
    })
    .await;
    assert_eq!(c.sim.simulator.stats().calls, 0, "C is not served yet");

    // Remove B, add C.
    fleet.write_apps_file(&[0, 2], FOR_A_LOADED_MACHINE);
    signal(&replica, "-HUP");
    c.wait_for("C served", Duration::from_secs(15), |c| {
        c.sim.simulator.stats().elements_delivered >= 4
    })
    .await;
    let b_stopped = b.sim.simulator.stats().elements_delivered;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        b.sim.simulator.stats().elements_delivered,
        b_stopped,
        "B stopped with its call in flight"
    );

    // A bad file is refused; A and C go on.
    std::fs::write(
        fleet.dir.join("apps.toml"),
        "[[app]]\nsdkappid = 1\nrates = 5\n",
    )
    .unwrap();
    signal(&replica, "-HUP");
    for (app, jobs) in [(a, &jobs[0]), (c, &jobs[2])] {
        app.wait_for("every job", Duration::from_secs(90), |app| {
            app.all_delivered(jobs)
        })
        .await;
    }
    let body = readyz(port).await.expect("the replica answers");
    let apps: BTreeSet<String> = body["apps"].as_object().unwrap().keys().cloned().collect();
    let expected: BTreeSet<String> = [0, 2]
        .iter()
        .map(|&i| fleet_sdkappid(i).to_string())
        .collect();
    assert_eq!(apps, expected, "the running set was kept");
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    stop(&mut replica).await;

    a.assert_each_delivered_once(&jobs[0]);
    c.assert_each_delivered_once(&jobs[2]);
    // A was never restarted: its worker received each job once.
    let received = format!(
        "broadcast_jobs_received_total{{sdkappid=\"{}\"}} 100",
        fleet_sdkappid(0)
    );
    assert!(metrics.contains(&received), "A untouched by the reloads");
    // Alerts can tell the removed app from one nobody sends for.
    for (index, served) in [(0, 1), (1, 0), (2, 1)] {
        let line = format!(
            "broadcast_app_served{{sdkappid=\"{}\"}} {served}",
            fleet_sdkappid(index)
        );
        assert!(metrics.contains(&line), "{line} in the metrics");
    }
    // B lost nothing: what it did not send is still in its queue, once.
    let left = b.peek_jobs().await;
    let batons = left.iter().filter(|d| is_baton(d)).count();
    let left: Vec<String> = left
        .iter()
        .filter(|d| !is_baton(d))
        .map(|d| text_of(&serde_json::from_slice(&d.data).unwrap()))
        .collect();
    let sent = b.delivered_texts();
    let both: Vec<&String> = left.iter().filter(|t| sent.contains_key(*t)).collect();
    assert!(both.is_empty(), "B's jobs both sent and kept: {both:?}");
    assert!(
        sent.values().all(|&n| n == 1),
        "B's jobs sent once: {sent:?}"
    );
    assert_eq!(
        left.len() + sent.len(),
        100,
        "B's jobs sent or kept: {} left, {} delivered, {batons} batons",
        left.len(),
        sent.len()
    );
    // A stop passes on the baton it holds; one still on its way to the
    // session when it stopped returns to the queue with the channel
    // (README, "The baton"): never more than that one.
    assert!(
        batons <= 1,
        "{batons} batons left in the queue of a removed app"
    );
    let violations: Vec<u64> = fleet
        .apps
        .iter()
        .map(|app| app.sim.simulator.stats().frequency_violations)
        .collect();
    assert_eq!(violations, [0, 0, 0], "frequency-limit answers by app");
}

#[tokio::test]
async fn an_apps_file_with_mistakes_stops_the_start_with_each_of_them() {
    let fleet = TestFleet::spawn("fleet-bad", 1, 1.0, |_, _| {}).await;
    let key = fleet.dir.join(format!("{}.key", fleet_sdkappid(0)));
    let text = format!(
        "[[app]]\nsdkappid = 7\nidentifier = \"admin\"\nsecret_key_file = {:?}\nrate = 0\n\n\
         [[app]]\nsdkappid = 7\nidentifier = \"admin\"\nsecret_key_file = \"/no/such/key\"\n",
        key.display().to_string()
    );
    std::fs::write(fleet.dir.join("apps.toml"), text).unwrap();
    let mut replica = fleet.replica(BIN, free_port(), &[]);
    let status = wait_exit(&mut replica, Duration::from_secs(20)).await;
    assert!(!status.success());
    let output = std::process::Command::new(BIN)
        .args(["run", "--apps-file"])
        .arg(fleet.dir.join("apps.toml"))
        .env("BROADCAST_QUEUE_PREFIX", &fleet.prefix)
        .env_remove("TIM_SDKAPPID")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    for mistake in [
        "rate 0 is out of range",
        "sdkappid 7 is given twice",
        "cannot read secret_key_file /no/such/key",
    ] {
        assert!(stderr.contains(mistake), "{mistake:?} in {stderr}");
    }
}
