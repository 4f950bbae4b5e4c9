//! The delivery ledger in PostgreSQL: which call carried which job, the exact
//! body and `Random` of each call, and how it ended. It turns the broker's
//! redeliveries into "ack, already done" or "resend the very same call", so a
//! worker killed between a call and its acks does not broadcast twice.
//!
//! The schema lives in `migrations/`, applied by `sqlx::migrate!`.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::tencent::body::REPEAT_WINDOW;

/// Where a job stands: the `state` of a `jobs` row, spelled the same in SQL,
/// in `jobs show --json` and here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, serde::Serialize)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Its call may or may not have reached the service.
    InFlight,
    Delivered,
    DeadLettered,
}

/// How a call ended: the `state` of a `calls` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, serde::Serialize)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// Recorded before its first attempt; no answer recorded yet.
    InFlight,
    Delivered,
    /// Its jobs were dead-lettered.
    DeadLettered,
    /// Refused, and sent again as two halves (each a call of its own).
    Split,
    /// A recovered call the service refused: it will not be resent as it was.
    Abandoned,
}

/// The ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("DATABASE_URL is not a PostgreSQL URL: {0}")]
    Url(String),
    #[error("the ledger database is unreachable or failed: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot apply the ledger's migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// What the ledger knows of a job that arrives (again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// Delivered or dead-lettered already: ack it without a call.
    Settled,
    /// Its call may or may not have reached the service.
    InFlight(InFlightCall),
    /// Nothing, or nothing that still binds it: a new job.
    New,
}

/// A call recorded as in flight, with what it takes to resend it verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlightCall {
    pub call_id: i64,
    pub body: Vec<u8>,
    pub random: u32,
    /// Time since the call's first attempt, by the database's clock.
    pub age: Duration,
}

impl std::fmt::Display for CallState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CallState::InFlight => "in_flight",
            CallState::Delivered => "delivered",
            CallState::DeadLettered => "dead_lettered",
            CallState::Split => "split",
            CallState::Abandoned => "abandoned",
        })
    }
}

/// A job's record, for `jobs show`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct JobReport {
    pub job_id: String,
    pub state: JobState,
    pub reason: Option<String>,
    pub error_code: Option<i64>,
    pub error_info: Option<String>,
    /// Unix milliseconds of the job's last change.
    pub updated_at_ms: i64,
    pub call_id: i64,
    pub call_state: CallState,
    pub msg_seq: Option<i64>,
    /// Unix milliseconds of the call's first attempt.
    pub call_started_ms: i64,
    /// Jobs in the call, this one included.
    pub call_jobs: i32,
}

/// A job's row joined with its call's, as [`Ledger::lookup`] reads it.
#[derive(sqlx::FromRow)]
struct RecordRow {
    job_id: String,
    job_state: JobState,
    replays: i32,
    call_id: i64,
    call_state: CallState,
    /// Only for a job still in flight in a call still in flight.
    body: Option<Vec<u8>>,
    random: i64,
    /// Seconds since the call's first attempt, by the database's clock.
    age: f64,
}

/// The decision for one arriving job, from its row and its call's row. Pure.
/// A job replayed more often than when its call began is a new job.
pub fn classify_record(
    job_state: JobState,
    call_state: CallState,
    call: Option<InFlightCall>,
    recorded_replays: u32,
    arriving_replays: u32,
) -> Known {
    if arriving_replays > recorded_replays {
        return Known::New;
    }
    match (job_state, call_state, call) {
        (JobState::Delivered | JobState::DeadLettered, _, _) => Known::Settled,
        (JobState::InFlight, CallState::InFlight, Some(call)) => Known::InFlight(call),
        // The call was split, abandoned or failed as a whole after this job's
        // last record: nothing was delivered for it, so it is new again.
        _ => Known::New,
    }
}

/// A handle on the ledger; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    pool: PgPool,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pool's options hold the database URL, password included.
        f.write_str("Ledger")
    }
}

