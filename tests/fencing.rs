//! Fencing: a sender that lost its broker session without noticing (paused,
//! cut off) and the sender that took the queue over never both hold a job in
//! flight, and nothing settled is overwritten. First the ledger's fenced
//! writes, interleaved by hand as an old and a new sender would race; then
//! the whole worker, with an old sender partitioned from the broker but not
//! from the ledger, still finishing while the new one starts.

use std::time::Duration;

use broadcast_worker::ledger::{
    Begun, CallJob, JobState, Ledger, LedgerSession, Ownership, Scope, TakeOver,
};
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

async fn ledger_for(db: &TestDatabase) -> Ledger {
    let ledger = Ledger::connect_lazy(&db.url())
        .unwrap()
        .in_scope(Scope::new(APP, "fence.jobs"));
    ledger.migrate().await.expect("migrations apply");
    ledger
}

fn jobs(ids: &[&str], replays: u32) -> Vec<CallJob> {
    ids.iter()
        .map(|id| CallJob {
            id: id.to_string(),
            replays,
            digest: None,
        })
        .collect()
}

/// Records a call of `ids` under a `Random` of its own.
async fn begin(session: &LedgerSession, random: u32, ids: &[&str]) -> Begun {
    session
        .begin_call(b"{}", random, &[random as u8; 32], &jobs(ids, 0), None)
        .await
        .unwrap()
}

async fn state_of(ledger: &Ledger, id: &str) -> (JobState, i64) {
    let report = ledger.show(id).await.unwrap().expect("the job is recorded");
    (report.state, report.call_id.expect("a job in a call"))
}

#[tokio::test]
async fn a_new_call_never_takes_a_job_in_another_call_in_flight_or_settled() {
    let db = TestDatabase::create("fence-bind").await;
    let ledger = ledger_for(&db).await;
    let old = ledger.open_session().await.unwrap();
    let new = ledger.open_session().await.unwrap();
    assert!(
        new.token() > old.token(),
        "a later session draws a larger token"
    );

    let first = begin(&old, 1, &["a"]).await.recorded().unwrap();
    // Both looked "a" up as new; the old sender recorded it first.
    assert_eq!(begin(&new, 2, &["a", "b"]).await, Begun::JobsHeld);
    assert_eq!(state_of(&ledger, "a").await, (JobState::InFlight, first));
    // The refused call took nothing for good: "b" is as free as before.
    let known = ledger.lookup(&[("b".to_string(), 0)]).await.unwrap();
    assert!(
        matches!(
            known.get("b"),
            None | Some(broadcast_worker::ledger::Known::New)
        ),
        "{known:?}"
    );

    // Settled: still not free, for anyone.
    assert_eq!(
        old.call_delivered(first, Some(1)).await.unwrap(),
        Ownership::Held
    );
    assert_eq!(begin(&new, 3, &["a"]).await, Begun::JobsHeld);
    assert_eq!(begin(&old, 4, &["a"]).await, Begun::JobsHeld);
    assert_eq!(state_of(&ledger, "a").await, (JobState::Delivered, first));

    // A replay from the dead-letter queue is a new job.
    let replayed = new
        .begin_call(b"{}", 5, &[5; 32], &jobs(&["a"], 1), None)
        .await
        .unwrap();
    assert!(matches!(replayed, Begun::Recorded(_)), "{replayed:?}");
}

