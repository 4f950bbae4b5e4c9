//! Sessions ended by a logout, so that a copy of the cookie opens nothing
//! more. With the ledger they are kept in its database, which every replica
//! sharing it asks on each request with a session cookie (no cache: a
//! logout holds from the next request on, on any replica). Without one they
//! are kept in this process's memory, and only this replica knows of them.
//! Either way a session is known by a hash of its id, kept until it would
//! have expired, then forgotten.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::auth::Session;
use crate::ledger::Ledger;

/// Why a session's end could not be recorded or looked up.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the ledger cannot say which console sessions were ended: {0}")]
    Ledger(String),
}

/// The longest a request waits for the ledger's answer about its session.
const LEDGER_WAIT: Duration = Duration::from_secs(5);

/// A ledger call, bounded: a database that hangs must not hold every page.
async fn bounded<T>(
    call: impl Future<Output = Result<T, crate::ledger::LedgerError>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(LEDGER_WAIT, call).await {
        Ok(result) => result.map_err(|e| SessionError::Ledger(e.to_string())),
        Err(_) => Err(SessionError::Ledger(format!(
            "no answer within {} s",
            LEDGER_WAIT.as_secs()
        ))),
    }
}

/// Where ended sessions are kept.
pub enum Revocations {
    /// This replica's memory: session hash -> expiry (unix seconds).
    Memory(Mutex<HashMap<String, u64>>),
    /// The ledger's `console_revoked_sessions`, seen by every replica.
    Ledger(Ledger),
}

/// A session's id as kept: its hash, so that the store never holds a
/// value that is part of a cookie.
fn hash(session: &Session) -> String {
    let digest = Sha256::new()
        .chain_update(b"console-session\0")
        .chain_update(session.id.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Revocations {
    /// In the ledger if there is one, else in memory.
    pub fn new(ledger: Option<Ledger>) -> Self {
        match ledger {
            Some(ledger) => Self::Ledger(ledger),
            None => Self::Memory(Mutex::new(HashMap::new())),
        }
    }

    /// Ends `session` (at `now`, unix seconds) until it would have expired.
    pub async fn end(&self, session: &Session, now: u64) -> Result<(), SessionError> {
        let key = hash(session);
        match self {
            Self::Memory(ended) => {
                let mut ended = ended.lock().unwrap_or_else(|p| p.into_inner());
                ended.retain(|_, expires| *expires > now);
                ended.insert(key, session.expires);
                Ok(())
            }
            Self::Ledger(ledger) => {
                let expires = i64::try_from(session.expires).unwrap_or(i64::MAX);
                bounded(ledger.revoke_console_session(&key, expires)).await
            }
        }
    }

    /// Whether a logout ended `session`.
    pub async fn ended(&self, session: &Session) -> Result<bool, SessionError> {
        let key = hash(session);
        match self {
            Self::Memory(ended) => Ok(ended
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&key)),
            Self::Ledger(ledger) => bounded(ledger.console_session_revoked(&key)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::auth::Auth;
    use crate::console::auth::ConsoleToken;

    #[tokio::test]
    async fn a_logout_ends_that_session_only_and_is_forgotten_after_expiry() {
        let auth = Auth::new(ConsoleToken::new("memory-test-token").unwrap());
        let session = |expires| auth.session(&auth.session_value(expires), 0).unwrap();
        let (one, two) = (session(100), session(100));
        let store = Revocations::new(None);
        store.end(&one, 10).await.unwrap();
        assert!(store.ended(&one).await.unwrap());
        assert!(!store.ended(&two).await.unwrap());
        let Revocations::Memory(map) = &store else {
            unreachable!()
        };
        assert!(!map.lock().unwrap().keys().any(|k| k.contains(&one.id)));
        // A later logout prunes what has expired by then.
        store.end(&session(300), 200).await.unwrap();
        assert!(!store.ended(&one).await.unwrap(), "expired, forgotten");
        assert_eq!(map.lock().unwrap().len(), 1);
    }
}
