//! The delivery ledger in PostgreSQL: which call carried which job, the exact
//! body and `Random` of each call, and how it ended. It turns the broker's
//! redeliveries into "ack, already done" or "resend the very same call", so a
//! worker killed between a call and its acks does not broadcast twice.
//!
//! A handle works in one [`Scope`] (an app and its jobs queue): job ids are
//! one deployment's, and a `Random` is claimed per app. A job without
//! `message_id` is recorded under an id of its own arrival with its body's
//! digest, by which a redelivered copy finds it ([`Ledger::match_copies`]).
//!
//! Writes about calls are fenced: they go through a [`LedgerSession`], the
//! sender session that owns the call.
//!
//! The schema lives in `migrations/`, applied by `sqlx::migrate!`.
//!
//! - this file: arriving jobs and copies looked up, `jobs show`, pruning.
//! - `handle`: the [`Ledger`] handle: its pool, its scope, the migrations,
//!   the metrics of its statements.
//! - `records`: job and call states, rows, what an arriving job is known as.
//! - `session`: a sender's fenced session: recording and taking over calls.
//! - `settle`: the session's writes that settle a call.
//! - `superseded`: jobs a later job of their latest-wins key replaced.
//! - `scope`, `error`: whose records these are; the ledger's errors.
//! - `console_sessions`: the console's ended sessions, shared by the replicas.

mod console_sessions;
mod error;
mod handle;
mod ingest_keys;
mod receipts;
mod records;
mod scope;
mod session;
mod settle;
mod superseded;

pub use error::LedgerError;
pub use handle::Ledger;
pub use ingest_keys::KeyClaim;
pub use receipts::KeptReceipt;
pub use records::{
    classify_record, CallJob, CallState, InFlightCall, JobReport, JobState, Known, Superseded,
};
pub use scope::{Scope, ScopeFilter};
pub use session::{Begun, LedgerSession, Ownership, TakeOver};

use std::collections::HashMap;
use std::time::Duration;

use records::{CopyRow, RecordRow};

impl Ledger {
    /// One query for a whole set of arriving jobs: their ids and replay
    /// counts. A row of this scope wins over a legacy one.
    pub async fn lookup(
        &self,
        jobs: &[(String, u32)],
    ) -> Result<HashMap<String, Known>, LedgerError> {
        let started = std::time::Instant::now();
        let job_ids: Vec<&str> = jobs.iter().map(|(id, _)| id.as_str()).collect();
        let arriving: HashMap<&str, u32> = jobs.iter().map(|(id, r)| (id.as_str(), *r)).collect();
        let rows: Vec<RecordRow> = sqlx::query_as(
            "SELECT DISTINCT ON (j.job_id) j.job_id, j.state AS job_state, j.replays, \
                    c.id AS call_id, c.state AS call_state, \
                    CASE WHEN j.state = $2 AND c.state = $3 THEN c.body END AS body, \
                    c.random, EXTRACT(EPOCH FROM (now() - c.doubt_since))::float8 AS doubt_age \
             FROM jobs j JOIN calls c ON c.id = j.call_id \
             WHERE j.job_id = ANY($1) AND ((j.app = $4 AND j.queue = $5) OR (j.app = 0 AND j.queue = '')) \
             ORDER BY j.job_id, j.app = 0",
        )
        .bind(&job_ids)
        .bind(JobState::InFlight)
        .bind(CallState::InFlight)
        .bind(self.scope.app_column())
        .bind(&self.scope.queue)
        .fetch_all(&self.pool)
        .await?;
        self.spent("lookup", started, 1);
        let mut known = HashMap::with_capacity(rows.len());
        for row in rows {
            let replays = arriving.get(row.job_id.as_str()).copied().unwrap_or(0);
            let job_id = row.job_id.clone();
            known.insert(job_id, row.known(replays));
        }
        // A superseded job was in no call: it is known from its own record.
        let unknown: Vec<&str> = job_ids
            .iter()
            .copied()
            .filter(|id| !known.contains_key(*id))
            .collect();
        if !unknown.is_empty() {
            for id in self.superseded_among(&unknown).await? {
                known.insert(id, Known::Settled);
            }
        }
        Ok(known)
    }

    /// Redelivered copies of jobs without `message_id`, by their bodies'
    /// digests (and replay counts): the arrival each repeats, as its job id
    /// and what is known of it. A copy repeats an arrival of the same body
    /// whose delivery was never acked (see [`Ledger::jobs_acked`]), the
    /// newest first; with none, it is a new arrival.
    pub async fn match_copies(
        &self,
        copies: &[(String, u32)],
    ) -> Result<HashMap<String, (String, Known)>, LedgerError> {
        let started = std::time::Instant::now();
        let digests: Vec<&str> = copies.iter().map(|(d, _)| d.as_str()).collect();
        let arriving: HashMap<&str, u32> = copies.iter().map(|(d, r)| (d.as_str(), *r)).collect();
        let rows: Vec<CopyRow> = sqlx::query_as(
            "SELECT DISTINCT ON (j.digest) j.digest, j.job_id, j.state AS job_state, j.replays, \
                    c.id AS call_id, c.state AS call_state, \
                    CASE WHEN j.state = $2 AND c.state = $3 THEN c.body END AS body, \
                    c.random, EXTRACT(EPOCH FROM (now() - c.doubt_since))::float8 AS doubt_age \
             FROM jobs j JOIN calls c ON c.id = j.call_id \
             WHERE j.digest = ANY($1) AND NOT j.acked \
               AND ((j.app = $4 AND j.queue = $5) OR (j.app = 0 AND j.queue = '')) \
             ORDER BY j.digest, j.app = 0, j.updated_at DESC",
        )
        .bind(&digests)
        .bind(JobState::InFlight)
        .bind(CallState::InFlight)
        .bind(self.scope.app_column())
        .bind(&self.scope.queue)
        .fetch_all(&self.pool)
        .await?;
        self.spent("match_copies", started, 1);
        let mut matched = HashMap::with_capacity(rows.len());
        for CopyRow { digest, record } in rows {
            let replays = arriving.get(digest.as_str()).copied().unwrap_or(0);
            let job_id = record.job_id.clone();
            matched.insert(digest, (job_id, record.known(replays)));
        }
        Ok(matched)
    }

