//! A sender's session with the ledger: the fenced writes. A worker session
//! that becomes its app's sender draws a token ([`Ledger::open_session`]);
//! every call it records is owned by that token, and every write that
//! settles a call requires it. A later session takes a call over from an
//! earlier one (counting an interruption of its jobs), never the reverse, so
//! a sender that lost its broker session without noticing can neither
//! overwrite nor settle what its successor holds: it learns it was
//! superseded and stops. See the migration `20261126000004_fencing.sql`.

use super::error::LedgerError;
use super::handle::Ledger;
use super::records::{CallJob, CallState, JobState};
use crate::tencent::body::REPEAT_WINDOW;

/// A ledger handle owned by one sender session.
#[derive(Clone, Debug)]
pub struct LedgerSession {
    pub(super) ledger: Ledger,
    pub(super) token: i64,
}

/// What recording a new call came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begun {
    /// Recorded in flight under this id, owned by this session.
    Recorded(i64),
    /// A call of other content used this `Random` within the repeat window:
    /// nothing recorded; try the next candidate.
    RandomTaken,
    /// A job is in another call in flight, or settled since it was looked
    /// up: nothing recorded; look the jobs up again.
    JobsHeld,
    /// The call this one is a half of was taken over by a later session.
    Superseded,
}

impl Begun {
    /// The call's id, when it was recorded.
    pub fn recorded(self) -> Option<i64> {
        match self {
            Begun::Recorded(id) => Some(id),
            _ => None,
        }
    }
}

/// What taking over a call in flight came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeOver {
    /// This session owns it now; `interruptions` is the most sessions any of
    /// its jobs was in flight in that ended without settling it, `doubt` the
    /// time since an attempt of it may first have reached the service
    /// (`None`: every attempt was refused for sure, it was never delivered).
    Owned {
        interruptions: u32,
        doubt: Option<std::time::Duration>,
    },
    /// No longer in flight (settled, split or abandoned meanwhile): look
    /// its jobs up again.
    Settled,
    /// A later session owns it: this session is no longer the sender.
    Superseded,
}

/// Whether a write found the call still this session's.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    Held,
    /// A later session took the call over (or settled it): nothing written.
    Lost,
}

impl Ownership {
    /// A fenced write of one row: held if it was written, lost if another
    /// session's token (or a settled state) kept it out.
    pub(crate) fn if_written(rows: u64) -> Self {
        if rows == 1 {
            Ownership::Held
        } else {
            Ownership::Lost
        }
    }
}

impl Ledger {
    /// A token for a session that has just become its app's sender, larger
    /// than every earlier session's.
    pub async fn open_session(&self) -> Result<LedgerSession, LedgerError> {
        let started = std::time::Instant::now();
        let token: i64 = sqlx::query_scalar("SELECT nextval('ledger_sessions')")
            .fetch_one(&self.pool)
            .await?;
        self.spent("open_session", started, 1);
        Ok(LedgerSession {
            ledger: self.clone(),
            token,
        })
    }
}

