//! Replay and purge from the pages: the confirmation that says how many
//! jobs an action will touch (counted over the whole queue, whatever the
//! list read) and carries the digest of their ids, and the action, which
//! acts on those very jobs and sends the browser back to the table with a
//! flash message (or, if the matching jobs changed since, to the
//! confirmation again, having done nothing).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::LOCATION;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};

use super::actions::{self, Chosen};
use super::auth::Authed;
use super::context::{AppRef, Ctx, Problem};
use super::dead::Counted;
use super::dead_error::DeadError;
use super::dead_pages::{back_query, dead_path};
use super::filter::Params;
use super::pages::{layout, PageError};
use crate::ops::dlq::{Action, Confirmation};

/// The form fields that carry a selection to the next step.
fn selection_fields(chosen: &Chosen) -> Markup {
    html! {
        @match &chosen.filter {
            Some(filter) => {
                input type="hidden" name="scope" value="filter";
                @for (k, v) in filter.pairs() { input type="hidden" name=(k) value=(v); }
            }
            None => {
                input type="hidden" name="scope" value="selected";
                @for id in &chosen.selection.ids { input type="hidden" name="id" value=(id); }
            }
        }
    }
}

/// The confirmation: how many jobs the action will touch (counted over the
/// whole queue, whatever the list read), and the button; `changed` says
/// why an earlier confirmation was refused.
fn confirm_page(
    app: &AppRef,
    action: Action,
    chosen: &Chosen,
    counted: &Counted,
    csrf: Option<&str>,
    back: &str,
    changed: Option<&str>,
) -> Markup {
    let id = app.sdkappid;
    let count = counted.matching;
    let (verb, what) = match action {
        Action::Replay => ("Replay", "sent back to the jobs queue (each removed from the dead letters once the broker confirms it)"),
        Action::Purge => ("Purge", "removed from the dead letters for good"),
    };
    let body = html! {
        section #confirm.card.confirm data-test="confirm" {
            h1 { (verb) " " (count) " job(s)?" }
            @if let Some(why) = changed {
                p #confirm-changed.flash.flash-error data-test="confirm-changed" {
                    "The dead letters changed since you confirmed: " (why) "."
                }
            }
            p { "This will touch " strong #confirm-count data-test="confirm-count" { (count) }
                " dead letter(s) of app " (id) " (" (chosen.words) "): they will be " (what) "." }
            p #confirm-whole-queue.muted data-test="confirm-whole-queue" data-total=(counted.total) {
                "Counted over the whole dead-letter queue: " (count) " of its " (counted.total)
                " dead letter(s) match, not only those the list read."
            }
            p #confirm-digest.muted data-test="confirm-digest" {
                "Exactly these are acted on, or none if they change meanwhile (digest of their ids: "
                code { (counted.digest) } ")."
            }
            @if count == 0 {
                p.muted { "Nothing matches: there is nothing to do." }
            } @else {
                form #confirm-form method="post" action=(format!("/apps/{id}/{}", action.as_str())) {
                    input type="hidden" name="csrf" value=(csrf.unwrap_or(""));
                    input type="hidden" name="back" value=(back);
                    input type="hidden" name="expected" value=(count);
                    input type="hidden" name="digest" value=(counted.digest);
                    (selection_fields(chosen))
                    button #confirm-button type="submit" data-test="confirm-button"
                        class=(if action == Action::Purge { "danger" } else { "primary" }) { (verb) " " (count) " job(s)" }
                    " "
                    a #confirm-cancel href=(dead_path(id, back)) data-test="confirm-cancel" { "Cancel" }
                }
            }
        }
    };
    layout(&format!("{verb}?"), csrf, body)
}

