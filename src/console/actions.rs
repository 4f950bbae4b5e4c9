//! Replay and purge from the console, for the pages and the API alike: which
//! jobs a request means (ids, or a filter, or every dead letter), the CSRF
//! check for a browser session, and the action itself, logged with what was
//! done (never the token).

use serde::Deserialize;
use serde_json::Value;
use tracing::{info, warn};

use super::auth::Authed;
use super::context::{AppRef, Ctx, Problem};
use super::filter::{parse_age, Filter, Params};
use crate::ops::dlq::{Action, Confirmation, Selection};

/// The jobs an action is for, and the words that say which.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub selection: Selection,
    pub words: String,
    /// Set for a filter (or every dead letter), none for ids.
    pub filter: Option<Filter>,
}

/// Ids in words: the first few, and how many more.
fn ids_words(ids: &[String]) -> String {
    let shown: Vec<String> = ids.iter().take(5).map(|id| format!("{id:?}")).collect();
    match ids.len() {
        n if n > 5 => format!("ids {} and {} more", shown.join(", "), n - 5),
        _ => format!("ids {}", shown.join(", ")),
    }
}

impl Chosen {
    /// The jobs with these ids.
    pub fn ids(ids: Vec<String>) -> Result<Self, Problem> {
        if ids.is_empty() {
            return Err(Problem::bad_request("select at least one job"));
        }
        Ok(Self {
            words: ids_words(&ids),
            selection: Selection {
                ids,
                ..Selection::default()
            },
            filter: None,
        })
    }

    /// The jobs a filter matches; an empty filter means every dead letter.
    pub fn filter(filter: Filter) -> Self {
        let mut selection = filter.selection();
        selection.all = filter.is_empty();
        Self {
            words: filter.describe(),
            selection,
            filter: Some(filter),
        }
    }

    /// From a form: its `scope` is `selected` (the `id` fields) or `filter`.
    pub fn from_form(params: &Params) -> Result<Self, Problem> {
        Self::from_scope(params, params.get("scope"))
    }

    /// From a form's fields, for `scope`.
    pub fn from_scope(params: &Params, scope: Option<&str>) -> Result<Self, Problem> {
        match scope {
            Some("selected") => Self::ids(params.all("id")),
            Some("filter") => Ok(Self::filter(
                Filter::parse(params).map_err(Problem::bad_request)?,
            )),
            other => Err(Problem::bad_request(format!(
                "scope must be \"selected\" or \"filter\", not {other:?}"
            ))),
        }
    }
}

/// An action's JSON body: ids and/or a filter (or `all`), and either
/// `dry_run` (how many would be touched, and their `digest`) or the
/// confirmation: `digest` (those very jobs, as the dry run said; required
/// for a filter) and/or `expected` (that many; enough for ids alone).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    #[serde(default)]
    pub ids: Vec<String>,
    pub reason: Option<String>,
    pub code: Option<i64>,
    /// Seconds, or an age like "2h".
    pub older_than: Option<Value>,
    pub newer_than: Option<Value>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub dry_run: bool,
    pub expected: Option<usize>,
    /// The dry run's digest of the selected jobs' ids.
    pub digest: Option<String>,
    /// For a browser session (or the `x-csrf-token` header).
    pub csrf: Option<String>,
}

fn age(name: &str, value: &Option<Value>) -> Result<Option<i64>, Problem> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().filter(|s| *s >= 0).map(Some).ok_or_else(|| {
            Problem::bad_request(format!("{name} must be a whole number of seconds"))
        }),
        Some(Value::String(s)) => parse_age(name, s).map(Some).map_err(Problem::bad_request),
        Some(_) => Err(Problem::bad_request(format!(
            "{name} must be seconds or an age like \"2h\""
        ))),
    }
}

impl ActionBody {
    /// The confirmation it carries for `chosen`: a filter's must name its
    /// jobs by their digest (a count holds when one left and another
    /// arrived); ids alone may be confirmed by their count.
    pub fn confirmation(&self, chosen: &Chosen) -> Result<Confirmation, Problem> {
        let confirmation = Confirmation {
            count: self.expected,
            digest: self.digest.clone().filter(|d| !d.trim().is_empty()),
        };
        match (&confirmation.digest, confirmation.count, &chosen.filter) {
            (Some(_), _, _) | (None, Some(_), None) => Ok(confirmation),
            (None, Some(_), Some(_)) => Err(Problem::bad_request(
                "a filter's action needs the \"digest\" of its dry run, which says which jobs, not only how many: nothing was done",
            )),
            (None, None, _) => Err(Problem::bad_request(
                "say which jobs you confirm: the \"digest\" of a dry run (or, for ids, \"expected\": its \"matching\")",
            )),
        }
    }