#[tokio::test]
async fn a_later_session_takes_a_call_over_and_the_earlier_one_can_settle_nothing() {
    let db = TestDatabase::create("fence-take").await;
    let ledger = ledger_for(&db).await;
    let old = ledger.open_session().await.unwrap();
    let new = ledger.open_session().await.unwrap();
    let call = begin(&old, 1, &["a", "b"]).await.recorded().unwrap();

    assert!(
        matches!(
            new.take_over(call).await.unwrap(),
            TakeOver::Owned {
                interruptions: 1,
                doubt: Some(_)
            }
        ),
        "the old session ended without settling it: one interruption, and the call in doubt"
    );
    // The old sender, still finishing, is fenced out of every write.
    assert_eq!(old.take_over(call).await.unwrap(), TakeOver::Superseded);
    assert_eq!(old.still_owner(call).await.unwrap(), Ownership::Lost);
    assert_eq!(
        old.call_delivered(call, Some(9)).await.unwrap(),
        Ownership::Lost
    );
    assert_eq!(
        old.call_abandoned(call, Some(80001), "refused")
            .await
            .unwrap(),
        Ownership::Lost
    );
    assert_eq!(
        old.call_dead_lettering(call).await.unwrap(),
        Ownership::Lost
    );
    let ids = vec!["a".to_string(), "b".to_string()];
    assert_eq!(
        old.jobs_dead_lettered(Some(call), &ids, "retries-exhausted", None, "x")
            .await
            .unwrap(),
        Ownership::Lost
    );
    assert_eq!(state_of(&ledger, "a").await, (JobState::InFlight, call));

    // The new sender settles it.
    assert_eq!(new.still_owner(call).await.unwrap(), Ownership::Held);
    assert_eq!(
        new.call_delivered(call, Some(1)).await.unwrap(),
        Ownership::Held
    );
    assert_eq!(state_of(&ledger, "b").await, (JobState::Delivered, call));
    // Settled: nobody takes it over any more.
    let later = ledger.open_session().await.unwrap();
    assert_eq!(later.take_over(call).await.unwrap(), TakeOver::Settled);
}

