//! Logging in and out: the login form (drawn by [`login_page`], all an
//! unauthenticated visitor ever sees), the session cookie it sets for the
//! right token (`Secure` over https), wrong tokens counted against their
//! client as the gate counts a wrong bearer, and logout, which ends the
//! session for every replica that shares the ledger (or, without one, for
//! this replica).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::Markup;
use tracing::info;

use super::auth::{self, Authed, SESSION_SECS};
use super::client::Client;
use super::context::{Ctx, Problem};
use super::filter::Params;
use super::gate::{throttled_words, with_retry_after, wrong_token};
use super::pages::{login_page, PageError};
use super::redirect::local_path;
use crate::clock;

/// `GET /login`.
pub(super) async fn login_form() -> Markup {
    login_page("/", None)
}

/// `POST /login`: the right token gets the session cookie and goes on at
/// once; a wrong one gets the form again, a moment later, or 429 past its
/// client's budget of wrong tokens.
pub(super) async fn login(
    State(ctx): State<Ctx>,
    Extension(client): Extension<Client>,
    body: Bytes,
) -> Response {
    let form = Params::parse(&body);
    let next = local_path(form.get("next")).to_string();
    let presented = form.get("token").unwrap_or("");
    if !ctx.console.auth().token_matches(presented) {
        return match wrong_token(&ctx, &client, "a login").await {
            Ok(()) => {
                let page = login_page(&next, Some("That is not the console's token."));
                (StatusCode::UNAUTHORIZED, page).into_response()
            }
            Err(secs) => {
                let page = login_page(&next, Some(&throttled_words(secs)));
                with_retry_after(page.into_response(), secs)
            }
        };
    }
    info!(client = %client.addr, "console: logged in");
    let session = ctx
        .console
        .auth()
        .session_value(clock::now_secs() + SESSION_SECS);
    let cookie = auth::login_cookie(&session, ctx.console.secure_cookie(&client));
    (
        StatusCode::SEE_OTHER,
        [(LOCATION, next), (SET_COOKIE, cookie)],
    )
        .into_response()
}

/// `POST /logout` (with the session's CSRF token): ends the session for
/// good, so a copy of the cookie opens nothing more, then clears it.
pub(super) async fn logout(
    State(ctx): State<Ctx>,
    Extension(authed): Extension<Authed>,
    Extension(client): Extension<Client>,
    body: Bytes,
) -> Result<Response, PageError> {
    let form = Params::parse(&body);
    super::actions::check_csrf(&ctx, &authed, form.get("csrf"))?;
    if let Authed::Session(session) = &authed {
        // Not ended, not cleared: the operator sees why and tries again.
        ctx.console
            .sessions()
            .end(session, clock::now_secs())
            .await
            .map_err(Problem::from)?;
        info!(client = %client.addr, "console: logged out");
    }
    let cookie = auth::logout_cookie(ctx.console.secure_cookie(&client));
    Ok((
        StatusCode::SEE_OTHER,
        [(LOCATION, "/login".to_string()), (SET_COOKIE, cookie)],
    )
        .into_response())
}
