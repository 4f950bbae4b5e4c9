//! The ledger's records as the worker and `jobs show` read them: the states
//! of jobs and calls (spelled the same in SQL), what an arriving job is
//! known as, and the pure decision from a job's row and its call's.

use std::time::Duration;

use super::scope::Scope;

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
    /// A later job of its latest-wins key took its place before it was in
    /// any call: acked, never sent.
    Superseded,
}

/// A job a later one of its latest-wins key replaced, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superseded {
    pub job_id: String,
    /// The id of the job that took its place.
    pub by: String,
    /// The latest-wins key they share.
    pub key: String,
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
    /// Its jobs are being dead-lettered though it may have been delivered;
    /// closed as `dead_lettered` once every job is recorded.
    DeadLettering,
}

/// What the ledger knows of a job that arrives (again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// Delivered or dead-lettered already: ack it without a call.
    Settled,
    /// Its call may or may not have reached the service.
    InFlight(InFlightCall),
    /// Its call was being dead-lettered when a worker stopped, and may have
    /// been delivered: dead-letter it as in doubt, never send it again.
    InDoubt,
    /// Nothing, or nothing that still binds it: a new job.
    New,
}

/// A call recorded as in flight, with what it takes to resend it verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlightCall {
    pub call_id: i64,
    pub body: Vec<u8>,
    pub random: u32,
    /// Time since an attempt of the call may first have reached the
    /// service, by the database's clock; `None` while every attempt was
    /// refused for sure.
    pub doubt: Option<Duration>,
}

/// A job as a call records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallJob {
    pub id: String,
    /// Times it had been replayed from the dead-letter queue.
    pub replays: u32,
    /// For a job without `message_id`: its body's digest.
    pub digest: Option<String>,
}

impl std::fmt::Display for CallState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CallState::InFlight => "in_flight",
            CallState::Delivered => "delivered",
            CallState::DeadLettered => "dead_lettered",
            CallState::Split => "split",
            CallState::Abandoned => "abandoned",
            CallState::DeadLettering => "dead_lettering",
        })
    }
}

/// A job's record, for `jobs show`. A superseded job was in no call: its
/// call fields are empty and `superseded_by` names the job that replaced it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct JobReport {
    /// Its scope: the SDKAppID and the jobs queue (0 and "" for a record
    /// made before scopes existed).
    pub app: i64,
    pub queue: String,
    pub job_id: String,
    pub state: JobState,
    pub reason: Option<String>,
    pub error_code: Option<i64>,
    pub error_info: Option<String>,
    /// Unix milliseconds of the job's last change.
    pub updated_at_ms: i64,
    pub call_id: Option<i64>,
    pub call_state: Option<CallState>,
    pub msg_seq: Option<i64>,
    /// Unix milliseconds of the call's first attempt.
    pub call_started_ms: Option<i64>,
    /// Jobs in the call, this one included.
    pub call_jobs: Option<i32>,
    /// For a superseded job: the job that took its place.
    pub superseded_by: Option<String>,
}

impl JobReport {
    pub fn scope(&self) -> Scope {
        Scope::new(u64::try_from(self.app).unwrap_or(0), self.queue.clone())
    }
}

/// A job's row joined with its call's, as [`Ledger::lookup`] reads it.
#[derive(sqlx::FromRow)]
pub(super) struct RecordRow {
    pub(super) job_id: String,
    job_state: JobState,
    replays: i32,
    call_id: i64,
    call_state: CallState,
    /// Only for a job still in flight in a call still in flight.
    body: Option<Vec<u8>>,
    random: i64,
    /// Seconds since an attempt may first have reached the service.
    doubt_age: Option<f64>,
}

impl RecordRow {
    pub(super) fn known(self, arriving_replays: u32) -> Known {
        let call = self.body.map(|body| InFlightCall {
            call_id: self.call_id,
            body,
            random: u32::try_from(self.random).unwrap_or(0),
            doubt: self.doubt_age.map(|s| Duration::from_secs_f64(s.max(0.0))),
        });
        let recorded = u32::try_from(self.replays).unwrap_or(0);
        classify_record(
            self.job_state,
            self.call_state,
            call,
            recorded,
            arriving_replays,
        )
    }
}

/// The arrival a redelivered copy of a job without `message_id` repeats.
#[derive(sqlx::FromRow)]
pub(super) struct CopyRow {
    pub(super) digest: String,
    #[sqlx(flatten)]
    pub(super) record: RecordRow,
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
        (JobState::Delivered | JobState::DeadLettered | JobState::Superseded, _, _) => {
            Known::Settled
        }
        (JobState::InFlight, CallState::InFlight, Some(call)) => Known::InFlight(call),
        (JobState::InFlight, CallState::DeadLettering, _) => Known::InDoubt,
        // The call was split, abandoned or failed as a whole after this job's
        // last record: nothing was delivered for it, so it is new again.
        _ => Known::New,
    }
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
            doubt: Some(Duration::from_secs(3)),
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
        assert_eq!(
            classify_record(JobState::InFlight, CallState::DeadLettering, None, 0, 0),
            Known::InDoubt
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
