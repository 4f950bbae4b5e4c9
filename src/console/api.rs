//! `/api/...`: the JSON of everything the pages show, for scripts (with
//! `Authorization: Bearer <token>`) and for anyone who prefers numbers to
//! pages. Errors are `{"error": "..."}` with a 4xx or 5xx status.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::actions::{self, ActionBody};
use super::auth::{Authed, CSRF_HEADER};
use super::context::{AppRef, Ctx, Problem};
use super::dead::{Lookup, View};
use super::filter::{self, Filter, Params, FILTER_NAMES, PER_PAGE};
use super::pages::{id_of_query, job_api_link, job_link};
use super::view::AppView;
use crate::clock::now_ms;
use crate::ledger::ScopeFilter;
use crate::ops::dlq::{Action, Selection};
use crate::ops::jobs::{self, Answer};

/// A problem, as JSON.
pub struct ApiError(Problem);

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        Self(p)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0.status, Json(json!({"error": self.0.message}))).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

fn to_json(value: impl serde::Serialize) -> Json<Value> {
    Json(serde_json::to_value(value).unwrap_or(Value::Null))
}

/// `GET /api/apps`: every app this process serves.
pub(super) async fn apps(State(ctx): State<Ctx>) -> Json<Value> {
    let now = now_ms();
    let apps: Vec<AppView> = ctx
        .board
        .apps()
        .iter()
        .map(|(app, status)| AppView::of(*app, status, now, false))
        .collect();
    Json(json!({ "apps": apps }))
}

/// `GET /api/apps/{sdkappid}`: one app, with its last hour per minute.
pub(super) async fn app(State(ctx): State<Ctx>, Path(app): Path<String>) -> ApiResult {
    let app = ctx.app(&app)?;
    Ok(to_json(AppView::of(
        app.sdkappid,
        &app.status,
        now_ms(),
        true,
    )))
}

/// `GET /api/apps/{sdkappid}/dead/summary`: dead letters by reason and code,
/// of the first `read` (`limited` when the queue holds more).
pub(super) async fn summary(State(ctx): State<Ctx>, Path(app): Path<String>) -> ApiResult {
    let app = ctx.app(&app)?;
    let view = ctx
        .console
        .dead()
        .view(&app.queues.dead_queue(), &Selection::default(), 1, 0)
        .await
        .map_err(Problem::from)?;
    Ok(Json(json!({
        "sdkappid": app.sdkappid,
        "total": view.total,
        "read": view.read,
        "limited": view.limited,
        "shared": view.shared,
        "summary": view.summary,
    })))
}

/// The filter and page of a dead-letter listing's query.
pub(super) fn listing_query(
    query: Option<&str>,
    extra: &[&str],
) -> Result<(Params, Filter, usize, usize), Problem> {
    let params = Params::parse(query.unwrap_or("").as_bytes());
    let mut known = FILTER_NAMES.to_vec();
    known.extend_from_slice(&["page", "per_page"]);
    known.extend_from_slice(extra);
    params.only(&known).map_err(Problem::bad_request)?;
    let filter = Filter::parse(&params).map_err(Problem::bad_request)?;
    let (page, per_page) = filter::page(&params, PER_PAGE).map_err(Problem::bad_request)?;
    Ok((params, filter, page, per_page))
}

/// A page of dead letters as JSON, each with its age.
fn view_json(app: &AppRef, filter: &Filter, view: &View) -> Value {
    let jobs: Vec<Value> = view
        .jobs
        .iter()
        .map(|info| {
            let mut job = serde_json::to_value(info).unwrap_or(Value::Null);
            job["age_secs"] = info.age_secs(view.read_at_ms).into();
            // Links that reach the job whatever its id (see `job_link`).
            job["page"] = job_link(app.sdkappid, &info.id).into();
            job["api"] = job_api_link(app.sdkappid, &info.id).into();
            job
        })
        .collect();
    let filter: serde_json::Map<String, Value> = filter
        .pairs()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    json!({
        "sdkappid": app.sdkappid,
        "filter": filter,
        "total": view.total,
        "read": view.read,
        "limited": view.limited,
        "shared": view.shared,
        "matching": view.matching,
        "page": view.page,
        "pages": view.pages,
        "per_page": view.per_page,
        "summary": view.summary,
        "jobs": jobs,
    })
}

/// `GET /api/apps/{sdkappid}/dead?reason=&code=&older_than=&newer_than=&page=&per_page=`.
pub(super) async fn dead(
    State(ctx): State<Ctx>,
    Path(app): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let app = ctx.app(&app)?;
    let (_, filter, page, per_page) = listing_query(query.as_deref(), &[])?;
    let view = ctx
        .console
        .dead()
        .view(
            &app.queues.dead_queue(),
            &filter.selection(),
            page,
            per_page,
        )
        .await
        .map_err(Problem::from)?;
    Ok(Json(view_json(&app, &filter, &view)))
}

