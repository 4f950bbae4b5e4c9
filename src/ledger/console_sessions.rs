//! The console's ended sessions in the ledger database, shared by every
//! replica: a logout enters its session (by a hash of its id, never the
//! cookie) until the session would have expired anyway, and each request
//! with a session cookie asks whether its session is among them. Expired
//! rows are pruned at each logout, so the table holds at most the logouts of
//! one session lifetime. These rows belong to no scope: a session id is
//! random, and its cookie is good only with the token that signed it. They
//! are not counted in the ledger's metrics, which are the worker's, by app.

use super::error::LedgerError;
use super::handle::Ledger;

impl Ledger {
    /// Ends the session `session_hash` until `expires_at` (unix seconds),
    /// and prunes the sessions that have expired since.
    pub async fn revoke_console_session(
        &self,
        session_hash: &str,
        expires_at: i64,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "WITH pruned AS (DELETE FROM console_revoked_sessions WHERE expires_at < now()) \
             INSERT INTO console_revoked_sessions (session_hash, expires_at) \
             VALUES ($1, to_timestamp($2)) ON CONFLICT (session_hash) DO NOTHING",
        )
        .bind(session_hash)
        .bind(expires_at as f64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether a logout ended the session `session_hash`.
    pub async fn console_session_revoked(&self, session_hash: &str) -> Result<bool, LedgerError> {
        let revoked: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM console_revoked_sessions WHERE session_hash = $1)",
        )
        .bind(session_hash)
        .fetch_one(&self.pool)
        .await?;
        Ok(revoked)
    }
}
