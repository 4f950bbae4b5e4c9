//! The worker binary as a child process: starting it against a test app,
//! signalling it, waiting for its exit, and reading its memory and CPU use
//! from /proc.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{TestApp, ADMIN, APP, KEY};

/// `broadcast-worker run` as a child process against this app's queues and
/// simulator, with extra environment. `bin` is the binary's path, which only
/// the root package's tests and benches know:
/// `env!("CARGO_BIN_EXE_broadcast-worker")`.
pub fn worker_process(bin: &str, app: &TestApp, extra: &[(&str, String)]) -> Child {
    let mut command = Command::new(bin);
    command
        .arg("run")
        .env("AMQP_URL", &app.config.amqp_url)
        .env("BROADCAST_QUEUE_PREFIX", &app.prefix)
        .env("TIM_BASE_URL", app.sim.base_url().as_str())
        .env("TIM_SDKAPPID", APP.to_string())
        .env("TIM_IDENTIFIER", ADMIN)
        .env("TIM_SECRET_KEY", KEY)
        .env("BROADCAST_RATE", app.config.rate.to_string())
        .env(
            "BROADCAST_DELIVERY_LIMIT",
            app.config.topology.delivery_limit.to_string(),
        )
        .env("BROADCAST_METRICS_ADDR", "127.0.0.1:0")
        .env_remove("TIM_SECRET_KEY_FILE")
        .env_remove("DATABASE_URL")
        .env_remove("BROADCAST_TEST_CRASH_AT")
        .env_remove("BROADCAST_TEST_CRASH_ON_JOB")
        .stdout(Stdio::null())
        .stderr(worker_logs());
    for (key, value) in extra {
        command.env(key, value);
    }
    command.spawn().expect("the worker binary starts")
}

/// The workers' logs go nowhere, unless `BWTEST_WORKER_LOGS` is set (to
/// read them while debugging a test).
pub(crate) fn worker_logs() -> Stdio {
    if std::env::var_os("BWTEST_WORKER_LOGS").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// Sends `sig` (as `kill` spells it: "-TERM", "-KILL") to a child.
pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub async fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident memory high-water mark of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What a measured command came to.
pub struct Measured {
    pub status: ExitStatus,
    pub stdout: String,
    /// The peak resident memory, in MiB.
    pub peak_mib: f64,
    pub took: Duration,
}

/// Runs `command` with its standard output captured, sampling its resident
/// memory's high-water mark every 2 ms until it exits.
pub async fn run_measured(mut command: Command) -> Measured {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let mut pipe = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut pipe, &mut out).unwrap();
        out
    });
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    Measured {
        status,
        stdout: reader.join().unwrap(),
        peak_mib: peak as f64 / 1024.0,
        took: started.elapsed(),
    }
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
