//! `jobs show`: what the ledger says of one job, as a line of text or as
//! JSON, and which record an id names when several deployments share the
//! ledger (a job id means one job only within its app and queue).

use std::collections::HashSet;

use crate::ledger::{JobReport, JobState};

/// What an id names among the records found for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Unknown,
    One(JobReport),
    /// Records of several scopes, or several arrivals of one body without
    /// `message_id`: the operator must say which, as `hint` tells.
    Ambiguous {
        reports: Vec<JobReport>,
        hint: &'static str,
    },
}

/// Picks the record an id names. A record made in a scope supersedes one
/// made before scopes existed (which every scope reads as its own).
pub fn resolve(reports: Vec<JobReport>) -> Answer {
    let scoped: Vec<JobReport> = reports
        .iter()
        .filter(|r| !r.scope().is_legacy())
        .cloned()
        .collect();
    let mut reports = if scoped.is_empty() { reports } else { scoped };
    if reports.len() <= 1 {
        return reports.pop().map_or(Answer::Unknown, Answer::One);
    }
    let apps: HashSet<i64> = reports.iter().map(|r| r.app).collect();
    let queues: HashSet<&str> = reports.iter().map(|r| r.queue.as_str()).collect();
    let hint = match (apps.len() > 1, queues.len() > 1) {
        (true, true) => {
            "add --sdkappid (TIM_SDKAPPID) or --queue-prefix (BROADCAST_QUEUE_PREFIX) to pick one"
        }
        (true, false) => "add --sdkappid (TIM_SDKAPPID) to pick one",
        (false, true) => "add --queue-prefix (BROADCAST_QUEUE_PREFIX) to pick one",
        (false, false) => {
            "several arrivals of this body (jobs without message_id): name one by its full id"
        }
    };
    Answer::Ambiguous { reports, hint }
}

/// The records an ambiguous id names, one line each with its scope, and
/// what to add.
pub fn ambiguity(job_id: &str, reports: &[JobReport], hint: &str) -> String {
    let mut out = format!("{job_id:?} names {} jobs in the ledger:\n", reports.len());
    for report in reports {
        out.push_str(&format!("  {}: {}\n", report.scope(), text(report)));
    }
    out.push_str(hint);
    out
}

/// One line: delivered (when, MsgSeq, which call), dead-lettered (why), in
/// flight (in which call, since when), or superseded (by which job).
pub fn text(report: &JobReport) -> String {
    let job_id = &report.job_id;
    let others = report.call_jobs.unwrap_or(1) - 1;
    let call = report
        .call_id
        .map_or("none".to_string(), |id| id.to_string());
    match report.state {
        JobState::Delivered => format!(
            "{job_id}: delivered at {} (unix ms), MsgSeq {}, in call {call} with {others} other job(s)",
            report.updated_at_ms,
            report.msg_seq.map_or("unknown".to_string(), |s| s.to_string()),
        ),
        JobState::DeadLettered => format!(
            "{job_id}: dead-lettered at {} (unix ms): {}, ErrorCode {}, {}",
            report.updated_at_ms,
            report.reason.as_deref().unwrap_or("?"),
            report.error_code.map_or("none".to_string(), |c| c.to_string()),
            report.error_info.as_deref().unwrap_or("")
        ),
        JobState::InFlight => format!(
            "{job_id}: in flight in call {call} (state {}) since {} (unix ms), with {others} other job(s)",
            report
                .call_state
                .map_or("unknown".to_string(), |s| s.to_string()),
            report.call_started_ms.unwrap_or_default()
        ),
        JobState::Superseded => format!(
            "{job_id}: superseded at {} (unix ms) by {}, never sent: {}",
            report.updated_at_ms,
            report.superseded_by.as_deref().unwrap_or("?"),
            report.error_info.as_deref().unwrap_or("")
        ),
    }
}

/// Every field of the report, as pretty JSON.
pub fn json(report: &JobReport) -> serde_json::Result<String> {
    serde_json::to_string_pretty(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::CallState;

    fn report(state: JobState) -> JobReport {
        JobReport {
            app: 1400000000,
            queue: "a.jobs".into(),
            job_id: "j1".into(),
            state,
            reason: Some("rejected".into()),
            error_code: Some(10004),
            error_info: Some("bad".into()),
            updated_at_ms: 2000,
            call_id: Some(7),
            call_state: Some(CallState::InFlight),
            msg_seq: Some(42),
            call_started_ms: Some(1000),
            call_jobs: Some(3),
            superseded_by: None,
        }
    }

    #[test]
    fn each_state_reads_as_one_line() {
        assert_eq!(
            text(&report(JobState::Delivered)),
            "j1: delivered at 2000 (unix ms), MsgSeq 42, in call 7 with 2 other job(s)"
        );
        assert_eq!(
            text(&report(JobState::DeadLettered)),
            "j1: dead-lettered at 2000 (unix ms): rejected, ErrorCode 10004, bad"
        );
        assert_eq!(
            text(&report(JobState::InFlight)),
            "j1: in flight in call 7 (state in_flight) since 1000 (unix ms), with 2 other job(s)"
        );
        let superseded = JobReport {
            state: JobState::Superseded,
            reason: Some("superseded".into()),
            error_code: None,
            error_info: Some("superseded by j2 (latest-wins key score)".into()),
            call_id: None,
            call_state: None,
            msg_seq: None,
            call_started_ms: None,
            call_jobs: None,
            superseded_by: Some("j2".into()),
            ..report(JobState::Delivered)
        };
        assert_eq!(
            text(&superseded),
            "j1: superseded at 2000 (unix ms) by j2, never sent: superseded by j2 (latest-wins key score)"
        );
    }

    #[test]
    fn an_id_in_several_scopes_needs_the_flag_that_tells_them_apart() {
        let at = |app: i64, queue: &str| JobReport {
            app,
            queue: queue.into(),
            ..report(JobState::Delivered)
        };
        assert_eq!(resolve(vec![]), Answer::Unknown);
        assert_eq!(resolve(vec![at(1, "a.jobs")]), Answer::One(at(1, "a.jobs")));
        // A legacy record is superseded by one of a scope.
        assert_eq!(
            resolve(vec![at(0, ""), at(1, "a.jobs")]),
            Answer::One(at(1, "a.jobs"))
        );
        assert_eq!(resolve(vec![at(0, "")]), Answer::One(at(0, "")));
        let hint = |reports| match resolve(reports) {
            Answer::Ambiguous { hint, .. } => hint,
            other => panic!("not ambiguous: {other:?}"),
        };
        assert!(hint(vec![at(1, "a.jobs"), at(2, "a.jobs")]).starts_with("add --sdkappid"));
        assert!(hint(vec![at(1, "a.jobs"), at(1, "b.jobs")]).starts_with("add --queue-prefix"));
        assert!(hint(vec![at(1, "a.jobs"), at(2, "b.jobs")]).contains(" or --queue-prefix"));
        assert!(hint(vec![at(1, "a.jobs"), at(1, "a.jobs")]).contains("full id"));
        let listing = ambiguity("j1", &[at(1, "a.jobs"), at(2, "a.jobs")], "add --sdkappid");
        assert_eq!(
            listing,
            "\"j1\" names 2 jobs in the ledger:\n  app 1 queue a.jobs: j1: delivered at 2000 (unix ms), MsgSeq 42, in call 7 with 2 other job(s)\n  app 2 queue a.jobs: j1: delivered at 2000 (unix ms), MsgSeq 42, in call 7 with 2 other job(s)\nadd --sdkappid"
        );
    }
}
