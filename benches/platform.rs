//! A platform-sized fleet: 1,000 apps at 5 calls a second each in one apps
//! file, served by two replicas of `broadcast-worker run` with the ledger,
//! one simulator for every app on one port. The first 10 apps have a
//! backlog of 1,500 jobs of ~100 bytes each, published with confirms before
//! the replicas start; the other apps are idle. Measured:
//!
//! - the time from spawning the replicas until both consume every app
//!   (the sum of `broadcast_broker_connected` on each replica's `/metrics`
//!   equals the number of apps);
//! - throughout, a fresh AMQP connection opened and closed every 250 ms by
//!   the bench: its handshake's max and p99, and failures (an error, or over
//!   5 s);
//! - three rounds of restarts, replica 0 then replica 1: SIGTERM to exit,
//!   then from the new process to every app consumed again;
//! - the backlog: each job's text delivered exactly once across the active
//!   apps' simulators (lost, doubled), and frequency-limit answers;
//! - idle, the backlog done and the apps shared out evenly (each replica
//!   active for half): each replica's CPU over 30 s and its RSS;
//! - the broker: this bench's replicas' connections, the prefix's queues by
//!   type, the node's memory and file handles, before the replicas start and
//!   while they run;
//! - the time for both replicas, SIGTERMed at once, to exit.
//!
//! The broker is a private RabbitMQ node this bench starts on ports of its
//! own (as the cluster tests do) and stops, data and all, at the end: 1,000
//! quorum queues need about 3,000 of the node's file handles (see README,
//! "Sizing the broker"), more than a node under a login's open-files limit
//! of 1,024 has, and the shared node on 5672 stays untouched. The node runs
//! with the hard limit; the bench stops with a clear message if that cannot
//! hold this many quorum queues.
//!
//! Run with `cargo bench --bench platform` (as root, with `rabbitmq-server`;
//! PostgreSQL on 127.0.0.1; `ss` usable). Prints a Markdown table and,
//! run with the defaults and no argument, writes it into BENCHMARKS.md; any
//! argument (`cargo bench --bench platform -- print`) only prints.
//! `BENCH_PLATFORM_APPS` (default 1000) and `BENCH_PLATFORM_ACTIVE` (default
//! 10) change the number of apps and of apps with a backlog;
//! `BENCH_PLATFORM_KEEP=1` keeps the temporary directory with the replicas'
//! logs (JSON, warn and above). Progress, and a summary of the warnings and
//! errors the replicas logged, go to standard error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broadcast_worker::broker::{self, QueueNames, Topology};
use broadcast_worker::simulator::{SimulatorConfig, SimulatorSet, SpawnedSimulatorSet};
use broadcast_worker::telemetry::{APP_ACTIVE, CONNECTED};
use broadcast_worker::tencent::usersig::SecretKey;
use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

/// Apps in the apps file (`BENCH_PLATFORM_APPS`).
const APPS: usize = 1000;
/// Apps with a backlog, the first ones (`BENCH_PLATFORM_ACTIVE`).
const ACTIVE: usize = 10;
/// Calls per second each app is allowed.
const RATE: f64 = 5.0;
/// Jobs merged into one call at most.
const MAX_JOBS_PER_CALL: usize = 10;
/// Jobs on each active app's queue before the replicas start.
const BACKLOG_PER_APP: usize = 1500;
/// Replicas of the fleet.
const REPLICAS: usize = 2;
/// Rounds of restarts (replica 0, then replica 1, in each).
const RESTART_ROUNDS: usize = 3;
/// How often the replicas' `/metrics` are read while waiting.
const POLL: Duration = Duration::from_millis(500);
/// How often the prober opens a connection.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// A handshake longer than this is a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait for a replica to consume every app.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest wait for a SIGTERMed replica to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest wait for the backlog to be delivered.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(600);
/// The window the idle CPU is measured over.
const IDLE_WINDOW: Duration = Duration::from_secs(30);
/// The longest wait for the apps to be shared out evenly before idling.
const BALANCE_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest the queues' declaration, or the backlog's publishing, may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);
/// Topology declarations (and deletions) in flight at once.
const IN_FLIGHT: usize = 16;

