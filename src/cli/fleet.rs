//! `run --apps-file`: a fleet's settings (the command line's, with each app's
//! entry over them, and each app's queues under `{prefix}.{sdkappid}`) and
//! its life: migrate the ledger once, serve one ops endpoint for every app,
//! read the file again on SIGHUP, and on SIGINT or SIGTERM let every app
//! finish its call in flight.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::Notify;
use tracing::info;

use crate::broker::{Links, FLEET_CONNECTIONS};
use crate::cli::lifecycle::{serve_until_signal, Lifecycle, Words};
use crate::cli::run::RunArgs;
use crate::console::Console;
use crate::fleet::apps::{read_apps_file, AppEntry};
use crate::fleet::balance::Presence;
use crate::fleet::{Fleet, Loader};
use crate::ledger::Ledger;
use crate::pipeline::WorkerConfig;

/// Ledger connections a fleet's apps share.
const LEDGER_CONNECTIONS: u32 = 16;

impl RunArgs {
    /// One app's worker settings: this command line's, with the app's entry
    /// over them; the ledger is the fleet's.
    fn app_config(
        &self,
        entry: &AppEntry,
        ledger: Option<&Ledger>,
        links: &Links,
    ) -> anyhow::Result<WorkerConfig> {
        let settings = entry
            .settings_over(&self.sending)
            .map_err(anyhow::Error::msg)?;
        let mistakes = settings.mistakes();
        if !mistakes.is_empty() {
            anyhow::bail!("{}", mistakes.join("; "));
        }
        for warning in settings.warnings() {
            tracing::warn!(sdkappid = entry.sdkappid, "{warning}");
        }
        let topology = self.broker.check_app(entry.sdkappid)?;
        let api = settings
            .api(entry.sdkappid, entry.identifier.clone())
            .map_err(anyhow::Error::msg)?;
        let key = entry.secret_key().map_err(anyhow::Error::msg)?;
        let mut config = self.config_for(topology, api, key, &settings, ledger.cloned())?;
        config.links = Some(links.clone());
        Ok(config)
    }

    /// Every app of the file with its settings, or every mistake found.
    fn fleet_configs(
        &self,
        path: &Path,
        ledger: Option<&Ledger>,
        links: &Links,
    ) -> Result<Vec<(AppEntry, WorkerConfig)>, String> {
        let entries = read_apps_file(path).map_err(|e| e.to_string())?;
        let mut apps = Vec::with_capacity(entries.len());
        let mut mistakes = Vec::new();
        for entry in entries {
            match self.app_config(&entry, ledger, links) {
                Ok(config) => apps.push((entry, config)),
                Err(e) => mistakes.push(format!("app {}: {e:#}", entry.sdkappid)),
            }
        }
        if mistakes.is_empty() {
            Ok(apps)
        } else {
            Err(format!(
                "the apps file {} has {} mistake(s):\n{}",
                path.display(),
                mistakes.len(),
                mistakes.join("\n")
            ))
        }
    }

    /// Runs every app of the file until a signal asks the process to stop.
    pub(super) async fn run_fleet(
        self,
        path: PathBuf,
        console: Option<Console>,
    ) -> anyhow::Result<ExitCode> {
        let ledger = self
            .database_url
            .as_deref()
            .map(|url| Ledger::connect_lazy_pooled(url, LEDGER_CONNECTIONS))
            .transpose()?;
        // A few connections for every app, whatever their number.
        let links = Links::new(
            &self.broker.url(),
            FLEET_CONNECTIONS,
            "broadcast-worker fleet",
        )?;
        let apps = self
            .fleet_configs(&path, ledger.as_ref(), &links)
            .map_err(anyhow::Error::msg)?;
        info!(apps = apps.len(), file = %path.display(), prefix = %self.broker.queue_prefix, "starting the fleet");
        let life = Lifecycle {
            ledger: ledger.as_ref(),
            migrate: !self.no_migrate,
            on_migrated: Box::new(|| {}),
            metrics_addr: self.metrics_addr,
            console,
            shutdown_timeout_secs: self.shutdown_timeout_secs,
            words: FLEET,
        };
        let presence = Presence::new(links.clone(), &self.broker.queue_prefix);
        let load: Loader = {
            let (args, path, ledger) = (self.clone(), path.clone(), ledger.clone());
            let links = links.clone();
            Box::new(move || args.fleet_configs(&path, ledger.as_ref(), &links))
        };
        serve_until_signal(life, |board, shutdown| {
            // Listening for SIGHUP before the endpoint is announced: a
            // reload asked once it is up finds the fleet listening.
            let reload = Arc::new(Notify::new());
            tokio::spawn(forward_sighup(reload.clone()));
            let fleet = Fleet::new(board, presence);
            Ok(async move {
                fleet.run(apps, load, reload, shutdown).await;
                links.close("fleet stopped").await;
                Ok(())
            })
        })
        .await
    }
}

/// What a fleet's life says of itself.
const FLEET: Words = Words {
    no_ledger: "no DATABASE_URL: running without a ledger, delivery is at least once",
    migrations_skipped: "ledger in use (migrations skipped)",
    shutting_down: "shutting down: every app finishes its call in flight",
    timed_out:
        "shutdown timed out; unsettled jobs return to their queues when the connections close",
};

/// Each SIGHUP asks the fleet to read its apps file again.
async fn forward_sighup(reload: Arc<Notify>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the apps file is read at start only");
            return;
        };
        while hangups.recv().await.is_some() {
            info!("SIGHUP: reading the apps file again");
            reload.notify_one();
        }
    }
    #[cfg(not(unix))]
    let _ = reload;
}
