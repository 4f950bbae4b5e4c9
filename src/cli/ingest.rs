//! `ingest`: the producers' HTTP endpoint as a process of its own (see
//! [`crate::ingest`]): its flags, the apps it serves (the single app, or
//! every app of the apps file), and its life until SIGTERM.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tracing::{info, warn};

use crate::cli::args::BrokerArgs;
use crate::fleet::apps::read_apps_file;
use crate::ingest::{router, AppRoute, Ingest, Publisher, Tokens};
use crate::ledger::Ledger;
use crate::pipeline::config::defaults;
use crate::pipeline::{CallRules, CustomMerge};
use crate::settings::AppSettings;
use crate::tencent::body::MAX_BODY_BYTES;

use super::signal::shutdown_signal;

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Where to listen (plain HTTP: put TLS in front, see README).
    #[arg(long, env = "BROADCAST_INGEST_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The bearer tokens: one per line, `APP TOKEN` (APP an SDKAppID or *).
    #[arg(long, env = "BROADCAST_INGEST_TOKENS_FILE", value_name = "PATH")]
    pub tokens_file: PathBuf,
    /// Requests per second each token may make (a burst of twice that).
    #[arg(
        long,
        env = "BROADCAST_INGEST_REQUESTS_PER_SECOND",
        default_value_t = 100
    )]
    pub requests_per_second: u32,
    /// Serve every app of this apps file (its queues under the fleet's prefix).
    #[arg(long, env = "BROADCAST_APPS_FILE", value_name = "PATH")]
    pub apps_file: Option<PathBuf>,
    /// Without an apps file: the one app served.
    #[arg(long, env = "TIM_SDKAPPID")]
    pub sdkappid: Option<u64>,
    /// The ledger, for idempotency keys and `GET .../broadcasts/{id}`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Idempotency keys older than this are forgotten.
    #[arg(long, env = "BROADCAST_LEDGER_RETENTION_HOURS", default_value_t = defaults::LEDGER_RETENTION_HOURS)]
    pub ledger_retention_hours: f64,
    /// The worker's largest call body, for the size check (an app's entry
    /// in the apps file may set its own).
    #[arg(long, env = "BROADCAST_MAX_BATCH_BYTES", default_value_t = MAX_BODY_BYTES)]
    pub max_batch_bytes: usize,
    /// The worker's custom merge mode, for the size check.
    #[arg(long, env = "BROADCAST_CUSTOM_MERGE", value_enum, default_value_t = CustomMerge::Separate)]
    pub custom_merge: CustomMerge,
}

impl IngestArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let apps = self.apps()?;
        let tokens = Tokens::read(&self.tokens_file, self.requests_per_second)
            .map_err(anyhow::Error::msg)?;
        if !(self.ledger_retention_hours.is_finite() && self.ledger_retention_hours > 0.0) {
            bail!("BROADCAST_LEDGER_RETENTION_HOURS must be positive");
        }
        let ledger = match &self.database_url {
            Some(url) => {
                let ledger = Ledger::connect_lazy(url)?;
                ledger.migrate().await.context("the ledger's migrations")?;
                Some(ledger)
            }
            None => {
                warn!("no DATABASE_URL: an Idempotency-Key is the job's message_id, but a repeated key is published again, and GET .../broadcasts/{{id}} answers 501");
                None
            }
        };
        let pruning = ledger.clone().map(|ledger| {
            let seconds = self.ledger_retention_hours * 3600.0;
            tokio::spawn(async move {
                loop {
                    if let Err(e) = ledger.prune_keys(seconds, 10_000).await {
                        warn!(error = %e, "cannot prune idempotency keys");
                    }
                    tokio::time::sleep(Duration::from_secs(600)).await;
                }
            })
        });
        let served = apps.len();
        let ingest = Arc::new(Ingest::new(
            apps,
            tokens,
            Publisher::new(self.broker.url()),
            ledger,
        ));
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.listen))?;
        info!(addr = %listener.local_addr()?, apps = served, "ingest endpoint listening");
        axum::serve(listener, router(ingest))
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        if let Some(pruning) = pruning {
            pruning.abort();
        }
        Ok(ExitCode::SUCCESS)
    }

    /// The apps served: every app of the apps file, or the single app.
    fn apps(&self) -> anyhow::Result<HashMap<u64, AppRoute>> {
        let flags = AppSettings {
            max_batch_bytes: self.max_batch_bytes,
            custom_merge: self.custom_merge,
            ..AppSettings::default()
        };
        let rules = |settings: &AppSettings| CallRules {
            max_bytes: settings.max_batch_bytes.min(MAX_BODY_BYTES),
            custom_merge: settings.custom_merge,
            ..CallRules::default()
        };
        let mut apps = HashMap::new();
        match (&self.apps_file, self.sdkappid) {
            (Some(path), _) => {
                for entry in read_apps_file(path)? {
                    let settings = entry.settings_over(&flags).map_err(anyhow::Error::msg)?;
                    let topology = self.broker.check_app(entry.sdkappid)?;
                    apps.insert(
                        entry.sdkappid,
                        AppRoute {
                            topology,
                            rules: rules(&settings),
                        },
                    );
                }
            }
            (None, Some(sdkappid)) => {
                let topology = self.broker.check()?;
                apps.insert(
                    sdkappid,
                    AppRoute {
                        topology,
                        rules: rules(&flags),
                    },
                );
            }
            (None, None) => bail!(
                "name the apps served: BROADCAST_APPS_FILE, or TIM_SDKAPPID for the single app"
            ),
        }
        Ok(apps)
    }
}
