//! The gate every page and API call passes: the right bearer token goes
//! through at once; a wrong one costs its client (see [`super::throttle`])
//! and is refused, a moment later, or answered 429 past the client's
//! budget; a session cookie goes through unless a logout ended it (asked
//! of [`super::sessions`] on every request). The rest get 401 and the login
//! form (or a JSON error under `/api/`), which says nothing else. A
//! presented token is never logged; a client's address is.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tracing::{debug, warn};

use super::api::ApiError;
use super::auth::{Authed, Credential};
use super::client::Client;
use super::context::{Ctx, Problem};
use super::pages::{login_page, PageError};
use super::throttle::{retry_after_secs, Verdict, FAILURE_DELAY};
use crate::clock;

/// What to answer a wrong token from `client`: 401 after a moment within
/// its budget, else 429 at once. `what` says which kind, for the log.
pub(super) async fn wrong_token(ctx: &Ctx, client: &Client, what: &str) -> Result<(), u64> {
    match ctx.console.throttle().failed(client.key(), Instant::now()) {
        Verdict::Refused => {
            warn!(client = %client.addr, "console: {what} with a wrong token");
            tokio::time::sleep(FAILURE_DELAY).await;
            Ok(())
        }
        Verdict::Throttled { retry_after, first } => {
            let secs = retry_after_secs(retry_after);
            if first {
                warn!(client = %client.addr, retry_after_secs = secs, "console: too many wrong tokens from one client; throttled");
            } else {
                debug!(client = %client.addr, "console: a wrong token while throttled");
            }
            Err(secs)
        }
    }
}

/// Adds `Retry-After` to a 429.
pub(super) fn with_retry_after(mut response: Response, secs: u64) -> Response {
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    response
}

/// The words of a 429.
pub(super) fn throttled_words(secs: u64) -> String {
    format!("too many wrong tokens from this address: retry after {secs} s")
}

/// 429 for a request that is not a login.
fn throttled(uri: &Uri, secs: u64) -> Response {
    let words = throttled_words(secs);
    let problem = Problem::new(StatusCode::TOO_MANY_REQUESTS, words);
    with_retry_after(problem_response(uri, problem), secs)
}

/// Lets through only requests that hold the token, with how they did in
/// their extensions.
pub(super) async fn require(State(ctx): State<Ctx>, mut request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<Client>()
        .copied()
        .unwrap_or(Client {
            addr: [0, 0, 0, 0].into(),
            https: false,
        });
    let authed = match ctx
        .console
        .auth()
        .credential(request.headers(), clock::now_secs())
    {
        Credential::Bearer { right: true } => Authed::Bearer,
        Credential::Bearer { right: false } => {
            return match wrong_token(&ctx, &client, "a request").await {
                Ok(()) => unauthorized(request.uri()),
                Err(secs) => throttled(request.uri(), secs),
            };
        }
        Credential::Session(session) => match ctx.console.sessions().ended(&session).await {
            Ok(false) => Authed::Session(session),
            Ok(true) => return unauthorized(request.uri()),
            Err(e) => {
                // Refused rather than let through: it may be a session
                // someone ended. A bearer token still works meanwhile.
                warn!(error = %e, "console: a session could not be checked");
                let problem = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{e}; try again, or use the bearer token"),
                );
                return problem_response(request.uri(), problem);
            }
        },
        Credential::Nothing => return unauthorized(request.uri()),
    };
    request.extensions_mut().insert(authed);
    next.run(request).await
}

/// A problem as a page, or under `/api/` as JSON.
fn problem_response(uri: &Uri, problem: Problem) -> Response {
    if uri.path().starts_with("/api/") {
        ApiError::from(problem).into_response()
    } else {
        PageError(problem).into_response()
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
    (StatusCode::UNAUTHORIZED, login_page(next, None)).into_response()
}
