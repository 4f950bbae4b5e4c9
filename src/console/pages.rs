//! The console's HTML outside the dead letters: the layout every page
//! shares, the list of apps, an app's page, error pages and the login form. Rendered with `maud`, which
//! escapes every value it inserts.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup, DOCTYPE};

use super::auth::Authed;
use super::chart::chart;
use super::context::{Ctx, Problem};
use super::dead::{SummaryRow, View};
use super::filter::{human_age, query, Params};
use super::view::{AppView, FILL_MINUTES};
use crate::clock::now_ms;
use crate::ops::dlq::Selection;

/// A problem, as a page.
pub struct PageError(pub Problem);

impl From<Problem> for PageError {
    fn from(p: Problem) -> Self {
        Self(p)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let Problem { status, message } = self.0;
        let body = html! {
            div.card.error-card {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                p #error-message data-test="error-message" { (message) }
                p { a href="/" { "Back to the apps" } }
            }
        };
        (status, layout("Error", None, body)).into_response()
    }
}

/// Every page: the stylesheet, the script, the top bar with the way home
/// and (for a browser session) the logout form.
pub(super) fn layout(title: &str, csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · broadcast-worker" }
                link rel="stylesheet" href="/static/console.css";
                link rel="icon" href="/static/favicon.svg" type="image/svg+xml";
                script src="/static/console.js" defer {}
            }
            body {
                header.topbar {
                    a.brand href="/" { "broadcast-worker" span.brand-sub { "console" } }
                    @if let Some(csrf) = csrf {
                        form #logout-form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button #logout.link-button type="submit" data-test="logout" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A dead letter's page. The id goes in the query, where nothing rewrites
/// it: in a path, `.` and `..` are normalised away by browsers and HTTP
/// clients (even %-encoded), and the API's `dead/summary` is a route of its
/// own. `/apps/{app}/dead/{id}` still answers for ids it can carry.
pub(super) fn job_link(sdkappid: u64, id: &str) -> String {
    format!(
        "/apps/{sdkappid}/dead-letter?{}",
        query(&[("id", id.to_string())])
    )
}

/// The same dead letter in the API.
pub(super) fn job_api_link(sdkappid: u64, id: &str) -> String {
    format!("/api{}", job_link(sdkappid, id))
}

/// The one `id` of a job's query (`?id=...`), as written: not trimmed.
pub(super) fn id_of_query(raw: Option<&str>) -> Result<String, Problem> {
    let params = Params::parse(raw.unwrap_or("").as_bytes());
    params.only(&["id"]).map_err(Problem::bad_request)?;
    let mut ids = params.all("id");
    match ids.len() {
        1 => Ok(ids.remove(0)),
        0 => Err(Problem::bad_request("say which dead letter: ?id=JOB_ID")),
        n => Err(Problem::bad_request(format!("one id at a time, not {n}"))),
    }
}

/// A count with thousands separated: `100,000`.
pub(super) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

pub(super) fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

/// Unix milliseconds as a UTC date and time.
pub(super) fn when(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The app's state as a badge, and its problems as more.
fn badges(app: &AppView) -> Markup {
    html! {
        span class=(format!("badge badge-{}", app.state)) data-test="state-badge" { (app.state) }
        @if app.halted { " " span.badge.badge-halted data-test="app-halted-badge" { "halted" } }
        @if app.ledger_down { " " span.badge.badge-halted data-test="app-ledger-down-badge" { "ledger down" } }
    }
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

/// `GET /`: every app this process serves.
pub(super) async fn apps(State(ctx): State<Ctx>, Extension(authed): Extension<Authed>) -> Markup {
    let now = now_ms();
    let apps: Vec<AppView> = ctx
        .board
        .apps()
        .iter()
        .map(|(app, status)| AppView::of(*app, status, now, false))
        .collect();
    let body = html! {
        h1 { "Apps" }
        p.muted { (apps.len()) " app(s) served by this process. Counts are this replica's view; the queues are counted every few seconds." }
        table #apps.data {
            thead { tr {
                th { "App" } th { "State" } th { "Sender" } th.num { "Rate" }
                th.num { "Quota used (1 min)" } th.num { "Fill (" (FILL_MINUTES) " min)" }
                th.num { "Backlog" } th.num { "Oldest unsettled" } th.num { "Dead letters" }
            } }
            tbody {
                @for app in &apps {
                    tr data-test="app-row" data-sdkappid=(app.sdkappid) {
                        td { a href=(format!("/apps/{}", app.sdkappid)) { (app.sdkappid) } }
                        td { (badges(app)) }
                        td { (app.sender) }
                        td.num { (format!("{:.2}/s", app.rate)) }
                        td.num { (percent(app.quota_used)) }
                        td.num { (app.fill_recent.map_or("-".into(), percent)) }
                        td.num data-test="app-backlog" { (or_dash(app.backlog)) }
                        td.num { (human_age(app.oldest_unsettled_secs as i64)) }
                        td.num { a href=(format!("/apps/{}/dead", app.sdkappid)) data-test="app-dead-count" { (or_dash(app.dead_letters)) } }
                    }
                }
            }
        }
    };
    layout("Apps", ctx.csrf(&authed).as_deref(), body)
}

/// One figure of the app page.
fn stat(id: &str, label: &str, value: Markup, note: Option<String>) -> Markup {
    html! {
        div.stat {
            div.stat-label { (label) }
            div.stat-value #(id) data-test=(id) { (value) }
            @if let Some(note) = note { div.stat-note { (note) } }
        }
    }
}

/// The app's figures.
fn figures(app: &AppView) -> Markup {
    let counted = app.counted_at_ms.map(|at| {
        format!(
            "counted {} ago",
            human_age((now_ms().saturating_sub(at) / 1000) as i64)
        )
    });
    html! {
        div.stats {
            (stat("app-state", "State", badges(app), Some(format!("sender: {}", app.sender))))
            (stat("app-rate", "Rate in force", html! { (format!("{:.2}", app.rate)) " /s" },
                Some(format!("configured {:.2}/s", app.configured_rate))))
            (stat("app-quota-used", "Quota used, last minute", html! {
                (percent(app.quota_used))
                meter min="0" max="1" value=(format!("{:.3}", app.quota_used.min(1.0))) {}
            }, Some(format!("{} call(s) of {:.0}", app.calls_last_minute, app.rate * 60.0))))
            (stat("app-fill", "Mean fill", html! { (app.fill_recent.map_or("-".into(), percent)) },
                Some(format!("calls of the last {FILL_MINUTES} min, of 12,000 bytes"))))
            (stat("app-backlog", "Backlog", html! { (or_dash(app.backlog)) }, counted.clone()))
            (stat("app-oldest", "Oldest unsettled job", html! { (human_age(app.oldest_unsettled_secs as i64)) }, None))
            (stat("app-dead-count", "Dead letters", html! { (or_dash(app.dead_letters)) }, counted))
        }
    }
}

/// What stops or troubled the app.
fn problems(app: &AppView) -> Markup {
    let failure = app.last_failure.as_ref().map(|f| {
        format!(
            "{} at {}: {}",
            f.code
                .map_or("transport failure".into(), |c| format!("ErrorCode {c}")),
            when(f.at_ms as i64),
            f.info
        )
    });
    html! {
        @if app.halted {
            div #app-halted.alert.alert-error data-test="app-halted" {
                strong { "Halted by an app-wide fault. " }
                "Sending is stopped, every job kept; probing. Last answer: " (failure.clone().unwrap_or_else(|| "-".into()))
            }
        }
        @if app.ledger_down {
            div #app-ledger-down.alert.alert-error data-test="app-ledger-down" {
                strong { "The ledger is down. " }
                "Sending is stopped until it answers: " (app.ledger_error.clone().unwrap_or_default())
            }
        }
        @if let (false, Some(failure)) = (app.halted, failure) {
            p #app-last-failure.muted data-test="app-last-failure" { "Last failed attempt: " (failure) }
        }
    }
}

/// The dead letters by reason and code, each a link to them, and whether
/// they are only the first of the queue.
pub(super) fn summary_table(sdkappid: u64, view: &View) -> Markup {
    html! {
        p.muted {
            @if view.shared && view.limited { "At most " }
            span #dead-total data-test="dead-total" { (view.total) } " dead letter(s) in the queue"
            @if view.shared { " (the fleet's, shared by its apps; these are this app's)" } "."
        }
        @if view.limited {
            p #read-limited.alert.alert-warn data-test="read-limited" data-read=(view.read) {
                "Summary and filter cover the first " (thousands(view.read)) " of "
                (thousands(view.total)) " dead letters (the oldest). "
                "Replay and purge of a filter still count and act on every match in the queue."
            }
        }
        @if !view.summary.is_empty() {
            table #dead-summary.data.compact {
                thead { tr { th { "Reason" } th.num { "Code" } th.num { "Jobs" } } }
                tbody {
                    @for row in &view.summary {
                        tr data-test="summary-row" data-reason=(row.reason) data-code=(row.code) {
                            td { a href=(summary_link(sdkappid, row)) { (row.reason) } }
                            td.num { (row.code) }
                            td.num data-test="summary-count" { (row.count) }
                        }
                    }
                }
            }
        }
    }
}

