//! The dead letters' pages: the table (filtered, paged, with checkboxes and
//! the action buttons, and the flash message after an action) and one job's
//! detail.

use axum::extract::{Path, RawQuery, State};
use axum::Extension;
use maud::{html, Markup};
use serde_json::Value;

use super::api::{job_detail, listing_query};
use super::auth::Authed;
use super::context::{AppRef, Ctx, Problem};
use super::dead::View;
use super::filter::{human_age, query, Filter, Params, FILTER_NAMES};
use super::pages::{id_of_query, job_link, layout, summary_table, when, PageError};
use crate::broker::DeadReason;
use crate::ops::dlq::DeadInfo;

/// The list's query to come back to: its filter and page, nothing else.
pub(super) fn back_query(params: &Params) -> String {
    let pairs: Vec<(&str, String)> = FILTER_NAMES
        .iter()
        .chain(&["page"])
        .filter_map(|k| params.get(k).map(|v| (*k, v.to_string())))
        .collect();
    query(&pairs)
}

pub(super) fn dead_path(sdkappid: u64, query: &str) -> String {
    if query.is_empty() {
        format!("/apps/{sdkappid}/dead")
    } else {
        format!("/apps/{sdkappid}/dead?{query}")
    }
}

/// The flash message after an action: only the words this console writes.
fn flash(params: &Params) -> Option<String> {
    let n: usize = params.get("n")?.parse().ok()?;
    match params.get("done")? {
        "replayed" => Some(format!("Replayed {n} job(s) to the jobs queue.")),
        "purged" => Some(format!("Removed {n} dead letter(s) for good.")),
        _ => None,
    }
}

