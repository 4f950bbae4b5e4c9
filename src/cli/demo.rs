//! `demo`: the whole flow on one machine with RabbitMQ and nothing else. It
//! starts the simulator and a worker in this process (with the ledger when
//! `DATABASE_URL` is set), publishes a sample burst with a few jobs that can
//! never be sent, shows progress until every job is delivered or
//! dead-lettered, then prints the console's address and a token for it and
//! keeps serving until Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Parser;
use lapin::options::QueueDeleteOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::broker::{self, headers};
use crate::cli::run::RunArgs;
use crate::clock;
use crate::ops::enqueue::{job_properties, new_job_id, text_job, PublishOptions};
use crate::pipeline::config::defaults;
use crate::simulator::{Simulator, SimulatorConfig};
use crate::telemetry;
use crate::tencent::usersig::SecretKey;

/// The demo's app: a made-up SDKAppID with a key drawn at each start.
const DEMO_SDKAPPID: u64 = 1_400_000_001;
const DEMO_ADMIN: &str = "administrator";
/// Accounts the simulated app knows; jobs sent from any other are refused (70107).
const DEMO_ACCOUNTS: [&str; 2] = ["administrator", "system"];

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The RabbitMQ URL.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// The ledger, when set (PostgreSQL); without it, delivery is at least once.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The demo's queues: `{prefix}.jobs`, `.dead`, `.dlx`. Deleted at start, so
    /// the prefix must contain "demo".
    #[arg(long, default_value = "broadcast-demo")]
    pub queue_prefix: String,
    /// The worker's ops endpoint and console.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Good jobs in the burst (a few bad ones are added).
    #[arg(long, default_value_t = 300)]
    pub jobs: usize,
    /// Calls per second, the simulated app's limit and the worker's rate.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// The console's token; one is drawn when not given.
    #[arg(long, env = "BROADCAST_CONSOLE_TOKEN", hide_env_values = true)]
    pub console_token: Option<String>,
    /// Stop once the burst is settled instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit_when_done: bool,
}

/// The worker's settings, parsed as `run` parses its own.
#[derive(Debug, Parser)]
struct DemoWorker {
    #[command(flatten)]
    run: RunArgs,
}

/// One job of the burst: its body, and a deadline already passed for one.
struct SampleJob {
    body: String,
    expired: bool,
}

