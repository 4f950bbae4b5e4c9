//! Classification: what one attempt's result (a transport error, or the
//! service's `ErrorCode`) means for the jobs of the call. Pure; the sender owns
//! the policy (backoff, pauses, bisection) that acts on it.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::ValueEnum;

use crate::tencent::client::{ApiResponse, TransportError};

/// What to do with the jobs of a call after one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The service took the message; ack every job.
    Delivered { msg_seq: Option<u64> },
    /// A passing fault: retry the same call after a backoff.
    Transient,
    /// The app's frequency limit: pause the whole sender for at least `min_pause`
    /// (zero means "the sender's own pause"), then retry; not the jobs' fault.
    RateLimited { min_pause: Duration },
    /// The UserSig expired: sign a fresh one and retry at once.
    Resign,
    /// One job's content will never be accepted: find the job (split the
    /// call) and dead-letter it.
    Permanent,
    /// What the call's jobs share (`From_Account`, `CloudCustomData`) will
    /// never be accepted: no split can help, dead-letter them all.
    PermanentCall,
    /// The app's configuration (or our request itself) is wrong: stop
    /// sending, keep every job.
    AppFault,
}

/// The classes a non-zero `ErrorCode` can fall in; operators can move a code
/// from one class to another (by these names: `transient`, `rate-limited`,
/// `resign`, `permanent`, `permanent-call`, `app-fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ErrorClass {
    Transient,
    RateLimited,
    Resign,
    Permanent,
    PermanentCall,
    AppFault,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.to_possible_value().expect("no class is skipped");
        f.write_str(value.get_name())
    }
}

impl FromStr for ErrorClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <ErrorClass as ValueEnum>::from_str(s, false).map_err(|_| {
            let names: Vec<String> = ErrorClass::value_variants()
                .iter()
                .map(ToString::to_string)
                .collect();
            format!("unknown class {s:?}; expected one of {}", names.join(", "))
        })
    }
}

/// The documented class of a non-zero `ErrorCode`.
pub fn class_of_code(code: i64) -> ErrorClass {
    use ErrorClass::*;
    match code {
        10002 => Transient,
        // A command word or a request the service cannot parse is our
        // request's fault, not any job's: the same for every call.
        10003 => AppFault,
        10004 => Permanent,
        10007 => AppFault,
        10023 => RateLimited,
        60002 | 60003 => AppFault,
        60004 | 60005 | 60008 => Transient,
        60006 | 60010 | 60012 | 60016 | 60020 | 60021 | 60026 => AppFault,
        60007 | 60011 | 60018 | 60019 => RateLimited,
        70001 => Resign,
        70003 | 70009 | 70013 | 70014 | 70016 | 70020 => AppFault,
        70050 => RateLimited,
        // The sender (From_Account) does not exist: shared by the whole call.
        70107 => PermanentCall,
        70169 | 70500 => Transient,
        80001 | 80002 | 80004 => Permanent,
        80003 => Transient,
        // Unknown: transient, for a bounded number of attempts (the sender's limit).
        _ => Transient,
    }
}

/// Whether an answer's text names a field every job of the call shares.
fn names_shared_field(info: &str) -> bool {
    info.contains("From_Account") || info.contains("CloudCustomData")
}

/// Classification with the operators' overrides applied.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    overrides: HashMap<i64, ErrorClass>,
}

/// A bad override in configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    #[error("class override {0:?} is not CODE=CLASS")]
    Syntax(String),
    #[error("class override {0:?}: {1}")]
    Class(String, String),
    #[error("class override {0:?}: ErrorCode 0 means delivered and cannot be reclassified")]
    Success(String),
}

