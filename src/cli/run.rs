//! `run`: the worker's settings, checked into a [`WorkerConfig`], and the
//! one app's worker run through the life `lifecycle::serve_until_signal` gives
//! `run` (migrate the ledger, serve the ops endpoint, consume until SIGINT
//! or SIGTERM, then finish the call in flight); `run --apps-file` goes on
//! in `fleet`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use tracing::info;

use crate::cli::app::AppArgs;
use crate::cli::args::{BrokerArgs, ConsoleArgs};
use crate::cli::lifecycle::{serve_until_signal, Lifecycle, Words};
use crate::console::{Console, ConsoleConfig};
use crate::ledger::Ledger;
use crate::pipeline::config::defaults;
use crate::pipeline::crash::{self, CrashPoint};
use crate::pipeline::{
    AppFaultPolicy, CallRules, CustomMerge, InDoubtPolicy, Worker, WorkerConfig,
};
use crate::tencent::body::MAX_BODY_BYTES;
use crate::tencent::classify::Classifier;
use crate::tencent::client::ApiConfig;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub console: ConsoleArgs,
    /// The PostgreSQL ledger; without it, delivery is at least once.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Serve every app of this TOML file (one `[[app]]` table per app; see
    /// README) instead of the one app of TIM_SDKAPPID; read again on SIGHUP.
    #[arg(long, env = "BROADCAST_APPS_FILE")]
    pub apps_file: Option<std::path::PathBuf>,
    /// Do not apply the ledger's migrations at start.
    #[arg(long, env = "BROADCAST_NO_MIGRATE")]
    pub no_migrate: bool,
    /// Seconds within which a redelivered job's call is resent verbatim (under the service's 300 s repeat window).
    #[arg(long, env = "BROADCAST_RESEND_WINDOW_SECS", default_value_t = defaults::RESEND_WINDOW_SECS)]
    pub resend_window_secs: u64,
    /// A job whose call has been in flight longer than that: dead-letter it as in-doubt, or resend (at least once).
    #[arg(long, env = "BROADCAST_IN_DOUBT", value_enum, default_value_t = InDoubtPolicy::DeadLetter)]
    pub in_doubt: InDoubtPolicy,
    /// Hours ledger records are kept, settled or still in flight (then in doubt for good).
    #[arg(long, env = "BROADCAST_LEDGER_RETENTION_HOURS", default_value_t = defaults::LEDGER_RETENTION_HOURS)]
    pub ledger_retention_hours: f64,
    /// Address of the ops endpoint (`/metrics`, `/healthz`, `/readyz`); port 0 picks one (printed).
    #[arg(long, env = "BROADCAST_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// With the ledger: worker sessions that may end with a job's call in flight, unsettled, before the job is dead-lettered as crash-loop.
    #[arg(long, env = "BROADCAST_CRASH_LIMIT", default_value_t = defaults::CRASH_LIMIT)]
    pub crash_limit: u32,
    /// Test hook: exit abruptly at POINT:N (before-call, after-call, after-ledger, after-dead-letters).
    #[arg(long, env = "BROADCAST_TEST_CRASH_AT", hide = true)]
    pub crash_at: Option<String>,
    /// Test hook: exit abruptly before every call that carries this job id.
    #[arg(long, env = "BROADCAST_TEST_CRASH_ON_JOB", hide = true)]
    pub crash_on_job: Option<String>,
    /// The API's base URL (scheme and host of the app's region).
    #[arg(
        long,
        env = "TIM_BASE_URL",
        default_value = "https://console.tim.qq.com"
    )]
    pub base_url: String,
    #[command(flatten)]
    pub app: AppArgs,
    /// Calls per second for this app (fractions allowed).
    #[arg(long, env = "BROADCAST_RATE", default_value_t = defaults::RATE)]
    pub rate: f64,
    /// Milliseconds added to each second of the bucket, against clock jitter.
    #[arg(long, env = "BROADCAST_RATE_GUARD_MS", default_value_t = defaults::RATE_GUARD_MS)]
    pub rate_guard_ms: u64,
    /// Unacked jobs held at once (bounds memory and how much one call can merge).
    #[arg(long, env = "BROADCAST_PREFETCH", default_value_t = defaults::PREFETCH)]
    pub prefetch: u16,
    /// Largest call body in bytes (at most 12000).
    #[arg(long, env = "BROADCAST_MAX_BATCH_BYTES", default_value_t = MAX_BODY_BYTES)]
    pub max_batch_bytes: usize,
    /// Jobs merged into one call at most (1 sends each job alone).
    #[arg(long, env = "BROADCAST_MAX_JOBS_PER_CALL")]
    pub max_jobs_per_call: Option<usize>,
    /// How custom jobs share a call (a message holds one TIMCustomElem):
    /// `separate`, or `envelope` (clients must decode it; see README).
    #[arg(long, env = "BROADCAST_CUSTOM_MERGE", value_enum, default_value_t = CustomMerge::Separate)]
    pub custom_merge: CustomMerge,
    /// Transient failures of one call before its jobs are dead-lettered.
    #[arg(long, env = "BROADCAST_MAX_ATTEMPTS", default_value_t = defaults::MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// Seconds a call may keep retrying (keep under the service's 300 s repeat window).
    #[arg(long, env = "BROADCAST_MAX_RETRY_AGE_SECS", default_value_t = defaults::MAX_RETRY_AGE_SECS)]
    pub max_retry_age_secs: u64,
    /// First retry delay in milliseconds (doubles, with jitter).
    #[arg(long, env = "BROADCAST_BACKOFF_MIN_MS", default_value_t = defaults::BACKOFF_MIN_MS)]
    pub backoff_min_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(long, env = "BROADCAST_BACKOFF_MAX_MS", default_value_t = defaults::BACKOFF_MAX_MS)]
    pub backoff_max_ms: u64,
    /// Request timeout in milliseconds (longer than the service's own 3 s).
    #[arg(long, env = "TIM_REQUEST_TIMEOUT_MS", default_value_t = defaults::REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,
    /// Connect timeout in milliseconds.
    #[arg(long, env = "TIM_CONNECT_TIMEOUT_MS", default_value_t = defaults::CONNECT_TIMEOUT_MS)]
    pub connect_timeout_ms: u64,
    /// On an app-wide fault (10007, SDKAppID or signature errors): halt and keep jobs, or dead-letter them.
    #[arg(long, env = "BROADCAST_ON_APP_FAULT", value_enum, default_value_t = AppFaultPolicy::Halt)]
    pub on_app_fault: AppFaultPolicy,
    /// Seconds between probe calls while halted by an app-wide fault.
    #[arg(long, env = "BROADCAST_APP_FAULT_PROBE_SECS", default_value_t = defaults::APP_FAULT_PROBE_SECS)]
    pub app_fault_probe_secs: f64,
    /// Reclassify ErrorCodes, e.g. `80003=permanent,12345=transient`
    /// (classes: transient, rate-limited, resign, permanent, app-fault).
    #[arg(long, env = "BROADCAST_CLASS_OVERRIDES", default_value = "")]
    pub class_overrides: String,
    /// Seconds a signed UserSig is valid (renewed at three quarters).
    #[arg(long, env = "TIM_USERSIG_TTL_SECS", default_value_t = defaults::USERSIG_TTL_SECS)]
    pub usersig_ttl_secs: u64,
    /// Seconds to finish the call in flight after SIGINT or SIGTERM.
    #[arg(long, env = "BROADCAST_SHUTDOWN_TIMEOUT_SECS", default_value_t = 15)]
    pub shutdown_timeout_secs: u64,
}

