//! The [`Ledger`] handle: its pool of connections to PostgreSQL, the scope it
//! works in, the migrations, and the metrics every statement is counted in.
//! The other files of `ledger` add its statements.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use super::error::LedgerError;
use super::scope::Scope;
use crate::telemetry;

/// A pooled connection idle this long is pinged before it is used again.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// A handle on the ledger, working in one scope; cheap to clone. Its
/// statements read and write the rows of its scope, and read legacy rows
/// (`app = 0 AND queue = ''`) as its own after them.
#[derive(Clone)]
pub struct Ledger {
    pub(super) pool: PgPool,
    pub(super) scope: Scope,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pool's options hold the database URL, password included.
        write!(f, "Ledger({})", self.scope)
    }
}

impl Ledger {
    /// A pool that connects on first use, so a worker can start while the
    /// database is down and wait for it. The handle is in the legacy scope
    /// until [`Ledger::in_scope`] puts it in a deployment's.
    pub fn connect_lazy(url: &str) -> Result<Self, LedgerError> {
        Self::connect_lazy_pooled(url, 4)
    }

    /// The same, with up to `connections` connections (a fleet's apps share them).
    pub fn connect_lazy_pooled(url: &str, connections: u32) -> Result<Self, LedgerError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| LedgerError::Url(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(1))
            .acquire_timeout(Duration::from_secs(3))
            // A connection in steady use is known to be alive: pinging it at
            // every acquire doubled each statement's round trips. One that sat
            // idle (the database may have restarted meanwhile) is pinged.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(options.application_name("broadcast-worker"));
        Ok(Self {
            pool,
            scope: Scope::legacy(),
        })
    }

    /// The same database, with records of this scope.
    pub fn in_scope(self, scope: Scope) -> Self {
        Self { scope, ..self }
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Counts an operation's round trips and time, by app (and the trips
    /// by operation, so that a cost per call can be told apart).
    pub(super) fn spent(&self, op: &'static str, started: std::time::Instant, round_trips: u64) {
        let app = self.scope.app.to_string();
        metrics::counter!(telemetry::LEDGER_ROUND_TRIPS, telemetry::SDKAPPID => app.clone(), "op" => op)
            .increment(round_trips);
        metrics::histogram!(telemetry::LEDGER_SECONDS, telemetry::SDKAPPID => app)
            .record(started.elapsed().as_secs_f64());
    }

    pub async fn migrate(&self) -> Result<(), LedgerError> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }
}
