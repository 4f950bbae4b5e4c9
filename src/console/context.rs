//! What every console handler shares: the [`Console`] (its token's checks,
//! its broker connection for the dead letters, the ledger it asks, the
//! sessions a logout ended, the throttle, the trusted proxies), the
//! context each request gets, the app a request names, and a [`Problem`]
//! the console answers with.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::StatusCode;

use super::auth::{Auth, Authed, ConsoleToken};
use super::client::{Client, Proxies};
use super::dead::DeadLetters;
use super::dead_error::DeadError;
use super::sessions::{Revocations, SessionError};
use super::throttle::Throttle;
use crate::broker::QueueNames;
use crate::ledger::Ledger;
use crate::status::{StatusBoard, WorkerStatus};

/// How a console is set up.
#[derive(Debug)]
pub struct ConsoleConfig {
    /// Open to the holders of this token.
    pub token: ConsoleToken,
    /// The broker its dead letters are read on.
    pub amqp_url: String,
    /// Dead letters a view reads at most.
    pub read_limit: usize,
    /// The ledger's records of a job, and the sessions a logout ended
    /// (without it, those are kept in this process's memory).
    pub ledger: Option<Ledger>,
    /// Always mark the session cookie `Secure`: the console is served over
    /// https (by a proxy in front of it).
    pub secure_cookie: bool,
    /// Proxies whose `X-Forwarded-For` and `X-Forwarded-Proto` are believed.
    pub trusted_proxies: Vec<IpAddr>,
}

/// The console: its token's checks, its broker connection for the dead
/// letters, and the ledger it asks about a job. Cheap to clone.
#[derive(Clone)]
pub struct Console(Arc<Inner>);

struct Inner {
    auth: Auth,
    dead: DeadLetters,
    /// A handle on the ledger in no scope: a job is looked up in its app's.
    ledger: Option<Ledger>,
    sessions: Revocations,
    throttle: Throttle,
    proxies: Proxies,
    secure_cookie: bool,
}

impl Console {
    pub fn new(config: ConsoleConfig) -> Self {
        Self(Arc::new(Inner {
            auth: Auth::new(config.token),
            dead: DeadLetters::new(config.amqp_url, config.read_limit),
            sessions: Revocations::new(config.ledger.clone()),
            ledger: config.ledger,
            throttle: Throttle::default(),
            proxies: Proxies::new(config.trusted_proxies),
            secure_cookie: config.secure_cookie,
        }))
    }

    pub fn auth(&self) -> &Auth {
        &self.0.auth
    }

    pub(super) fn sessions(&self) -> &Revocations {
        &self.0.sessions
    }

    pub(super) fn throttle(&self) -> &Throttle {
        &self.0.throttle
    }

    pub(super) fn proxies(&self) -> &Proxies {
        &self.0.proxies
    }

    /// Whether a cookie set for `client` is `Secure`.
    pub(super) fn secure_cookie(&self, client: &Client) -> bool {
        self.0.secure_cookie || client.https
    }

    pub(super) fn dead(&self) -> &DeadLetters {
        &self.0.dead
    }

    pub(super) fn ledger(&self) -> Option<&Ledger> {
        self.0.ledger.as_ref()
    }
}

/// What every console handler gets.
#[derive(Clone)]
pub(super) struct Ctx {
    pub(super) console: Console,
    pub(super) board: StatusBoard,
}

/// An app the request names, with its status and queues.
pub(super) struct AppRef {
    pub(super) sdkappid: u64,
    pub(super) status: Arc<WorkerStatus>,
    pub(super) queues: QueueNames,
}

/// A request the console cannot answer as asked, in words for the operator.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub message: String,
}

impl Problem {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(super) fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "the CSRF token is missing or wrong (a stale form, or a request from elsewhere): nothing was done",
        )
    }
}

impl From<SessionError> for Problem {
    fn from(e: SessionError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<DeadError> for Problem {
    fn from(e: DeadError) -> Self {
        let status = match &e {
            DeadError::Broker(_) => StatusCode::SERVICE_UNAVAILABLE,
            DeadError::PageOutOfRange { .. } => StatusCode::NOT_FOUND,
            DeadError::Changed { .. } => StatusCode::CONFLICT,
            DeadError::Interrupted { .. } => StatusCode::BAD_GATEWAY,
        };
        Self::new(status, e.to_string())
    }
}

impl Ctx {
    /// The app `{app}` names: a number this process serves.
    pub(super) fn app(&self, app: &str) -> Result<AppRef, Problem> {
        let sdkappid: u64 = app.parse().map_err(|_| {
            Problem::bad_request(format!(
                "the app must be an SDKAppID (a number), not {app:?}"
            ))
        })?;
        let apps = self.board.apps();
        let served: Vec<String> = apps.iter().map(|(a, _)| a.to_string()).collect();
        let status = apps
            .into_iter()
            .find(|(a, _)| *a == sdkappid)
            .map(|(_, status)| status)
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "this process serves no app {sdkappid}; it serves {}",
                        if served.is_empty() {
                            "none yet".into()
                        } else {
                            served.join(", ")
                        }
                    ),
                )
            })?;
        let queues = status.queues.clone().ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                format!("app {sdkappid} has no queues yet"),
            )
        })?;
        Ok(AppRef {
            sdkappid,
            status,
            queues,
        })
    }

    /// The CSRF token a page's forms carry (none for a bearer request).
    pub(super) fn csrf(&self, authed: &Authed) -> Option<String> {
        match authed {
            Authed::Session(session) => Some(self.console.auth().csrf(&session.value)),
            Authed::Bearer => None,
        }
    }
}
