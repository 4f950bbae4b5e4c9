//! Whose records these are. A job id means one job only within its app and
//! its jobs queue: two deployments sharing a ledger database may both call a
//! job "m5". Rows written before scopes existed have the legacy scope, which
//! every scope reads as its own (after its own rows); see the migration
//! `20261126000002_job_scope.sql`.

/// An app (its SDKAppID) and its jobs queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub app: u64,
    pub queue: String,
}

impl Scope {
    pub fn new(app: u64, queue: impl Into<String>) -> Self {
        Self {
            app,
            queue: queue.into(),
        }
    }

    /// The scope of rows written before scopes existed: app 0 (no SDKAppID
    /// is 0) and no queue.
    pub fn legacy() -> Self {
        Self::new(0, "")
    }

    pub fn is_legacy(&self) -> bool {
        self.app == 0 && self.queue.is_empty()
    }

    /// The app as the `app` column holds it. SDKAppIDs are ten digits; a
    /// number beyond `i64` is no app and maps to -1, apart from every real
    /// app and from the legacy 0.
    pub(super) fn app_column(&self) -> i64 {
        i64::try_from(self.app).unwrap_or(-1)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_legacy() {
            f.write_str("legacy scope (recorded before scopes)")
        } else {
            write!(f, "app {} queue {}", self.app, self.queue)
        }
    }
}

/// Where `jobs show` looks: one app, one queue, both, or anywhere. Legacy
/// rows pass any filter, as they match any scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeFilter {
    pub app: Option<u64>,
    pub queue: Option<String>,
}

impl ScopeFilter {
    /// Exactly this scope (and the legacy one).
    pub fn of(scope: &Scope) -> Self {
        if scope.is_legacy() {
            return Self::default();
        }
        Self {
            app: Some(scope.app),
            queue: Some(scope.queue.clone()),
        }
    }

    pub(super) fn app_column(&self) -> Option<i64> {
        self.app.map(|app| Scope::new(app, "").app_column())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legacy_scope_reads_as_such_and_filters_nothing() {
        assert!(Scope::legacy().is_legacy());
        assert!(!Scope::new(1400000000, "").is_legacy());
        assert_eq!(ScopeFilter::of(&Scope::legacy()), ScopeFilter::default());
        assert_eq!(
            Scope::new(1400000000, "broadcast.jobs").to_string(),
            "app 1400000000 queue broadcast.jobs"
        );
        assert_eq!(Scope::new(u64::MAX, "q").app_column(), -1);
    }
}
