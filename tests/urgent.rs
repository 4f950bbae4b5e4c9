//! The urgent lane (`{prefix}.urgent`) against real RabbitMQ and the
//! simulator: urgent jobs overtake a backlog, merged among themselves with
//! ordinary jobs filling the room left; the one sender of an app serves both
//! lanes through kills, restarts and balancing moves, idle or busy (never
//! two senders: no frequency-limit answer; every job once).

use std::time::Duration;

use serde_json::Value;
use testkit::*;

const LONG: Duration = Duration::from_secs(120);
const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

/// Where `text` stands among the calls: (call, place in it).
fn place(calls: &[Vec<String>], text: &str) -> (usize, usize) {
    calls
        .iter()
        .enumerate()
        .find_map(|(c, call)| call.iter().position(|t| t == text).map(|p| (c, p)))
        .unwrap_or_else(|| panic!("{text} was not sent"))
}

#[tokio::test]
async fn urgent_jobs_overtake_a_backlog_and_ordinary_jobs_fill_the_room_left() {
    let mut app = spawn_app("urgent-first", 5.0).await;
    app.config.call.max_jobs = 10;
    let ordinary = backlog("o", 200);
    app.publish_many(&ordinary).await;
    app.start_worker();
    app.wait_for("two calls", LONG, |app| app.calls().len() >= 2)
        .await;
    let sent_before = app.calls().len();
    let urgent: Vec<(String, Value)> = (1..=3)
        .map(|i| (format!("u{i}"), text_job(&format!("u{i}"))))
        .collect();
    for (id, body) in &urgent {
        app.publish_urgent(id, body).await;
    }
    app.wait_for("every job", LONG, |app| {
        app.all_delivered(&ordinary) && app.all_delivered(&urgent)
    })
    .await;
    app.stop_worker().await.unwrap();

    let calls = app.calls();
    // The three urgent jobs open one call, in their order, taken at the
    // next permit or the one after (a call may have been on its way), with
    // ordinary jobs filling the rest of it.
    let (call, at) = place(&calls, "job:u1");
    assert_eq!(at, 0, "urgent jobs open their call: {:?}", calls[call]);
    assert!(
        call <= sent_before + 1,
        "urgent jobs waited behind the backlog: call {call}, {sent_before} sent before they were published"
    );
    assert_eq!(calls[call][..3], ["job:u1", "job:u2", "job:u3"]);
    assert_eq!(
        calls[call].len(),
        10,
        "the room left filled with ordinary jobs"
    );
    assert!(calls[call][3..].iter().all(|t| t.starts_with("job:o-")));
    // Ordinary jobs keep their order across every call.
    let order: Vec<&String> = calls
        .iter()
        .flatten()
        .filter(|t| t.starts_with("job:o-"))
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "ordinary jobs in the order published");
    app.assert_each_delivered_once(&ordinary);
    app.assert_each_delivered_once(&urgent);
    assert_eq!(app.queue_len(&app.names.urgent).await, 0);
    assert_eq!(app.queue_len(&app.names.dead).await, 0);
}

/// Publishes two urgent jobs to each app of the fleet, named after `round`.
async fn urgent_round(fleet: &TestFleet, urgent: &mut [Vec<(String, Value)>], round: &str) {
    for (i, app) in fleet.apps.iter().enumerate() {
        for k in 0..2 {
            let id = format!("app{i}-{round}-{k}");
            let body = text_job(&id);
            app.publish_urgent(&id, &body).await;
            urgent[i].push((id, body));
        }
    }
}

/// Waits until every app has had every urgent job published so far.
async fn urgent_delivered(fleet: &TestFleet, urgent: &[Vec<(String, Value)>], when: &str) {
    for (i, app) in fleet.apps.iter().enumerate() {
        let what = format!("app {i}'s urgent jobs {when}");
        app.wait_for(&what, LONG, |a| a.all_delivered(&urgent[i]))
            .await;
    }
}

