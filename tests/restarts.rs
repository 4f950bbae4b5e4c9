//! Restarts and crash loops: jobs that were merely held when a worker
//! stopped are never dead-lettered for it, however often that happens, while
//! a job that crashes the worker each time it is sent is dead-lettered as
//! `crash-loop` after the configured number of sessions, and the jobs behind
//! it go out.

use std::time::Duration;

use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");
const LONG: Duration = Duration::from_secs(60);

/// Starts and stops a worker `restarts` times (killed or stopped cleanly by
/// turns), each time after it took every job into its hands, with a rate so
/// low that it sends nothing meanwhile. Returns the test app and its jobs.
async fn restart_while_holding(
    restarts: usize,
    jobs: usize,
) -> (TestApp, Vec<(String, serde_json::Value)>) {
    let app = spawn_app("restarts", 2.0).await;
    let jobs = backlog("held", jobs);
    app.publish_many(&jobs).await;
    // One call per 100 s at most, the first a full period after start.
    let slow = [("BROADCAST_RATE", "0.01".to_string())];
    for restart in 0..restarts {
        let mut worker = worker_process(BIN, &app, &slow);
        app.wait_for_len(&app.names.jobs, 0).await;
        signal(&worker, if restart % 2 == 0 { "-KILL" } else { "-TERM" });
        wait_exit(&mut worker, Duration::from_secs(20)).await;
        app.wait_for_len(&app.names.jobs, jobs.len() as u32).await;
    }
    assert_eq!(app.sim.simulator.stats().calls, 0, "nothing was sent");
    (app, jobs)
}

#[tokio::test]
async fn thirty_restarts_holding_a_thousand_jobs_dead_letter_none() {
    let (app, jobs) = restart_while_holding(30, 1000).await;
    assert_eq!(
        app.queue_len(&app.names.dead).await,
        0,
        "no held job was dead-lettered by the broker"
    );
    let mut drain = worker_process(BIN, &app, &[]);
    app.wait_for("every job delivered", LONG, |app| app.all_delivered(&jobs))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&drain, "-TERM");
    wait_exit(&mut drain, Duration::from_secs(20)).await;
    app.assert_each_delivered_once(&jobs);
    assert_eq!(app.queue_len(&app.names.jobs).await, 0);
    assert_eq!(app.queue_len(&app.names.dead).await, 0);
    assert_eq!(app.sim.simulator.stats().frequency_violations, 0);
}

/// With the ledger, a job whose call kills the worker every time: the first
/// session records the call and dies; each next one takes it over (one more
/// interruption) and dies, until the crash limit is reached and the call's
/// jobs are dead-lettered instead of sent. The jobs behind it are delivered.
#[tokio::test]
async fn a_job_that_crashes_the_worker_every_time_is_dead_lettered_as_crash_loop() {
    let db = TestDatabase::create("crash-loop").await;
    let app = spawn_app("crash-loop", 5.0).await;
    let env = [
        ("DATABASE_URL", db.url()),
        ("BROADCAST_CRASH_LIMIT", "3".to_string()),
        ("BROADCAST_TEST_CRASH_ON_JOB", "poison".to_string()),
    ];
    app.publish("poison", &text_job("poison")).await;
    let mut crashes = 0;
    let mut worker = worker_process(BIN, &app, &env);
    let status = wait_exit(&mut worker, LONG).await;
    assert_eq!(
        status.code(),
        Some(137),
        "the poison job crashed the worker"
    );
    crashes += 1;
    // The jobs behind it arrive while it keeps crashing the worker.
    let good = backlog("good", 40);
    app.publish_many(&good).await;
    let survivor = loop {
        let mut worker = worker_process(BIN, &app, &env);
        let exited = tokio::time::timeout(Duration::from_secs(10), async {
            wait_exit(&mut worker, LONG).await
        })
        .await;
        match exited {
            Ok(status) => {
                assert_eq!(status.code(), Some(137));
                crashes += 1;
                assert!(crashes <= 3, "the worker went on crashing past the limit");
            }
            Err(_) => break worker,
        }
    };
    assert_eq!(crashes, 3, "three sessions died with the job in flight");
    app.wait_for("the good jobs delivered", LONG, |app| {
        app.all_delivered(&good)
    })
    .await;
    app.wait_for_dead(1, LONG).await;
    let mut survivor = survivor;
    signal(&survivor, "-TERM");
    wait_exit(&mut survivor, Duration::from_secs(20)).await;

    app.assert_each_delivered_once(&good);
    assert!(
        !app.delivered_texts().keys().any(|t| t.contains("poison")),
        "the poison job was never sent"
    );
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 1, "only the poison job is dead-lettered");
    assert_eq!(dead[0].id.as_deref(), Some("poison"));
    assert_eq!(dead[0].reason, "crash-loop");
    assert!(
        dead[0].error_info.contains("3 worker sessions"),
        "{}",
        dead[0].error_info
    );
    assert_eq!(app.queue_len(&app.names.jobs).await, 0);
}
