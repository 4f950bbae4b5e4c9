//! The command line: one binary, a subcommand per job an operator or a test
//! has to do. Each command parses its flags (with environment fallbacks),
//! builds what it needs, and returns an exit code.
//!
//! - this file: [`Cli`], the [`Command`] dispatch, logging.
//! - [`signal`]: [`signal::shutdown_signal`], SIGINT or SIGTERM.
//! - [`args`]: the broker and ledger flags several commands share, and
//!   `--app`, which points `enqueue`, `dlq` and `jobs show` at one app of a
//!   fleet's apps file.
//! - [`app`]: the app's identity and secret key (`run`, `simulate`, `usersig`).
//! - [`run`]: `run`, the worker's settings checked into a worker configuration;
//!   `fleet`: `run --apps-file`, each app's settings and the fleet's reloads;
//!   `lifecycle`: the life both share (migrate, serve, signal, timeout).
//! - [`demo`]: `demo`, the simulator, a worker and a sample burst in one process.
//! - [`enqueue`]: `enqueue`, publishing jobs from lines or `--text`.
//! - [`dlq`]: `dlq list|show|replay|purge`.
//! - [`jobs`]: `jobs show` and `migrate`, the ledger's commands.
//! - [`simulate`]: `simulate`, the local service.
//! - [`usersig`]: `usersig sign|verify`.

pub mod app;
pub mod args;
pub mod demo;
pub mod dlq;
pub mod enqueue;
mod fleet;
pub mod ingest;
pub mod jobs;
mod lifecycle;
pub mod run;
pub mod signal;
pub mod simulate;
pub mod usersig;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use self::args::LedgerArgs;
use self::demo::DemoArgs;
use self::dlq::DlqCommand;
use self::enqueue::EnqueueArgs;
use self::ingest::IngestArgs;
use self::jobs::JobsCommand;
use self::run::RunArgs;
use self::simulate::SimulateArgs;
use self::usersig::UsersigCommand;

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
    /// See it work: the simulator and a worker in one process, a sample burst with
    /// a few bad jobs, progress, then the console's address and token.
    Demo(DemoArgs),
    /// Publish jobs: one JSON body per line from a file or standard input, or --text.
    Enqueue(EnqueueArgs),
    /// Serve producers over HTTP: POST jobs, published with confirms (see README, "Producers").
    Ingest(Box<IngestArgs>),
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

impl Cli {
    pub fn init_logging(&self) {
        // The demo's terminal shows its progress line and a summary; the
        // worker's lines would bury them (RUST_LOG still turns them on).
        let default = match self.command {
            Command::Demo(_) => "error",
            _ => "info",
        };
        let asked = std::env::var("RUST_LOG").unwrap_or_default();
        let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
        // lapin logs an ERROR for every channel the broker closes, the
        // expected 404 of a passive declare included (one per app at each
        // start of a fleet); every close that matters reaches the worker as
        // an error it logs with its app. Shown only when RUST_LOG names lapin.
        if !asked.contains("lapin") {
            filter = filter.add_directive("lapin::channel=off".parse().expect("a valid directive"));
        }
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
            Command::Run(args) => args.run().await,
            Command::Demo(args) => args.run().await,
            Command::Enqueue(args) => args.run().await,
            Command::Ingest(args) => args.run().await,
            Command::Dlq(command) => command.run().await,
            Command::Migrate(args) => jobs::migrate(&args).await,
            Command::Jobs(command) => command.run().await,
            Command::Simulate(args) => args.run().await,
            Command::Usersig(command) => command.run(),
        }
    }
}