    pub fn chosen(&self) -> Result<Chosen, Problem> {
        let filter = Filter {
            reason: self.reason.clone().filter(|r| !r.is_empty()),
            code: self.code,
            older_than: age("older_than", &self.older_than)?,
            newer_than: age("newer_than", &self.newer_than)?,
        };
        match (self.ids.is_empty(), filter.is_empty(), self.all) {
            (true, true, false) => Err(Problem::bad_request(
                "say which jobs: ids, a filter (reason, code, older_than, newer_than), or \"all\": true",
            )),
            (false, _, _) => {
                let mut chosen = Chosen::ids(self.ids.clone())?;
                let by_filter = filter.selection();
                chosen.selection = Selection {
                    ids: chosen.selection.ids,
                    ..by_filter
                };
                if !filter.is_empty() {
                    chosen.words = format!("{} with {}", chosen.words, filter.describe());
                }
                Ok(chosen)
            }
            (true, _, _) => Ok(Chosen::filter(filter)),
        }
    }
}

/// Refuses an action from a browser session without its CSRF token.
pub fn check_csrf(ctx: &Ctx, authed: &Authed, presented: Option<&str>) -> Result<(), Problem> {
    if ctx.console.auth().may_act(authed, presented) {
        Ok(())
    } else {
        Err(Problem::forbidden())
    }
}

/// Carries the action out on the jobs chosen, if they are still those
/// confirmed; logs what was done.
pub async fn perform(
    ctx: &Ctx,
    app: &AppRef,
    action: Action,
    chosen: &Chosen,
    confirmation: &Confirmation,
) -> Result<usize, Problem> {
    let result = ctx
        .console
        .dead()
        .act(&app.queues, action, &chosen.selection, confirmation)
        .await;
    match &result {
        Ok(count) => info!(
            sdkappid = app.sdkappid,
            action = action.as_str(),
            selection = %chosen.words,
            count,
            "console: dead letters {}",
            if action == Action::Replay { "replayed" } else { "purged" }
        ),
        Err(e) => warn!(
            sdkappid = app.sdkappid,
            action = action.as_str(),
            selection = %chosen.words,
            expected = ?confirmation.count,
            digest = ?confirmation.digest,
            error = %e,
            "console: action not carried out in full"
        ),
    }
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_choose_ids_or_a_filter() {
        let form = |q: &str| Chosen::from_form(&Params::parse(q.as_bytes()));
        let ids = form("scope=selected&id=a&id=b").unwrap();
        assert_eq!(ids.selection.ids, ["a", "b"]);
        assert_eq!(ids.words, "ids \"a\", \"b\"");
        assert!(form("scope=selected")
            .unwrap_err()
            .message
            .contains("select at least one"));
        let by = form("scope=filter&reason=rejected&id=ignored").unwrap();
        assert!(by.selection.ids.is_empty() && !by.selection.all);
        assert_eq!(by.selection.reason.as_deref(), Some("rejected"));
        let all = form("scope=filter").unwrap();
        assert!(all.selection.all && !all.selection.is_empty());
        assert_eq!(all.words, "every dead letter");
        assert!(form("scope=everything").is_err());
        assert!(form("scope=filter&code=x").is_err());
        let many: Vec<String> = (0..7).map(|i| i.to_string()).collect();
        assert!(Chosen::ids(many).unwrap().words.ends_with("and 2 more"));
    }

    #[test]
    fn json_bodies_say_which_jobs() {
        let body = |v: Value| serde_json::from_value::<ActionBody>(v).unwrap().chosen();
        assert!(body(serde_json::json!({})).is_err());
        let all = body(serde_json::json!({"all": true})).unwrap();
        assert!(all.selection.all);
        let old = body(serde_json::json!({"older_than": "2h", "code": 10004})).unwrap();
        assert_eq!(
            (old.selection.older_than_secs, old.selection.code),
            (Some(7200), Some(10004))
        );
        let secs = body(serde_json::json!({"newer_than": 90})).unwrap();
        assert_eq!(secs.selection.newer_than_secs, Some(90));
        let both = body(serde_json::json!({"ids": ["a"], "reason": "rejected"})).unwrap();
        assert_eq!(both.selection.ids, ["a"]);
        assert_eq!(both.selection.reason.as_deref(), Some("rejected"));
        assert!(body(serde_json::json!({"older_than": true})).is_err());
        assert!(body(serde_json::json!({"older_than": -1})).is_err());
        assert!(serde_json::from_value::<ActionBody>(serde_json::json!({"id": "a"})).is_err());
    }

    #[test]
    fn a_filter_is_confirmed_by_its_digest_ids_by_their_count() {
        let confirm = |v: Value| {
            let body = serde_json::from_value::<ActionBody>(v).unwrap();
            body.confirmation(&body.chosen().unwrap())
        };
        let by_count = serde_json::json!({"reason": "rejected", "expected": 2});
        assert!(confirm(by_count).unwrap_err().message.contains("digest"));
        let by_digest = confirm(serde_json::json!({"all": true, "digest": "ab"})).unwrap();
        assert_eq!(by_digest.digest.as_deref(), Some("ab"));
        let ids = confirm(serde_json::json!({"ids": ["a"], "expected": 1})).unwrap();
        assert_eq!((ids.count, ids.digest), (Some(1), None));
        assert!(confirm(serde_json::json!({"ids": ["a"]})).is_err());
        assert!(confirm(serde_json::json!({"ids": ["a"], "digest": " "})).is_err());
    }
}