impl DemoArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        // It deletes its queues at start: never a real worker's.
        if !self.queue_prefix.contains("demo") {
            bail!(
                "the demo empties its queues at start, so --queue-prefix must contain \"demo\" (not {:?})",
                self.queue_prefix
            );
        }
        if self.jobs == 0 || self.jobs > 100_000 {
            bail!("--jobs must be from 1 to 100000");
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 100.0) {
            bail!("--rate must be above 0 and at most 100 calls per second");
        }
        let token = match &self.console_token {
            Some(token) if token.trim().is_empty() => bail!("the console token is empty"),
            Some(token) => token.trim().to_string(),
            None => format!("{:032x}", rand::random::<u128>()),
        };
        // A key of the demo's own: the simulator checks the worker's UserSigs.
        let key = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        let simulator = self.start_simulator(SecretKey::new(key.clone())).await?;
        println!("simulator listening on {}", simulator.base_url());
        self.empty_queues().await?;
        let mut worker = DemoWorker::try_parse_from(self.worker_args(&simulator.base_url(), &key))
            .context("the demo's worker settings")?
            .run;
        // Only the demo's one app and token, whatever a real worker's
        // environment says.
        worker.apps_file = None;
        worker.console.console_token = Some(token.clone());
        worker.console.console_token_file = None;
        let task = tokio::spawn(worker.run());
        let sample = sample_burst(self.jobs);
        let total = sample.len();
        wait_ready(self.listen).await?;
        self.publish(&sample).await?;
        println!(
            "published {total} jobs ({} that can never be sent); sending at {} calls/s",
            total - self.jobs,
            self.rate
        );
        let settled = show_progress(self.listen, total, &task).await;
        if let Ok(answer) = reqwest::get(format!("http://{}/metrics", self.listen)).await {
            let text = answer.text().await.unwrap_or_default();
            println!("dead-lettered: {}", dead_by_reason(&text).join(", "));
        }
        let stats = simulator.simulator.stats();
        println!(
            "\nsimulator: {} calls, {} messages delivered, {} frequency-limit answers",
            stats.calls, stats.deliveries, stats.frequency_violations
        );
        if !settled {
            bail!("the worker stopped before the burst was settled (its log above says why)");
        }
        println!("\nconsole:  http://{}/", self.listen);
        println!("token:    {token}");
        println!("metrics:  http://{}/metrics", self.listen);
        println!(
            "dead letters from the CLI: broadcast-worker dlq list --queue-prefix {}",
            self.queue_prefix
        );
        if self.exit_when_done {
            task.abort();
            return Ok(ExitCode::SUCCESS);
        }
        println!("\nserving until Ctrl-C");
        task.await.context("the worker's task")??;
        Ok(ExitCode::SUCCESS)
    }

    async fn start_simulator(
        &self,
        key: SecretKey,
    ) -> anyhow::Result<crate::simulator::SpawnedSimulator> {
        let mut config = SimulatorConfig::new(DEMO_SDKAPPID, DEMO_ADMIN, key);
        config.rate = self.rate;
        config.known_accounts = Some(DEMO_ACCOUNTS.iter().map(|a| a.to_string()).collect());
        Simulator::new(config)
            .spawn("127.0.0.1:0".parse().expect("an address"))
            .await
            .context("cannot start the simulator")
    }

    /// The demo's queues start empty, so its counts are this run's.
    async fn empty_queues(&self) -> anyhow::Result<()> {
        let connection = broker::connect(&self.amqp_url, "broadcast-worker demo")
            .await
            .context("the demo needs RabbitMQ (AMQP_URL)")?;
        let channel = connection.create_channel().await?;
        let names = broker::QueueNames::new(&self.queue_prefix);
        for queue in [&names.jobs, &names.urgent, &names.dead] {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .with_context(|| format!("cannot empty the demo's queue {queue}"))?;
        }
        // Declared again at once (as the worker declares them), so the burst
        // is not published before the worker's session has made them.
        let topology = broker::Topology {
            names,
            delivery_limit: defaults::DELIVERY_LIMIT,
        };
        topology
            .declare(&connection)
            .await
            .context("cannot declare the demo's queues")?;
        let _ = connection.close(200, "done".into()).await;
        Ok(())
    }

    /// The worker's command line: everything explicit, so that settings in
    /// the environment for a real worker do not leak into the demo.
    fn worker_args(&self, base_url: &url::Url, key: &str) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            "--base-url",
            base_url.as_str(),
            "--sdkappid",
            &DEMO_SDKAPPID.to_string(),
            "--identifier",
            DEMO_ADMIN,
            "--secret-key",
            key,
            "--amqp-url",
            &self.amqp_url,
            "--queue-prefix",
            &self.queue_prefix,
            "--metrics-addr",
            &self.listen.to_string(),
            "--rate",
            &self.rate.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(url) = &self.database_url {
            args.extend(["--database-url".to_string(), url.clone()]);
        }
        args
    }

    /// Publishes the burst with confirms, exactly as producers would.
    async fn publish(&self, sample: &[SampleJob]) -> anyhow::Result<()> {
        let connection = broker::connect(&self.amqp_url, "broadcast-worker demo").await?;
        let channel = broker::confirm_channel(&connection).await?;
        let queue = broker::QueueNames::new(&self.queue_prefix).jobs;
        for job in sample {
            let mut properties = job_properties(&new_job_id(), &PublishOptions::default())
                .map_err(anyhow::Error::msg)?;
            if job.expired {
                let passed = clock::unix_ms(SystemTime::now() - Duration::from_secs(60));
                let mut table = FieldTable::default();
                table.insert(
                    ShortString::from(headers::DEADLINE),
                    AMQPValue::LongLongInt(passed as i64),
                );
                properties = properties.with_headers(table);
            }
            broker::publish_confirmed(&channel, "", &queue, job.body.as_bytes(), properties)
                .await?;
        }
        let _ = connection.close(200, "done".into()).await;
        Ok(())
    }
}

