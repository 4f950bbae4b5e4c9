//! Figures for many apps: 100 apps at 5 calls a second each over two
//! replicas with the ledger (aggregate calls per second against the 500
//! allowed, frequency-limit answers, CPU and memory, the ledger's round trips
//! and time per call), and how long an app takes to move to the other
//! replica after a kill. Run with `cargo bench --bench fleet` (RabbitMQ and
//! PostgreSQL on 127.0.0.1). Prints a Markdown table and, run whole, writes
//! it into BENCHMARKS.md. `BENCH_FLEET_APPS` changes the number of apps of
//! the throughput run; `BENCH_FLEET_EXTRA` adds lines to every app's table
//! (e.g. `rate_guard_ms = 0`). Where the quota went (calls per app, the
//! gaps between arrivals) is printed on standard error.

use std::process::Child;
use std::time::{Duration, Instant};

use broadcast_worker::broker::{self, QueueNames, Topology};
use broadcast_worker::simulator::{SimulatorConfig, SimulatorSet, SpawnedSimulatorSet};
use broadcast_worker::tencent::usersig::SecretKey;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

/// A fleet of `n` apps at `rate` on one simulator, its apps file written
/// (with `extra` lines per app) and its queues declared.
struct BenchFleet {
    prefix: String,
    dir: std::path::PathBuf,
    sims: SpawnedSimulatorSet,
    apps: Vec<u64>,
}

impl BenchFleet {
    async fn new(test: &str, n: usize, rate: f64, extra: &str) -> Self {
        let prefix = unique_prefix(test);
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let apps: Vec<u64> = (0..n).map(fleet_sdkappid).collect();
        let configs = apps.iter().map(|&app| {
            let mut config = SimulatorConfig::new(app, ADMIN, SecretKey::new(format!("k{app}")));
            config.rate = rate;
            config.keep_bodies = false;
            config
        });
        let sims = SimulatorSet::new(configs)
            .unwrap()
            .spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let mut text = String::new();
        for app in &apps {
            std::fs::write(dir.join(format!("{app}.key")), format!("k{app}")).unwrap();
            text.push_str(&format!(
                "[[app]]\nsdkappid = {app}\nidentifier = {ADMIN:?}\nsecret_key_file = \"{app}.key\"\nbase_url = \"{}\"\nrate = {rate}\n{extra}\n\n",
                sims.base_url()
            ));
        }
        std::fs::write(dir.join("apps.toml"), text).unwrap();
        let connection = connect().await;
        for app in &apps {
            let topology = Topology {
                names: QueueNames::in_fleet(&prefix, *app),
                delivery_limit: 1000,
            };
            topology.declare(&connection).await.unwrap();
        }
        Self {
            prefix,
            dir,
            sims,
            apps,
        }
    }

    /// `per_app` jobs of about 100 bytes on each app's queue, confirmed in batches.
    async fn publish(&self, per_app: usize) {
        let connection = connect().await;
        let channel = broker::confirm_channel(&connection).await.unwrap();
        let body = |app: u64, i: usize| {
            format!(
                r#"{{"MsgBody":[{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"app {app} job {i:06} {}"}}}}]}}"#,
                "x".repeat(30)
            )
        };
        for app in &self.apps {
            let queue = format!("{}.{app}.jobs", self.prefix);
            let mut confirms = Vec::with_capacity(per_app);
            for i in 0..per_app {
                let properties = BasicProperties::default()
                    .with_message_id(format!("{app}-{i}").into())
                    .with_delivery_mode(2);
                confirms.push(
                    channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions::default(),
                            body(*app, i).as_bytes(),
                            properties,
                        )
                        .await
                        .unwrap(),
                );
            }
            for confirm in confirms {
                confirm.await.unwrap();
            }
        }
    }

    fn replica(&self, port: u16, db: &TestDatabase) -> Child {
        let mut command = std::process::Command::new(BIN);
        command
            .arg("run")
            .env("AMQP_URL", AMQP_URL)
            .env("BROADCAST_QUEUE_PREFIX", &self.prefix)
            .env("BROADCAST_APPS_FILE", self.dir.join("apps.toml"))
            .env("BROADCAST_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", db.url())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for key in [
            "TIM_SDKAPPID",
            "TIM_IDENTIFIER",
            "TIM_SECRET_KEY",
            "TIM_SECRET_KEY_FILE",
        ] {
            command.env_remove(key);
        }
        command.spawn().unwrap()
    }

    fn calls(&self) -> u64 {
        self.sims.set.stats().values().map(|s| s.calls).sum()
    }

    fn calls_of(&self, app: u64) -> u64 {
        self.sims.app(app).stats().calls
    }

    /// On standard error, where the quota went in the last `window`: calls
    /// per app, and the gaps between each app's consecutive arrivals.
    fn explain_gaps(&self, window: Duration) {
        let now_ms = broadcast_worker::clock::now_ms();
        let since = now_ms - window.as_millis() as u64;
        let (mut per_app, mut gaps) = (Vec::new(), Vec::new());
        for app in &self.apps {
            let arrivals: Vec<u64> = self
                .sims
                .app(*app)
                .calls()
                .iter()
                .map(|c| c.received_at_ms)
                .filter(|&at| at >= since)
                .collect();
            per_app.push(arrivals.len());
            gaps.extend(arrivals.windows(2).map(|w| w[1] - w[0]));
        }
        per_app.sort_unstable();
        gaps.sort_unstable();
        let at = |v: &[u64], q: f64| v.get(((v.len() as f64 - 1.0) * q) as usize).copied();
        let late = gaps.iter().filter(|&&g| g > 215).count();
        eprintln!(
            "calls per app in the window: min {:?} median {:?} max {:?}; gaps ms: p10 {:?} p50 {:?} p90 {:?} p99 {:?} max {:?}; over 215 ms: {late} of {}; lost to them: {} ms",
            per_app.first(), per_app.get(per_app.len() / 2), per_app.last(),
            at(&gaps, 0.1), at(&gaps, 0.5), at(&gaps, 0.9), at(&gaps, 0.99), gaps.last(), gaps.len(),
            gaps.iter().map(|&g| g.saturating_sub(202)).sum::<u64>(),
        );
    }

    fn frequency_violations(&self) -> u64 {
        self.sims
            .set
            .stats()
            .values()
            .map(|s| s.frequency_violations)
            .sum()
    }
}

