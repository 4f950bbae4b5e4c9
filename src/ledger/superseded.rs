//! Jobs superseded by a later job of their latest-wins key: recorded before
//! they are acked, known as settled when they come back, shown by `jobs
//! show`, pruned with the rest. They were in no call, so they live in a
//! table of their own (`superseded_jobs`).

use super::error::{db_text, LedgerError};
use super::handle::Ledger;
use super::records::Superseded;

impl Ledger {
    /// Records superseded jobs of this scope, each with the job that took
    /// its place. Recording one twice keeps the first record.
    pub async fn jobs_superseded(&self, jobs: &[Superseded]) -> Result<(), LedgerError> {
        let started = std::time::Instant::now();
        let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
        let by: Vec<&str> = jobs.iter().map(|j| j.by.as_str()).collect();
        let keys: Vec<String> = jobs.iter().map(|j| db_text(&j.key).into_owned()).collect();
        sqlx::query(
            "INSERT INTO superseded_jobs (app, queue, job_id, superseded_by, coalesce_key) \
             SELECT $1, $2, id, by, key FROM UNNEST($3::text[], $4::text[], $5::text[]) AS t(id, by, key) \
             ON CONFLICT (app, queue, job_id) DO NOTHING",
        )
        .bind(self.scope.app_column())
        .bind(&self.scope.queue)
        .bind(&ids)
        .bind(&by)
        .bind(&keys)
        .execute(&self.pool)
        .await?;
        self.spent("jobs_superseded", started, 1);
        Ok(())
    }

    /// Which of these ids of this scope were superseded.
    pub(super) async fn superseded_among(
        &self,
        job_ids: &[&str],
    ) -> Result<Vec<String>, LedgerError> {
        let started = std::time::Instant::now();
        let ids = sqlx::query_scalar(
            "SELECT job_id FROM superseded_jobs WHERE app = $1 AND queue = $2 AND job_id = ANY($3)",
        )
        .bind(self.scope.app_column())
        .bind(&self.scope.queue)
        .bind(job_ids)
        .fetch_all(&self.pool)
        .await?;
        self.spent("superseded_among", started, 1);
        Ok(ids)
    }

    /// Deletes up to `batch` superseded records of this scope older than
    /// `seconds`.
    pub(super) async fn prune_superseded(
        &self,
        seconds: f64,
        batch: i64,
    ) -> Result<u64, LedgerError> {
        let pruned = sqlx::query(
            "DELETE FROM superseded_jobs WHERE (app, queue, job_id) IN ( \
               SELECT app, queue, job_id FROM superseded_jobs \
               WHERE app = $3 AND queue = $4 AND superseded_at < now() - make_interval(secs => $1) \
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