/// What the ledger says of a job of the app, as JSON with a `state` and a
/// line of `text`.
pub(super) async fn ledger_says(ctx: &Ctx, app: &AppRef, id: &str) -> Value {
    let Some(ledger) = ctx.console.ledger() else {
        return json!({"state": "no-ledger", "text": "no ledger: DATABASE_URL is not set"});
    };
    let scope = ScopeFilter {
        app: Some(app.sdkappid),
        queue: Some(app.queues.jobs.clone()),
    };
    let found = tokio::time::timeout(Duration::from_secs(5), ledger.find(id, &scope)).await;
    let reports = match found {
        Err(_) => {
            return json!({"state": "unavailable", "text": "the ledger did not answer within 5 s"})
        }
        Ok(Err(e)) => {
            return json!({"state": "unavailable", "text": format!("the ledger cannot be read: {e}")})
        }
        Ok(Ok(reports)) => reports,
    };
    match jobs::resolve(reports) {
        Answer::Unknown => json!({
            "state": "unknown",
            "text": format!("the ledger knows no job {id:?} (never sent, or pruned)"),
        }),
        Answer::One(report) => {
            json!({"state": "known", "text": jobs::text(&report), "report": report})
        }
        Answer::Ambiguous { reports, hint } => json!({
            "state": "ambiguous",
            "text": jobs::ambiguity(id, &reports, hint),
            "reports": reports,
        }),
    }
}

/// The dead letter and what the ledger says of it, or 404 (also when it is
/// not among the dead letters a view reads).
pub(super) async fn job_detail(ctx: &Ctx, app: &AppRef, id: &str) -> Result<Value, Problem> {
    let queue = &app.queues.dead;
    let missing = match ctx
        .console
        .dead()
        .find(&app.queues.dead_queue(), id)
        .await?
    {
        Lookup::Found(mut report) => {
            report["ledger"] = ledger_says(ctx, app, id).await;
            return Ok(report);
        }
        Lookup::Absent => format!("no dead letter with id {id:?} in {queue}"),
        Lookup::NotAmongFirst { read, total } => format!(
            "no dead letter with id {id:?} among the first {read} of the {total} in {queue}, \
             as far as the console reads (BROADCAST_CONSOLE_READ_LIMIT); \
             `broadcast-worker dlq show {id:?}` reads the whole queue"
        ),
    };
    Err(Problem::new(axum::http::StatusCode::NOT_FOUND, missing))
}

/// `GET /api/apps/{sdkappid}/dead-letter?id=JOB_ID`: the whole dead
/// letter (as `dlq show` prints it, with `body_text`) and `ledger`; any id,
/// `summary`, `.` and `..` included.
pub(super) async fn job_by_query(
    State(ctx): State<Ctx>,
    Path(app): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let id = id_of_query(raw.as_deref())?;
    let app = ctx.app(&app)?;
    Ok(Json(job_detail(&ctx, &app, &id).await?))
}

/// `GET /api/apps/{sdkappid}/dead/{id}`: the same, for ids a path segment
/// carries (not `summary`, `.` or `..`).
pub(super) async fn job(
    State(ctx): State<Ctx>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult {
    let app = ctx.app(&app)?;
    Ok(Json(job_detail(&ctx, &app, &id).await?))
}

/// `POST /api/apps/{sdkappid}/replay`.
pub(super) async fn replay(
    State(ctx): State<Ctx>,
    Extension(authed): Extension<Authed>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    act(ctx, authed, app, headers, body, Action::Replay).await
}

/// `POST /api/apps/{sdkappid}/purge`.
pub(super) async fn purge(
    State(ctx): State<Ctx>,
    Extension(authed): Extension<Authed>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    act(ctx, authed, app, headers, body, Action::Purge).await
}

/// A JSON action: `dry_run` says how many jobs it would touch and their
/// `digest` (the confirmation step); with that `digest` (or, for ids,
/// `expected`: that number) it acts on those jobs, or answers 409.
async fn act(
    ctx: Ctx,
    authed: Authed,
    app: String,
    headers: HeaderMap,
    body: Bytes,
    action: Action,
) -> ApiResult {
    let request: ActionBody = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("the body must be a JSON action: {e}")))?;
    let csrf = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(request.csrf.as_deref());
    actions::check_csrf(&ctx, &authed, csrf)?;
    let app = ctx.app(&app)?;
    let chosen = request.chosen()?;
    let name = action.as_str();
    if request.dry_run {
        let counted = ctx
            .console
            .dead()
            .count(&app.queues.dead_queue(), &chosen.selection)
            .await
            .map_err(Problem::from)?;
        return Ok(Json(json!({
            "action": name, "dry_run": true, "matching": counted.matching,
            "total": counted.total, "digest": counted.digest, "selection": chosen.words,
        })));
    }
    let confirmation = request.confirmation(&chosen)?;
    let done = actions::perform(&ctx, &app, action, &chosen, &confirmation).await?;
    Ok(Json(
        json!({"action": name, "done": done, "selection": chosen.words}),
    ))
}
