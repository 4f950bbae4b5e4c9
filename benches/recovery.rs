//! Figures for delivering once: how long a standby takes to send after the
//! active replica is killed, what the ledger costs per call, and how many
//! jobs loops of random kills lose or deliver twice (and whether the quota
//! held across them) with and without the ledger.
//! Run with `cargo bench --bench recovery` (RabbitMQ and PostgreSQL on
//! 127.0.0.1). Prints a Markdown table and, run whole, writes it into
//! BENCHMARKS.md.

use std::time::{Duration, Instant};

use broadcast_worker::ledger::{CallJob, Ledger, Scope};
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

/// What the figures mean, written under them.
const NOTES: &str = "\
Failover: the killed replica's TCP connection closes at once and the broker hands
the single-active-consumer role to the standby within tens of milliseconds; the
standby then keeps one full bucket period (200 ms at 5 calls/s) from the moment it
became the sender before its first call, since the killed replica may have sent a
moment before. The kill and restart loops show what that buys: no frequency-limit
answer across 20 kills of two replicas or 10 kills and restarts of one.

The ledger's cost is almost all in the two commits (each waits for PostgreSQL's WAL
flush on this machine's disk); at 1 to 5 calls per second it adds about 20 ms to a
call's latency and nothing to throughput.

Random kills rarely land in the few milliseconds between an answered call and its
acks, so the random-kill loop shows no repeats even without the ledger; the forced
kill at exactly that point shows what the ledger prevents. Without it, a few repeats
still vanish: when the redelivered jobs form the very same call again, its `Random`
is the same and the service drops the copy. Each kill returns the jobs the replica
held with one more delivery counted by the broker; none reaches the jobs queue's
delivery limit (1,000), so nothing is dead-lettered.";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Kill the active replica; time until the standby's first call arrives.
async fn failover(rounds: usize) -> Vec<f64> {
    let mut times = Vec::new();
    for round in 0..rounds {
        let db = TestDatabase::create("failover").await;
        let app = spawn_app(&format!("failover-{round}"), 5.0).await;
        // Enough for a minute at 5 calls a second: the kill lands mid-stream.
        let jobs = backlog("fo", 20_000);
        app.publish_many(&jobs).await;
        let env = [("DATABASE_URL", db.url())];
        let mut active = worker_process(BIN, &app, &env);
        app.wait_for("the first calls", Duration::from_secs(30), |app| {
            app.sim.simulator.stats().calls >= 2
        })
        .await;
        let mut standby = worker_process(BIN, &app, &env);
        // Let the standby connect and register as a consumer.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let calls_before = app.sim.simulator.stats().calls;
        let killed = Instant::now();
        signal(&active, "-KILL");
        wait_exit(&mut active, Duration::from_secs(5)).await;
        while app.sim.simulator.stats().calls <= calls_before {
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "the standby never sent"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(killed.elapsed().as_secs_f64() * 1000.0);
        signal(&standby, "-TERM");
        wait_exit(&mut standby, Duration::from_secs(20)).await;
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times
}

/// Round trips to the ledger for one call of 100 jobs: the arrival lookup,
/// the in-flight record, the delivered record.
async fn ledger_cost(cycles: usize) -> Vec<f64> {
    let db = TestDatabase::create("ledger-cost").await;
    let ledger = Ledger::connect_lazy(&db.url())
        .unwrap()
        .in_scope(Scope::new(APP, "bench.jobs"));
    ledger.migrate().await.unwrap();
    let session = ledger.open_session().await.unwrap();
    let body = vec![b'x'; 11_900];
    let mut times = Vec::new();
    for cycle in 0..cycles {
        let ids: Vec<(String, u32)> = (0..100).map(|i| (format!("cost-{cycle}-{i}"), 0)).collect();
        let jobs: Vec<CallJob> = ids
            .iter()
            .map(|(id, replays)| CallJob {
                id: id.clone(),
                replays: *replays,
                digest: None,
            })
            .collect();
        let started = Instant::now();
        ledger.lookup(&ids).await.unwrap();
        let call = session
            .begin_call(&body, cycle as u32, &[cycle as u8; 32], &jobs, None)
            .await
            .unwrap()
            .recorded()
            .expect("a fresh Random is free");
        let _held = session
            .call_delivered(call, Some(cycle as u64))
            .await
            .unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times
}

/// What a run of kills came to, as the simulator counts it.
struct KillRun {
    /// Jobs delivered more than once, and never.
    twice: usize,
    lost: usize,
    /// Answers of 10023: two calls in one of the service's windows.
    frequency_limited: u64,
    dead_letters: u32,
}

impl KillRun {
    async fn of(app: &TestApp, jobs: &[(String, serde_json::Value)]) -> Self {
        let texts = app.delivered_texts();
        let count =
            |(_, b): &&(String, serde_json::Value)| texts.get(&text_of(b)).copied().unwrap_or(0);
        Self {
            twice: jobs.iter().filter(|j| count(j) > 1).count(),
            lost: jobs.iter().filter(|j| count(j) == 0).count(),
            frequency_limited: app.sim.simulator.stats().frequency_violations,
            dead_letters: app.queue_len(&app.names.dead).await,
        }
    }

    fn figures(&self) -> String {
        format!(
            "{} / {} / {} / {}",
            self.lost, self.twice, self.frequency_limited, self.dead_letters
        )
    }
}

/// Two replicas, `kills` random SIGKILLs while 2000 jobs drain.
async fn kill_loop(with_ledger: bool, kills: usize) -> KillRun {
    let db = TestDatabase::create("bench-kills").await;
    let app = spawn_app(
        if with_ledger {
            "kills-ledger"
        } else {
            "kills-bare"
        },
        20.0,
    )
    .await;
    let jobs = backlog("kl", 2000);
    app.publish_many(&jobs).await;
    let mut env = vec![
        ("BROADCAST_MAX_BATCH_BYTES", "1500".to_string()),
        ("BROADCAST_PREFETCH", "200".to_string()),
    ];
    if with_ledger {
        env.push(("DATABASE_URL", db.url()));
    }
    let mut replicas = [
        worker_process(BIN, &app, &env),
        worker_process(BIN, &app, &env),
    ];
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(100 + rand::random::<u64>() % 300)).await;
        let victim = rand::random::<u32>() as usize % 2;
        signal(&replicas[victim], "-KILL");
        wait_exit(&mut replicas[victim], Duration::from_secs(5)).await;
        replicas[victim] = worker_process(BIN, &app, &env);
    }
    app.wait_for("every job", Duration::from_secs(180), |app| {
        app.all_delivered(&jobs)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for replica in &mut replicas {
        signal(replica, "-TERM");
        wait_exit(replica, Duration::from_secs(20)).await;
    }
    KillRun::of(&app, &jobs).await
}

/// One worker with the ledger, killed `restarts` times at random moments
/// while 2000 jobs drain at 5 calls a second, restarted at once each time.
async fn restart_loop(restarts: usize) -> KillRun {
    let db = TestDatabase::create("bench-restarts").await;
    let app = spawn_app("restarts-ledger", 5.0).await;
    let jobs = backlog("rl", 2000);
    app.publish_many(&jobs).await;
    let env = [
        ("DATABASE_URL", db.url()),
        ("BROADCAST_MAX_BATCH_BYTES", "1500".to_string()),
    ];
    let mut worker = worker_process(BIN, &app, &env);
    for _ in 0..restarts {
        tokio::time::sleep(Duration::from_millis(500 + rand::random::<u64>() % 1500)).await;
        signal(&worker, "-KILL");
        wait_exit(&mut worker, Duration::from_secs(5)).await;
        worker = worker_process(BIN, &app, &env);
    }
    app.wait_for("every job", Duration::from_secs(300), |app| {
        app.all_delivered(&jobs)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(&worker, "-TERM");
    wait_exit(&mut worker, Duration::from_secs(20)).await;
    KillRun::of(&app, &jobs).await
}

/// A kill after every Nth answered call, before its acks (no ledger write
/// to protect it without a ledger): what repeats reach the audience?
async fn crash_after_call(with_ledger: bool) -> usize {
    let db = TestDatabase::create("bench-crash").await;
    let app = spawn_app(
        if with_ledger {
            "crash-ledger"
        } else {
            "crash-bare"
        },
        20.0,
    )
    .await;
    let jobs = backlog("cc", 600);
    app.publish_many(&jobs).await;
    let mut env = vec![("BROADCAST_MAX_BATCH_BYTES", "3000".to_string())];
    if with_ledger {
        env.push(("DATABASE_URL", db.url()));
    }
    for _ in 0..10 {
        let mut with_crash = env.clone();
        with_crash.push(("BROADCAST_TEST_CRASH_AT", "after-call:3".to_string()));
        let mut worker = worker_process(BIN, &app, &with_crash);
        let _ = wait_exit(&mut worker, Duration::from_secs(60)).await;
        if app.all_delivered(&jobs) {
            break;
        }
    }
    let mut last = worker_process(BIN, &app, &env);
    app.wait_for("every job", Duration::from_secs(120), |app| {
        app.all_delivered(&jobs)
    })
    .await;
    signal(&last, "-TERM");
    wait_exit(&mut last, Duration::from_secs(20)).await;
    let texts = app.delivered_texts();
    jobs.iter()
        .filter(|(_, b)| texts.get(&text_of(b)).copied().unwrap_or(0) > 1)
        .count()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let only: Option<&String> = args.iter().skip(1).find(|a| !a.starts_with("--"));
    let run = |name: &str| only.is_none_or(|o| name.contains(o.as_str()));
    let mut rows: Vec<(String, String)> = Vec::new();
    if run("failover") {
        let t = failover(5).await;
        rows.push((
            "failover: SIGKILL of the active replica to the standby's first call (5 rounds)".into(),
            format!(
                "median {:.0} ms, min {:.0} ms, max {:.0} ms",
                percentile(&t, 0.5),
                t[0],
                t[t.len() - 1]
            ),
        ));
    }
    if run("ledger") {
        let t = ledger_cost(300).await;
        rows.push((
            "ledger cost per call of 100 jobs: lookup + in-flight record + delivered record (3 operations, 9 statements, each its own round trip)".into(),
            format!("mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms", t.iter().sum::<f64>() / t.len() as f64, percentile(&t, 0.5), percentile(&t, 0.99)),
        ));
    }
    if run("kills") {
        for with_ledger in [true, false] {
            let run = kill_loop(with_ledger, 20).await;
            rows.push((
                format!(
                    "20 random kills of 2 replicas, 2000 jobs, {}: lost / delivered twice / frequency-limit answers / dead letters",
                    if with_ledger {
                        "with ledger"
                    } else {
                        "without ledger"
                    }
                ),
                run.figures(),
            ));
        }
    }
    if run("restarts") {
        let run = restart_loop(10).await;
        rows.push((
            "10 random kills and restarts of one replica, 2000 jobs at 5 calls/s, with ledger: lost / delivered twice / frequency-limit answers / dead letters".into(),
            run.figures(),
        ));
    }
    if run("crash") {
        for with_ledger in [true, false] {
            let twice = crash_after_call(with_ledger).await;
            rows.push((
                format!("kill right after an answered call, before its acks, until 600 jobs are out, {}: jobs delivered twice", if with_ledger { "with ledger" } else { "without ledger" }),
                twice.to_string(),
            ));
        }
    }
    let table = markdown_table(&rows);
    println!("{table}");
    if only.is_none() {
        let section = format!(
            "## Delivering once: `cargo bench --bench recovery`\n\nWorker processes with the PostgreSQL ledger, on {}.\n\n{table}\n{NOTES}",
            machine()
        );
        write_section(
            concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md"),
            "recovery",
            &section,
        );
    }
}
