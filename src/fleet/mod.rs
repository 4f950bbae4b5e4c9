//! A fleet: one process serving every app of an apps file. Each app has a
//! worker of its own (its queues, bucket, retries, HTTP client and ledger
//! scope), so a halted, rate-limited, slow or backlogged app never holds up
//! another. The file is read again on request (SIGHUP): apps added start,
//! apps removed stop after their call in flight, changed apps restart with
//! their new settings, the rest are not touched. Every replica consumes
//! every app's queue; [`balance`] spreads the active senders.
//!
//! - [`apps`]: the apps file, read and checked.
//! - [`balance`]: the fair share, and counting the replicas up.

pub mod apps;
pub mod balance;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::pipeline::{Worker, WorkerConfig};
use crate::status::{StatusBoard, WorkerStatus};
use crate::telemetry;
use apps::AppEntry;
use balance::Presence;

/// How often each replica counts the replicas and gives up its excess.
pub const BALANCE_EVERY: Duration = Duration::from_secs(2);

/// Reads the apps file again: each app's entry and its worker's settings,
/// or every mistake found (the running apps are then kept).
pub type Loader = Box<dyn Fn() -> Result<Vec<(AppEntry, WorkerConfig)>, String> + Send + Sync>;

/// One app's worker, running.
struct Running {
    entry: AppEntry,
    status: Arc<WorkerStatus>,
    release: Arc<Notify>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The apps this process serves.
pub struct Fleet {
    board: StatusBoard,
    presence: Presence,
    running: BTreeMap<u64, Running>,
    /// Apps removed or replaced, finishing their call in flight.
    stopping: Vec<(u64, JoinHandle<()>)>,
}

impl Fleet {
    pub fn new(board: StatusBoard, presence: Presence) -> Self {
        Self {
            board,
            presence,
            running: BTreeMap::new(),
            stopping: Vec::new(),
        }
    }

    /// Serves `apps` until `shutdown`; reads the file again through `load`
    /// whenever `reload` is notified. Returns once every app's worker has
    /// stopped (each finishes its call in flight).
    pub async fn run(
        mut self,
        apps: Vec<(AppEntry, WorkerConfig)>,
        load: Loader,
        reload: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        self.apply(apps, &shutdown);
        let mut tick = tokio::time::interval(BALANCE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = reload.notified() => match load() {
                    Ok(apps) => {
                        info!(apps = apps.len(), "apps file read again");
                        self.apply(apps, &shutdown);
                    }
                    Err(e) => error!(error = %e, "the apps file was not taken: the running apps are kept"),
                },
                _ = tick.tick() => self.balance().await,
            }
        }
        for running in self.running.into_values() {
            running.stop.cancel();
            let _ = running.task.await;
        }
        for (_, task) in self.stopping {
            let _ = task.await;
        }
    }

    /// Starts the apps new to the set, stops those gone from it, and
    /// restarts those whose entry changed.
    fn apply(&mut self, apps: Vec<(AppEntry, WorkerConfig)>, shutdown: &CancellationToken) {
        let wanted: BTreeMap<u64, (AppEntry, WorkerConfig)> = apps
            .into_iter()
            .map(|(entry, config)| (entry.sdkappid, (entry, config)))
            .collect();
        let gone: Vec<u64> = self
            .running
            .keys()
            .filter(|app| !wanted.contains_key(app))
            .copied()
            .collect();
        for app in gone {
            info!(
                sdkappid = app,
                "app removed: stopping it after its call in flight"
            );
            self.stop(app);
            // Its other gauges stay as they were; this one tells alerts
            // that nobody is meant to send for it here any more.
            metrics::gauge!(telemetry::APP_SERVED, telemetry::SDKAPPID => app.to_string()).set(0.0);
        }
        for (app, (entry, config)) in wanted {
            match self.running.get(&app) {
                Some(running) if running.entry == entry => continue,
                Some(_) => {
                    info!(
                        sdkappid = app,
                        "app changed: restarting it with its new settings"
                    );
                    self.stop(app);
                }
                None => info!(sdkappid = app, "starting the app"),
            }
            self.start(entry, config, shutdown);
        }
        self.stopping.retain(|(_, task)| !task.is_finished());
    }

    fn start(&mut self, entry: AppEntry, config: WorkerConfig, shutdown: &CancellationToken) {
        let app = entry.sdkappid;
        let worker = match Worker::new(config) {
            Ok(worker) => worker,
            Err(e) => {
                error!(sdkappid = app, error = %e, "cannot start the app");
                return;
            }
        };
        let status = worker.status();
        let release = worker.release_handle();
        let stop = shutdown.child_token();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                if let Err(e) = worker.run(stop).await {
                    error!(sdkappid = app, error = %e, "the app's worker stopped");
                }
            }
        });
        self.board.insert(app, status.clone());
        self.running.insert(
            app,
            Running {
                entry,
                status,
                release,
                stop,
                task,
            },
        );
    }

    fn stop(&mut self, app: u64) {
        if let Some(running) = self.running.remove(&app) {
            running.stop.cancel();
            self.board.remove(app);
            self.stopping.push((app, running.task));
        }
    }

    /// Gives up the apps beyond this replica's fair share.
    async fn balance(&mut self) {
        let Some(replicas) = self.presence.replicas().await else {
            return;
        };
        let active: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, running)| running.status.is_active())
            .map(|(app, _)| *app)
            .collect();
        let held = active.len();
        let release = balance::to_release(active, self.running.len(), replicas);
        if release.is_empty() {
            return;
        }
        info!(
            replicas,
            active = held,
            share = balance::fair_share(self.running.len(), replicas),
            releasing = ?release,
            "active for more apps than this replica's share: handing some to the next replica"
        );
        for app in release {
            if let Some(running) = self.running.get(&app) {
                running.release.notify_waiters();
            }
        }
    }
}
