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

use crate::broker::Topology;
use crate::cli::app::AppArgs;
use crate::cli::args::{BrokerArgs, ConsoleArgs};
use crate::cli::lifecycle::{serve_until_signal, Lifecycle, Words};
use crate::console::{Console, ConsoleConfig};
use crate::ledger::Ledger;
use crate::pipeline::config::defaults;
use crate::pipeline::crash::{self, CrashPoint};
use crate::pipeline::{Worker, WorkerConfig};
use crate::settings::AppSettings;
use crate::tencent::client::ApiConfig;
use crate::tencent::usersig::SecretKey;

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
    #[command(flatten)]
    pub app: AppArgs,
    /// How the app's calls are made (an apps file's entries go over these).
    #[command(flatten)]
    pub sending: AppSettings,
    /// Unacked jobs held at once (bounds memory and how much one call can merge).
    #[arg(long, env = "BROADCAST_PREFETCH", default_value_t = defaults::PREFETCH)]
    pub prefetch: u16,
    /// Seconds to finish the call in flight after SIGINT or SIGTERM.
    #[arg(long, env = "BROADCAST_SHUTDOWN_TIMEOUT_SECS", default_value_t = 15)]
    pub shutdown_timeout_secs: u64,
}

impl RunArgs {
    /// Checks every setting and says what is wrong.
    pub fn worker_config(&self) -> anyhow::Result<WorkerConfig> {
        let topology = self.broker.check()?;
        let secret_key = self.app.secret.load()?;
        let mistakes = self.sending.mistakes();
        if !mistakes.is_empty() {
            bail!("{}", mistakes.join("\n"));
        }
        for warning in self.sending.warnings() {
            tracing::warn!("{warning}");
        }
        let api = self
            .sending
            .api(self.app.sdkappid()?, self.app.identifier()?)
            .map_err(anyhow::Error::msg)?;
        let ledger = self
            .database_url
            .as_deref()
            .map(Ledger::connect_lazy)
            .transpose()?;
        self.config_for(topology, api, secret_key, &self.sending, ledger)
    }

    /// One app's worker configuration: its queues, API, key and (checked)
    /// settings, with this process's own: the prefetch, the ledger and its
    /// limits, the test hooks.
    pub(super) fn config_for(
        &self,
        topology: Topology,
        api: ApiConfig,
        secret_key: SecretKey,
        settings: &AppSettings,
        ledger: Option<Ledger>,
    ) -> anyhow::Result<WorkerConfig> {
        if self.prefetch == 0 {
            bail!("BROADCAST_PREFETCH must be at least 1");
        }
        if self.prefetch == 1 {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!("BROADCAST_PREFETCH=1 leaves no room for the baton: a replica learns it is an idle app's sender only from its first ordinary job, and the app's urgent jobs wait until then (set 2 or more)");
            });
        }
        self.check_ledger_settings(settings)?;
        let mut config = WorkerConfig::new(self.broker.url(), "", api, secret_key);
        config.topology = topology;
        config.prefetch = self.prefetch;
        settings.apply(&mut config).map_err(anyhow::Error::msg)?;
        config.ledger = ledger;
        config.ledger_retention = Duration::from_secs_f64(self.ledger_retention_hours * 3600.0);
        config.crash_limit = self.crash_limit;
        config.crash_at = self.crash_hook()?;
        config.crash_on_job = self.crash_on_job.clone();
        Ok(config)
    }

    /// The retention of the ledger's records and the crash limit.
    fn check_ledger_settings(&self, settings: &AppSettings) -> anyhow::Result<()> {
        if !(self.ledger_retention_hours.is_finite() && self.ledger_retention_hours > 0.0) {
            bail!("BROADCAST_LEDGER_RETENTION_HOURS must be positive");
        }
        // Calls in flight are pruned after it too: never within the time a
        // redelivered job's call may still be resent.
        if self.ledger_retention_hours * 3600.0 <= settings.resend_window_secs.max(300) as f64 {
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
            amqp_url: self.broker.url(),
            read_limit,
            ledger,
            secure_cookie: self.console.console_secure_cookie,
            trusted_proxies: self.console.console_trusted_proxies.clone(),
        })))
    }
}
