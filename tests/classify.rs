//! The classification table: every documented ErrorCode, an unknown one, and
//! each transport failure, with the outcome the worker acts on.

use std::time::Duration;

use broadcast_worker::tencent::classify::{Classifier, Outcome};
use broadcast_worker::tencent::client::{ApiResponse, TransportError};

fn answer(code: i64) -> Result<ApiResponse, TransportError> {
    Ok(ApiResponse {
        action_status: if code == 0 { "OK" } else { "FAIL" }.into(),
        error_code: code,
        error_info: String::new(),
        msg_seq: (code == 0).then_some(1283),
    })
}

const RATE: Outcome = Outcome::RateLimited {
    min_pause: Duration::ZERO,
};

#[test]
fn every_documented_code_has_its_outcome() {
    use Outcome::*;
    let table: &[(i64, Outcome)] = &[
        (
            0,
            Delivered {
                msg_seq: Some(1283),
            },
        ),
        (10002, Transient),
        (10003, AppFault),
        (10004, Permanent),
        (10007, AppFault),
        (10023, RATE),
        (60002, AppFault),
        (60003, AppFault),
        (60004, Transient),
        (60005, Transient),
        (60006, AppFault),
        (60007, RATE),
        (60008, Transient),
        (60010, AppFault),
        (60011, RATE),
        (60012, AppFault),
        (60016, AppFault),
        (60018, RATE),
        (60019, RATE),
        (60020, AppFault),
        (60021, AppFault),
        (60026, AppFault),
        (70001, Resign),
        (70003, AppFault),
        (70009, AppFault),
        (70013, AppFault),
        (70014, AppFault),
        (70016, AppFault),
        (70020, AppFault),
        (
            70050,
            RateLimited {
                min_pause: Duration::from_secs(60),
            },
        ),
        (70107, PermanentCall),
        (70169, Transient),
        (70500, Transient),
        (80001, Permanent),
        (80002, Permanent),
        (80003, Transient),
        (80004, Permanent),
        // Unknown: transient, bounded by the sender's attempt limit.
        (12345, Transient),
        (-1, Transient),
    ];
    let classifier = Classifier::default();
    for (code, want) in table {
        assert_eq!(
            classifier.classify(&answer(*code)),
            *want,
            "ErrorCode {code}"
        );
    }
}

#[test]
fn every_transport_failure_has_its_outcome() {
    use Outcome::*;
    let table: Vec<(TransportError, Outcome)> = vec![
        (TransportError::Status { status: 500 }, Transient),
        (TransportError::Status { status: 502 }, Transient),
        (TransportError::Status { status: 503 }, Transient),
        (TransportError::Status { status: 504 }, Transient),
        (TransportError::Status { status: 408 }, Transient),
        (TransportError::Status { status: 429 }, RATE),
        (TransportError::Status { status: 404 }, AppFault),
        (TransportError::Status { status: 403 }, AppFault),
        (TransportError::Timeout, Transient),
        (
            TransportError::Connect("connection refused".into()),
            Transient,
        ),
        (
            TransportError::InvalidResponse("expected value at line 1".into()),
            Transient,
        ),
        (
            TransportError::Other("connection closed before message completed".into()),
            Transient,
        ),
    ];
    let classifier = Classifier::default();
    for (error, want) in table {
        assert_eq!(classifier.classify(&Err(error.clone())), want, "{error}");
    }
}

#[test]
fn operators_override_a_code() {
    let classifier =
        Classifier::parse_overrides("80003=permanent,12345=app-fault,10023=transient").unwrap();
    assert_eq!(classifier.classify(&answer(80003)), Outcome::Permanent);
    assert_eq!(classifier.classify(&answer(12345)), Outcome::AppFault);
    assert_eq!(classifier.classify(&answer(10023)), Outcome::Transient);
    // Untouched codes keep their documented class; success cannot be overridden.
    assert_eq!(classifier.classify(&answer(10004)), Outcome::Permanent);
    assert!(Classifier::parse_overrides("0=permanent").is_err());
}

#[test]
fn a_refusal_naming_a_shared_field_concerns_the_whole_call() {
    let classifier = Classifier::default();
    let refused = |code: i64, info: &str| {
        classifier.classify(&Ok(ApiResponse {
            action_status: "FAIL".into(),
            error_code: code,
            error_info: info.into(),
            msg_seq: None,
        }))
    };
    assert_eq!(
        refused(10004, "From_Account is not a valid account"),
        Outcome::PermanentCall
    );
    assert_eq!(
        refused(10004, "CloudCustomData too long"),
        Outcome::PermanentCall
    );
    assert_eq!(
        refused(10004, "MsgBody[3].MsgContent.Text missing"),
        Outcome::Permanent
    );
    assert_eq!(refused(80001, "text failed moderation"), Outcome::Permanent);
}