impl RunArgs {
    /// Checks every setting and says what is wrong, one mistake at a time.
    pub fn worker_config(&self) -> anyhow::Result<WorkerConfig> {
        let topology = self.broker.check()?;
        let api = self.api_config()?;
        let secret_key = self.app.secret.load()?;
        self.check_sending()?;
        let classifier = Classifier::parse_overrides(&self.class_overrides)?;
        if self.max_jobs_per_call == Some(0) {
            bail!("BROADCAST_MAX_JOBS_PER_CALL must be at least 1");
        }
        let ledger = self
            .database_url
            .as_deref()
            .map(Ledger::connect_lazy)
            .transpose()?;
        self.check_ledger_settings()?;
        let crash_at = self.crash_hook()?;
        let mut config = WorkerConfig::new(
            self.broker.amqp_url.clone(),
            &self.broker.queue_prefix,
            api,
            secret_key,
        );
        config.topology = topology;
        config.rate = self.rate;
        config.rate_guard = Duration::from_millis(self.rate_guard_ms);
        config.prefetch = self.prefetch;
        config.call = CallRules {
            max_bytes: self.max_batch_bytes,
            max_jobs: self.max_jobs_per_call.unwrap_or(usize::MAX),
            custom_merge: self.custom_merge,
        };
        config.policy.max_attempts = self.max_attempts;
        config.policy.max_retry_age = Duration::from_secs(self.max_retry_age_secs);
        config.policy.backoff_min = Duration::from_millis(self.backoff_min_ms.max(1));
        config.policy.backoff_max =
            Duration::from_millis(self.backoff_max_ms.max(self.backoff_min_ms).max(1));
        config.policy.on_app_fault = self.on_app_fault;
        config.policy.app_fault_probe = Duration::from_secs_f64(self.app_fault_probe_secs);
        config.classifier = classifier;
        config.usersig_ttl = Duration::from_secs(self.usersig_ttl_secs.max(60));
        config.ledger = ledger;
        config.resend_window = Duration::from_secs(self.resend_window_secs);
        config.in_doubt = self.in_doubt;
        config.ledger_retention = Duration::from_secs_f64(self.ledger_retention_hours * 3600.0);
        config.crash_limit = self.crash_limit;
        config.crash_at = crash_at;
        config.crash_on_job = self.crash_on_job.clone();
        Ok(config)
    }

