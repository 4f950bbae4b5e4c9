//! Halts and pauses across sessions: a halt that outlasts the repeat window
//! leaves nothing in doubt (every attempt was refused, so nothing can have
//! been delivered) whether the worker is stopped, killed or reconnects; and
//! a frequency-limit pause outlives the session that took it.

use std::time::Duration;

use broadcast_worker::ledger::Ledger;
use broadcast_worker::simulator::{Fault, FaultPlan};
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");
const LONG: Duration = Duration::from_secs(30);
/// The resend window of these tests: a halt of twice as long outlasts it.
const WINDOW_SECS: u64 = 3;

fn halted() -> FaultPlan {
    FaultPlan {
        always: Some(Fault {
            code: Some(10007),
            ..Fault::default()
        }),
        ..FaultPlan::default()
    }
}

/// Waits until the service has refused `n` attempts, then a moment more, so
/// that the last refusal is recorded and the next probe is most of a
/// second away.
async fn wait_for_refusals(app: &TestApp, n: usize) {
    app.wait_for(&format!("{n} refused attempts"), LONG, |app| {
        app.sim
            .simulator
            .calls()
            .iter()
            .filter(|c| c.error_code == Some(10007))
            .count()
            >= n
    })
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn a_halt_longer_than_the_repeat_window_then_a_stop_or_a_kill_dead_letters_nothing() {
    for signal_name in ["-TERM", "-KILL"] {
        let db = TestDatabase::create("halt-restart").await;
        let app = spawn_app("halt-restart", 20.0).await;
        let jobs: Vec<_> = (0..3)
            .map(|i| (format!("held-{i}"), text_job(&format!("held-{i}"))))
            .collect();
        app.publish_many(&jobs).await;
        app.sim.simulator.set_faults(halted());
        let env = [
            ("DATABASE_URL", db.url()),
            ("BROADCAST_RESEND_WINDOW_SECS", WINDOW_SECS.to_string()),
            ("BROADCAST_APP_FAULT_PROBE_SECS", "0.5".to_string()),
        ];
        let mut worker = worker_process(BIN, &app, &env);
        // Probes every half second: twelve refusals are twice the window.
        wait_for_refusals(&app, 12).await;
        signal(&worker, signal_name);
        wait_exit(&mut worker, Duration::from_secs(20)).await;
        // The console switch is turned back on; a worker starts again.
        app.sim.simulator.set_faults(FaultPlan::default());
        let mut worker = worker_process(BIN, &app, &env);
        app.wait_for("the held jobs delivered", LONG, |app| {
            app.all_delivered(&jobs)
        })
        .await;
        signal(&worker, "-TERM");
        wait_exit(&mut worker, Duration::from_secs(20)).await;
        app.assert_each_delivered_once(&jobs);
        assert_eq!(
            app.queue_len(&app.names.dead).await,
            0,
            "after {signal_name}: a halt dead-letters nothing"
        );
        let ledger = Ledger::connect_lazy(&db.url()).unwrap();
        let report = ledger.show("held-0").await.unwrap().unwrap();
        assert_eq!(report.state, broadcast_worker::ledger::JobState::Delivered);
    }
}

#[tokio::test]
async fn a_halt_longer_than_the_repeat_window_then_a_reconnect_dead_letters_nothing() {
    let db = TestDatabase::create("halt-reconnect").await;
    let mut app = spawn_app("halt-reconnect", 20.0).await;
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let ledger = Ledger::connect_lazy(&db.url()).unwrap();
    ledger.migrate().await.unwrap();
    app.config.ledger = Some(ledger);
    app.config.amqp_url = proxy.amqp_url();
    app.config.resend_window = Duration::from_secs(WINDOW_SECS);
    app.config.policy.app_fault_probe = Duration::from_millis(500);
    let jobs: Vec<_> = (0..3)
        .map(|i| (format!("held-{i}"), text_job(&format!("held-{i}"))))
        .collect();
    app.publish_many(&jobs).await;
    app.sim.simulator.set_faults(halted());
    app.start_worker();
    wait_for_refusals(&app, 12).await;
    // The broker connection drops: a new session takes the call over.
    proxy.cut_all();
    app.wait_for("a second session", LONG, |_| {
        proxy.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    wait_for_refusals(&app, 14).await;
    app.sim.simulator.set_faults(FaultPlan::default());
    app.wait_for("the held jobs delivered", LONG, |app| {
        app.all_delivered(&jobs)
    })
    .await;
    app.stop_worker().await.unwrap();
    app.assert_each_delivered_once(&jobs);
    assert_eq!(app.queue_len(&app.names.dead).await, 0);
}

#[tokio::test]
async fn a_frequency_limit_pause_outlives_the_session_that_took_it() {
    const PAUSE: Duration = Duration::from_secs(5);
    let mut app = spawn_app("pause-session", 20.0).await;
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    app.config.amqp_url = proxy.amqp_url();
    app.config.slow_down.pause = PAUSE;
    app.config.reconnect_max = Duration::from_millis(300);
    app.sim.simulator.set_faults(FaultPlan {
        script: [Fault {
            code: Some(10023),
            ..Fault::default()
        }]
        .into(),
        ..FaultPlan::default()
    });
    let job = [("paused".to_string(), text_job("paused"))];
    app.publish_many(&job).await;
    app.start_worker();
    app.wait_for("the frequency-limit answer", LONG, |app| {
        app.sim.simulator.calls().len() == 1
    })
    .await;
    // The answer is read and the pause taken; then the session ends.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut_all();
    app.wait_for("the job delivered", LONG, |app| app.all_delivered(&job))
        .await;
    app.stop_worker().await.unwrap();
    let calls = app.sim.simulator.calls();
    assert_eq!(calls[0].error_code, Some(10023));
    let gap = calls[1].received_at_ms - calls[0].received_at_ms;
    assert!(
        gap >= PAUSE.as_millis() as u64 - 50,
        "the next session sent {gap} ms after the frequency-limit answer, within its {PAUSE:?} pause"
    );
    assert!(
        proxy.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "a second session sent it"
    );
}