impl Drop for BenchFleet {
    fn drop(&mut self) {
        for app in &self.apps {
            delete_topology(&format!("{}.{app}", self.prefix));
        }
        delete_queue(&format!("{}.replicas", self.prefix));
        delete_queue(&format!("{}.dead", self.prefix));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The sum over `ports` of a metric's samples (every label set).
async fn metric_sum(ports: &[u16], name: &str) -> f64 {
    let mut sum = 0.0;
    for port in ports {
        let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
            continue;
        };
        let text = response.text().await.unwrap_or_default();
        sum += text
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    sum
}

/// The ledger's round trips by operation (the `op` label), over `ports`.
async fn trips_by_op(ports: &[u16]) -> std::collections::BTreeMap<String, f64> {
    let mut by_op = std::collections::BTreeMap::new();
    let name = "broadcast_ledger_round_trips_total{";
    for port in ports {
        let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
            continue;
        };
        for line in response.text().await.unwrap_or_default().lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let op = rest
                .split("op=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?");
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            *by_op.entry(op.to_string()).or_insert(0.0) += value;
        }
    }
    by_op
}

struct Throughput {
    calls_per_sec: f64,
    frequency_limited: u64,
    cpu_per_1000: f64,
    peak_rss_mib: Vec<f64>,
    ledger_trips_per_call: f64,
    ledger_ms_per_call: f64,
}

async fn throughput(apps: usize, rate: f64, window: Duration) -> Throughput {
    let db = TestDatabase::create("bench-fleet").await;
    let extra = format!(
        "max_jobs_per_call = 10\n{}",
        std::env::var("BENCH_FLEET_EXTRA").unwrap_or_default()
    );
    let fleet = BenchFleet::new("bench-fleet", apps, rate, &extra).await;
    // Enough for warm-up, the window and a margin, 10 jobs a call.
    let per_app = (rate * (window.as_secs_f64() + 25.0) * 10.0) as usize;
    fleet.publish(per_app).await;
    let ports = [free_port(), free_port()];
    let mut replicas: Vec<Child> = ports.iter().map(|p| fleet.replica(*p, &db)).collect();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let cpu =
        |replicas: &[Child]| -> f64 { replicas.iter().filter_map(|r| cpu_seconds(r.id())).sum() };
    let (calls0, cpu0) = (fleet.calls(), cpu(&replicas));
    let trips0 = metric_sum(&ports, "broadcast_ledger_round_trips_total").await;
    let ops0 = trips_by_op(&ports).await;
    let ledger0 = metric_sum(&ports, "broadcast_ledger_seconds_sum").await;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let (calls1, cpu1) = (fleet.calls(), cpu(&replicas));
    let trips1 = metric_sum(&ports, "broadcast_ledger_round_trips_total").await;
    let ops1 = trips_by_op(&ports).await;
    let ledger1 = metric_sum(&ports, "broadcast_ledger_seconds_sum").await;
    let elapsed = started.elapsed().as_secs_f64();
    let calls = (calls1 - calls0) as f64;
    fleet.explain_gaps(window);
    let per_call: Vec<String> = ops1
        .iter()
        .map(|(op, n)| {
            let d = n - ops0.get(op).copied().unwrap_or(0.0);
            format!("{op} {:.3}", d / (calls1 - calls0) as f64)
        })
        .collect();
    eprintln!(
        "ledger round trips per call by operation: {}",
        per_call.join(", ")
    );
    eprintln!(
        "mean call round trip (worker's clock, whole run): {:.1} ms",
        metric_sum(&ports, "broadcast_call_duration_seconds_sum").await * 1000.0
            / metric_sum(&ports, "broadcast_call_duration_seconds_count").await
    );
    let peak_rss_mib = replicas
        .iter()
        .map(|r| peak_rss_kib(r.id()).unwrap_or(0) as f64 / 1024.0)
        .collect();
    for replica in &mut replicas {
        signal(replica, "-TERM");
        wait_exit(replica, Duration::from_secs(30)).await;
    }
    Throughput {
        calls_per_sec: calls / elapsed,
        frequency_limited: fleet.frequency_violations(),
        cpu_per_1000: (cpu1 - cpu0) / calls * 1000.0,
        peak_rss_mib,
        ledger_trips_per_call: (trips1 - trips0) / calls,
        ledger_ms_per_call: (ledger1 - ledger0) * 1000.0 / calls,
    }
}