    /// The API's address, the admin account and the timeouts.
    fn api_config(&self) -> anyhow::Result<ApiConfig> {
        let base_url: url::Url = self
            .base_url
            .parse()
            .map_err(|e| anyhow::anyhow!("TIM_BASE_URL {:?} is not a URL: {e}", self.base_url))?;
        if !matches!(base_url.scheme(), "http" | "https") {
            bail!(
                "TIM_BASE_URL must be http or https, not {:?}",
                base_url.scheme()
            );
        }
        let mut api = ApiConfig::new(base_url, self.app.sdkappid()?, self.app.identifier()?);
        api.request_timeout = Duration::from_millis(self.request_timeout_ms);
        api.connect_timeout = Duration::from_millis(self.connect_timeout_ms);
        Ok(api)
    }

    /// The rate, batch, retry and probe settings; warns of those that defeat
    /// the service's repeat filter or its own timeout.
    fn check_sending(&self) -> anyhow::Result<()> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            bail!(
                "BROADCAST_RATE must be a positive number of calls per second, not {}",
                self.rate
            );
        }
        if self.prefetch == 0 {
            bail!("BROADCAST_PREFETCH must be at least 1");
        }
        if self.max_batch_bytes > MAX_BODY_BYTES || self.max_batch_bytes < 256 {
            bail!(
                "BROADCAST_MAX_BATCH_BYTES must be from 256 to {MAX_BODY_BYTES}, not {}",
                self.max_batch_bytes
            );
        }
        if self.max_attempts == 0 {
            bail!("BROADCAST_MAX_ATTEMPTS must be at least 1");
        }
        if self.request_timeout_ms <= 3_000 {
            tracing::warn!("TIM_REQUEST_TIMEOUT_MS is not above the service's own 3 s: slow successes will look like failures");
        }
        if self.max_retry_age_secs >= 300 {
            tracing::warn!("BROADCAST_MAX_RETRY_AGE_SECS reaches the service's 5-minute repeat window: a late retry may be delivered twice");
        }
        if !(self.app_fault_probe_secs.is_finite() && self.app_fault_probe_secs > 0.0) {
            bail!("BROADCAST_APP_FAULT_PROBE_SECS must be positive");
        }
        Ok(())
    }

    /// The resend window and the retention of settled records.
    fn check_ledger_settings(&self) -> anyhow::Result<()> {
        if self.resend_window_secs >= 300 {
            tracing::warn!("BROADCAST_RESEND_WINDOW_SECS reaches the service's 300 s repeat window: a resend may be delivered twice");
        }
        if !(self.ledger_retention_hours.is_finite() && self.ledger_retention_hours > 0.0) {
            bail!("BROADCAST_LEDGER_RETENTION_HOURS must be positive");
        }
        // Calls in flight are pruned after it too: never within the time a
        // redelivered job's call may still be resent.
        if self.ledger_retention_hours * 3600.0 <= self.resend_window_secs.max(300) as f64 {
            bail!("BROADCAST_LEDGER_RETENTION_HOURS must exceed the resend window and the service's 5-minute repeat window (calls in flight are pruned after it too)");
        }
        if self.crash_limit == 0 {
            bail!("BROADCAST_CRASH_LIMIT must be at least 1");
        }
        if self.database_url.is_some() && self.broker.delivery_limit <= self.crash_limit {
            tracing::warn!(
                delivery_limit = self.broker.delivery_limit,
                crash_limit = self.crash_limit,
                "BROADCAST_DELIVERY_LIMIT is not above BROADCAST_CRASH_LIMIT: every restart or reconnect counts a delivery of the jobs held, so the broker may dead-letter healthy jobs before the worker counts a crash loop"
            );
        }
        Ok(())
    }

    /// The test hook's crash point, if one is set.
    fn crash_hook(&self) -> anyhow::Result<Option<(CrashPoint, u32)>> {
        self.crash_at
            .as_deref()
            .map(crash::parse_crash_at)
            .transpose()
            .map_err(|e| anyhow::anyhow!("BROADCAST_TEST_CRASH_AT: {e}"))
    }

    /// Runs the worker until it fails or a signal asks it to stop.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        // Checked first: a console asked for and unusable stops the start.
        let console = self.console()?;
        if let Some(path) = self.apps_file.clone() {
            return self.run_fleet(path, console).await;
        }
        let config = self.worker_config()?;
        info!(
            queue = %config.topology.names.jobs,
            rate = config.rate,
            max_batch_bytes = config.call.max_bytes,
            custom_merge = ?config.call.custom_merge,
            base_url = %config.api.base_url,
            sdkappid = config.api.sdkappid,
            "starting the worker"
        );
        let ledger = config.ledger.clone();
        let (in_doubt, resend_window) = (config.in_doubt, config.resend_window);
        let life = Lifecycle {
            ledger: ledger.as_ref(),
            migrate: !self.no_migrate,
            on_migrated: Box::new(move || {
                info!(in_doubt = ?in_doubt, resend_window = ?resend_window, "ledger ready: each job is delivered once");
            }),
            metrics_addr: self.metrics_addr,
            console,
            shutdown_timeout_secs: self.shutdown_timeout_secs,
            words: ONE_APP,
        };
        serve_until_signal(life, move |board, shutdown| {
            let sdkappid = config.api.sdkappid;
            let worker = Worker::new(config)?;
            board.insert(sdkappid, worker.status());
            Ok(async move { Ok(worker.run(shutdown).await?) })
        })
        .await
    }
}

