//! The ledger as the sender uses it: every operation retried until the
//! ledger answers (sending stops meanwhile, and the worker reports it), and
//! settled records pruned in the background.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::ledger::{Ledger, LedgerError};
use crate::ops::telemetry::WorkerStatus;

/// Shutdown came while the ledger did not answer.
#[derive(Debug)]
pub struct ShuttingDown;

/// Runs a ledger operation until it succeeds; while it fails, sending is
/// stopped and the worker reports it. Gives up only on shutdown.
pub async fn with_ledger<T, F, Fut>(
    status: &WorkerStatus,
    shutdown: &CancellationToken,
    mut op: F,
) -> Result<T, ShuttingDown>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LedgerError>>,
{
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        match op().await {
            Ok(value) => {
                if status.set_ledger_down(false) {
                    info!("the ledger answers again: sending resumes");
                }
                return Ok(value);
            }
            Err(e) => {
                if !status.set_ledger_down(true) {
                    error!(error = %e, "the ledger is unreachable: sending stopped (delivery could no longer be promised once), every job kept");
                }
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Err(ShuttingDown),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Prunes settled ledger records older than `retention`, a small batch at a
/// time, every minute.
pub async fn prune_forever(ledger: Ledger, retention: Duration, shutdown: CancellationToken) {
    loop {
        loop {
            match ledger.prune(retention, 1000).await {
                Ok(0) => break,
                Ok(n) => {
                    tracing::debug!(rows = n, "pruned old ledger records");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "pruning skipped");
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}
