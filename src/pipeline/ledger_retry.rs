//! The ledger as the sender uses it: every operation retried until the
//! ledger answers (sending stops meanwhile, and the worker reports it), and
//! old records pruned in the background.
//!
//! Two kinds of failure: the database out of reach stops sending at once; a
//! statement it refuses while answering (a conflict, a timeout, a datum it
//! will not take) is retried a few times first, since it may pass, and then
//! stops sending too, with the database's words in the log and in `/readyz`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::ledger::{Ledger, LedgerError};
use crate::status::WorkerStatus;

/// Retries of a refused statement before the ledger counts as down.
pub const REFUSALS_BEFORE_DOWN: u32 = 5;

/// Shutdown came while the ledger did not answer.
#[derive(Debug)]
pub struct ShuttingDown;

/// Runs a ledger operation until it succeeds; while it fails (at once when
/// the database is out of reach, after [`REFUSALS_BEFORE_DOWN`] retries when
/// it refuses the statement), sending is stopped and the worker reports it.
/// Gives up only on shutdown.
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
    let mut refusals = 0;
    loop {
        match op().await {
            Ok(value) => {
                if status.set_ledger_down(None) {
                    info!("the ledger answers again: sending resumes");
                }
                return Ok(value);
            }
            Err(e) => {
                if !e.is_unreachable() && refusals < REFUSALS_BEFORE_DOWN {
                    refusals += 1;
                    warn!(error = %e, retry = refusals, "the ledger refused a statement: retrying it");
                } else if !status.set_ledger_down(Some(e.to_string())) {
                    if e.is_unreachable() {
                        error!(error = %e, "the ledger is unreachable: sending stopped (delivery could no longer be promised once), every job kept");
                    } else {
                        error!(error = %e, "the ledger keeps refusing a statement: sending stopped (delivery could no longer be promised once), every job kept");
                    }
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

/// Prunes ledger records (settled, or in doubt) older than `retention`, a
/// small batch at a time, every minute.
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Runs `with_ledger` on an operation failing `failures` times with `error`.
    async fn run(failures: u32, error: fn() -> LedgerError) -> (bool, u32, WorkerStatus) {
        let status = WorkerStatus::default();
        let calls = AtomicU32::new(0);
        let mut down_seen = false;
        let result = with_ledger(&status, &CancellationToken::new(), || {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            down_seen |= status.ledger_down.load(Ordering::Relaxed);
            async move {
                if n < failures {
                    Err(error())
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        (down_seen, result.unwrap(), status)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_database_stops_sending_at_once() {
        let (down_seen, _, status) = run(1, || sqlx::Error::PoolTimedOut.into()).await;
        assert!(down_seen, "reported down from the first failure");
        assert!(!status.ledger_down.load(Ordering::Relaxed));
        assert_eq!(status.ledger_error(), None, "cleared once it answers");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_statement_is_retried_before_the_ledger_counts_as_down() {
        let refused = || LedgerError::Url("refused".into());
        let (down_seen, _, _) = run(REFUSALS_BEFORE_DOWN, refused).await;
        assert!(!down_seen, "a few refusals are retried quietly");
        let (down_seen, answered_at, _) = run(REFUSALS_BEFORE_DOWN + 3, refused).await;
        assert!(down_seen, "then the ledger counts as down");
        assert_eq!(
            answered_at,
            REFUSALS_BEFORE_DOWN + 3,
            "and is retried still"
        );
    }
}
