//! The operator's console: web pages and their JSON API, served on the ops
//! endpoint by `run` when a console token is set. It owns everything behind
//! `/`, `/login`, `/logout`, `/static/...`, `/apps/...` and `/api/...`: who
//! may see them ([`auth`]), each app's flow from its [`WorkerStatus`] (the
//! per-minute [`History`] charted by [`chart`]), and each app's dead
//! letters, read, replayed and purged through [`crate::ops::dlq`] ([`dead`]).
//!
//! - this file: the routes, the middleware that identifies the client and
//!   sets the security headers, the static files.
//! - `context`: the [`Console`] and what every handler shares (the request's
//!   context, the app it names, a [`Problem`]).
//! - [`auth`]: the token, the session cookie, CSRF tokens; `gate`: the
//!   check every page and API call passes, and the 401 and problem answers;
//!   [`client`]: who sent a request (the peer, or behind a trusted proxy the
//!   hop it forwarded); [`throttle`]: each client's budget of wrong tokens;
//!   [`sessions`]: the sessions a logout ended (in the ledger, or in
//!   memory); `redirect`: where a login may go on to.
//! - [`filter`]: query strings and forms, parsed and checked.
//! - [`chart`]: the SVG of the last hour of calls.
//! - [`view`]: an app's state as the pages and the API show it.
//! - [`dead`]: the dead letters over the console's own broker connection,
//!   a view reading no more than the read limit of a queue (`walk`: one pass
//!   of a replay or purge, over the whole queue; [`dead_error`]: why either
//!   failed).
//! - `login`, `pages`, `dead_pages`, `action_pages`: the HTML; `api`: the JSON;
//!   `actions`: replay and purge, shared by both.
//!
//! Every response carries a strict Content-Security-Policy (no inline
//! script or style; the stylesheet and script are files of this binary),
//! and every page is rendered with `maud`, which escapes what it inserts.
//!
//! [`WorkerStatus`]: crate::status::WorkerStatus
//! [`History`]: crate::status::history::History

mod action_pages;
mod actions;
mod api;
pub mod auth;
pub mod chart;
pub mod client;
mod context;
pub mod dead;
pub mod dead_error;
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

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::status::StatusBoard;
pub use auth::ConsoleToken;
use context::Ctx;
pub use context::{Console, ConsoleConfig, Problem};

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
        .layer(middleware::from_fn_with_state(ctx.clone(), identify))
        .with_state(ctx)
}

/// Puts the request's [`client::Client`] into its extensions for what follows.
async fn identify(State(ctx): State<Ctx>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let client = ctx.console.proxies().client(peer, request.headers());
    request.extensions_mut().insert(client);
    next.run(request).await
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
