//! The operator's console: web pages and their JSON API, served on the ops
//! endpoint by `run` when a console token is set. It owns everything behind
//! `/`, `/login`, `/logout`, `/static/...`, `/apps/...` and `/api/...`: who
//! may see them ([`auth`]), each app's flow from its [`WorkerStatus`] (the
//! per-minute [`history`] and its [`chart`]), and each app's dead letters,
//! read, replayed and purged through [`crate::ops::dlq`] ([`dead`]).
//!
//! - [`auth`]: the token, the session cookie, CSRF tokens; `gate`: the
//!   check every page and API call passes; [`client`]: who sent a request
//!   (the peer, or behind a trusted proxy the hop it forwarded);
//!   [`throttle`]: each client's budget of wrong tokens; [`sessions`]: the
//!   sessions a logout ended (in the ledger, or in memory); `redirect`: where
//!   a login may go on to.
//! - [`filter`]: query strings and forms, parsed and checked.
//! - [`history`], [`chart`]: the last hour of calls, and its SVG.
//! - [`view`]: an app's state as the pages and the API show it.
//! - [`dead`]: the dead letters over the console's own broker connection,
//!   a view reading no more than the read limit of a queue (`walk`: one pass
//!   of a replay or purge, over the whole queue).
//! - `login`, `pages`, `dead_pages`, `action_pages`: the HTML; `api`: the JSON;
//!   `actions`: replay and purge, shared by both.
//!
//! Every response carries a strict Content-Security-Policy (no inline
//! script or style; the stylesheet and script are files of this binary),
//! and every page is rendered with `maud`, which escapes what it inserts.
//!
//! [`WorkerStatus`]: crate::status::WorkerStatus

mod action_pages;
mod actions;
mod api;
pub mod auth;
pub mod chart;
pub mod client;
pub mod dead;
mod dead_pages;
pub mod filter;
mod gate;
mod login;
mod pages;
mod redirect;
pub mod sessions;
pub mod throttle;
pub mod view;
mod walk;

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Path, Request};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, WWW_AUTHENTICATE,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::broker::QueueNames;
use crate::ledger::Ledger;
use crate::status::{StatusBoard, WorkerStatus};
pub use auth::ConsoleToken;
use auth::{Auth, Authed};
use client::{Client, Proxies};
use dead::{DeadError, DeadLetters};
use sessions::{Revocations, SessionError};
use throttle::Throttle;

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

    fn sessions(&self) -> &Revocations {
        &self.0.sessions
    }

    fn throttle(&self) -> &Throttle {
        &self.0.throttle
    }

    fn proxies(&self) -> &Proxies {
        &self.0.proxies
    }

    /// Whether a cookie set for `client` is `Secure`.
    fn secure_cookie(&self, client: &Client) -> bool {
        self.0.secure_cookie || client.https
    }

    fn dead(&self) -> &DeadLetters {
        &self.0.dead
    }

    fn ledger(&self) -> Option<&Ledger> {
        self.0.ledger.as_ref()
    }
}

/// What every console handler gets.
#[derive(Clone)]
struct Ctx {
    console: Console,
    board: StatusBoard,
}

/// An app the request names, with its status and queues.
struct AppRef {
    sdkappid: u64,
    status: Arc<WorkerStatus>,
    queues: QueueNames,
}

/// A request the console cannot answer as asked, in words for the operator.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub message: String,
}

impl Problem {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn forbidden() -> Self {
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
    fn app(&self, app: &str) -> Result<AppRef, Problem> {
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
    fn csrf(&self, authed: &Authed) -> Option<String> {
        match authed {
            Authed::Session(session) => Some(self.console.auth().csrf(&session.value)),
            Authed::Bearer => None,
        }
    }
}

/// The console's routes over the apps of `board`.
pub fn router(console: Console, board: StatusBoard) -> Router {
    let ctx = Ctx { console, board };
    let gated = Router::new()
        .route("/", get(pages::apps))
        .route("/logout", post(login::logout))
        .route("/apps/{app}", get(pages::app))
        .route("/apps/{app}/dead", get(dead_pages::list))
        .route("/apps/{app}/dead/{id}", get(dead_pages::job))
        .route("/apps/{app}/dead-letter", get(dead_pages::job_by_query))
        .route("/apps/{app}/confirm", post(action_pages::confirm))
        .route("/apps/{app}/replay", post(action_pages::replay))
        .route("/apps/{app}/purge", post(action_pages::purge))
        .route("/api/apps", get(api::apps))
        .route("/api/apps/{app}", get(api::app))
        .route("/api/apps/{app}/dead", get(api::dead))
        .route("/api/apps/{app}/dead/summary", get(api::summary))
        .route("/api/apps/{app}/dead/{id}", get(api::job))
        .route("/api/apps/{app}/dead-letter", get(api::job_by_query))
        .route("/api/apps/{app}/replay", post(api::replay))
        .route("/api/apps/{app}/purge", post(api::purge))
        .route_layer(middleware::from_fn_with_state(ctx.clone(), gate::require));
    Router::new()
        .route("/login", get(login::login_form).post(login::login))
        .route("/static/{file}", get(static_file))
        .merge(gated)
        .layer(middleware::from_fn(safe_headers))
        .layer(middleware::from_fn_with_state(
            ctx.clone(),
            client::identify,
        ))
        .with_state(ctx)
}

/// What the browser must not do with the console's responses: run inline
/// script or style, load anything from elsewhere, guess types, send the
/// URL on, frame them, or keep them.
async fn safe_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (REFERRER_POLICY, "no-referrer"),
        (X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A problem as a page, or under `/api/` as JSON.
fn problem_response(uri: &Uri, problem: Problem) -> Response {
    if uri.path().starts_with("/api/") {
        api::ApiError::from(problem).into_response()
    } else {
        pages::PageError(problem).into_response()
    }
}

/// 401: the login form for a page, a JSON error under `/api/`; nothing else.
fn unauthorized(uri: &Uri) -> Response {
    if uri.path().starts_with("/api/") {
        let body = serde_json::json!({"error": "unauthorized: log in, or send Authorization: Bearer <token>"});
        let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"broadcast-worker console\""),
        );
        return response;
    }
    let next = uri.path_and_query().map_or("/", |p| p.as_str());
    (StatusCode::UNAUTHORIZED, login::login_page(next, None)).into_response()
}

const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");
const ICON: &str = include_str!("static/favicon.svg");

/// The stylesheet, the script and the icon, from the binary.
async fn static_file(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        "favicon.svg" => (ICON, "image/svg+xml"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (CONTENT_TYPE, kind),
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}
