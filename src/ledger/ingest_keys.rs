//! Idempotency keys of the HTTP endpoint: which keys of this scope were
//! posted, with which body, and whether the broker confirmed their job.

use super::error::LedgerError;
use super::handle::Ledger;

/// What the ledger knew of a key when it was claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// First seen now.
    New,
    /// Seen before with this body digest and lane; `published` once the
    /// broker confirmed its job.
    Seen {
        body_digest: String,
        urgent: bool,
        published: bool,
    },
}

impl Ledger {
    /// Claims `key` for a job with this body digest, or answers what was
    /// claimed before.
    pub async fn claim_key(
        &self,
        key: &str,
        body_digest: &str,
        urgent: bool,
    ) -> Result<KeyClaim, LedgerError> {
        let inserted = sqlx::query(
            "INSERT INTO ingest_keys (app, queue, key, body_digest, urgent) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (app, queue, key) DO NOTHING",
        )
        .bind(self.scope.app_column())
        .bind(&self.scope.queue)
        .bind(key)
        .bind(body_digest)
        .bind(urgent)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(KeyClaim::New);
        }
        let (body_digest, urgent, published): (String, bool, bool) = sqlx::query_as(
            "SELECT body_digest, urgent, published FROM ingest_keys WHERE app = $1 AND queue = $2 AND key = $3",
        )
        .bind(self.scope.app_column())
        .bind(&self.scope.queue)
        .bind(key)
        .fetch_one(&self.pool)
        .await?;
        Ok(KeyClaim::Seen {
            body_digest,
            urgent,
            published,
        })
    }

    /// The key's job was confirmed by the broker.
    pub async fn key_published(&self, key: &str) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE ingest_keys SET published = true WHERE app = $1 AND queue = $2 AND key = $3",
        )
        .bind(self.scope.app_column())
        .bind(&self.scope.queue)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes up to `batch` keys of every scope older than `seconds`.
    pub async fn prune_keys(&self, seconds: f64, batch: i64) -> Result<u64, LedgerError> {
        let pruned = sqlx::query(
            "DELETE FROM ingest_keys WHERE (app, queue, key) IN ( \
               SELECT app, queue, key FROM ingest_keys \
               WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)",
        )
        .bind(seconds)
        .bind(batch)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(pruned)
    }
}