/// The dead letters of one row of the summary.
fn summary_link(sdkappid: u64, row: &SummaryRow) -> String {
    let mut pairs = vec![("reason", row.reason.clone())];
    if row.code != "-" {
        pairs.push(("code", row.code.clone()));
    }
    format!("/apps/{sdkappid}/dead?{}", query(&pairs))
}

/// `GET /apps/{sdkappid}`: the app's figures, its last hour and its dead letters.
pub(super) async fn app(
    State(ctx): State<Ctx>,
    Extension(authed): Extension<Authed>,
    Path(app): Path<String>,
) -> Result<Markup, PageError> {
    let app = ctx.app(&app)?;
    let view = AppView::of(app.sdkappid, &app.status, now_ms(), true);
    let dead = ctx
        .console
        .dead()
        .view(&app.queues.dead_queue(), &Selection::default(), 1, 0)
        .await;
    let id = app.sdkappid;
    let body = html! {
        p.crumbs { a href="/" { "Apps" } " / " (id) }
        h1 { "App " (id) }
        (problems(&view))
        (figures(&view))
        section.card {
            h2 { "Last hour" }
            (chart(view.history.as_deref().unwrap_or(&[]), view.rate))
            p.legend { span.key.key-bar {} "calls per minute" span.key.key-quota {} "quota (rate x 60)" span.key.key-fill {} "mean fill" }
        }
        section.card {
            h2 { "Dead letters" }
            @match &dead {
                Ok(dead) => (summary_table(id, dead)),
                Err(e) => p.alert.alert-error { (e) },
            }
            p { a #dead-link.button href=(format!("/apps/{id}/dead")) data-test="dead-link" { "Browse dead letters" } }
        }
    };
    Ok(layout(
        &format!("App {id}"),
        ctx.csrf(&authed).as_deref(),
        body,
    ))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_utc() {
        assert_eq!(when(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(when(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(when(1_700_000_000_123), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn a_badge_has_one_class_attribute() {
        let status = crate::status::WorkerStatus::for_app(1);
        let view = AppView::of(1, &status, 0, false);
        let html = badges(&view).into_string();
        assert_eq!(html.matches("class=").count(), 1, "{html}");
        assert!(html.contains("class=\"badge badge-disconnected\""));
    }

    #[test]
    fn counts_have_thousands_separated() {
        let shown: Vec<String> = [0, 999, 1_000, 5_000, 100_000, 1_234_567]
            .into_iter()
            .map(thousands)
            .collect();
        assert_eq!(
            shown,
            ["0", "999", "1,000", "5,000", "100,000", "1,234,567"]
        );
    }

    #[test]
    fn a_job_link_carries_any_id_in_its_query() {
        assert_eq!(
            job_link(7, "a/b c?+"),
            "/apps/7/dead-letter?id=a%2Fb+c%3F%2B"
        );
        assert_eq!(job_api_link(7, ".."), "/api/apps/7/dead-letter?id=..");
        for id in ["..", ".", "summary", " x ", "a+b", "日本", "%2F", "#"] {
            let link = job_link(7, id);
            let query = link.split_once('?').map(|(_, q)| q);
            assert_eq!(id_of_query(query).unwrap(), id, "{link}");
        }
        for bad in [
            None,
            Some(""),
            Some("id="),
            Some("id=a&id=b"),
            Some("id=a&x=1"),
        ] {
            assert!(id_of_query(bad).is_err(), "{bad:?}");
        }
    }

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
