//! The ledger's errors, and the one distinction the worker acts on: the
//! database out of reach (stop sending at once, wait for it) or a statement
//! refused while it answers (retry a few times, then stop sending too).

use std::borrow::Cow;

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

impl LedgerError {
    /// The database cannot be reached or went away: connection refused or
    /// reset, the pool timed out or closed, or the server is shutting down.
    /// Anything else is a statement the database refused while answering.
    pub fn is_unreachable(&self) -> bool {
        match self {
            LedgerError::Database(e) => is_lost_connection(e),
            LedgerError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => is_lost_connection(e),
            LedgerError::Url(_) | LedgerError::Migrate(_) => false,
        }
    }
}

fn is_lost_connection(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // SQLSTATE class 08 (connection exception), 57P01-57P03 (the server
        // shutting down or starting), 53300 (too many connections).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300"),
        _ => false,
    }
}

/// Text as PostgreSQL's `text` takes it: it refuses NUL, which a service's
/// `ErrorInfo` could hold, and one refused dead letter must not stop the worker.
pub(super) fn db_text(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_are_told_from_refused_statements() {
        assert!(LedgerError::Database(sqlx::Error::PoolTimedOut).is_unreachable());
        assert!(LedgerError::Database(sqlx::Error::PoolClosed).is_unreachable());
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(LedgerError::Database(sqlx::Error::Io(reset)).is_unreachable());
        assert!(!LedgerError::Database(sqlx::Error::RowNotFound).is_unreachable());
        assert!(!LedgerError::Url("x".into()).is_unreachable());
    }

    #[test]
    fn nul_never_reaches_a_text_column() {
        assert_eq!(db_text("a\0b"), "a\u{FFFD}b");
        assert!(matches!(db_text("plain"), Cow::Borrowed("plain")));
    }
}
