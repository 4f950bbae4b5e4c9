//! The fenced writes that settle a call a [`LedgerSession`] owns: delivered,
//! abandoned, or its jobs dead-lettered (marked first, so that jobs coming
//! back meanwhile are in doubt, not new). Each write holds only while the
//! call is still the session's; a lost one writes nothing and says so.

use super::error::{db_text, LedgerError};
use super::records::{CallState, JobState};
use super::session::{LedgerSession, Ownership};

type Tx<'a> = sqlx::Transaction<'a, sqlx::Postgres>;

impl LedgerSession {
    /// The call reached the service: it and every job still bound to it are
    /// delivered. One statement, so one round trip.
    pub async fn call_delivered(
        &self,
        call_id: i64,
        msg_seq: Option<u64>,
    ) -> Result<Ownership, LedgerError> {
        let started = std::time::Instant::now();
        let msg_seq = msg_seq.and_then(|s| i64::try_from(s).ok());
        let closed: i64 = sqlx::query_scalar(
            "WITH closed AS ( \
                 UPDATE calls SET state = $3, msg_seq = COALESCE($4, msg_seq), error_code = NULL, \
                     error_info = NULL, settled_at = now() \
                 WHERE id = $1 AND owner = $2 AND state IN ($5, $6) RETURNING id), \
             delivered AS ( \
                 UPDATE jobs SET state = $7, updated_at = now() \
                 WHERE call_id IN (SELECT id FROM closed) AND state = $8) \
             SELECT count(*) FROM closed",
        )
        .bind(call_id)
        .bind(self.token)
        .bind(CallState::Delivered)
        .bind(msg_seq)
        .bind(CallState::InFlight)
        .bind(CallState::DeadLettering)
        .bind(JobState::Delivered)
        .bind(JobState::InFlight)
        .fetch_one(&self.ledger.pool)
        .await?;
        self.ledger.spent("call_delivered", started, 1);
        Ok(Ownership::if_written(closed as u64))
    }

    /// A call that will not be resent as it was (a recovered call the service
    /// refused): its jobs that have not arrived yet count as new.
    pub async fn call_abandoned(
        &self,
        call_id: i64,
        code: Option<i64>,
        info: &str,
    ) -> Result<Ownership, LedgerError> {
        let started = std::time::Instant::now();
        let closed = sqlx::query(
            "UPDATE calls SET state = $2, error_code = $3, error_info = $4, settled_at = now() \
             WHERE id = $1 AND owner = $5 AND state IN ($6, $7)",
        )
        .bind(call_id)
        .bind(CallState::Abandoned)
        .bind(code)
        .bind(db_text(info))
        .bind(self.token)
        .bind(CallState::InFlight)
        .bind(CallState::DeadLettering)
        .execute(&self.ledger.pool)
        .await?
        .rows_affected();
        self.ledger.spent("call_abandoned", started, 1);
        Ok(Ownership::if_written(closed))
    }

    /// A call that may have been delivered is about to have its jobs
    /// dead-lettered: until they all are, its jobs that come back are in
    /// doubt, not new.
    pub async fn call_dead_lettering(&self, call_id: i64) -> Result<Ownership, LedgerError> {
        let started = std::time::Instant::now();
        let marked = sqlx::query(
            "UPDATE calls SET state = $2 WHERE id = $1 AND owner = $4 AND state IN ($2, $3)",
        )
        .bind(call_id)
        .bind(CallState::DeadLettering)
        .bind(CallState::InFlight)
        .bind(self.token)
        .execute(&self.ledger.pool)
        .await?
        .rows_affected();
        self.ledger.spent("call_dead_lettering", started, 1);
        Ok(Ownership::if_written(marked))
    }

    /// Jobs dead-lettered (after the dead letter was confirmed). With a
    /// call: the call's jobs among them, if the call is still this
    /// session's, and the call is closed once none of its jobs is left in
    /// flight (a recovered call may not hold them all: those still to come
    /// back find it open, and in doubt if it was marked so). Without: each
    /// id's row in this scope, or else its legacy one.
    pub async fn jobs_dead_lettered(
        &self,
        call_id: Option<i64>,
        job_ids: &[String],
        reason: &str,
        code: Option<i64>,
        info: &str,
    ) -> Result<Ownership, LedgerError> {
        let started = std::time::Instant::now();
        let mut tx = self.ledger.pool.begin().await?;
        if let Some(call_id) = call_id {
            let held: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM calls WHERE id = $1 AND owner = $2 AND state IN ($3, $4) FOR UPDATE",
            )
            .bind(call_id)
            .bind(self.token)
            .bind(CallState::InFlight)
            .bind(CallState::DeadLettering)
            .fetch_optional(&mut *tx)
            .await?;
            if held.is_none() {
                return Ok(Ownership::Lost);
            }
        }
        sqlx::query(
            "UPDATE jobs SET state = $5, reason = $2, error_code = $3, error_info = $4, updated_at = now() \
             WHERE (job_id, app, queue) IN ( \
                 SELECT DISTINCT ON (job_id) job_id, app, queue FROM jobs \
                 WHERE job_id = ANY($1) AND ((app = $6 AND queue = $7) OR (app = 0 AND queue = '')) \
                   AND ($8::bigint IS NULL OR call_id = $8) \
                 ORDER BY job_id, app = 0)",
        )
        .bind(job_ids)
        .bind(db_text(reason))
        .bind(code)
        .bind(db_text(info))
        .bind(JobState::DeadLettered)
        .bind(self.ledger.scope.app_column())
        .bind(&self.ledger.scope.queue)
        .bind(call_id)
        .execute(&mut *tx)
        .await?;
        if let Some(call_id) = call_id {
            let left: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE call_id = $1 AND state = $2)",
            )
            .bind(call_id)
            .bind(JobState::InFlight)
            .fetch_one(&mut *tx)
            .await?;
            if !left {
                let closed = self
                    .close_call(
                        &mut tx,
                        call_id,
                        CallState::DeadLettered,
                        None,
                        code,
                        Some(info),
                    )
                    .await?;
                debug_assert_eq!(closed, Ownership::Held, "the call is locked");
            }
        }
        self.ledger.spent("jobs_dead_lettered", started, 6);
        tx.commit().await?;
        Ok(Ownership::Held)
    }

    /// Closes a call this session owns.
    async fn close_call(
        &self,
        tx: &mut Tx<'_>,
        call_id: i64,
        state: CallState,
        msg_seq: Option<i64>,
        code: Option<i64>,
        info: Option<&str>,
    ) -> Result<Ownership, LedgerError> {
        let closed = sqlx::query(
            "UPDATE calls SET state = $2, msg_seq = COALESCE($3, msg_seq), error_code = $4, error_info = $5, \
                 settled_at = now() WHERE id = $1 AND owner = $8 AND state IN ($6, $7)",
        )
        .bind(call_id)
        .bind(state)
        .bind(msg_seq)
        .bind(code)
        .bind(info.map(db_text))
        .bind(CallState::InFlight)
        .bind(CallState::DeadLettering)
        .bind(self.token)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(Ownership::if_written(closed))
    }
}