/// `jobs` good broadcasts (texts from two senders, gifts as custom
/// elements), then one job for each way a job can fail.
fn sample_burst(jobs: usize) -> Vec<SampleJob> {
    let good = (0..jobs).map(|i| {
        let body = match i % 5 {
            0 => serde_json::json!({"From_Account": "system", "MsgBody": [{"MsgType": "TIMCustomElem", "MsgContent": {"Data": format!("{{\"gift\":\"rocket\",\"from\":\"viewer{i}\"}}"), "Desc": "gift"}}]}).to_string(),
            1 => text_job(&format!("Round {} starts in 30 seconds", i / 5 + 1), Some("system"), Some("match:42")),
            _ => text_job(&format!("Score update #{i}: 2-1, 71st minute"), None, None),
        };
        SampleJob { body, expired: false }
    });
    let bad = [
        ("{\"MsgBody\": [", false),
        ("{\"MsgBody\": [{\"MsgType\": \"TIMHoloElem\", \"MsgContent\": {}}]}", false),
        ("{\"MsgBody\": []}", false),
        ("{\"From_Account\": \"ghost\", \"MsgBody\": [{\"MsgType\": \"TIMTextElem\", \"MsgContent\": {\"Text\": \"<script>alert('sent by an account the app does not have')</script>\"}}]}", false),
        ("{\"MsgBody\": [{\"MsgType\": \"TIMTextElem\", \"MsgContent\": {\"Text\": \"Half-time: too late to matter\"}}]}", true),
    ]
    .map(|(body, expired)| SampleJob { body: body.to_string(), expired });
    good.chain(bad).collect()
}

/// Waits for the worker's ops endpoint to answer.
async fn wait_ready(listen: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = format!("http://{listen}/healthz");
    while Instant::now() < deadline {
        if reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the worker's ops endpoint on {listen} did not answer within 30 s")
}

/// One line, rewritten each half second, until every job is delivered or
/// dead-lettered; false if the worker stopped first.
async fn show_progress(
    listen: SocketAddr,
    total: usize,
    task: &tokio::task::JoinHandle<anyhow::Result<ExitCode>>,
) -> bool {
    let started = Instant::now();
    let url = format!("http://{listen}/metrics");
    loop {
        if task.is_finished() {
            return false;
        }
        let text = match reqwest::get(&url).await {
            Ok(answer) => answer.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let delivered = metric_total(&text, telemetry::JOBS_DELIVERED);
        let dead = metric_total(&text, telemetry::JOBS_DEAD_LETTERED);
        let calls = metric_total(&text, telemetry::CALLS);
        eprint!(
            "\r{:>5.1} s  delivered {delivered}/{total}  dead-lettered {dead}  calls {calls}   ",
            started.elapsed().as_secs_f64()
        );
        if delivered + dead >= total as u64 {
            eprintln!();
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `reason/code: n` for each series of the dead-letter counter.
fn dead_by_reason(text: &str) -> Vec<String> {
    let label = |line: &str, name: &str| {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let end = start + line[start..].find('"')?;
        Some(line[start..end].to_string())
    };
    text.lines()
        .filter(|line| line.starts_with(&format!("{}{{", telemetry::JOBS_DEAD_LETTERED)))
        .filter_map(|line| {
            let count = line.rsplit(' ').next()?.parse::<f64>().ok()?;
            let (reason, code) = (label(line, "reason")?, label(line, "code")?);
            let code = if code == "none" {
                String::new()
            } else {
                format!("/{code}")
            };
            Some(format!("{reason}{code}: {count}"))
        })
        .collect()
}

/// The sum of a counter's series in Prometheus text.
fn metric_total(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_series_of_a_counter() {
        let text = "# TYPE broadcast_calls_total counter\nbroadcast_calls_total{sdkappid=\"1\",outcome=\"ok\"} 7\nbroadcast_calls_total{sdkappid=\"1\",outcome=\"permanent\"} 2\nbroadcast_calls_total_other 5\n";
        assert_eq!(metric_total(text, "broadcast_calls_total"), 9);
        assert_eq!(metric_total(text, "broadcast_jobs_delivered_total"), 0);
        let dead = "broadcast_jobs_dead_lettered_total{sdkappid=\"1\",reason=\"rejected\",code=\"70107\"} 1\nbroadcast_jobs_dead_lettered_total{sdkappid=\"1\",reason=\"expired\",code=\"none\"} 2\n";
        assert_eq!(dead_by_reason(dead), ["rejected/70107: 1", "expired: 2"]);
    }

    #[test]
    fn the_burst_holds_each_kind_of_bad_job() {
        let sample = sample_burst(10);
        assert_eq!(sample.len(), 15);
        assert_eq!(sample.iter().filter(|j| j.expired).count(), 1);
        let good = &sample[..10];
        for job in good {
            let value: serde_json::Value = serde_json::from_str(&job.body).unwrap();
            if let Some(from) = value["From_Account"].as_str() {
                assert!(DEMO_ACCOUNTS.contains(&from));
            }
        }
        assert!(serde_json::from_str::<serde_json::Value>(&sample[10].body).is_err());
    }
}