impl Ledger {
    /// A pool that connects on first use, so a worker can start while the
    /// database is down and wait for it.
    pub fn connect_lazy(url: &str) -> Result<Self, LedgerError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| LedgerError::Url(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options.application_name("broadcast-worker"));
        Ok(Self { pool })
    }

    pub async fn migrate(&self) -> Result<(), LedgerError> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    /// One query for a whole set of arriving jobs: their ids and replay counts.
    pub async fn lookup(
        &self,
        jobs: &[(String, u32)],
    ) -> Result<HashMap<String, Known>, LedgerError> {
        let job_ids: Vec<&str> = jobs.iter().map(|(id, _)| id.as_str()).collect();
        let arriving: HashMap<&str, u32> = jobs.iter().map(|(id, r)| (id.as_str(), *r)).collect();
        let rows: Vec<RecordRow> = sqlx::query_as(
            "SELECT j.job_id, j.state AS job_state, j.replays, c.id AS call_id, c.state AS call_state, \
                    CASE WHEN j.state = $2 AND c.state = $3 THEN c.body END AS body, \
                    c.random, EXTRACT(EPOCH FROM (now() - c.created_at))::float8 AS age \
             FROM jobs j JOIN calls c ON c.id = j.call_id \
             WHERE j.job_id = ANY($1)",
        )
        .bind(&job_ids)
        .bind(JobState::InFlight)
        .bind(CallState::InFlight)
        .fetch_all(&self.pool)
        .await?;
        let mut known = HashMap::with_capacity(rows.len());
        for row in rows {
            let call = row.body.map(|body| InFlightCall {
                call_id: row.call_id,
                body,
                random: u32::try_from(row.random).unwrap_or(0),
                age: Duration::from_secs_f64(row.age.max(0.0)),
            });
            let recorded = u32::try_from(row.replays).unwrap_or(0);
            let replays = arriving.get(row.job_id.as_str()).copied().unwrap_or(0);
            let state = classify_record(row.job_state, row.call_state, call, recorded, replays);
            known.insert(row.job_id, state);
        }
        Ok(known)
    }

    /// Records a call as in flight, before its first attempt. A split call's
    /// halves name their parent, which is closed as `split`.
    ///
    /// The `Random` is claimed in the same statement: when a call of other
    /// content used it within the service's repeat window, nothing is
    /// recorded and the answer is `None` (pick the next candidate).
    pub async fn begin_call(
        &self,
        body: &[u8],
        random: u32,
        content_digest: &[u8; 32],
        jobs: &[(String, u32)],
        parent: Option<i64>,
    ) -> Result<Option<i64>, LedgerError> {
        let job_ids: Vec<&str> = jobs.iter().map(|(id, _)| id.as_str()).collect();
        let replays: Vec<i32> = jobs
            .iter()
            .map(|(_, r)| i32::try_from(*r).unwrap_or(i32::MAX))
            .collect();
        let mut tx = self.pool.begin().await?;
        let call_id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO calls (body, random, job_count, state, content_digest) \
             SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS ( \
                 SELECT 1 FROM calls WHERE random = $2 AND content_digest IS DISTINCT FROM $5 \
                   AND created_at > now() - make_interval(secs => $6)) \
             RETURNING id",
        )
        .bind(body)
        .bind(i64::from(random))
        .bind(i32::try_from(job_ids.len()).unwrap_or(i32::MAX))
        .bind(CallState::InFlight)
        .bind(&content_digest[..])
        .bind(REPEAT_WINDOW.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(call_id) = call_id else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO jobs (job_id, call_id, state, replays) \
             SELECT id, $2, $4, replays FROM unnest($1::text[], $3::int[]) AS t (id, replays) \
             ON CONFLICT (job_id) DO UPDATE SET call_id = EXCLUDED.call_id, state = $4, \
                 replays = EXCLUDED.replays, reason = NULL, error_code = NULL, error_info = NULL, updated_at = now()",
        )
        .bind(&job_ids)
        .bind(call_id)
        .bind(&replays)
        .bind(JobState::InFlight)
        .execute(&mut *tx)
        .await?;
        if let Some(parent) = parent {
            close_call(&mut tx, parent, CallState::Split, None, None, None).await?;
        }
        tx.commit().await?;
        Ok(Some(call_id))
    }

    /// The call reached the service: it and every job still bound to it are delivered.
    pub async fn call_delivered(
        &self,
        call_id: i64,
        msg_seq: Option<u64>,
    ) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        let msg_seq = msg_seq.and_then(|s| i64::try_from(s).ok());
        close_call(&mut tx, call_id, CallState::Delivered, msg_seq, None, None).await?;
        sqlx::query(
            "UPDATE jobs SET state = $2, updated_at = now() WHERE call_id = $1 AND state = $3",
        )
        .bind(call_id)
        .bind(JobState::Delivered)
        .bind(JobState::InFlight)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A call that will not be resent as it was (a recovered call the service
    /// refused): its jobs that have not arrived yet count as new.
    pub async fn call_abandoned(
        &self,
        call_id: i64,
        code: Option<i64>,
        info: &str,
    ) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        close_call(
            &mut tx,
            call_id,
            CallState::Abandoned,
            None,
            code,
            Some(info),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Jobs dead-lettered (after the dead letter was confirmed). When they
    /// were a call's jobs, the call is closed too.
    pub async fn jobs_dead_lettered(
        &self,
        call_id: Option<i64>,
        job_ids: &[String],
        reason: &str,
        code: Option<i64>,
        info: &str,
    ) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE jobs SET state = $5, reason = $2, error_code = $3, error_info = $4, updated_at = now() \
             WHERE job_id = ANY($1)",
        )
        .bind(job_ids)
        .bind(reason)
        .bind(code)
        .bind(info)
        .bind(JobState::DeadLettered)
        .execute(&mut *tx)
        .await?;
        if let Some(call_id) = call_id {
            close_call(
                &mut tx,
                call_id,
                CallState::DeadLettered,
                None,
                code,
                Some(info),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// What the ledger says of one job.
    pub async fn show(&self, job_id: &str) -> Result<Option<JobReport>, LedgerError> {
        let report = sqlx::query_as(
            "SELECT j.job_id, j.state, j.reason, j.error_code, j.error_info, \
                    (EXTRACT(EPOCH FROM j.updated_at) * 1000)::bigint AS updated_at_ms, \
                    c.id AS call_id, c.state AS call_state, c.msg_seq, c.job_count AS call_jobs, \
                    (EXTRACT(EPOCH FROM c.created_at) * 1000)::bigint AS call_started_ms \
             FROM jobs j JOIN calls c ON c.id = j.call_id WHERE j.job_id = $1",
        )
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(report)
    }

    /// Deletes up to `batch` settled jobs older than `age`, then the settled
    /// calls no job points at any more. Returns how many rows went.
    pub async fn prune(&self, age: Duration, batch: i64) -> Result<u64, LedgerError> {
        let seconds = age.as_secs_f64();
        let jobs = sqlx::query(
            "DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM jobs \
               WHERE state <> $3 AND updated_at < now() - make_interval(secs => $1) LIMIT $2)",
        )
        .bind(seconds)
        .bind(batch)
        .bind(JobState::InFlight)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let calls = sqlx::query(
            "DELETE FROM calls WHERE id IN (SELECT c.id FROM calls c \
               WHERE c.state <> $3 AND c.settled_at < now() - make_interval(secs => $1) \
                 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.call_id = c.id) LIMIT $2)",
        )
        .bind(seconds)
        .bind(batch)
        .bind(CallState::InFlight)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(jobs + calls)
    }
}

async fn close_call(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    call_id: i64,
    state: CallState,
    msg_seq: Option<i64>,
    code: Option<i64>,
    info: Option<&str>,
) -> Result<(), LedgerError> {
    sqlx::query(
        "UPDATE calls SET state = $2, msg_seq = COALESCE($3, msg_seq), error_code = $4, error_info = $5, \
             settled_at = now() WHERE id = $1 AND state = $6",
    )
    .bind(call_id)
    .bind(state)
    .bind(msg_seq)
    .bind(code)
    .bind(info)
    .bind(CallState::InFlight)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arriving_jobs_are_classified_by_their_records() {
        let call = InFlightCall {
            call_id: 7,
            body: b"{}".to_vec(),
            random: 1,
            age: Duration::from_secs(3),
        };
        assert_eq!(
            classify_record(JobState::Delivered, CallState::Delivered, None, 0, 0),
            Known::Settled
        );
        assert_eq!(
            classify_record(JobState::DeadLettered, CallState::InFlight, None, 0, 0),
            Known::Settled
        );
        assert_eq!(
            classify_record(
                JobState::InFlight,
                CallState::InFlight,
                Some(call.clone()),
                0,
                0
            ),
            Known::InFlight(call)
        );
        assert_eq!(
            classify_record(JobState::InFlight, CallState::Abandoned, None, 0, 0),
            Known::New
        );
        assert_eq!(
            classify_record(JobState::InFlight, CallState::Split, None, 0, 0),
            Known::New
        );
        assert_eq!(
            classify_record(JobState::InFlight, CallState::DeadLettered, None, 0, 0),
            Known::New
        );
        // A replay of a dead-lettered job is a new job; the same replay again is not.
        assert_eq!(
            classify_record(JobState::DeadLettered, CallState::DeadLettered, None, 0, 1),
            Known::New
        );
        assert_eq!(
            classify_record(JobState::Delivered, CallState::Delivered, None, 1, 1),
            Known::Settled
        );
    }
}