/// What one app's life says of itself.
const ONE_APP: Words = Words {
    no_ledger: "no DATABASE_URL: running without a ledger, delivery is at least once (a crash between a call and its acks repeats the call)",
    migrations_skipped: "ledger in use (migrations skipped): each job is delivered once",
    shutting_down: "shutting down: finishing the call in flight",
    timed_out: "shutdown timed out; unsettled jobs return to the queue when the connection closes",
};

impl RunArgs {
    /// The console, if a token is set: it reads dead letters on the
    /// worker's broker (at most the read limit for a view) and asks the
    /// worker's ledger about jobs and about sessions a logout ended.
    pub(super) fn console(&self) -> anyhow::Result<Option<Console>> {
        let read_limit = self.console.read_limit()?;
        let Some(token) = self.console.token()? else {
            return Ok(None);
        };
        let ledger = self
            .database_url
            .as_deref()
            .map(|url| Ledger::connect_lazy_pooled(url, 2))
            .transpose()?;
        Ok(Some(Console::new(ConsoleConfig {
            token,
            amqp_url: self.broker.amqp_url.clone(),
            read_limit,
            ledger,
            secure_cookie: self.console.console_secure_cookie,
            trusted_proxies: self.console.console_trusted_proxies.clone(),
        })))
    }
}
