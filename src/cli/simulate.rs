//! `simulate`: a local send_broadcast_msg for tests, benchmarks and demos; its
//! flags, the apps it hosts (the one app of TIM_SDKAPPID, or every app of an
//! apps file), and serving them until SIGINT or SIGTERM.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::cli::app::AppArgs;
use crate::cli::signal::shutdown_signal;
use crate::fleet::apps::read_apps_file;
use crate::settings::AppSettings;
use crate::simulator::{FaultPlan, RepeatBy, SimulatorConfig, SimulatorSet};
use crate::tencent::body::MAX_BODY_BYTES;
use crate::tencent::usersig::SecretKey;

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, env = "SIMULATOR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub app: AppArgs,
    /// Host every app of this TOML file (the `[[app]]` tables `run
    /// --apps-file` reads: sdkappid, identifier, secret_key_file, rate)
    /// instead of the one app of TIM_SDKAPPID; calls go to the app their
    /// sdkappid names.
    #[arg(long, env = "BROADCAST_APPS_FILE")]
    pub apps_file: Option<PathBuf>,
    /// The app's frequency limit in calls per second (fractions allowed); with
    /// an apps file, the limit of each app whose entry gives no `rate`.
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
        let set = self.simulator_set()?;
        if let Some(plan) = &self.faults {
            let plan: FaultPlan =
                serde_json::from_str(plan).context("--faults is not a fault plan")?;
            for simulator in set.simulators() {
                simulator.set_faults(plan.clone());
            }
        }
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.listen))?;
        let addr = listener.local_addr()?;
        println!("simulator listening on http://{addr}");
        tracing::info!(%addr, apps = set.simulators().count(), "simulator started");
        set.serve(listener, shutdown_signal()).await?;
        tracing::info!("simulator stopped");
        Ok(ExitCode::SUCCESS)
    }

    /// The apps to host: every app of the apps file, or the one of the flags.
    fn simulator_set(&self) -> anyhow::Result<SimulatorSet> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            bail!(
                "--rate must be a positive number of calls per second, not {}",
                self.rate
            );
        }
        let configs = match &self.apps_file {
            Some(path) => self.apps_file_configs(path)?,
            None => vec![self.simulator_config(
                self.app.sdkappid()?,
                self.app.identifier()?,
                self.app.secret.load()?,
                self.rate,
            )],
        };
        for config in &configs {
            tracing::info!(sdkappid = config.sdkappid, identifier = %config.identifier, rate = config.rate, "hosting app");
        }
        Ok(SimulatorSet::new(configs)?)
    }

    /// One configuration per app of the file: its identity, key and rate,
    /// with this command line's settings for everything else.
    fn apps_file_configs(&self, path: &Path) -> anyhow::Result<Vec<SimulatorConfig>> {
        if self.app.sdkappid.is_some() {
            tracing::warn!(
                "an apps file is given: TIM_SDKAPPID (--sdkappid) and the app flags are ignored"
            );
        }
        read_apps_file(path)?
            .into_iter()
            .map(|entry| {
                let key = entry
                    .secret_key()
                    .map_err(|e| anyhow!("app {}: {e}", entry.sdkappid))?;
                let flags = AppSettings {
                    rate: self.rate,
                    ..AppSettings::default()
                };
                let rate = entry
                    .settings_over(&flags)
                    .map_err(|e| anyhow!("app {}: {e}", entry.sdkappid))?
                    .rate;
                Ok(self.simulator_config(entry.sdkappid, entry.identifier, key, rate))
            })
            .collect()
    }

    /// One app's configuration, with this command line's shared settings.
    fn simulator_config(
        &self,
        sdkappid: u64,
        identifier: String,
        secret_key: SecretKey,
        rate: f64,
    ) -> SimulatorConfig {
        let mut config = SimulatorConfig::new(sdkappid, identifier, secret_key);
        config.rate = rate;
        config.max_body_bytes = self.max_body_bytes;
        config.repeat_window = Duration::from_secs(self.repeat_window_secs);
        config.repeat_by = self.repeat_by;
        config.known_accounts = self
            .accounts
            .as_ref()
            .map(|a| a.iter().cloned().collect::<HashSet<_>>());
        config.keep_bodies = !self.no_keep_bodies;
        config
    }
}