impl LedgerSession {
    pub fn token(&self) -> i64 {
        self.token
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Records a call as in flight, owned by this session, before its first
    /// attempt (so in doubt from now: the attempt may get through). A split
    /// call's halves name their parent, closed as `split`.
    ///
    /// One statement, so one round trip: the `Random` is claimed (no call of
    /// other content used it within the service's repeat window, for this
    /// app or before scopes), the parent must still be this session's, and
    /// each job is bound only if it is free: new, in a call that was split,
    /// abandoned or dead-lettered, replayed since its last record, or in the
    /// parent. A job in another call in flight, or settled, is never
    /// overwritten; when one was not free (two senders racing for it), the
    /// call just recorded is closed as abandoned at once, which frees the
    /// jobs it took, and the answer is [`Begun::JobsHeld`].
    pub async fn begin_call(
        &self,
        body: &[u8],
        random: u32,
        content_digest: &[u8; 32],
        jobs: &[CallJob],
        parent: Option<i64>,
    ) -> Result<Begun, LedgerError> {
        let started = std::time::Instant::now();
        let job_ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        let replays: Vec<i32> = jobs
            .iter()
            .map(|j| i32::try_from(j.replays).unwrap_or(i32::MAX))
            .collect();
        let digests: Vec<Option<&str>> = jobs.iter().map(|j| j.digest.as_deref()).collect();
        // The states are spelled as JobState and CallState spell them.
        let (call_id, bound, parent_held): (Option<i64>, i64, bool) = sqlx::query_as(
            "WITH parent_held AS ( \
                 SELECT $3::bigint IS NULL OR EXISTS (SELECT 1 FROM calls \
                     WHERE id = $3 AND owner = $8 AND state IN ('in_flight', 'split')) AS held), \
             new_call AS ( \
                 INSERT INTO calls (app, queue, body, random, job_count, state, content_digest, owner, \
                                    doubt_since, attempted_at) \
                 SELECT $1, $2, $4, $5, $6, 'in_flight', $7, $8, now(), now() \
                 WHERE (SELECT held FROM parent_held) AND NOT EXISTS ( \
                     SELECT 1 FROM calls WHERE random = $5 AND app IN ($1, 0) \
                       AND content_digest IS DISTINCT FROM $7 \
                       AND GREATEST(created_at, attempted_at) > now() - make_interval(secs => $9)) \
                 RETURNING id), \
             bound AS ( \
                 INSERT INTO jobs (app, queue, job_id, digest, call_id, state, replays) \
                 SELECT $1, $2, t.id, t.digest, n.id, 'in_flight', t.replays \
                 FROM unnest($10::text[], $11::int[], $12::text[]) AS t (id, replays, digest), new_call n \
                 ON CONFLICT (job_id, app, queue) DO UPDATE SET call_id = EXCLUDED.call_id, \
                     state = 'in_flight', replays = EXCLUDED.replays, digest = EXCLUDED.digest, \
                     acked = false, reason = NULL, error_code = NULL, error_info = NULL, \
                     updated_at = now(), \
                     interruptions = CASE WHEN EXCLUDED.replays > jobs.replays THEN 0 \
                                          ELSE jobs.interruptions END \
                 WHERE EXCLUDED.replays > jobs.replays \
                    OR jobs.call_id = $3 \
                    OR (jobs.state = 'in_flight' AND EXISTS (SELECT 1 FROM calls c \
                          WHERE c.id = jobs.call_id AND c.state IN ('split', 'abandoned', 'dead_lettered'))) \
                 RETURNING job_id), \
             split AS ( \
                 UPDATE calls SET state = 'split', settled_at = now() \
                 WHERE id = $3 AND state = 'in_flight' AND EXISTS (SELECT 1 FROM new_call) \
                 RETURNING id) \
             SELECT (SELECT id FROM new_call), (SELECT count(*) FROM bound), \
                    (SELECT held FROM parent_held) \
             FROM (SELECT count(*) FROM split) AS closing",
        )
        .bind(self.ledger.scope.app_column())
        .bind(&self.ledger.scope.queue)
        .bind(parent)
        .bind(body)
        .bind(i64::from(random))
        .bind(i32::try_from(jobs.len()).unwrap_or(i32::MAX))
        .bind(&content_digest[..])
        .bind(self.token)
        .bind(REPEAT_WINDOW.as_secs_f64())
        .bind(&job_ids)
        .bind(&replays)
        .bind(&digests)
        .fetch_one(&self.ledger.pool)
        .await?;
        self.ledger.spent("begin_call", started, 1);
        let Some(call_id) = call_id else {
            return Ok(if parent_held {
                Begun::RandomTaken
            } else {
                Begun::Superseded
            });
        };
        if usize::try_from(bound).unwrap_or(0) < jobs.len() {
            self.abandon_race(call_id).await?;
            return Ok(Begun::JobsHeld);
        }
        Ok(Begun::Recorded(call_id))
    }

    /// A call recorded while another sender took one of its jobs: closed
    /// before it is ever sent, so the jobs it took are free again.
    async fn abandon_race(&self, call_id: i64) -> Result<(), LedgerError> {
        let started = std::time::Instant::now();
        sqlx::query(
            "UPDATE calls SET state = $2, settled_at = now(), \
                 error_info = 'a job was taken by another call as this one was recorded' \
             WHERE id = $1",
        )
        .bind(call_id)
        .bind(CallState::Abandoned)
        .execute(&self.ledger.pool)
        .await?;
        self.ledger.spent("abandon_race", started, 1);
        Ok(())
    }

    /// Takes over a call in flight that an earlier session recorded (or
    /// released), to resend it. Taking it from a session that did not
    /// release it counts an interruption for each of its jobs in flight.
    pub async fn take_over(&self, call_id: i64) -> Result<TakeOver, LedgerError> {
        let started = std::time::Instant::now();
        let mut tx = self.ledger.pool.begin().await?;
        let row: Option<(Option<i64>, CallState, Option<f64>)> = sqlx::query_as(
            "SELECT owner, state, EXTRACT(EPOCH FROM (now() - doubt_since))::float8 \
             FROM calls WHERE id = $1 FOR UPDATE",
        )
        .bind(call_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((owner, state, doubt)) = row else {
            return Ok(TakeOver::Settled);
        };
        if owner.is_some_and(|owner| owner > self.token) {
            return Ok(TakeOver::Superseded);
        }
        if state != CallState::InFlight {
            return Ok(TakeOver::Settled);
        }
        // In doubt, it is resent now, so its `Random` stays claimed; never
        // delivered, it is abandoned and its jobs start over.
        sqlx::query(
            "UPDATE calls SET owner = $2, \
                 attempted_at = CASE WHEN doubt_since IS NULL THEN attempted_at ELSE now() END \
             WHERE id = $1",
        )
        .bind(call_id)
        .bind(self.token)
        .execute(&mut *tx)
        .await?;
        let interrupted = owner.is_some_and(|owner| owner != self.token);
        let interruptions: Option<i32> = sqlx::query_scalar(
            "WITH counted AS ( \
                 UPDATE jobs SET interruptions = interruptions + $3::int \
                 WHERE call_id = $1 AND state = $2 RETURNING interruptions) \
             SELECT max(interruptions) FROM counted",
        )
        .bind(call_id)
        .bind(JobState::InFlight)
        .bind(i32::from(interrupted))
        .fetch_one(&mut *tx)
        .await?;
        self.ledger.spent("take_over", started, 5);
        tx.commit().await?;
        Ok(TakeOver::Owned {
            interruptions: u32::try_from(interruptions.unwrap_or(0)).unwrap_or(0),
            doubt: doubt.map(|s| std::time::Duration::from_secs_f64(s.max(0.0))),
        })
    }

    /// Before another attempt: the call must still be this session's, and
    /// from now it may be delivered (the attempt may get through), and its
    /// `Random` stays claimed.
    pub async fn attempt_again(&self, call_id: i64) -> Result<Ownership, LedgerError> {
        let started = std::time::Instant::now();
        let marked = sqlx::query(
            "UPDATE calls SET doubt_since = COALESCE(doubt_since, now()), attempted_at = now() \
             WHERE id = $1 AND owner = $2 AND state IN ($3, $4)",
        )
        .bind(call_id)
        .bind(self.token)
        .bind(CallState::InFlight)
        .bind(CallState::DeadLettering)
        .execute(&self.ledger.pool)
        .await?
        .rows_affected();
        self.ledger.spent("attempt_again", started, 1);
        Ok(Ownership::if_written(marked))
    }

    /// The service refused the latest attempt for sure, and no earlier one
    /// may have got through: the call was never delivered, whoever takes it
    /// over and however late.
    pub async fn refused(&self, call_id: i64) -> Result<Ownership, LedgerError> {
        let started = std::time::Instant::now();
        let cleared = sqlx::query(
            "UPDATE calls SET doubt_since = NULL WHERE id = $1 AND owner = $2 AND state = $3",
        )
        .bind(call_id)
        .bind(self.token)
        .bind(CallState::InFlight)
        .execute(&self.ledger.pool)
        .await?
        .rows_affected();
        self.ledger.spent("refused", started, 1);
        Ok(Ownership::if_written(cleared))
    }

    /// Whether the call is still this session's to send (before a retry).
    pub async fn still_owner(&self, call_id: i64) -> Result<Ownership, LedgerError> {
        let started = std::time::Instant::now();
        let held: Option<bool> =
            sqlx::query_scalar("SELECT owner = $2 AND state IN ($3, $4) FROM calls WHERE id = $1")
                .bind(call_id)
                .bind(self.token)
                .bind(CallState::InFlight)
                .bind(CallState::DeadLettering)
                .fetch_optional(&self.ledger.pool)
                .await?;
        self.ledger.spent("still_owner", started, 1);
        Ok(if held == Some(true) {
            Ownership::Held
        } else {
            Ownership::Lost
        })
    }

    /// Gives a call in flight up without settling it (a clean stop): the
    /// next session takes it over without counting an interruption.
    pub async fn release(&self, call_id: i64) -> Result<(), LedgerError> {
        let started = std::time::Instant::now();
        sqlx::query("UPDATE calls SET owner = NULL WHERE id = $1 AND owner = $2 AND state = $3")
            .bind(call_id)
            .bind(self.token)
            .bind(CallState::InFlight)
            .execute(&self.ledger.pool)
            .await?;
        self.ledger.spent("release", started, 1);
        Ok(())
    }
}
