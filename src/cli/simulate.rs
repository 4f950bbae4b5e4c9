//! `simulate`: a local send_broadcast_msg for tests, benchmarks and demos; its
//! flags, and serving it until SIGINT or SIGTERM.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cli::app::AppArgs;
use crate::cli::shutdown_signal;
use crate::tencent::body::MAX_BODY_BYTES;
use crate::tencent::simulator::{FaultPlan, RepeatBy, Simulator, SimulatorConfig};

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
    #[arg(long, default_value_t = MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// The repeat filter's window in seconds.
    #[arg(long, default_value_t = 300)]
    pub repeat_window_secs: u64,
    /// What makes a call a repeat: the same content and Random (the
    /// documentation's text), or the same Random alone (its example's comment).
    #[arg(long, value_enum, default_value_t = RepeatBy::ContentAndRandom)]
    pub repeat_by: RepeatBy,
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

impl SimulateArgs {
    /// Serves the simulator until a signal, printing the address it listens on.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let simulator = Simulator::new(self.simulator_config()?);
        if let Some(plan) = &self.faults {
            let plan: FaultPlan =
                serde_json::from_str(plan).context("--faults is not a fault plan")?;
            simulator.set_faults(plan);
        }
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.listen))?;
        let addr = listener.local_addr()?;
        println!("simulator listening on http://{addr}");
        tracing::info!(%addr, sdkappid = ?self.app.sdkappid, rate = self.rate, "simulator started");
        simulator.serve(listener, shutdown_signal()).await?;
        tracing::info!("simulator stopped");
        Ok(ExitCode::SUCCESS)
    }

    fn simulator_config(&self) -> anyhow::Result<SimulatorConfig> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            bail!(
                "--rate must be a positive number of calls per second, not {}",
                self.rate
            );
        }
        let mut config = SimulatorConfig::new(
            self.app.sdkappid()?,
            self.app.identifier()?,
            self.app.secret.load()?,
        );
        config.rate = self.rate;
        config.max_body_bytes = self.max_body_bytes;
        config.repeat_window = Duration::from_secs(self.repeat_window_secs);
        config.repeat_by = self.repeat_by;
        config.known_accounts = self
            .accounts
            .as_ref()
            .map(|a| a.iter().cloned().collect::<HashSet<_>>());
        config.keep_bodies = !self.no_keep_bodies;
        Ok(config)
    }
}