fn env_count(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Seconds since the bench started, for the progress lines.
fn progress(started: Instant, what: &str) {
    eprintln!("[{:7.1} s] {what}", started.elapsed().as_secs_f64());
}

/// The text of job `i` of `app`: unique, ~100 bytes with its envelope.
fn job_text(app: u64, i: usize) -> String {
    format!("app {app} job {i:06} {}", "x".repeat(30))
}

/// The apps, their simulators, apps file, key files and queues.
struct Platform {
    prefix: String,
    dir: PathBuf,
    sims: SpawnedSimulatorSet,
    apps: Vec<u64>,
    active: Vec<u64>,
    /// The private node's AMQP URI.
    url: String,
}

impl Platform {
    async fn new(n: usize, active: usize, url: String) -> Self {
        let prefix = unique_prefix("bench-platform");
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let apps: Vec<u64> = (0..n).map(fleet_sdkappid).collect();
        let active: Vec<u64> = apps[..active.min(n)].to_vec();
        let configs = apps.iter().enumerate().map(|(i, &app)| {
            let mut config = SimulatorConfig::new(app, ADMIN, SecretKey::new(format!("k{app}")));
            config.rate = RATE;
            config.keep_bodies = i < active.len();
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
                "[[app]]\nsdkappid = {app}\nidentifier = {ADMIN:?}\nsecret_key_file = \"{app}.key\"\nbase_url = \"{}\"\nrate = {RATE}\nmax_jobs_per_call = {MAX_JOBS_PER_CALL}\n\n",
                sims.base_url()
            ));
        }
        std::fs::write(dir.join("apps.toml"), text).unwrap();
        Self {
            prefix,
            dir,
            sims,
            apps,
            active,
            url,
        }
    }

    /// Every app's topology, `IN_FLIGHT` at a time over one connection.
    async fn declare(&self) {
        let connection = connect_to(&self.url).await;
        let connection = &connection;
        futures_util::stream::iter(&self.apps)
            .map(|app| async move {
                let topology = Topology {
                    names: QueueNames::in_fleet(&self.prefix, *app),
                    delivery_limit: 1000,
                };
                topology.declare(connection).await.unwrap();
            })
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<()>>()
            .await;
        let _ = connection.close(200, "".into()).await;
    }

    /// `per_app` jobs on each active app's queue, confirmed app by app.
    async fn publish(&self, per_app: usize) {
        let connection = connect_to(&self.url).await;
        let channel = broker::confirm_channel(&connection).await.unwrap();
        for app in &self.active {
            let queue = format!("{}.{app}.jobs", self.prefix);
            let mut confirms = Vec::with_capacity(per_app);
            for i in 0..per_app {
                let body = format!(
                    r#"{{"MsgBody":[{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"{}"}}}}]}}"#,
                    job_text(*app, i)
                );
                let properties = BasicProperties::default()
                    .with_message_id(format!("{app}-{i}").into())
                    .with_delivery_mode(2);
                confirms.push(
                    channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions::default(),
                            body.as_bytes(),
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
        let _ = connection.close(200, "".into()).await;
    }

    /// Replica `i` on ops port `port`, its standard error appended to
    /// `replica-{i}.log`.
    fn replica(&self, i: usize, port: u16, db: &TestDatabase) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let mut command = std::process::Command::new(BIN);
        command
            .arg("run")
            .env("AMQP_URL", &self.url)
            .env("BROADCAST_QUEUE_PREFIX", &self.prefix)
            .env("BROADCAST_APPS_FILE", self.dir.join("apps.toml"))
            .env("BROADCAST_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", db.url())
            .env("RUST_LOG", "warn")
            .env("LOG_FORMAT", "json")
            .stdout(std::process::Stdio::null())
            .stderr(log);
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

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("replica-{i}.log"))
    }

    /// Every job's text delivered to the active apps' simulators, counted.
    fn delivered_texts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for app in &self.active {
            let sim = self.sims.set.get(*app).unwrap();
            for delivery in sim.deliveries(0, usize::MAX) {
                let Some(body) = delivery.body else { continue };
                for element in body["MsgBody"].as_array().into_iter().flatten() {
                    if let Some(text) = element["MsgContent"]["Text"].as_str() {
                        *counts.entry(text.to_string()).or_insert(0) += 1;
                    }
                }
            }
        }
        counts
    }

    fn frequency_violations(&self) -> u64 {
        self.sims
            .set
            .stats()
            .values()
            .map(|s| s.frequency_violations)
            .sum()
    }

    fn repeats_dropped(&self) -> u64 {
        self.sims
            .set
            .stats()
            .values()
            .map(|s| s.repeats_dropped)
            .sum()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if std::env::var_os("BENCH_PLATFORM_KEEP").is_some() {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The sum of a metric's samples (every label set) on one replica, or
/// `None` while it does not answer.
async fn metric_sum(port: u16, name: &str) -> Option<f64> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?;
    let text = response.text().await.ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>(),
    )
}

/// Waits until the replica on `port` consumes all `n` apps; the time it took.
async fn wait_connected(port: u16, n: usize, since: Instant) -> Duration {
    loop {
        if metric_sum(port, CONNECTED).await.unwrap_or(0.0) >= n as f64 {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < CONNECT_TIMEOUT,
            "the replica on port {port} did not consume all {n} apps within {CONNECT_TIMEOUT:?} (at {:?})",
            metric_sum(port, CONNECTED).await
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The current resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `rabbitmqctl ARGS` on the private node: its standard output, or `None`
/// when it fails.
fn ctl(node: &Cluster, args: &[&str]) -> Option<String> {
    let output = tokio::task::block_in_place(|| node.ctl(0, args));
    if !output.status.success() {
        eprintln!(
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The node's file-handle accounting: handles in use and its limit.
fn file_handles(node: &Cluster) -> Option<(u64, u64)> {
    let out = ctl(
        node,
        &[
            "eval",
            "[V || {_, V} <- file_handle_cache:info([total_used, total_limit])].",
        ],
    )?;
    let line = out.lines().last()?.trim();
    let mut values = line
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|v| v.trim().parse::<u64>().ok());
    Some((values.next()??, values.next()??))
}

/// The local ports of each process's established connections to `amqp_port`.
async fn broker_ports(amqp_port: u16, pids: &[u32]) -> Vec<HashSet<u16>> {
    let mut ports = vec![HashSet::new(); pids.len()];
    let filter = format!("( dport = :{amqp_port} )");
    let Ok(output) = tokio::process::Command::new("ss")
        .args(["-tnpH", "state", "established", filter.as_str()])
        .output()
        .await
    else {
        return ports;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(i) = pids
            .iter()
            .position(|pid| line.contains(&format!("pid={pid},")))
        else {
            continue;
        };
        let local = line.split_whitespace().find(|t| t.contains(':'));
        if let Some(port) = local.and_then(|t| t.rsplit(':').next()?.parse().ok()) {
            ports[i].insert(port);
        }
    }
    ports
}

/// What the broker holds for this bench at one moment.
struct BrokerReading {
    /// Connections named `broadcast-worker…` from each replica.
    connections: Option<Vec<usize>>,
    /// The prefix's queues, by type.
    queues: Option<BTreeMap<String, usize>>,
    memory_mib: Option<f64>,
    /// File handles in use and the node's limit.
    handles: Option<(u64, u64)>,
}

async fn broker_reading(node: &Cluster, prefix: &str, pids: &[u32]) -> BrokerReading {
    let connections = if pids.is_empty() {
        Some(Vec::new())
    } else {
        let ports = broker_ports(node.nodes[0].amqp_port, pids).await;
        // `name` is the network name (`127.0.0.1:port -> ...`) on 3.x; the
        // name the client gave is `connection_name` in its properties.
        ctl(
            node,
            &["-q", "list_connections", "client_properties", "peer_port"],
        )
        .map(|out| {
            let mut counts = vec![0; pids.len()];
            for line in out.lines() {
                let Some((properties, port)) = line.rsplit_once('\t') else {
                    continue;
                };
                let Ok(port) = port.trim().parse::<u16>() else {
                    continue;
                };
                let name = properties
                    .split("{\"connection_name\",\"")
                    .nth(1)
                    .unwrap_or("");
                if !name.starts_with("broadcast-worker") {
                    continue;
                }
                if let Some(i) = ports.iter().position(|p| p.contains(&port)) {
                    counts[i] += 1;
                }
            }
            counts
        })
    };
    let queues = ctl(node, &["-q", "list_queues", "name", "type"]).map(|out| {
        let mut by_type = BTreeMap::new();
        let mine = format!("{prefix}.");
        for line in out.lines() {
            if let Some((name, kind)) = line.rsplit_once('\t') {
                if name.starts_with(&mine) {
                    *by_type.entry(kind.trim().to_string()).or_insert(0) += 1;
                }
            }
        }
        by_type
    });
    let memory_mib = ctl(node, &["eval", "erlang:memory(total)."])
        .and_then(|out| out.lines().last()?.trim().parse::<f64>().ok())
        .map(|bytes| bytes / 1024.0 / 1024.0);
    BrokerReading {
        connections,
        queues,
        memory_mib,
        handles: file_handles(node),
    }
}

fn show_queues(reading: &BrokerReading) -> String {
    match &reading.queues {
        None => "n/a".into(),
        Some(q) if q.is_empty() => "none".into(),
        Some(q) => q
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn show_mib(m: Option<f64>) -> String {
    m.map_or("n/a".into(), |m| format!("{m:.0} MiB"))
}

/// The handshakes of the connections the prober opened.
#[derive(Default)]
struct Probes {
    /// Handshake times of the connections opened, seconds.
    times: Vec<f64>,
    /// Errors and handshakes over `PROBE_TIMEOUT`.
    failures: Vec<String>,
}

/// Opens and closes a connection every `PROBE_EVERY` until `stop`.
async fn probe(url: String, stop: Arc<AtomicBool>, probes: Arc<Mutex<Probes>>, started: Instant) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let at = started.elapsed().as_secs_f64();
        let opened = Instant::now();
        let result =
            tokio::time::timeout(PROBE_TIMEOUT, broker::connect(&url, "platform-bench probe"))
                .await;
        let took = opened.elapsed().as_secs_f64();
        match result {
            Ok(Ok(connection)) => {
                if took > 0.5 {
                    eprintln!(
                        "[{at:7.1} s] a probe's handshake took {:.0} ms",
                        took * 1000.0
                    );
                }
                probes.lock().unwrap().times.push(took);
                let _ = connection.close(200, "".into()).await;
            }
            Ok(Err(e)) => probes
                .lock()
                .unwrap()
                .failures
                .push(format!("at {at:.1} s: {e}")),
            Err(_) => probes
                .lock()
                .unwrap()
                .failures
                .push(format!("at {at:.1} s: over {PROBE_TIMEOUT:?}")),
        }
    }
}

/// The distinct warnings and errors in a replica's JSON log, counted.
fn log_summary(path: &std::path::Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let key = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => format!(
                "{} {}: {}",
                v["level"].as_str().unwrap_or("?"),
                v["target"].as_str().unwrap_or("?"),
                v["fields"]["message"].as_str().unwrap_or("?")
            ),
            Err(_) => format!("(not JSON) {}", line.chars().take(160).collect::<String>()),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let only = args.iter().skip(1).any(|a| !a.starts_with("--"));
    let n = env_count("BENCH_PLATFORM_APPS", APPS).max(1);
    let n_active = env_count("BENCH_PLATFORM_ACTIVE", ACTIVE).min(n);
    let started = Instant::now();
    let mut rows: Vec<(String, String)> = Vec::new();

    let db = TestDatabase::create("bench-platform").await;
    progress(started, "starting a private RabbitMQ node");
    let node = tokio::task::block_in_place(|| Cluster::start(1));
    let (_, limit) = file_handles(&node).expect("the node's file-handle limit is readable");
    // Three handles a quorum queue (see README), one a connection, a margin.
    let needed = 3 * (n as u64 + 2) + 100;
    assert!(
        limit >= needed,
        "the private node's file-handle limit is {limit}; {n} apps' quorum queues need about \
         {needed}: raise the hard open-files limit (ulimit -Hn) and run again"
    );
    let platform = Platform::new(n, n_active, node.url(0)).await;
    progress(
        started,
        &format!(
            "{n} apps on one simulator, prefix {}, node on port {} (file-handle limit {limit})",
            platform.prefix, node.nodes[0].amqp_port
        ),
    );
    let baseline = broker_reading(&node, &platform.prefix, &[]).await;
    tokio::time::timeout(SETUP_TIMEOUT, platform.declare())
        .await
        .expect("the queues are declared in time (is the broker wedged?)");
    progress(started, "queues declared");
    tokio::time::timeout(SETUP_TIMEOUT, platform.publish(BACKLOG_PER_APP))
        .await
        .expect("the backlog is published in time (is the broker wedged?)");
    let jobs = n_active * BACKLOG_PER_APP;
    progress(
        started,
        &format!("{jobs} jobs published on {n_active} apps' queues"),
    );
    let before = broker_reading(&node, &platform.prefix, &[]).await;

    // The prober runs from here to the end.
    let stop_probing = Arc::new(AtomicBool::new(false));
    let probes = Arc::new(Mutex::new(Probes::default()));
    let prober = tokio::spawn(probe(
        platform.url.clone(),
        stop_probing.clone(),
        probes.clone(),
        started,
    ));

    // 2. Both replicas consuming every app.
    let ports: Vec<u16> = (0..REPLICAS).map(|_| free_port()).collect();
    let spawned = Instant::now();
    let mut replicas: Vec<Child> = ports
        .iter()
        .enumerate()
        .map(|(i, &port)| platform.replica(i, port, &db))
        .collect();
    let mut consumed: Vec<Option<Duration>> = vec![None; REPLICAS];
    while consumed.iter().any(Option::is_none) {
        for (i, &port) in ports.iter().enumerate() {
            if consumed[i].is_none() && metric_sum(port, CONNECTED).await.unwrap_or(0.0) >= n as f64
            {
                consumed[i] = Some(spawned.elapsed());
                progress(started, &format!("replica {i} consumes all {n} apps"));
            }
        }
        assert!(
            spawned.elapsed() < CONNECT_TIMEOUT,
            "the replicas did not consume all {n} apps within {CONNECT_TIMEOUT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let consumed: Vec<Duration> = consumed.into_iter().map(Option::unwrap).collect();
    let running = broker_reading(
        &node,
        &platform.prefix,
        &replicas.iter().map(Child::id).collect::<Vec<_>>(),
    )
    .await;

    // 4. Restarts.
    let mut stops: Vec<Duration> = Vec::new();
    let mut reconnects: Vec<Duration> = Vec::new();
    for round in 0..RESTART_ROUNDS {
        for i in 0..REPLICAS {
            let stopping = Instant::now();
            signal(&replicas[i], "-TERM");
            wait_exit(&mut replicas[i], STOP_TIMEOUT).await;
            let stop = stopping.elapsed();
            let restarted = Instant::now();
            replicas[i] = platform.replica(i, ports[i], &db);
            let back = wait_connected(ports[i], n, restarted).await;
            progress(
                started,
                &format!(
                    "round {}: replica {i} exited in {}, consumes all apps again after {}",
                    round + 1,
                    secs(stop),
                    secs(back)
                ),
            );
            stops.push(stop);
            reconnects.push(back);
        }
    }

    // 5. The backlog, each job exactly once.
    let expected: Vec<String> = platform
        .active
        .iter()
        .flat_map(|&app| (0..BACKLOG_PER_APP).map(move |i| job_text(app, i)))
        .collect();
    let mut last_seen = usize::MAX;
    let delivered_after = loop {
        let texts = platform.delivered_texts();
        let seen = expected.iter().filter(|t| texts.contains_key(*t)).count();
        if seen == expected.len() {
            break Some(spawned.elapsed());
        }
        if spawned.elapsed() > DELIVERY_TIMEOUT {
            progress(
                started,
                &format!("timed out: {seen} of {} jobs delivered", expected.len()),
            );
            break None;
        }
        if seen / 1000 != last_seen / 1000 {
            progress(
                started,
                &format!("{seen} of {} jobs delivered", expected.len()),
            );
        }
        last_seen = seen;
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if delivered_after.is_some() {
        progress(started, &format!("all {} jobs delivered", expected.len()));
    }
    // Settle a little: a late double would show now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let texts = platform.delivered_texts();
    let lost = expected.iter().filter(|t| !texts.contains_key(*t)).count();
    let doubled = expected
        .iter()
        .filter(|t| texts.get(*t).copied().unwrap_or(0) > 1)
        .count();

    // 6. Idle, once balancing is done (the last restart's releases and the
    // sessions they restart take about 20 s at the start pace).
    let balancing = Instant::now();
    loop {
        let mut active = Vec::new();
        for &port in &ports {
            active.push(metric_sum(port, APP_ACTIVE).await.unwrap_or(0.0) as usize);
        }
        let even =
            active.iter().sum::<usize>() == n && active.iter().all(|&a| a <= n.div_ceil(REPLICAS));
        if even || balancing.elapsed() > BALANCE_TIMEOUT {
            progress(started, &format!("active per replica: {active:?}"));
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    progress(
        started,
        &format!("idle, measuring CPU over {IDLE_WINDOW:?}"),
    );
    let pids: Vec<u32> = replicas.iter().map(Child::id).collect();
    let cpu0: Vec<f64> = pids
        .iter()
        .map(|&p| cpu_seconds(p).unwrap_or(0.0))
        .collect();
    let window = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let cpu1: Vec<f64> = pids
        .iter()
        .map(|&p| cpu_seconds(p).unwrap_or(0.0))
        .collect();
    let elapsed = window.elapsed().as_secs_f64();
    let cpu_pct: Vec<f64> = cpu0
        .iter()
        .zip(&cpu1)
        .map(|(a, b)| (b - a) / elapsed * 100.0)
        .collect();
    let rss: Vec<(f64, f64)> = pids
        .iter()
        .map(|&p| {
            (
                rss_kib(p).unwrap_or(0) as f64 / 1024.0,
                peak_rss_kib(p).unwrap_or(0) as f64 / 1024.0,
            )
        })
        .collect();
    let idle = broker_reading(&node, &platform.prefix, &pids).await;

    // 8. Both stopped at once.
    let stopping = Instant::now();
    for replica in &replicas {
        signal(replica, "-TERM");
    }
    for replica in &mut replicas {
        wait_exit(replica, STOP_TIMEOUT).await;
    }
    let both_stopped = stopping.elapsed();
    progress(
        started,
        &format!("both replicas exited in {}", secs(both_stopped)),
    );
    stop_probing.store(true, Ordering::Relaxed);
    prober.await.unwrap();

    let probes = std::mem::take(&mut *probes.lock().unwrap());
    let mut times = probes.times.clone();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p99 = times
        .get(((times.len() as f64 - 1.0) * 0.99).round() as usize)
        .copied()
        .unwrap_or(f64::NAN);
    let max = times.last().copied().unwrap_or(f64::NAN);
    for failure in &probes.failures {
        eprintln!("probe failed {failure}");
    }

    let freq = platform.frequency_violations();
    let repeats = platform.repeats_dropped();
    for i in 0..REPLICAS {
        let summary = log_summary(&platform.log_path(i));
        eprintln!(
            "replica {i}'s log: {} distinct warnings and errors",
            summary.len()
        );
        for (message, count) in &summary {
            eprintln!("  {count:>6} × {message}");
        }
    }
    progress(started, "cleaning up");
    drop(platform);
    drop(db);
    tokio::task::block_in_place(|| drop(node));

    let per_replica = |reading: &BrokerReading| match &reading.connections {
        None => "n/a".into(),
        Some(c) => format!(
            "{} in all, {:.1} per replica ({})",
            c.iter().sum::<usize>(),
            c.iter().sum::<usize>() as f64 / c.len().max(1) as f64,
            c.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let list = |values: &[String]| values.join(", ");
    rows.push((
        format!("{n} apps at {RATE} calls/s over {REPLICAS} replicas with the ledger: from spawn until both consume every app"),
        format!(
            "{} ({})",
            secs(*consumed.iter().max().unwrap()),
            list(&consumed.iter().map(|d| secs(*d)).collect::<Vec<_>>())
        ),
    ));
    rows.push((
        format!("a fresh AMQP connection every {} ms throughout ({} opened): handshake max, p99; failures (an error, or over {} s)",
            PROBE_EVERY.as_millis(), times.len(), PROBE_TIMEOUT.as_secs()),
        format!("{:.0} ms, {:.0} ms; {}", max * 1000.0, p99 * 1000.0, probes.failures.len()),
    ));
    rows.push((
        format!(
            "{} restarts (replica 0 then 1, {RESTART_ROUNDS} rounds): SIGTERM to exit, max",
            stops.len()
        ),
        format!(
            "{} ({})",
            secs(*stops.iter().max().unwrap()),
            list(&stops.iter().map(|d| secs(*d)).collect::<Vec<_>>())
        ),
    ));
    rows.push((
        "restarted replica: from spawn until it consumes every app again, max".into(),
        format!(
            "{} ({})",
            secs(*reconnects.iter().max().unwrap()),
            list(&reconnects.iter().map(|d| secs(*d)).collect::<Vec<_>>())
        ),
    ));
    rows.push((
        format!("backlog of {jobs} jobs ({BACKLOG_PER_APP} on each of {n_active} apps, ~100 bytes, up to {MAX_JOBS_PER_CALL} a call) through the restarts: delivered within, from spawn"),
        delivered_after.map_or(format!("not within {}", secs(DELIVERY_TIMEOUT)), secs),
    ));
    rows.push((
        "jobs lost, jobs delivered more than once".into(),
        format!("{lost}, {doubled}"),
    ));
    rows.push((
        "frequency-limit answers (all simulators); repeated calls the simulators dropped".into(),
        format!("{freq}; {repeats}"),
    ));
    rows.push((
        format!(
            "idle CPU per replica over {} s (% of one core)",
            IDLE_WINDOW.as_secs()
        ),
        list(
            &cpu_pct
                .iter()
                .map(|c| format!("{c:.1}%"))
                .collect::<Vec<_>>(),
        ),
    ));
    rows.push((
        "RSS per replica, idle: current / peak".into(),
        list(
            &rss.iter()
                .map(|(now, peak)| format!("{now:.0} / {peak:.0} MiB"))
                .collect::<Vec<_>>(),
        ),
    ));
    rows.push((
        "broker connections named broadcast-worker… from the replicas, running".into(),
        per_replica(&running),
    ));
    rows.push((
        "broker connections, idle after the restarts".into(),
        per_replica(&idle),
    ));
    rows.push((
        "the prefix's queues: before the replicas start; while they run".into(),
        format!("{}; {}", show_queues(&before), show_queues(&idle)),
    ));
    rows.push((
        "broker memory: before declaring; queues declared and backlog published; replicas running (idle)".into(),
        format!(
            "{}; {}; {}",
            show_mib(baseline.memory_mib),
            show_mib(before.memory_mib),
            show_mib(idle.memory_mib)
        ),
    ));
    let show_handles = |r: &BrokerReading| {
        r.handles
            .map_or("n/a".into(), |(used, limit)| format!("{used} of {limit}"))
    };
    rows.push((
        "broker file handles in use (of its limit): before declaring; queues declared; replicas running (idle)".into(),
        format!(
            "{}; {}; {}",
            show_handles(&baseline),
            show_handles(&before),
            show_handles(&idle)
        ),
    ));
    rows.push((
        format!("{n} idle apps: both replicas SIGTERMed at once stop within"),
        secs(both_stopped),
    ));
    let table = markdown_table(&rows);
    println!("{table}");
    eprintln!("wall time {}", secs(started.elapsed()));
    if !only && n == APPS && n_active == ACTIVE {
        let section = format!(
            "## A platform's fleet: `cargo bench --bench platform`\n\n{n} apps at {RATE} calls/s in one apps file over {REPLICAS} worker processes with the PostgreSQL ledger, one simulator for every app, {n_active} of them with a backlog, against a private RabbitMQ node started by the bench with the hard open-files limit, on {}.\n\n{table}",
            machine()
        );
        write_section(
            concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md"),
            "platform",
            &section,
        );
    }
}
