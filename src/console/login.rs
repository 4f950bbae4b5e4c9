//! Logging in and out: the login form (all an unauthenticated visitor ever
//! sees), the session cookie it sets for the right token, and logout.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};
use tracing::{info, warn};

use super::auth::{self, Authed, SESSION_SECS};
use super::filter::Params;
use super::pages::{layout, PageError};
use super::redirect::local_path;
use super::Ctx;

/// The login form, with what went wrong if anything; `next` is where to go after.
pub(super) fn login_page(next: &str, error: Option<&str>) -> Markup {
    let body = html! {
        div.card.login-card {
            h1 { "Log in" }
            @if let Some(error) = error {
                p #login-error.flash.flash-error data-test="login-error" { (error) }
            }
            form #login-form data-test="login-form" method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label for="token" { "Console token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button #login-submit.primary type="submit" data-test="login-submit" { "Log in" }
            }
        }
    };
    layout("Log in", None, body)
}

/// `GET /login`.
pub(super) async fn login_form() -> Markup {
    login_page("/", None)
}

/// `POST /login`: the right token gets the session cookie and goes on; a
/// wrong one gets the form again, a moment later.
pub(super) async fn login(State(ctx): State<Ctx>, body: Bytes) -> Response {
    let form = Params::parse(&body);
    let next = local_path(form.get("next")).to_string();
    let presented = form.get("token").unwrap_or("");
    if !ctx.console.auth().token_matches(presented) {
        warn!("console: a login with a wrong token");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let page = login_page(&next, Some("That is not the console's token."));
        return (StatusCode::UNAUTHORIZED, page).into_response();
    }
    info!("console: logged in");
    let session = ctx
        .console
        .auth()
        .session_value(auth::unix_now() + SESSION_SECS);
    (
        StatusCode::SEE_OTHER,
        [(LOCATION, next), (SET_COOKIE, auth::login_cookie(&session))],
    )
        .into_response()
}

/// `POST /logout`: clears the cookie (with the session's CSRF token).
pub(super) async fn logout(
    State(ctx): State<Ctx>,
    Extension(authed): Extension<Authed>,
    body: Bytes,
) -> Result<Response, PageError> {
    let form = Params::parse(&body);
    super::actions::check_csrf(&ctx, &authed, form.get("csrf"))?;
    Ok((
        StatusCode::SEE_OTHER,
        [
            (LOCATION, "/login".to_string()),
            (SET_COOKIE, auth::logout_cookie()),
        ],
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_show() {
        let page = login_page("/\"><script>alert(1)</script>", Some("<b>no</b>")).into_string();
        assert!(!page.contains("<script>alert(1)"), "{page}");
        assert!(page.contains("&lt;b&gt;no&lt;/b&gt;"));
        assert!(
            !page.contains("style="),
            "no inline style: the CSP forbids it"
        );
    }
}
