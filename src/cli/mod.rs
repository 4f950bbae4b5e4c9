//! The command line: one binary, a subcommand per job an operator or a test
//! has to do. Each command parses its flags (with environment fallbacks),
//! builds what it needs, and returns an exit code.

pub mod config;

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Parser, Subcommand, ValueEnum};

use crate::broker::{self, QueueNames, Topology};
use crate::cli::config::AppArgs;
use crate::ledger::{JobState, Ledger, LedgerError};
use crate::ops::dlq::{self, DeadInfo, DeadJob, Selection};
use crate::ops::enqueue::{publish_lines, LineResult, PublishOptions};
use crate::pipeline::{AppFaultPolicy, InDoubtPolicy, Worker, WorkerConfig};
use crate::tencent::classify::Classifier;
use crate::tencent::client::ApiConfig;
use crate::tencent::simulator::{FaultPlan, Simulator, SimulatorConfig};
use crate::tencent::usersig::{self, Claims};
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "broadcast-worker",
    version,
    about = "Rate-limited RabbitMQ worker for Tencent Cloud Chat send_broadcast_msg"
)]
pub struct Cli {
    /// Log format on standard error.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume broadcast jobs and send them, merged and rate-limited.
    Run(Box<RunArgs>),
    /// Publish jobs: one JSON body per line from a file or standard input, or --text.
    Enqueue(EnqueueArgs),
    /// Inspect, replay and purge the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Apply the ledger's migrations to DATABASE_URL.
    Migrate(LedgerArgs),
    /// Ask the ledger about jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Run a local send_broadcast_msg for tests, benchmarks and demos.
    Simulate(SimulateArgs),
    /// Sign or verify an admin UserSig.
    #[command(subcommand)]
    Usersig(UsersigCommand),
}

/// Where the queues are.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// The RabbitMQ URL.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// Names `{prefix}.jobs`, `{prefix}.dead` and the exchange `{prefix}.dlx`.
    #[arg(long, env = "BROADCAST_QUEUE_PREFIX", default_value = "broadcast")]
    pub queue_prefix: String,
    /// Deliveries of one job before the broker dead-letters it by itself.
    #[arg(long, env = "BROADCAST_DELIVERY_LIMIT", default_value_t = 20)]
    pub delivery_limit: u32,
}

impl BrokerArgs {
    fn check(&self) -> anyhow::Result<Topology> {
        self.amqp_url
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| anyhow::anyhow!("AMQP_URL is not an AMQP URL: {e}"))?;
        if self.queue_prefix.is_empty() || self.queue_prefix.len() > 200 {
            bail!("BROADCAST_QUEUE_PREFIX must be 1 to 200 characters");
        }
        if self.delivery_limit == 0 {
            bail!("BROADCAST_DELIVERY_LIMIT must be at least 1");
        }
        Ok(Topology {
            names: QueueNames::new(&self.queue_prefix),
            delivery_limit: self.delivery_limit,
        })
    }
}