#[tokio::test]
async fn interruptions_count_sessions_that_left_a_call_unsettled_not_clean_stops() {
    let db = TestDatabase::create("fence-count").await;
    let ledger = ledger_for(&db).await;
    let first = ledger.open_session().await.unwrap();
    let call = begin(&first, 1, &["a"]).await.recorded().unwrap();
    first.release(call).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..3 {
        let session = ledger.open_session().await.unwrap();
        // Taking over twice in one session counts once.
        seen.push(session.take_over(call).await.unwrap());
        seen.push(session.take_over(call).await.unwrap());
    }
    let counts: Vec<u32> = seen
        .into_iter()
        .map(|t| match t {
            TakeOver::Owned { interruptions, .. } => interruptions,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(counts, [0, 0, 1, 1, 2, 2], "a released call counts nothing");
}

#[tokio::test]
async fn halves_take_the_jobs_of_their_own_parent_only() {
    let db = TestDatabase::create("fence-split").await;
    let ledger = ledger_for(&db).await;
    let old = ledger.open_session().await.unwrap();
    let parent = begin(&old, 1, &["a", "b", "c", "d"])
        .await
        .recorded()
        .unwrap();
    let half = |session: LedgerSession, random: u32, ids: &'static [&'static str]| async move {
        session
            .begin_call(
                b"{}",
                random,
                &[random as u8; 32],
                &jobs(ids, 0),
                Some(parent),
            )
            .await
            .unwrap()
    };
    assert!(matches!(
        half(old.clone(), 2, &["a", "b"]).await,
        Begun::Recorded(_)
    ));
    assert!(matches!(
        half(old.clone(), 3, &["c", "d"]).await,
        Begun::Recorded(_)
    ));
    // Another parent: a half recorded after its parent was taken over is
    // refused, and records nothing.
    let other = begin(&old, 4, &["e", "f"]).await.recorded().unwrap();
    let new = ledger.open_session().await.unwrap();
    new.take_over(other).await.unwrap();
    let late = old
        .begin_call(b"{}", 5, &[5; 32], &jobs(&["e"], 0), Some(other))
        .await
        .unwrap();
    assert_eq!(late, Begun::Superseded);
    assert_eq!(state_of(&ledger, "e").await, (JobState::InFlight, other));
}

#[tokio::test]
async fn two_senders_racing_for_one_job_record_one_call() {
    let db = TestDatabase::create("fence-race").await;
    let ledger = ledger_for(&db).await;
    let one = ledger.open_session().await.unwrap();
    let two = ledger.open_session().await.unwrap();
    for round in 0..40u32 {
        let id = format!("r{round}");
        let ids = [id.as_str()];
        let (a, b) = tokio::join!(
            begin(&one, round * 2, &ids),
            begin(&two, round * 2 + 1, &ids)
        );
        let recorded = [a, b]
            .iter()
            .filter(|b| matches!(b, Begun::Recorded(_)))
            .count();
        assert_eq!(recorded, 1, "round {round}: {a:?} {b:?}");
        assert!(
            a == Begun::JobsHeld || b == Begun::JobsHeld,
            "round {round}: {a:?} {b:?}"
        );
    }
}

/// The old sender is cut off from the broker without noticing (its side of
/// the connection stays open and silent), so the broker hands its job to a
/// new sender, which looks it up (new) before the old sender, still
/// finishing, records and sends its call. When the new sender's turn comes,
/// its call is refused by the ledger: the job was settled meanwhile.
#[tokio::test]
async fn an_old_sender_still_finishing_and_a_new_one_starting_send_a_job_once() {
    let db = TestDatabase::create("fence-process").await;
    // One call per 8 s: each sender's first send waits a full period from
    // the moment it became the sender.
    let app = spawn_app("fence-process", 0.125).await;
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let ledger_env = ("DATABASE_URL", db.url());
    let mut old = worker_process(
        BIN,
        &app,
        &[ledger_env.clone(), ("AMQP_URL", proxy.amqp_url())],
    );
    let job = text_job("fenced");
    app.publish("fenced", &job).await;
    // The old sender holds the job, waiting for its first turn (8 s after
    // it became the sender); the new one will wait as long from its start.
    app.wait_for_len(&app.names.jobs, 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.sim.simulator.stats().calls, 0, "not sent yet");
    proxy.partition_all();

    let mut new = worker_process(BIN, &app, std::slice::from_ref(&ledger_env));
    let jobs = vec![("fenced".to_string(), job)];
    app.wait_for("the old sender's call", Duration::from_secs(30), |app| {
        app.all_delivered(&jobs)
    })
    .await;
    // The new sender's first permit comes 8 s after it became the sender.
    tokio::time::sleep(Duration::from_secs(12)).await;
    signal(&new, "-TERM");
    wait_exit(&mut new, Duration::from_secs(20)).await;
    signal(&old, "-KILL");
    wait_exit(&mut old, Duration::from_secs(5)).await;

    let stats = app.sim.simulator.stats();
    app.assert_each_delivered_once(&jobs);
    assert_eq!(stats.calls, 1, "the new sender never sent it: {stats:?}");
    assert_eq!(stats.frequency_violations, 0);
    assert_eq!(
        app.queue_len(&app.names.jobs).await,
        0,
        "the new sender acked it as settled"
    );
    assert_eq!(app.queue_len(&app.names.dead).await, 0);
    let ledger = ledger_for(&db)
        .await
        .in_scope(Scope::new(APP, app.names.jobs.clone()));
    assert_eq!(state_of(&ledger, "fenced").await.0, JobState::Delivered);
}

/// A recovered call may not hold all its jobs: dead-lettering those it holds
/// leaves the call open (in doubt, when it may have been delivered) for the
/// ones still to come back, which are never sent as new jobs.
#[tokio::test]
async fn a_call_is_closed_only_when_none_of_its_jobs_is_left_in_flight() {
    use broadcast_worker::ledger::Known;
    let db = TestDatabase::create("fence-whole").await;
    let ledger = ledger_for(&db).await;
    let sender = ledger.open_session().await.unwrap();
    let call = begin(&sender, 1, &["a", "b"]).await.recorded().unwrap();
    assert_eq!(
        sender.call_dead_lettering(call).await.unwrap(),
        Ownership::Held
    );
    let first = vec!["a".to_string()];
    assert_eq!(
        sender
            .jobs_dead_lettered(Some(call), &first, "retries-exhausted", None, "x")
            .await
            .unwrap(),
        Ownership::Held
    );
    let known = ledger.lookup(&[("b".to_string(), 0)]).await.unwrap();
    assert_eq!(known.get("b"), Some(&Known::InDoubt), "b is not new");
    let rest = vec!["b".to_string()];
    assert_eq!(
        sender
            .jobs_dead_lettered(Some(call), &rest, "in-doubt", None, "x")
            .await
            .unwrap(),
        Ownership::Held
    );
    let report = ledger.show("b").await.unwrap().unwrap();
    assert_eq!(report.state, JobState::DeadLettered);
    assert_eq!(
        report.call_state,
        Some(broadcast_worker::ledger::CallState::DeadLettered),
        "closed with its last job"
    );
}
