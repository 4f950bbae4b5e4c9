//! The receipts outbox: receipts of jobs published with `reply_to`, kept
//! from just before the job's settle record until the broker confirmed
//! them (see [`crate::pipeline`]'s `receipt`), so that none is lost when a
//! worker dies between a job's ack and its receipt.

use super::error::{db_text, LedgerError};
use super::handle::Ledger;

/// A receipt as the outbox keeps it: its job, where it goes, its body.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeptReceipt {
    pub job_id: String,
    pub reply_to: String,
    pub correlation_id: String,
    pub body: Vec<u8>,
}

impl Ledger {
    /// Keeps receipts, not ready yet: their jobs' fates are about to be
    /// recorded. A job's receipt kept earlier (by a settle a crash cut
    /// short) is replaced: the latest settle says what its fate is.
    pub async fn receipts_kept(&self, receipts: &[KeptReceipt]) -> Result<(), LedgerError> {
        let started = std::time::Instant::now();
        let ids: Vec<&str> = receipts.iter().map(|r| r.job_id.as_str()).collect();
        let to: Vec<String> = receipts
            .iter()
            .map(|r| db_text(&r.reply_to).into_owned())
            .collect();
        let correlation: Vec<String> = receipts
            .iter()
            .map(|r| db_text(&r.correlation_id).into_owned())
            .collect();
        let bodies: Vec<&[u8]> = receipts.iter().map(|r| r.body.as_slice()).collect();
        sqlx::query(
            "INSERT INTO receipts (app, queue, job_id, reply_to, correlation_id, body) \
             SELECT $1, $2, id, rt, c, b FROM UNNEST($3::text[], $4::text[], $5::text[], $6::bytea[]) AS t(id, rt, c, b) \
             ON CONFLICT (app, queue, job_id) DO UPDATE SET reply_to = EXCLUDED.reply_to, \
                 correlation_id = EXCLUDED.correlation_id, body = EXCLUDED.body, ready = false, created_at = now()",
        )
        .bind(self.scope.app_column())
        .bind(&self.scope.queue)
        .bind(&ids)
        .bind(&to)
        .bind(&correlation)
        .bind(&bodies)
        .execute(&self.pool)
        .await?;
        self.spent("receipts_kept", started, 1);
        Ok(())
    }

    /// The jobs' fates are recorded: their receipts may go (and are
    /// answered, for a job whose settle was cut short after its record).
    pub async fn receipts_ready(
        &self,
        job_ids: &[String],
    ) -> Result<Vec<KeptReceipt>, LedgerError> {
        let started = std::time::Instant::now();
        let ready = sqlx::query_as(
            "UPDATE receipts SET ready = true WHERE app = $1 AND queue = $2 AND job_id = ANY($3) \
             RETURNING job_id, reply_to, correlation_id, body",
        )
        .bind(self.scope.app_column())
        .bind(&self.scope.queue)
        .bind(job_ids)
        .fetch_all(&self.pool)
        .await?;
        self.spent("receipts_ready", started, 1);
        Ok(ready)
    }

    /// Every ready receipt of this scope not yet confirmed: what a sender
    /// before this one did not publish. At most `limit`, oldest first.
    pub async fn receipts_waiting(&self, limit: i64) -> Result<Vec<KeptReceipt>, LedgerError> {
        let started = std::time::Instant::now();
        let waiting = sqlx::query_as(
            "SELECT job_id, reply_to, correlation_id, body FROM receipts \
             WHERE app = $1 AND queue = $2 AND ready ORDER BY created_at LIMIT $3",
        )
        .bind(self.scope.app_column())
        .bind(&self.scope.queue)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        self.spent("receipts_waiting", started, 1);
        Ok(waiting)
    }

    /// Receipts the broker confirmed (or could not route): done with.
    pub async fn receipts_sent(&self, job_ids: &[String]) -> Result<(), LedgerError> {
        let started = std::time::Instant::now();
        sqlx::query("DELETE FROM receipts WHERE app = $1 AND queue = $2 AND job_id = ANY($3)")
            .bind(self.scope.app_column())
            .bind(&self.scope.queue)
            .bind(job_ids)
            .execute(&self.pool)
            .await?;
        self.spent("receipts_sent", started, 1);
        Ok(())
    }

    /// Deletes up to `batch` receipts of this scope older than `seconds`
    /// (a job whose fate was never recorded, or one no broker would take).
    pub(super) async fn prune_receipts(
        &self,
        seconds: f64,
        batch: i64,
    ) -> Result<u64, LedgerError> {
        let pruned = sqlx::query(
            "DELETE FROM receipts WHERE (app, queue, job_id) IN ( \
               SELECT app, queue, job_id FROM receipts \
               WHERE app = $3 AND queue = $4 AND created_at < now() - make_interval(secs => $1) \
               LIMIT $2)",
        )
        .bind(seconds)
        .bind(batch)
        .bind(self.scope.app_column())
        .bind(&self.scope.queue)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(pruned)
    }
}