    /// Arrivals of jobs without `message_id` whose deliveries were acked:
    /// no later copy of their bodies can be them.
    pub async fn jobs_acked(&self, job_ids: &[String]) -> Result<(), LedgerError> {
        let started = std::time::Instant::now();
        sqlx::query(
            "UPDATE jobs SET acked = true WHERE job_id = ANY($1) \
               AND ((app = $2 AND queue = $3) OR (app = 0 AND queue = ''))",
        )
        .bind(job_ids)
        .bind(self.scope.app_column())
        .bind(&self.scope.queue)
        .execute(&self.pool)
        .await?;
        self.spent("jobs_acked", started, 1);
        Ok(())
    }

    /// Every record of `job_id` (an id, or the body digest of jobs without
    /// `message_id`) that `filter` lets through, those of a scope before
    /// legacy ones, newest first.
    pub async fn find(
        &self,
        job_id: &str,
        filter: &ScopeFilter,
    ) -> Result<Vec<JobReport>, LedgerError> {
        let reports = sqlx::query_as(
            "SELECT * FROM ( \
             SELECT j.app, j.queue, j.job_id, j.state, j.reason, j.error_code, j.error_info, \
                    (EXTRACT(EPOCH FROM j.updated_at) * 1000)::bigint AS updated_at_ms, \
                    c.id AS call_id, c.state AS call_state, c.msg_seq, c.job_count AS call_jobs, \
                    (EXTRACT(EPOCH FROM c.created_at) * 1000)::bigint AS call_started_ms, \
                    NULL::text AS superseded_by \
             FROM jobs j JOIN calls c ON c.id = j.call_id \
             WHERE (j.job_id = $1 OR j.digest = $1) \
               AND ((j.app = 0 AND j.queue = '') \
                    OR (($2::bigint IS NULL OR j.app = $2) AND ($3::text IS NULL OR j.queue = $3))) \
             UNION ALL \
             SELECT s.app, s.queue, s.job_id, $4 AS state, 'superseded' AS reason, NULL, \
                    'superseded by ' || s.superseded_by || ' (latest-wins key ' || s.coalesce_key || ')', \
                    (EXTRACT(EPOCH FROM s.superseded_at) * 1000)::bigint, \
                    NULL, NULL, NULL, NULL, NULL, s.superseded_by \
             FROM superseded_jobs s \
             WHERE s.job_id = $1 AND ($2::bigint IS NULL OR s.app = $2) AND ($3::text IS NULL OR s.queue = $3) \
             ) r ORDER BY r.app = 0, r.updated_at_ms DESC LIMIT 100",
        )
        .bind(job_id)
        .bind(filter.app_column())
        .bind(filter.queue.as_deref())
        .bind(JobState::Superseded)
        .fetch_all(&self.pool)
        .await?;
        Ok(reports)
    }

    /// What the ledger says of one job in this handle's scope; a handle in
    /// the legacy scope (as [`Ledger::connect_lazy`] makes it) looks in every
    /// scope and answers the newest record.
    pub async fn show(&self, job_id: &str) -> Result<Option<JobReport>, LedgerError> {
        let mut reports = self.find(job_id, &ScopeFilter::of(&self.scope)).await?;
        if self.scope.is_legacy() {
            reports.sort_by_key(|r| std::cmp::Reverse(r.updated_at_ms));
        }
        Ok(reports.into_iter().next())
    }

    /// Deletes up to `batch` jobs of this scope (or legacy) last changed
    /// longer than `age` ago, settled or not (a call in flight that long is
    /// in doubt for good), then the calls as old that no job points at any
    /// more. Returns how many rows went.
    pub async fn prune(&self, age: Duration, batch: i64) -> Result<u64, LedgerError> {
        let seconds = age.as_secs_f64();
        let jobs = sqlx::query(
            "DELETE FROM jobs WHERE (job_id, app, queue) IN (SELECT job_id, app, queue FROM jobs \
               WHERE updated_at < now() - make_interval(secs => $1) \
                 AND ((app = $3 AND queue = $4) OR (app = 0 AND queue = '')) LIMIT $2)",
        )
        .bind(seconds)
        .bind(batch)
        .bind(self.scope.app_column())
        .bind(&self.scope.queue)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let calls = sqlx::query(
            "DELETE FROM calls WHERE id IN (SELECT c.id FROM calls c \
               WHERE COALESCE(c.settled_at, c.created_at) < now() - make_interval(secs => $1) \
                 AND ((c.app = $3 AND c.queue = $4) OR (c.app = 0 AND c.queue = '')) \
                 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.call_id = c.id) LIMIT $2)",
        )
        .bind(seconds)
        .bind(batch)
        .bind(self.scope.app_column())
        .bind(&self.scope.queue)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let superseded = self.prune_superseded(seconds, batch).await?;
        let receipts = self.prune_receipts(seconds, batch).await?;
        Ok(jobs + calls + superseded + receipts)
    }
}