/// The filter form: the reasons read, every reason this worker gives when
/// the queue was not read whole, and the filter's own.
fn filter_form(sdkappid: u64, filter: &Filter, view: &View) -> Markup {
    let mut reasons: Vec<&str> = view.summary.iter().map(|r| r.reason.as_str()).collect();
    reasons.dedup();
    let known = DeadReason::ALL.map(DeadReason::as_str);
    let more: &[&str] = if view.limited { &known } else { &[] };
    for r in more.iter().copied().chain(filter.reason.as_deref()) {
        if !reasons.contains(&r) {
            reasons.push(r);
        }
    }
    let age = |secs: Option<i64>| secs.map(super::filter::format_age).unwrap_or_default();
    html! {
        form #filter-form.filters data-test="filter-form" method="get" action=(dead_path(sdkappid, "")) {
            label { "Reason"
                select #filter-reason name="reason" data-test="filter-reason" {
                    option value="" { "any" }
                    @for reason in reasons {
                        option value=(reason) selected[filter.reason.as_deref() == Some(reason)] { (reason) }
                    }
                }
            }
            label { "Code" input #filter-code name="code" inputmode="numeric" size="8" data-test="filter-code" value=(filter.code.map(|c| c.to_string()).unwrap_or_default()); }
            label { "Older than" input #filter-older-than name="older_than" size="6" placeholder="1h" data-test="filter-older-than" value=(age(filter.older_than)); }
            label { "Newer than" input #filter-newer-than name="newer_than" size="6" placeholder="15m" data-test="filter-newer-than" value=(age(filter.newer_than)); }
            button #filter-submit type="submit" data-test="filter-submit" { "Filter" }
            a #filter-clear href=(dead_path(sdkappid, "")) { "Clear" }
        }
    }
}

fn row(sdkappid: u64, info: &DeadInfo, now_ms: i64) -> Markup {
    html! {
        tr data-test="dead-row" data-job-id=(info.id) {
            td { input.select-job type="checkbox" name="id" value=(info.id) data-test="select-job" aria-label="select"; }
            td.id { a href=(job_link(sdkappid, &info.id)) data-test="job-link" { (info.id) } }
            td { span.badge.badge-reason { (info.reason) } }
            td.num { (info.error_code.map_or("-".into(), |c| c.to_string())) }
            td.num { (info.age_secs(now_ms).map_or("?".into(), human_age)) }
            td.num { (info.attempts.map_or("-".into(), |a| a.to_string())) }
            td.num { (info.replays) }
            td.info { (info.error_info.as_deref().unwrap_or("")) }
        }
    }
}

fn pager(sdkappid: u64, filter: &Filter, view: &View) -> Markup {
    let link = |page: usize| {
        let mut pairs = filter.pairs();
        pairs.push(("page", page.to_string()));
        dead_path(sdkappid, &query(&pairs))
    };
    html! {
        nav #pager.pager {
            @if view.page > 1 { a #page-prev href=(link(view.page - 1)) data-test="page-prev" { "‹ Previous" } }
            span #page-info data-test="page-info" { "Page " (view.page) " of " (view.pages) }
            @if view.page < view.pages { a #page-next href=(link(view.page + 1)) data-test="page-next" { "Next ›" } }
        }
    }
}

/// The table and its action buttons, in one form to the confirmation. A
/// filter's buttons act on the whole queue: when it was not read whole they
/// give no count (the confirmation counts every match).
fn table(app: &AppRef, filter: &Filter, view: &View, csrf: Option<&str>, back: &str) -> Markup {
    let id = app.sdkappid;
    let (how_many, none) = if view.limited {
        ("every".to_string(), false)
    } else {
        (format!("all {}", view.matching), view.matching == 0)
    };
    html! {
        form #dead-form method="post" action=(format!("/apps/{id}/confirm")) {
            input type="hidden" name="csrf" value=(csrf.unwrap_or(""));
            input type="hidden" name="back" value=(back);
            @for (k, v) in filter.pairs() { input type="hidden" name=(k) value=(v); }
            table #dead-table.data {
                thead { tr {
                    th { input #select-all type="checkbox" aria-label="select all"; }
                    th { "Job id" } th { "Reason" } th.num { "Code" } th.num { "Age" }
                    th.num { "Attempts" } th.num { "Replays" } th { "Info" }
                } }
                tbody { @for info in &view.jobs { (row(id, info, view.read_at_ms)) } }
            }
            @if view.jobs.is_empty() { p.empty { "No dead letter matches." } }
            div.actions {
                button #replay-selected type="submit" name="do" value="replay-selected" data-test="replay-selected" { "Replay selected" }
                button #purge-selected.danger type="submit" name="do" value="purge-selected" data-test="purge-selected" { "Purge selected" }
                span.spacer {}
                button #replay-filter type="submit" name="do" value="replay-filter" data-test="replay-filter" disabled[none] { "Replay " (how_many) " matching" }
                button #purge-filter.danger type="submit" name="do" value="purge-filter" data-test="purge-filter" disabled[none] { "Purge " (how_many) " matching" }
            }
        }
    }
}

/// `GET /apps/{sdkappid}/dead?reason=&code=&older_than=&newer_than=&page=`.
pub(super) async fn list(
    State(ctx): State<Ctx>,
    Extension(authed): Extension<Authed>,
    Path(app): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, PageError> {
    let app = ctx.app(&app)?;
    let (params, filter, page, per_page) = listing_query(raw.as_deref(), &["done", "n"])?;
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
    let csrf = ctx.csrf(&authed);
    let id = app.sdkappid;
    let body = html! {
        p.crumbs { a href="/" { "Apps" } " / " a href=(format!("/apps/{id}")) { (id) } " / dead letters" }
        h1 { "Dead letters" span.muted { " of app " (id) } }
        @if let Some(message) = flash(&params) {
            p #flash.flash.flash-ok data-test="flash" role="status" { (message) }
        }
        section.card {
            (summary_table(id, &view))
            (filter_form(id, &filter, &view))
            p #dead-matching data-test="dead-matching" {
                span data-test="matching-count" { (view.matching) }
                @if view.limited { " of the first " (view.read) } @else { " of " (view.total) }
                " dead letter(s) match"
                @if !filter.is_empty() { " (" (filter.describe()) ")" } "."
            }
            (table(&app, &filter, &view, csrf.as_deref(), &back_query(&params)))
            (pager(id, &filter, &view))
        }
    };
    Ok(layout(
        &format!("Dead letters of {id}"),
        csrf.as_deref(),
        body,
    ))
}

/// A table of name/value rows.
fn pairs_table(table_id: &str, rows: &[(String, String)]) -> Markup {
    html! {
        table.data.compact id=(table_id) data-test=(table_id) {
            tbody { @for (name, value) in rows {
                tr data-name=(name) { th { (name) } td.value { (value) } }
            } }
        }
    }
}

fn compact(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The body as an operator reads it: pretty JSON, or the text as it is.
fn body_text(report: &Value) -> String {
    match &report["body"] {
        Value::String(_) | Value::Null => compact(&report["body_text"]),
        json => serde_json::to_string_pretty(json).unwrap_or_default(),
    }
}

/// The buttons that confirm a replay or purge of this one job.
fn job_actions(sdkappid: u64, id: &str, csrf: Option<&str>) -> Markup {
    html! {
        form #job-actions.actions method="post" action=(format!("/apps/{sdkappid}/confirm")) {
            input type="hidden" name="csrf" value=(csrf.unwrap_or(""));
            input type="hidden" name="id" value=(id);
            button #job-replay type="submit" name="do" value="replay-selected" data-test="job-replay" { "Replay this job" }
            button #job-purge.danger type="submit" name="do" value="purge-selected" data-test="job-purge" { "Purge this job" }
        }
    }
}

/// `GET /apps/{sdkappid}/dead-letter?id=JOB_ID`: the whole dead letter.
pub(super) async fn job_by_query(
    State(ctx): State<Ctx>,
    Extension(authed): Extension<Authed>,
    Path(app): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, PageError> {
    let id = id_of_query(raw.as_deref())?;
    job_page(&ctx, &authed, &app, &id).await
}

/// `GET /apps/{sdkappid}/dead/{id}`: the same, as links before had it.
pub(super) async fn job(
    State(ctx): State<Ctx>,
    Extension(authed): Extension<Authed>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Markup, PageError> {
    job_page(&ctx, &authed, &app, &id).await
}

async fn job_page(ctx: &Ctx, authed: &Authed, app: &str, id: &str) -> Result<Markup, PageError> {
    let app = ctx.app(app)?;
    let report = job_detail(ctx, &app, id).await?;
    let why = &report["why"];
    let at = |key: &str| why[key].as_i64().map_or("-".into(), when);
    let facts = [
        ("Reason", compact(&why["reason"])),
        ("ErrorCode", compact(&why["error_code"])),
        ("Info", compact(&why["error_info"])),
        ("Attempts", compact(&why["attempts"])),
        ("Replays", compact(&why["replays"])),
        ("First seen", at("first_seen_ms")),
        ("Dead-lettered", at("dead_lettered_at_ms")),
    ];
    let properties: Vec<(String, String)> = report["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| *k != "headers")
        .map(|(k, v)| (k.clone(), compact(v)))
        .collect();
    let headers: Vec<(String, String)> = report["properties"]["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), compact(v)))
        .collect();
    let csrf = ctx.csrf(authed);
    let sdkappid = app.sdkappid;
    let body = html! {
        p.crumbs { a href="/" { "Apps" } " / " a href=(format!("/apps/{sdkappid}")) { (sdkappid) } " / "
            a href=(dead_path(sdkappid, "")) { "dead letters" } " / job" }
        h1 { "Dead letter " code #job-id data-test="job-id" { (id) } }
        section #job-detail.card data-test="job-detail" {
            dl.facts { @for (name, value) in &facts { dt { (name) } dd { (value) } } }
            (job_actions(sdkappid, id, csrf.as_deref()))
        }
        section.card {
            h2 { "Body" span.muted { " (" (compact(&report["body_bytes"])) " bytes)" } }
            pre #job-body data-test="job-body" { (body_text(&report)) }
        }
        section.card {
            h2 { "What the ledger knows" }
            p #job-ledger data-test="job-ledger" data-state=(compact(&report["ledger"]["state"])) { (compact(&report["ledger"]["text"])) }
        }
        section.card { h2 { "Properties" } (pairs_table("job-properties", &properties)) }
        section.card { h2 { "Headers" } (pairs_table("job-headers", &headers)) }
    };
    Ok(layout("Dead letter", csrf.as_deref(), body))
}