/// Kills the replica sending for most apps, `kills` times (restarting it
/// after each); for every app it was sending for, the time from the kill to
/// the app's next call from the other replica. Returns the sorted times, ms.
async fn move_times(kills: usize) -> Vec<f64> {
    let db = TestDatabase::create("bench-moves").await;
    let fleet = BenchFleet::new("bench-moves", 10, 5.0, "max_jobs_per_call = 1").await;
    fleet.publish(1500).await;
    let ports = [free_port(), free_port()];
    let mut replicas: Vec<Child> = ports.iter().map(|p| fleet.replica(*p, &db)).collect();
    let mut times = Vec::new();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_secs(6)).await;
        let (a, b) = (active_apps(ports[0]).await, active_apps(ports[1]).await);
        let (victim, moving) = if a.len() >= b.len() { (0, a) } else { (1, b) };
        let before: Vec<u64> = moving.iter().map(|&app| fleet.calls_of(app)).collect();
        let killed = Instant::now();
        signal(&replicas[victim], "-KILL");
        wait_exit(&mut replicas[victim], Duration::from_secs(5)).await;
        let mut pending: Vec<usize> = (0..moving.len()).collect();
        while !pending.is_empty() && killed.elapsed() < Duration::from_secs(30) {
            pending.retain(|&i| {
                if fleet.calls_of(moving[i]) > before[i] + 1 {
                    times.push(killed.elapsed().as_secs_f64() * 1000.0);
                    false
                } else {
                    true
                }
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        replicas[victim] = fleet.replica(ports[victim], &db);
    }
    for replica in &mut replicas {
        signal(replica, "-TERM");
        wait_exit(replica, Duration::from_secs(30)).await;
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let only: Option<&String> = args.iter().skip(1).find(|a| !a.starts_with("--"));
    let run = |name: &str| only.is_none_or(|o| name.contains(o.as_str()));
    let mut rows: Vec<(String, String)> = Vec::new();
    if run("throughput") {
        let apps = std::env::var("BENCH_FLEET_APPS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(100);
        let t = throughput(apps, 5.0, Duration::from_secs(20)).await;
        rows.push((format!("{apps} apps at 5 calls/s over 2 replicas, ledger, 10 jobs of ~100 bytes a call: aggregate calls per second ({} allowed)", apps * 5),
            format!("{:.1} ({:.1}%)", t.calls_per_sec, t.calls_per_sec / apps as f64 * 20.0)));
        rows.push((
            "frequency-limit answers, whole run".into(),
            t.frequency_limited.to_string(),
        ));
        rows.push((
            "CPU seconds per 1,000 calls (both replicas)".into(),
            format!("{:.2}", t.cpu_per_1000),
        ));
        rows.push((
            "peak RSS per replica".into(),
            t.peak_rss_mib
                .iter()
                .map(|m| format!("{m:.1} MiB"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
        rows.push((
            "ledger round trips per call".into(),
            format!("{:.2}", t.ledger_trips_per_call),
        ));
        rows.push((
            "ledger time per call".into(),
            format!("{:.2} ms", t.ledger_ms_per_call),
        ));
    }
    if run("moves") {
        let t = move_times(10).await;
        let median = t[t.len() / 2];
        rows.push((
            format!("an app moving to the other replica after a SIGKILL ({} moves over 10 kills, 10 apps at 5 calls/s): kill to its next call", t.len()),
            format!("median {median:.0} ms, max {:.0} ms", t[t.len() - 1]),
        ));
    }
    let table = markdown_table(&rows);
    println!("{table}");
    if only.is_none() {
        let section = format!(
            "## Many apps: `cargo bench --bench fleet`\n\nWorker processes with the PostgreSQL ledger and one simulator for every app, on {}.\n\n{table}",
            machine()
        );
        write_section(
            concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md"),
            "fleet",
            &section,
        );
    }
}
