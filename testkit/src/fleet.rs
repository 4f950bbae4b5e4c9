//! A fleet under test: several apps under one queue prefix, each with its own
//! simulator, secret key file and queues (`{prefix}.{sdkappid}.jobs`, the
//! fleet's `{prefix}.dead`),
//! an apps file naming some of them, and worker processes running
//! `run --apps-file` with their ops endpoints on known ports.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use broadcast_worker::simulator::SimulatorConfig;
use serde_json::Value;

use crate::harness::{spawn_fleet_app_on, unique_prefix, TestApp, ADMIN, AMQP_URL};
use crate::process::worker_logs;

pub struct TestFleet {
    pub prefix: String,
    pub apps: Vec<TestApp>,
    /// Where the key files and the apps file are.
    pub dir: PathBuf,
    /// The broker the fleet's queues are on: the shared one, or a private node.
    pub broker_url: String,
}

/// The SDKAppID of the fleet's `i`-th app.
pub fn fleet_sdkappid(i: usize) -> u64 {
    1_400_100_000 + i as u64
}

impl TestFleet {
    /// `n` apps at `rate` calls per second each; `configure` sets up the
    /// `i`-th app's simulator further.
    pub async fn spawn(
        test: &str,
        n: usize,
        rate: f64,
        configure: impl Fn(usize, &mut SimulatorConfig),
    ) -> TestFleet {
        Self::spawn_on(AMQP_URL, test, n, rate, configure).await
    }

    /// The same, on the broker at `broker_url`.
    pub async fn spawn_on(
        broker_url: &str,
        test: &str,
        n: usize,
        rate: f64,
        configure: impl Fn(usize, &mut SimulatorConfig),
    ) -> TestFleet {
        let prefix = unique_prefix(test);
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let mut apps = Vec::with_capacity(n);
        for i in 0..n {
            let sdkappid = fleet_sdkappid(i);
            let key = format!("fleet-secret-{i}");
            std::fs::write(dir.join(format!("{sdkappid}.key")), &key).unwrap();
            let app = spawn_fleet_app_on(broker_url, &prefix, sdkappid, &key, rate, |c| {
                configure(i, c)
            })
            .await;
            apps.push(app);
        }
        TestFleet {
            prefix,
            apps,
            dir,
            broker_url: broker_url.to_string(),
        }
    }

    /// Writes the apps file naming the apps `which` (indexes), each with
    /// its simulator's URL, its rate, and `extra` TOML lines; returns its path.
    pub fn write_apps_file(&self, which: &[usize], extra: &str) -> PathBuf {
        let mut text = String::new();
        for &i in which {
            let app = &self.apps[i];
            let sdkappid = fleet_sdkappid(i);
            text.push_str(&format!(
                "[[app]]\nsdkappid = {sdkappid}\nidentifier = {ADMIN:?}\nsecret_key_file = {:?}\nbase_url = {:?}\nrate = {}\n{extra}\n\n",
                self.dir.join(format!("{sdkappid}.key")).display().to_string(),
                app.sim.base_url().to_string(),
                app.config.rate,
            ));
        }
        let path = self.dir.join("apps.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `broadcast-worker run --apps-file` for this fleet, its ops endpoint
    /// on `ops_port`, with extra environment.
    pub fn replica(&self, bin: &str, ops_port: u16, extra: &[(&str, String)]) -> Child {
        let mut command = Command::new(bin);
        command
            .arg("run")
            .env("AMQP_URL", &self.broker_url)
            .env("BROADCAST_QUEUE_PREFIX", &self.prefix)
            .env("BROADCAST_APPS_FILE", self.dir.join("apps.toml"))
            .env("BROADCAST_METRICS_ADDR", format!("127.0.0.1:{ops_port}"))
            .env("BROADCAST_BACKOFF_MIN_MS", "50")
            .env("BROADCAST_BACKOFF_MAX_MS", "400")
            .env("BROADCAST_APP_FAULT_PROBE_SECS", "0.3");
        for key in [
            "TIM_SDKAPPID",
            "TIM_IDENTIFIER",
            "TIM_SECRET_KEY",
            "TIM_SECRET_KEY_FILE",
            "TIM_BASE_URL",
            "DATABASE_URL",
            "BROADCAST_TEST_CRASH_AT",
            "BROADCAST_TEST_CRASH_ON_JOB",
        ] {
            command.env_remove(key);
        }
        command.stdout(Stdio::null()).stderr(worker_logs());
        for (key, value) in extra {
            command.env(key, value);
        }
        command.spawn().expect("the worker binary starts")
    }

    pub fn total_frequency_violations(&self) -> u64 {
        self.apps
            .iter()
            .map(|a| a.sim.simulator.stats().frequency_violations)
            .sum()
    }
}

impl Drop for TestFleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        for queue in ["replicas", "dead"] {
            let queue = format!("{}.{queue}", self.prefix);
            crate::harness::delete_queue_on(&self.broker_url, &queue);
        }
    }
}

/// A free port on the loopback interface, for an ops endpoint.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A replica's `/readyz`, or `None` while it does not answer.
pub async fn readyz(ops_port: u16) -> Option<Value> {
    let response = reqwest::get(format!("http://127.0.0.1:{ops_port}/readyz"))
        .await
        .ok()?;
    response.json().await.ok()
}

/// The apps a replica says it is the sender for (empty while it does not answer).
pub async fn active_apps(ops_port: u16) -> Vec<u64> {
    let Some(body) = readyz(ops_port).await else {
        return Vec::new();
    };
    body["apps"]
        .as_object()
        .map(|apps| {
            apps.iter()
                .filter(|(_, a)| a["active"] == true)
                .filter_map(|(app, _)| app.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