/// Polls until every app is active on exactly one of the replicas at `ports`.
async fn one_sender_each(ports: &[u16], apps: usize) -> Vec<Vec<u64>> {
    let started = std::time::Instant::now();
    loop {
        let mut sets = Vec::new();
        for port in ports {
            sets.push(active_apps(*port).await);
        }
        let mut all: Vec<u64> = sets.iter().flatten().copied().collect();
        all.sort();
        let expected: Vec<u64> = (0..apps).map(fleet_sdkappid).collect();
        if all == expected {
            return sets;
        }
        assert!(started.elapsed() < LONG, "one sender each: {sets:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn one_sender_serves_both_lanes_through_kills_and_balancing_moves_busy_or_idle() {
    let db = TestDatabase::create("urgent-moves").await;
    let fleet = TestFleet::spawn("urgent-moves", 2, 2.0, |_, _| {}).await;
    // Three jobs a call at two calls a second: the backlogs last ~25 s.
    fleet.write_apps_file(&[0, 1], "max_jobs_per_call = 3\nrate_guard_ms = 60");
    let ordinary: Vec<Vec<(String, Value)>> =
        (0..2).map(|i| backlog(&format!("app{i}"), 150)).collect();
    for (app, jobs) in fleet.apps.iter().zip(&ordinary) {
        app.publish_many(jobs).await;
    }
    let mut urgent = vec![Vec::new(), Vec::new()];
    let env = [("DATABASE_URL", db.url())];
    let ports = [free_port(), free_port()];
    let mut a = fleet.replica(BIN, ports[0], &env);
    one_sender_each(&ports[..1], 2).await;
    urgent_round(&fleet, &mut urgent, "alone").await;

    // B joins: balancing moves one app to it while both are busy.
    let mut b = fleet.replica(BIN, ports[1], &env);
    let sets = one_sender_each(&ports, 2).await;
    eprintln!("after B joined: {sets:?}");
    urgent_round(&fleet, &mut urgent, "joined").await;
    urgent_delivered(&fleet, &urgent, "after the move").await;

    // A killed mid-backlog: B takes both apps, urgent lanes included.
    signal(&a, "-KILL");
    wait_exit(&mut a, Duration::from_secs(5)).await;
    urgent_round(&fleet, &mut urgent, "killed").await;
    one_sender_each(&ports[1..], 2).await;
    urgent_delivered(&fleet, &urgent, "after a kill").await;
    a = fleet.replica(BIN, ports[0], &env);
    one_sender_each(&ports, 2).await;
    urgent_round(&fleet, &mut urgent, "rejoined").await;

    for (i, app) in fleet.apps.iter().enumerate() {
        app.wait_for("the backlog", LONG, |a| a.all_delivered(&ordinary[i]))
            .await;
    }
    urgent_delivered(&fleet, &urgent, "busy").await;

    // Idle now. The replica active for app 0 is killed: the other, standing
    // by, learns it is active from the baton and opens the urgent lane.
    let sets = one_sender_each(&ports, 2).await;
    let holder = if sets[0].contains(&fleet_sdkappid(0)) {
        0
    } else {
        1
    };
    let (victim, other) = if holder == 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    signal(victim, "-KILL");
    wait_exit(victim, Duration::from_secs(5)).await;
    urgent_round(&fleet, &mut urgent, "idle-killed").await;
    urgent_delivered(&fleet, &urgent, "idle, after a kill").await;
    // And stopped gently while idle: its baton goes to the restarted one.
    *victim = fleet.replica(BIN, ports[holder], &env);
    one_sender_each(&ports, 2).await;
    signal(other, "-TERM");
    wait_exit(other, Duration::from_secs(30)).await;
    urgent_round(&fleet, &mut urgent, "idle-stopped").await;
    urgent_delivered(&fleet, &urgent, "idle, after a stop").await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(victim, "-TERM");
    wait_exit(victim, Duration::from_secs(30)).await;
    for (i, app) in fleet.apps.iter().enumerate() {
        app.assert_each_delivered_once(&ordinary[i]);
        app.assert_each_delivered_once(&urgent[i]);
        assert_eq!(app.jobs_waiting().await, 0, "app {i}'s jobs queue");
        assert_eq!(
            app.queue_len(&app.names.urgent).await,
            0,
            "app {i}'s urgent lane"
        );
    }
    assert_eq!(fleet.total_frequency_violations(), 0, "never two senders");
    let dead = fleet.apps[0].queue_len(&fleet.apps[0].names.dead).await;
    assert_eq!(dead, 0, "nothing dead-lettered");
}
