//! The life of `run`, for one app and for a fleet alike: migrate the ledger
//! (waiting for its database; a signal meanwhile stops the start), install
//! the metrics recorder, start what runs on the board of statuses, serve
//! and announce the ops endpoint, run until SIGINT or SIGTERM, then give
//! what runs a bounded time to finish its calls in flight. Written once;
//! what differs (what runs, what each says) is passed in.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::signal::shutdown_signal;
use crate::console::Console;
use crate::ledger::{Ledger, LedgerError};
use crate::ops_endpoint;
use crate::status::StatusBoard;
use crate::telemetry;

/// What a life says of itself where one app's and a fleet's differ.
pub(super) struct Words {
    /// Warned without a ledger.
    pub no_ledger: &'static str,
    /// Said when the ledger is used without applying its migrations.
    pub migrations_skipped: &'static str,
    /// Said on SIGINT or SIGTERM, before waiting for the calls in flight.
    pub shutting_down: &'static str,
    /// Said when they did not finish in time.
    pub timed_out: &'static str,
}

/// The settings of a life, from the command line.
pub(super) struct Lifecycle<'a> {
    /// The ledger to migrate before anything starts, if any.
    pub ledger: Option<&'a Ledger>,
    /// Apply the ledger's migrations at start (no `--no-migrate`).
    pub migrate: bool,
    /// Said once the migrations are applied.
    pub on_migrated: Box<dyn FnOnce() + Send + 'a>,
    /// Where the ops endpoint listens.
    pub metrics_addr: SocketAddr,
    /// The console the ops endpoint serves, if enabled.
    pub console: Option<Console>,
    /// Seconds to finish the calls in flight after a signal.
    pub shutdown_timeout_secs: u64,
    pub words: Words,
}

/// Lives `life`: `start` is handed the board the ops endpoint serves and
/// the token that asks what it starts to stop, once the recorder is
/// installed (statuses set their gauges as they are made) and before the
/// endpoint is served; what it returns runs from then on. Exits with
/// success when what runs ends by itself or finishes in time after a
/// signal, with failure when it does not finish in time.
pub(super) async fn serve_until_signal<Run>(
    life: Lifecycle<'_>,
    start: impl FnOnce(StatusBoard, CancellationToken) -> anyhow::Result<Run>,
) -> anyhow::Result<ExitCode>
where
    Run: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let words = life.words;
    match life.ledger {
        None => tracing::warn!("{}", words.no_ledger),
        Some(ledger) if life.migrate => {
            tokio::select! {
                result = migrate_until_done(ledger) => result?,
                _ = shutdown_signal() => return Ok(ExitCode::SUCCESS),
            }
            (life.on_migrated)();
        }
        Some(_) => info!("{}", words.migrations_skipped),
    }
    // The recorder first: the statuses set their gauges as they are made.
    let metrics = telemetry::install_recorder()?;
    telemetry::describe();
    let board = StatusBoard::default();
    let shutdown = CancellationToken::new();
    let run = start(board.clone(), shutdown.clone())?;
    let console_on = life.console.is_some();
    let ops = ops_endpoint::serve(life.metrics_addr, metrics, board, life.console)
        .await
        .with_context(|| format!("cannot listen on {} for metrics", life.metrics_addr))?;
    announce_ops(ops, console_on);
    let task = tokio::spawn(run);
    tokio::pin!(task);
    tokio::select! {
        result = &mut task => {
            result??;
            return Ok(ExitCode::SUCCESS);
        }
        _ = shutdown_signal() => {}
    }
    info!(
        timeout_secs = life.shutdown_timeout_secs,
        "{}", words.shutting_down
    );
    shutdown.cancel();
    let timeout = Duration::from_secs(life.shutdown_timeout_secs);
    match tokio::time::timeout(timeout, &mut task).await {
        Ok(result) => {
            result??;
            info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(_) => {
            tracing::error!("{}", words.timed_out);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Prints and logs where the ops endpoint listens, and what it serves.
fn announce_ops(ops: SocketAddr, console: bool) {
    println!("ops endpoint listening on http://{ops}");
    if console {
        info!(%ops, "ops endpoint: /metrics, /healthz, /readyz, and the console at /");
    } else {
        info!(%ops, "ops endpoint: /metrics, /healthz, /readyz (no console: BROADCAST_CONSOLE_TOKEN is not set)");
    }
}

/// Applies the migrations, waiting for the database if it is down; a failing
/// migration itself is an error.
async fn migrate_until_done(ledger: &Ledger) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(500);
    loop {
        match ledger.migrate().await {
            Ok(()) => return Ok(()),
            // The migrator reports a pool that cannot connect as its own
            // error (`Migrate(Execute(PoolTimedOut))`): waited for too.
            Err(e) if matches!(e, LedgerError::Database(_)) || e.is_unreachable() => {
                tracing::warn!(error = %e, retry_in = ?delay, "the ledger database is not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
