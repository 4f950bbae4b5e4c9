//! `jobs show`: what the ledger says of one job, as a line of text or as JSON.

use crate::ledger::{JobReport, JobState};

/// One line: delivered (when, MsgSeq, which call), dead-lettered (why), or in
/// flight (in which call, since when).
pub fn text(report: &JobReport) -> String {
    let job_id = &report.job_id;
    let others = report.call_jobs - 1;
    match report.state {
        JobState::Delivered => format!(
            "{job_id}: delivered at {} (unix ms), MsgSeq {}, in call {} with {others} other job(s)",
            report.updated_at_ms,
            report.msg_seq.map_or("unknown".to_string(), |s| s.to_string()),
            report.call_id
        ),
        JobState::DeadLettered => format!(
            "{job_id}: dead-lettered at {} (unix ms): {}, ErrorCode {}, {}",
            report.updated_at_ms,
            report.reason.as_deref().unwrap_or("?"),
            report.error_code.map_or("none".to_string(), |c| c.to_string()),
            report.error_info.as_deref().unwrap_or("")
        ),
        JobState::InFlight => format!(
            "{job_id}: in flight in call {} (state {}) since {} (unix ms), with {others} other job(s)",
            report.call_id, report.call_state, report.call_started_ms
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
            job_id: "j1".into(),
            state,
            reason: Some("rejected".into()),
            error_code: Some(10004),
            error_info: Some("bad".into()),
            updated_at_ms: 2000,
            call_id: 7,
            call_state: CallState::InFlight,
            msg_seq: Some(42),
            call_started_ms: 1000,
            call_jobs: 3,
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
    }
}