/// Where the ledger is.
#[derive(Debug, Clone, clap::Args)]
pub struct LedgerArgs {
    /// The PostgreSQL ledger, e.g. postgres://user@host/db.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

impl LedgerArgs {
    fn ledger(&self) -> anyhow::Result<Ledger> {
        Ok(Ledger::connect_lazy(&self.database_url)?)
    }
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// What is in `{prefix}.dead`, with a summary by reason and code; nothing is removed or reordered.
    List {
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// Newest first (default: oldest first, the queue's order).
        #[arg(long)]
        newest_first: bool,
        /// Print at most this many jobs (the summary counts all).
        #[arg(long)]
        limit: Option<usize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The whole dead letter: body, properties, and every header that says why.
    Show {
        #[command(flatten)]
        broker: BrokerArgs,
        job_id: String,
    },
    /// Move selected jobs back to `{prefix}.jobs` (each removed here only after its publish is confirmed).
    Replay {
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        select: SelectArgs,
        /// Say what would move, move nothing.
        #[arg(long)]
        dry_run: bool,
        /// Test hook: exit abruptly after the N-th confirmed publish, before its removal.
        #[arg(long, env = "BROADCAST_TEST_CRASH_AT", hide = true)]
        crash_at: Option<String>,
    },
    /// Remove selected jobs for good (only with --yes), printing each.
    Purge {
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        select: SelectArgs,
        /// Really remove them.
        #[arg(long)]
        yes: bool,
    },
}

/// Filters on dead letters.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Only this x-reason (`rejected`, `invalid-job`, `broker:delivery_limit`, ...).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only this ErrorCode.
    #[arg(long)]
    pub code: Option<i64>,
    /// Only jobs dead-lettered at least this many seconds ago.
    #[arg(long)]
    pub older_than_secs: Option<i64>,
    /// Only jobs dead-lettered less than this many seconds ago.
    #[arg(long)]
    pub newer_than_secs: Option<i64>,
}

/// Which dead letters to act on.
#[derive(Debug, Clone, clap::Args)]
pub struct SelectArgs {
    /// Job ids (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Every dead letter.
    #[arg(long)]
    pub all: bool,
}

impl FilterArgs {
    fn selection(&self) -> Selection {
        Selection {
            reason: self.reason.clone(),
            code: self.code,
            older_than_secs: self.older_than_secs,
            newer_than_secs: self.newer_than_secs,
            ..Selection::default()
        }
    }
}

impl SelectArgs {
    fn selection(&self) -> anyhow::Result<Selection> {
        let selection = Selection {
            ids: self.ids.clone(),
            all: self.all,
            ..self.filter.selection()
        };
        if selection.is_empty() {
            bail!("say which jobs: --id, --reason, --code, --older-than-secs, --newer-than-secs, or --all");
        }
        Ok(selection)
    }
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Where is this broadcast? Delivered (when, MsgSeq, which call), in flight, or dead-lettered.
    Show {
        #[command(flatten)]
        ledger: LedgerArgs,
        /// The job's id (its AMQP message_id, or `sha256:...` for jobs without one).
        job_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The PostgreSQL ledger; without it, delivery is at least once.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Do not apply the ledger's migrations at start.
    #[arg(long, env = "BROADCAST_NO_MIGRATE")]
    pub no_migrate: bool,
    /// Seconds within which a redelivered job's call is resent verbatim (under the service's 300 s repeat window).
    #[arg(long, env = "BROADCAST_RESEND_WINDOW_SECS", default_value_t = 270)]
    pub resend_window_secs: u64,
    /// A job whose call has been in flight longer than that: dead-letter it as in-doubt, or resend (at least once).
    #[arg(long, env = "BROADCAST_IN_DOUBT", value_enum, default_value_t = InDoubtPolicy::DeadLetter)]
    pub in_doubt: InDoubtPolicy,
    /// Hours settled ledger records are kept.
    #[arg(
        long,
        env = "BROADCAST_LEDGER_RETENTION_HOURS",
        default_value_t = 168.0
    )]
    pub ledger_retention_hours: f64,
    /// Address of the ops endpoint (`/metrics`, `/healthz`, `/readyz`); port 0 picks one (printed).
    #[arg(long, env = "BROADCAST_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// Test hook: exit abruptly at POINT:N (before-call, after-call, after-ledger).
    #[arg(long, env = "BROADCAST_TEST_CRASH_AT", hide = true)]
    pub crash_at: Option<String>,
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
    #[arg(long, env = "BROADCAST_RATE", default_value_t = 1.0)]
    pub rate: f64,
    /// Milliseconds added to each second of the bucket, against clock jitter.
    #[arg(long, env = "BROADCAST_RATE_GUARD_MS", default_value_t = 10)]
    pub rate_guard_ms: u64,
    /// Unacked jobs held at once (bounds memory and how much one call can merge).
    #[arg(long, env = "BROADCAST_PREFETCH", default_value_t = 1000)]
    pub prefetch: u16,
    /// Largest call body in bytes (at most 12000).
    #[arg(long, env = "BROADCAST_MAX_BATCH_BYTES", default_value_t = crate::tencent::client::MAX_BODY_BYTES)]
    pub max_batch_bytes: usize,
    /// Jobs merged into one call at most (1 sends each job alone).
    #[arg(long, env = "BROADCAST_MAX_JOBS_PER_CALL")]
    pub max_jobs_per_call: Option<usize>,
    /// Transient failures of one call before its jobs are dead-lettered.
    #[arg(long, env = "BROADCAST_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: u32,
    /// Seconds a call may keep retrying (keep under the service's 300 s repeat window).
    #[arg(long, env = "BROADCAST_MAX_RETRY_AGE_SECS", default_value_t = 240)]
    pub max_retry_age_secs: u64,
    /// First retry delay in milliseconds (doubles, with jitter).
    #[arg(long, env = "BROADCAST_BACKOFF_MIN_MS", default_value_t = 500)]
    pub backoff_min_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(long, env = "BROADCAST_BACKOFF_MAX_MS", default_value_t = 30_000)]
    pub backoff_max_ms: u64,
    /// Request timeout in milliseconds (longer than the service's own 3 s).
    #[arg(long, env = "TIM_REQUEST_TIMEOUT_MS", default_value_t = 5_000)]
    pub request_timeout_ms: u64,
    /// Connect timeout in milliseconds.
    #[arg(long, env = "TIM_CONNECT_TIMEOUT_MS", default_value_t = 3_000)]
    pub connect_timeout_ms: u64,
    /// On an app-wide fault (10007, SDKAppID or signature errors): halt and keep jobs, or dead-letter them.
    #[arg(long, env = "BROADCAST_ON_APP_FAULT", value_enum, default_value_t = AppFaultPolicy::Halt)]
    pub on_app_fault: AppFaultPolicy,
    /// Seconds between probe calls while halted by an app-wide fault.
    #[arg(long, env = "BROADCAST_APP_FAULT_PROBE_SECS", default_value_t = 30.0)]
    pub app_fault_probe_secs: f64,
    /// Reclassify ErrorCodes, e.g. `80003=permanent,12345=transient`
    /// (classes: transient, rate-limited, resign, permanent, app-fault).
    #[arg(long, env = "BROADCAST_CLASS_OVERRIDES", default_value = "")]
    pub class_overrides: String,
    /// Seconds a signed UserSig is valid (renewed at three quarters).
    #[arg(long, env = "TIM_USERSIG_TTL_SECS", default_value_t = 86_400)]
    pub usersig_ttl_secs: u64,
    /// Seconds to finish the call in flight after SIGINT or SIGTERM.
    #[arg(long, env = "BROADCAST_SHUTDOWN_TIMEOUT_SECS", default_value_t = 15)]
    pub shutdown_timeout_secs: u64,
}