impl Classifier {
    /// Parses `10004=transient,80003=permanent` (spaces allowed, empty is none).
    pub fn parse_overrides(spec: &str) -> Result<Self, OverrideError> {
        let mut overrides = HashMap::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (code, class) = item
                .split_once('=')
                .ok_or_else(|| OverrideError::Syntax(item.to_string()))?;
            let code: i64 = code
                .trim()
                .parse()
                .map_err(|_| OverrideError::Syntax(item.to_string()))?;
            if code == 0 {
                return Err(OverrideError::Success(item.to_string()));
            }
            let class = class
                .trim()
                .parse()
                .map_err(|e| OverrideError::Class(item.to_string(), e))?;
            overrides.insert(code, class);
        }
        Ok(Self { overrides })
    }

    /// The class of a non-zero code, overrides first.
    pub fn class_of(&self, code: i64) -> ErrorClass {
        self.overrides
            .get(&code)
            .copied()
            .unwrap_or_else(|| class_of_code(code))
    }

    /// One attempt's result to its outcome.
    pub fn classify(&self, result: &Result<ApiResponse, TransportError>) -> Outcome {
        match result {
            Ok(response) if response.error_code == 0 => Outcome::Delivered {
                msg_seq: response.msg_seq,
            },
            Ok(response) => match self.class_of(response.error_code) {
                ErrorClass::Transient => Outcome::Transient,
                ErrorClass::RateLimited => Outcome::RateLimited {
                    // 70050 locks the app out of signature checks for a minute.
                    min_pause: if response.error_code == 70050 {
                        Duration::from_secs(60)
                    } else {
                        Duration::ZERO
                    },
                },
                ErrorClass::Resign => Outcome::Resign,
                // A refusal that names a shared field concerns every job.
                ErrorClass::Permanent if names_shared_field(&response.error_info) => {
                    Outcome::PermanentCall
                }
                ErrorClass::Permanent => Outcome::Permanent,
                ErrorClass::PermanentCall => Outcome::PermanentCall,
                ErrorClass::AppFault => Outcome::AppFault,
            },
            Err(TransportError::Status { status: 429 }) => Outcome::RateLimited {
                min_pause: Duration::ZERO,
            },
            // Another 4xx is the front door refusing us (wrong base URL, a proxy's
            // rules): every call would fail the same way, which is the app's fault.
            Err(TransportError::Status { status })
                if (400..500).contains(status) && *status != 408 =>
            {
                Outcome::AppFault
            }
            // 5xx, 408, timeouts, refused or dropped connections, garbled answers:
            // the request may or may not have reached the service. A retry carries
            // the same body and Random, so the service drops it if it did.
            Err(TransportError::Status { .. })
            | Err(TransportError::Timeout)
            | Err(TransportError::Connect(_))
            | Err(TransportError::InvalidResponse(_))
            | Err(TransportError::Other(_)) => Outcome::Transient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_read_back() {
        for class in ErrorClass::value_variants() {
            assert_eq!(class.to_string().parse::<ErrorClass>(), Ok(*class));
        }
        assert_eq!(ErrorClass::RateLimited.to_string(), "rate-limited");
        assert_eq!(
            "maybe".parse::<ErrorClass>(),
            Err("unknown class \"maybe\"; expected one of transient, rate-limited, resign, permanent, permanent-call, app-fault".into())
        );
    }

    #[test]
    fn parses_overrides() {
        let c = Classifier::parse_overrides(" 10004 = transient, 80003=permanent ,").unwrap();
        assert_eq!(c.class_of(10004), ErrorClass::Transient);
        assert_eq!(c.class_of(80003), ErrorClass::Permanent);
        assert_eq!(c.class_of(10002), ErrorClass::Transient);
        assert!(matches!(
            Classifier::parse_overrides("10004"),
            Err(OverrideError::Syntax(_))
        ));
        assert!(matches!(
            Classifier::parse_overrides("x=transient"),
            Err(OverrideError::Syntax(_))
        ));
        assert!(matches!(
            Classifier::parse_overrides("10004=maybe"),
            Err(OverrideError::Class(..))
        ));
        assert!(matches!(
            Classifier::parse_overrides("0=transient"),
            Err(OverrideError::Success(_))
        ));
    }
}