/// A form's action and selection: `do` on the table, the path afterwards.
fn chosen_of(params: &Params, action: Option<Action>) -> Result<(Action, Chosen), Problem> {
    if let Some(action) = action {
        return Ok((action, Chosen::from_form(params)?));
    }
    let (action, scope) = match params.get("do") {
        Some("replay-selected") => (Action::Replay, "selected"),
        Some("purge-selected") => (Action::Purge, "selected"),
        Some("replay-filter") => (Action::Replay, "filter"),
        Some("purge-filter") => (Action::Purge, "filter"),
        other => return Err(Problem::bad_request(format!("unknown action {other:?}"))),
    };
    Ok((action, Chosen::from_scope(params, Some(scope))?))
}

/// `POST /apps/{sdkappid}/confirm`: counts what the action would touch.
pub(super) async fn confirm(
    State(ctx): State<Ctx>,
    Extension(authed): Extension<Authed>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Markup, PageError> {
    let form = Params::parse(&body);
    actions::check_csrf(&ctx, &authed, form.get("csrf"))?;
    let app = ctx.app(&app)?;
    let (action, chosen) = chosen_of(&form, None)?;
    let counted = ctx
        .console
        .dead()
        .count(&app.queues.dead_queue(), &chosen.selection)
        .await
        .map_err(Problem::from)?;
    let back = back_query(&Params::parse(form.get("back").unwrap_or("").as_bytes()));
    let csrf = ctx.csrf(&authed);
    Ok(confirm_page(
        &app,
        action,
        &chosen,
        &counted,
        csrf.as_deref(),
        &back,
        None,
    ))
}

/// `POST /apps/{sdkappid}/replay`.
pub(super) async fn replay(
    State(ctx): State<Ctx>,
    Extension(authed): Extension<Authed>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    act(ctx, authed, app, body, Action::Replay).await
}

/// `POST /apps/{sdkappid}/purge`.
pub(super) async fn purge(
    State(ctx): State<Ctx>,
    Extension(authed): Extension<Authed>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    act(ctx, authed, app, body, Action::Purge).await
}

/// Acts on what was confirmed, then back to the table with the count; if
/// the matching jobs changed meanwhile, the confirmation again (409), with
/// nothing done.
async fn act(
    ctx: Ctx,
    authed: Authed,
    app: String,
    body: Bytes,
    action: Action,
) -> Result<Response, PageError> {
    let form = Params::parse(&body);
    actions::check_csrf(&ctx, &authed, form.get("csrf"))?;
    let app = ctx.app(&app)?;
    let (_, chosen) = chosen_of(&form, Some(action))?;
    let confirmation = Confirmation {
        count: form.get("expected").and_then(|n| n.parse().ok()),
        digest: Some(form.get("digest").map(str::to_string).ok_or_else(|| {
            Problem::bad_request("which jobs were confirmed (digest) is missing: confirm first")
        })?),
    };
    let back = back_query(&Params::parse(form.get("back").unwrap_or("").as_bytes()));
    match actions::perform(&ctx, &app, action, &chosen, &confirmation).await {
        Ok(done) => {
            let verb = if action == Action::Replay {
                "replayed"
            } else {
                "purged"
            };
            let mut to = dead_path(app.sdkappid, &back);
            to.push(if back.is_empty() { '?' } else { '&' });
            to.push_str(&format!("done={verb}&n={done}"));
            Ok((StatusCode::SEE_OTHER, [(LOCATION, to)]).into_response())
        }
        Err(problem) if problem.status == StatusCode::CONFLICT => {
            let counted = ctx
                .console
                .dead()
                .count(&app.queues.dead_queue(), &chosen.selection)
                .await;
            let counted = counted.map_err(|e: DeadError| Problem::from(e))?;
            let csrf = ctx.csrf(&authed);
            let page = confirm_page(
                &app,
                action,
                &chosen,
                &counted,
                csrf.as_deref(),
                &back,
                Some(&problem.message),
            );
            Ok((StatusCode::CONFLICT, page).into_response())
        }
        Err(problem) => Err(problem.into()),
    }
}