impl RunArgs {
    /// Checks every setting and says what is wrong, one mistake at a time.
    pub fn worker_config(&self) -> anyhow::Result<WorkerConfig> {
        let topology = self.broker.check()?;
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
        if self.app.identifier.trim().is_empty() {
            bail!("TIM_IDENTIFIER must not be empty");
        }
        let secret_key = self.app.secret.load()?;
        if !(self.rate.is_finite() && self.rate > 0.0) {
            bail!(
                "BROADCAST_RATE must be a positive number of calls per second, not {}",
                self.rate
            );
        }
        if self.prefetch == 0 {
            bail!("BROADCAST_PREFETCH must be at least 1");
        }
        if self.max_batch_bytes > crate::tencent::client::MAX_BODY_BYTES
            || self.max_batch_bytes < 256
        {
            bail!(
                "BROADCAST_MAX_BATCH_BYTES must be from 256 to {}, not {}",
                crate::tencent::client::MAX_BODY_BYTES,
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
        let classifier = Classifier::parse_overrides(&self.class_overrides)?;
        let mut api = ApiConfig::new(base_url, self.app.sdkappid, self.app.identifier.clone());
        api.request_timeout = Duration::from_millis(self.request_timeout_ms);
        api.connect_timeout = Duration::from_millis(self.connect_timeout_ms);
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
        config.max_batch_bytes = self.max_batch_bytes;
        if self.max_jobs_per_call == Some(0) {
            bail!("BROADCAST_MAX_JOBS_PER_CALL must be at least 1");
        }
        config.max_jobs_per_call = self.max_jobs_per_call.unwrap_or(usize::MAX);
        config.max_attempts = self.max_attempts;
        config.max_retry_age = Duration::from_secs(self.max_retry_age_secs);
        config.backoff_min = Duration::from_millis(self.backoff_min_ms.max(1));
        config.backoff_max =
            Duration::from_millis(self.backoff_max_ms.max(self.backoff_min_ms).max(1));
        config.on_app_fault = self.on_app_fault;
        config.app_fault_probe = Duration::from_secs_f64(self.app_fault_probe_secs);
        config.classifier = classifier;
        config.usersig_ttl = Duration::from_secs(self.usersig_ttl_secs.max(60));
        if let Some(url) = &self.database_url {
            config.ledger = Some(Ledger::connect_lazy(url)?);
        }
        if self.resend_window_secs >= 300 {
            tracing::warn!("BROADCAST_RESEND_WINDOW_SECS reaches the service's 300 s repeat window: a resend may be delivered twice");
        }
        config.resend_window = Duration::from_secs(self.resend_window_secs);
        config.in_doubt = self.in_doubt;
        if !(self.ledger_retention_hours.is_finite() && self.ledger_retention_hours > 0.0) {
            bail!("BROADCAST_LEDGER_RETENTION_HOURS must be positive");
        }
        config.ledger_retention = Duration::from_secs_f64(self.ledger_retention_hours * 3600.0);
        config.crash_at = self
            .crash_at
            .as_deref()
            .map(crate::pipeline::crash::parse_crash_at)
            .transpose()
            .map_err(|e| anyhow::anyhow!("BROADCAST_TEST_CRASH_AT: {e}"))?;
        Ok(config)
    }
}

#[derive(Debug, clap::Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// A file of jobs, one JSON body per line (`-` or absent: standard input).
    #[arg(long, conflicts_with = "text")]
    pub file: Option<std::path::PathBuf>,
    /// Publish one text broadcast instead of reading lines.
    #[arg(long)]
    pub text: Option<String>,
    /// With --text: the sender account.
    #[arg(long, requires = "text")]
    pub from_account: Option<String>,
    /// With --text: CloudCustomData.
    #[arg(long, requires = "text")]
    pub cloud_custom_data: Option<String>,
    /// Dead-letter the job as expired if not sent within this many seconds.
    #[arg(long)]
    pub deadline_secs: Option<f64>,
    /// Let the broker drop the job if not consumed within this many seconds.
    #[arg(long)]
    pub expiration_secs: Option<f64>,
    /// The worker's largest call body, for the size check.
    #[arg(long, env = "BROADCAST_MAX_BATCH_BYTES", default_value_t = crate::tencent::client::MAX_BODY_BYTES)]
    pub max_batch_bytes: usize,
}

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, env = "SIMULATOR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub app: AppArgs,
    /// The app's frequency limit in calls per second (fractions allowed).
    #[arg(long, env = "SIMULATOR_RATE", default_value_t = 1.0)]
    pub rate: f64,
    /// The largest body accepted, in bytes.
    #[arg(long, default_value_t = crate::tencent::client::MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// The repeat filter's window in seconds.
    #[arg(long, default_value_t = 300)]
    pub repeat_window_secs: u64,
    /// Comma-separated accounts that exist; any other From_Account answers 70107.
    #[arg(long, value_delimiter = ',')]
    pub accounts: Option<Vec<String>>,
    /// Do not keep delivered bodies (long benchmarks); counters are still kept.
    #[arg(long)]
    pub no_keep_bodies: bool,
    /// A fault plan as JSON, as `POST /simulator/faults` takes.
    #[arg(long)]
    pub faults: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum UsersigCommand {
    /// Print a UserSig for the app admin.
    Sign(SignArgs),
    /// Check a UserSig; prints its claims, or why it is refused (exit 1).
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    #[command(flatten)]
    pub app: AppArgs,
    /// Validity in seconds.
    #[arg(long, default_value_t = 86_400 * 180)]
    pub expire: u64,
    /// Signing time in unix seconds (default: now).
    #[arg(long)]
    pub time: Option<u64>,
    /// Optional userbuf, base64.
    #[arg(long)]
    pub userbuf_base64: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The app, the identifier the UserSig must be for, and the key.
    #[command(flatten)]
    pub app: AppArgs,
    /// Check as of this unix time (default: now).
    #[arg(long)]
    pub at: Option<u64>,
    /// The UserSig; `-` or absent reads standard input.
    pub usersig: Option<String>,
}

impl Cli {
    pub fn init_logging(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }

    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Run(args) => run(*args).await,
            Command::Dlq(command) => dlq(command).await,
            Command::Migrate(args) => {
                args.ledger()?.migrate().await?;
                println!("ledger migrations applied");
                Ok(ExitCode::SUCCESS)
            }
            Command::Jobs(JobsCommand::Show {
                ledger,
                job_id,
                json,
            }) => show_job(&ledger, &job_id, json).await,
            Command::Enqueue(args) => enqueue(args).await,
            Command::Simulate(args) => simulate(args).await,
            Command::Usersig(UsersigCommand::Sign(args)) => sign(args),
            Command::Usersig(UsersigCommand::Verify(args)) => verify(args),
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = args.worker_config()?;
    info!(
        queue = %config.topology.names.jobs,
        rate = config.rate,
        max_batch_bytes = config.max_batch_bytes,
        base_url = %config.api.base_url,
        sdkappid = config.api.sdkappid,
        "starting the worker"
    );
    let shutdown = CancellationToken::new();
    match &config.ledger {
        None => tracing::warn!("no DATABASE_URL: running without a ledger, delivery is at least once (a crash between a call and its acks repeats the call)"),
        Some(ledger) if !args.no_migrate => {
            let migrated = tokio::select! {
                result = migrate_until_done(ledger) => result,
                _ = shutdown_signal() => return Ok(ExitCode::SUCCESS),
            };
            migrated?;
            info!(in_doubt = ?config.in_doubt, resend_window = ?config.resend_window, "ledger ready: each job is delivered once");
        }
        Some(_) => info!("ledger in use (migrations skipped): each job is delivered once"),
    }
    let worker = Worker::new(config)?;
    let metrics = crate::ops::telemetry::install_recorder()?;
    crate::ops::telemetry::describe();
    metrics::gauge!(crate::ops::telemetry::RATE).set(args.rate);
    let ops = crate::ops::telemetry::serve(args.metrics_addr, metrics, worker.status())
        .await
        .with_context(|| format!("cannot listen on {} for metrics", args.metrics_addr))?;
    println!("ops endpoint listening on http://{ops}");
    info!(%ops, "ops endpoint: /metrics, /healthz, /readyz");
    let task = tokio::spawn(worker.run(shutdown.clone()));
    tokio::pin!(task);
    tokio::select! {
        result = &mut task => {
            result??;
            return Ok(ExitCode::SUCCESS);
        }
        _ = shutdown_signal() => {}
    }
    info!(
        timeout_secs = args.shutdown_timeout_secs,
        "shutting down: finishing the call in flight"
    );
    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(args.shutdown_timeout_secs), &mut task).await {
        Ok(result) => {
            result??;
            info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(_) => {
            tracing::error!(
                "shutdown timed out; unsettled jobs return to the queue when the connection closes"
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Applies the migrations, waiting for the database if it is down; a failing
/// migration itself is an error.
async fn migrate_until_done(ledger: &Ledger) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(500);
    loop {
        match ledger.migrate().await {
            Ok(()) => return Ok(()),
            Err(LedgerError::Database(e)) => {
                tracing::warn!(error = %e, retry_in = ?delay, "the ledger database is not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn show_job(ledger: &LedgerArgs, job_id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let Some(report) = ledger.ledger()?.show(job_id).await? else {
        eprintln!("the ledger knows no job {job_id:?} (never sent, or pruned)");
        return Ok(ExitCode::FAILURE);
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let others = report.call_jobs - 1;
    match report.state {
        JobState::Delivered => println!(
            "{job_id}: delivered at {} (unix ms), MsgSeq {}, in call {} with {others} other job(s)",
            report.updated_at_ms,
            report.msg_seq.map_or("unknown".to_string(), |s| s.to_string()),
            report.call_id
        ),
        JobState::DeadLettered => println!(
            "{job_id}: dead-lettered at {} (unix ms): {}, ErrorCode {}, {}",
            report.updated_at_ms,
            report.reason.as_deref().unwrap_or("?"),
            report.error_code.map_or("none".to_string(), |c| c.to_string()),
            report.error_info.as_deref().unwrap_or("")
        ),
        JobState::InFlight => println!(
            "{job_id}: in flight in call {} (state {}) since {} (unix ms), with {others} other job(s)",
            report.call_id, report.call_state, report.call_started_ms
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn dlq(command: DlqCommand) -> anyhow::Result<ExitCode> {
    let broker_args = match &command {
        DlqCommand::List { broker, .. }
        | DlqCommand::Show { broker, .. }
        | DlqCommand::Replay { broker, .. }
        | DlqCommand::Purge { broker, .. } => broker.clone(),
    };
    let names = broker_args.check()?.names;
    let connection = broker::connect(&broker_args.amqp_url, "broadcast-worker dlq").await?;
    let channel = broker::confirm_channel(&connection).await?;
    channel
        .queue_declare(
            names.dead.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("there is no dead-letter queue {}: {e}", names.dead))?;
    let dead = dlq::read_all(&channel, &names.dead).await?;
    let now = dlq::now_ms();
    let code = match command {
        DlqCommand::List {
            filter,
            newest_first,
            limit,
            json,
            ..
        } => {
            let selection = filter.selection();
            let mut shown: Vec<&DeadInfo> = dead
                .iter()
                .map(|d| &d.info)
                .filter(|i| selection.matches(i, now))
                .collect();
            if newest_first {
                shown.reverse();
            }
            let summary = dlq::summarize(shown.iter().copied());
            shown.truncate(limit.unwrap_or(usize::MAX));
            if json {
                let summary: Vec<_> = summary
                    .iter()
                    .map(|((reason, code), count)| serde_json::json!({"reason": reason, "code": code, "count": count}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"total": dead.len(), "summary": summary, "jobs": shown})
                );
            } else {
                println!(
                    "{:<36} {:<18} {:>6} {:>8} {:>8} {:>7}  INFO",
                    "ID", "REASON", "CODE", "AGE", "ATTEMPTS", "REPLAYS"
                );
                for info in &shown {
                    println!(
                        "{:<36} {:<18} {:>6} {:>8} {:>8} {:>7}  {}",
                        info.id,
                        info.reason,
                        info.error_code.map_or("-".into(), |c| c.to_string()),
                        info.age_secs(now).map_or("?".into(), |a| format!("{a}s")),
                        info.attempts.map_or("-".into(), |a| a.to_string()),
                        info.replays,
                        info.error_info.as_deref().unwrap_or("")
                    );
                }
                let counts: Vec<String> = summary
                    .iter()
                    .map(|((reason, code), n)| format!("{reason}/{code}: {n}"))
                    .collect();
                println!(
                    "{} of {} dead letters match; by reason/code: {}",
                    summary.values().sum::<usize>(),
                    dead.len(),
                    counts.join(", ")
                );
            }
            ExitCode::SUCCESS
        }
        DlqCommand::Show { job_id, .. } => match dead.iter().find(|d| d.id == job_id) {
            Some(job) => {
                let body =
                    serde_json::from_slice::<serde_json::Value>(&job.body).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&job.body).into_owned())
                    });
                let headers: serde_json::Map<String, serde_json::Value> = job
                    .properties
                    .headers()
                    .as_ref()
                    .map(|h| {
                        h.inner()
                            .iter()
                            .map(|(k, v)| (k.to_string(), amqp_to_json(v)))
                            .collect()
                    })
                    .unwrap_or_default();
                let p = &job.properties;
                let report = serde_json::json!({
                    "id": job.id,
                    "why": job.info,
                    "body": body,
                    "properties": {
                        "message_id": p.message_id().as_ref().map(|s| s.to_string()),
                        "content_type": p.content_type().as_ref().map(|s| s.to_string()),
                        "timestamp": p.timestamp(),
                        "expiration": p.expiration().as_ref().map(|s| s.to_string()),
                        "delivery_mode": p.delivery_mode(),
                        "headers": headers,
                    },
                });
                println!("{}", serde_json::to_string_pretty(&report)?);
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("no dead letter with id {job_id:?} in {}", names.dead);
                ExitCode::FAILURE
            }
        },
        DlqCommand::Replay {
            select,
            dry_run,
            crash_at,
            ..
        } => {
            let selection = select.selection()?;
            let crash_after: Option<usize> = crash_at
                .as_deref()
                .and_then(|s| s.strip_prefix("after-publish:"))
                .and_then(|n| n.parse().ok());
            let chosen: Vec<DeadJob> = dead
                .into_iter()
                .filter(|d| selection.matches(&d.info, now))
                .collect();
            if dry_run {
                for job in &chosen {
                    println!(
                        "would replay {} ({}, replayed {} time(s) before)",
                        job.id, job.info.reason, job.info.replays
                    );
                }
                println!("would replay {} job(s); nothing moved", chosen.len());
            } else {
                let progress = indicatif::ProgressBar::new(chosen.len() as u64);
                let mut replayed = 0;
                for job in chosen {
                    let id = job.id.clone();
                    job.replay(&channel, &names.jobs, || {
                        if crash_after == Some(replayed + 1) {
                            eprintln!(
                                "test hook: exiting after a confirmed publish, before its removal"
                            );
                            std::process::exit(137);
                        }
                    })
                    .await?;
                    replayed += 1;
                    progress.inc(1);
                    progress.suspend(|| println!("replayed {id}"));
                }
                progress.finish_and_clear();
                println!("replayed {replayed} job(s) to {}", names.jobs);
            }
            ExitCode::SUCCESS
        }
        DlqCommand::Purge { select, yes, .. } => {
            let selection = select.selection()?;
            let chosen: Vec<DeadJob> = dead
                .into_iter()
                .filter(|d| selection.matches(&d.info, now))
                .collect();
            if !yes {
                for job in &chosen {
                    println!("would remove {} ({})", job.id, job.info.reason);
                }
                eprintln!(
                    "{} job(s) selected; nothing removed: purge needs --yes",
                    chosen.len()
                );
                let _ = channel.close(200, "dlq done".into()).await;
                let _ = connection.close(200, "dlq done".into()).await;
                return Ok(ExitCode::FAILURE);
            }
            let progress = indicatif::ProgressBar::new(chosen.len() as u64);
            let mut removed = 0;
            for job in chosen {
                let line = format!(
                    "removed {} ({}, {})",
                    job.id,
                    job.info.reason,
                    job.info.error_info.as_deref().unwrap_or("")
                );
                job.remove().await?;
                removed += 1;
                progress.inc(1);
                progress.suspend(|| println!("{line}"));
            }
            progress.finish_and_clear();
            println!("removed {removed} job(s) from {}", names.dead);
            ExitCode::SUCCESS
        }
    };
    // Whatever was not replayed or removed goes back, in its place.
    let _ = channel.close(200, "dlq done".into()).await;
    let _ = connection.close(200, "dlq done".into()).await;
    Ok(code)
}

/// An AMQP header value as JSON, for `dlq show`.
fn amqp_to_json(value: &lapin::types::AMQPValue) -> serde_json::Value {
    use lapin::types::AMQPValue as V;
    match value {
        V::Boolean(b) => (*b).into(),
        V::ShortShortInt(v) => (*v).into(),
        V::ShortShortUInt(v) => (*v).into(),
        V::ShortInt(v) => (*v).into(),
        V::ShortUInt(v) => (*v).into(),
        V::LongInt(v) => (*v).into(),
        V::LongUInt(v) => (*v).into(),
        V::LongLongInt(v) => (*v).into(),
        V::Float(v) => (*v).into(),
        V::Double(v) => (*v).into(),
        V::Timestamp(v) => (*v).into(),
        V::ShortString(s) => s.as_str().into(),
        V::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned().into(),
        V::FieldArray(items) => items.as_slice().iter().map(amqp_to_json).collect(),
        V::FieldTable(table) => table
            .inner()
            .iter()
            .map(|(k, v)| (k.to_string(), amqp_to_json(v)))
            .collect(),
        V::Void => serde_json::Value::Null,
        other => format!("{other:?}").into(),
    }
}

async fn enqueue(args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    let topology = args.broker.check()?;
    let secs = |what: &str, s: Option<f64>| -> anyhow::Result<Option<Duration>> {
        match s {
            Some(s) if !(s.is_finite() && s > 0.0) => bail!("{what} must be positive"),
            Some(s) => Ok(Some(Duration::from_secs_f64(s))),
            None => Ok(None),
        }
    };
    let options = PublishOptions {
        deadline_in: secs("--deadline-secs", args.deadline_secs)?,
        expiration: secs("--expiration-secs", args.expiration_secs)?,
        max_call_bytes: args
            .max_batch_bytes
            .min(crate::tencent::client::MAX_BODY_BYTES),
    };
    let input: Box<dyn std::io::BufRead> = match (&args.text, &args.file) {
        (Some(text), _) => {
            let mut body = serde_json::json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}]});
            if let Some(from) = &args.from_account {
                body["From_Account"] = from.as_str().into();
            }
            if let Some(data) = &args.cloud_custom_data {
                body["CloudCustomData"] = data.as_str().into();
            }
            Box::new(std::io::Cursor::new(body.to_string()))
        }
        (None, Some(path)) if path.as_os_str() != "-" => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        _ => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let connection = broker::connect(&args.broker.amqp_url, "broadcast-worker enqueue").await?;
    topology.declare(&connection).await?;
    let channel = broker::confirm_channel(&connection).await?;
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} lines, {per_sec} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let summary = publish_lines(
        &channel,
        &topology.names.jobs,
        input,
        &options,
        512,
        |result| {
            progress.inc(1);
            match result {
                LineResult::Published { .. } => {}
                LineResult::Invalid { line, reason } => {
                    progress.suspend(|| eprintln!("line {line}: not published: {reason}"))
                }
                LineResult::Failed { line, reason } => {
                    progress.suspend(|| eprintln!("line {line}: publish failed: {reason}"))
                }
            }
        },
    )
    .await;
    progress.finish_and_clear();
    let _ = connection.close(200, "enqueue done".into()).await;
    let summary = summary?;
    println!(
        "published {}, invalid {}, failed {}",
        summary.published, summary.invalid, summary.failed
    );
    Ok(if summary.all_published() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!(
            "--rate must be a positive number of calls per second, not {}",
            args.rate
        );
    }
    let mut config = SimulatorConfig::new(
        args.app.sdkappid,
        args.app.identifier.clone(),
        args.app.secret.load()?,
    );
    config.rate = args.rate;
    config.max_body_bytes = args.max_body_bytes;
    config.repeat_window = Duration::from_secs(args.repeat_window_secs);
    config.known_accounts = args.accounts.map(|a| a.into_iter().collect::<HashSet<_>>());
    config.keep_bodies = !args.no_keep_bodies;
    let simulator = Simulator::new(config);
    if let Some(plan) = &args.faults {
        let plan: FaultPlan = serde_json::from_str(plan).context("--faults is not a fault plan")?;
        simulator.set_faults(plan);
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("simulator listening on http://{addr}");
    tracing::info!(%addr, sdkappid = args.app.sdkappid, rate = args.rate, "simulator started");
    simulator.serve(listener, shutdown_signal()).await?;
    tracing::info!("simulator stopped");
    Ok(ExitCode::SUCCESS)
}

fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let key = args.app.secret.load()?;
    let userbuf = args
        .userbuf_base64
        .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
        .transpose()
        .context("--userbuf-base64 is not base64")?;
    let claims = Claims {
        identifier: args.app.identifier,
        sdkappid: args.app.sdkappid,
        time: args.time.unwrap_or_else(crate::tencent::usersig::unix_now),
        expire: args.expire,
        userbuf,
    };
    println!("{}", usersig::sign(&key, &claims).expose());
    Ok(ExitCode::SUCCESS)
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let key = args.app.secret.load()?;
    let sig = match args.usersig.as_deref() {
        Some(sig) if sig != "-" => sig.to_string(),
        _ => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("cannot read the UserSig from standard input")?;
            input.trim().to_string()
        }
    };
    let now = args.at.unwrap_or_else(crate::tencent::usersig::unix_now);
    match usersig::verify(&sig, &key, args.app.sdkappid, &args.app.identifier, now) {
        Ok(claims) => {
            let report = serde_json::json!({
                "valid": true,
                "identifier": claims.identifier,
                "sdkappid": claims.sdkappid,
                "time": claims.time,
                "expire": claims.expire,
                "expires_at": claims.expires_at(),
                "userbuf_base64": claims.userbuf.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
            });
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("invalid: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
