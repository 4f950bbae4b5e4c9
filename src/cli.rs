//! The command line: one binary, a subcommand per job an operator or a test
//! has to do. Each command parses its flags (with environment fallbacks),
//! builds what it needs, and returns an exit code.

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{AppArgs, SecretArgs};
use crate::simulator::{FaultPlan, Simulator, SimulatorConfig};
use crate::usersig::{self, Claims};

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
    /// Run a local send_broadcast_msg for tests, benchmarks and demos.
    Simulate(SimulateArgs),
    /// Sign or verify an admin UserSig.
    #[command(subcommand)]
    Usersig(UsersigCommand),
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
    #[arg(long, default_value_t = crate::api::MAX_BODY_BYTES)]
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
    /// The app's SDKAppID.
    #[arg(long, env = "TIM_SDKAPPID")]
    pub sdkappid: u64,
    /// The identifier the UserSig must be for.
    #[arg(long, env = "TIM_IDENTIFIER")]
    pub identifier: String,
    #[command(flatten)]
    pub secret: SecretArgs,
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
            Command::Simulate(args) => simulate(args).await,
            Command::Usersig(UsersigCommand::Sign(args)) => sign(args),
            Command::Usersig(UsersigCommand::Verify(args)) => verify(args),
        }
    }
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
        time: args.time.unwrap_or_else(crate::simulator::unix_now),
        expire: args.expire,
        userbuf,
    };
    println!("{}", usersig::sign(&key, &claims).expose());
    Ok(ExitCode::SUCCESS)
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let key = args.secret.load()?;
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
    let now = args.at.unwrap_or_else(crate::simulator::unix_now);
    match usersig::verify(&sig, &key, args.sdkappid, &args.identifier, now) {
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
