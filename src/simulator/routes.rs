//! The HTTP side: the route table, the API handler that hands a call to its
//! app and applies the call's fault around the checks, the `/simulator/*`
//! endpoints (each for the app its `?sdkappid=` selects), and how an answer,
//! an HTTP error or a dropped connection goes back on the wire.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::app::Simulator;
use super::checks::Answer;
use super::faults::{DropPoint, FaultPlan};
use super::set::{SelectError, Selection, SimulatorSet};
use super::state::{CallRecord, Delivery};
use crate::clock;
use crate::tencent::client::SEND_BROADCAST_PATH;

/// The API path, other `/v4/` paths, and `/simulator/*`.
pub(super) fn router(set: SimulatorSet) -> Router {
    Router::new()
        .route("/simulator/stats", get(stats_handler))
        .route("/simulator/deliveries", get(deliveries_handler))
        .route("/simulator/calls", get(calls_handler))
        .route(
            "/simulator/faults",
            post(set_faults_handler).delete(clear_faults_handler),
        )
        .route("/simulator/reset", post(reset_handler))
        .fallback(api_handler)
        .with_state(set)
}

/// Hands the request to the app its `sdkappid` names; a call that names none
/// served is answered here, and counted by no app.
async fn api_handler(
    State(set): State<SimulatorSet>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let path = uri.path().trim_start_matches('/');
    let app = set.app_for_call(uri.query());
    if path != SEND_BROADCAST_PATH {
        return other_path(app.ok(), path);
    }
    match app {
        Ok(sim) => sim.take_call(method, uri, body, at).await,
        Err(refusal) => answer_json(refusal),
    }
}

/// A path other than the API's: an unknown command word under `/v4/`,
/// nothing elsewhere. Counted by its app when it names one.
fn other_path(sim: Option<&Simulator>, path: &str) -> Response {
    if let Some(sim) = sim {
        sim.lock().stats.other_paths += 1;
    }
    if !path.starts_with("v4/") {
        return StatusCode::NOT_FOUND.into_response();
    }
    let answer = Answer::fail(10003, "invalid command word");
    match sim {
        Some(sim) => sim.answer(answer),
        None => answer_json(answer),
    }
}

impl Simulator {
    /// One call to the API path, which arrived `at`: its fault, if the plan
    /// gives one, around the service's checks.
    async fn take_call(&self, method: Method, uri: Uri, body: Bytes, at: Instant) -> Response {
        let fault = {
            let mut state = self.lock();
            state.stats.calls += 1;
            state.stats.largest_body = state.stats.largest_body.max(body.len());
            state.faults.next(&body)
        };
        let mut record = CallRecord {
            received_at_ms: clock::now_ms(),
            random: body_random(&body),
            bytes: body.len(),
            error_code: None,
            fault: fault.clone(),
        };
        let fault = fault.unwrap_or_default();
        let response = if let Some(code) = fault.code {
            record.error_code = Some(code);
            self.answer(Answer::fail(code, format!("injected fault {code}")))
        } else if let Some(status) = fault.http_status {
            self.lock().stats.http_errors += 1;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, "<html><body>injected error</body></html>").into_response()
        } else if fault.drop == Some(DropPoint::Before) {
            self.drop_connection()
        } else {
            let answer = if method != Method::POST {
                Answer::fail(60002, "the HTTP method must be POST")
            } else {
                self.process(uri.query(), &body, at)
            };
            if let Some(ms) = fault.delay_ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if fault.drop == Some(DropPoint::After) {
                self.drop_connection()
            } else if fault.garbage {
                self.lock().stats.garbage_answers += 1;
                (StatusCode::OK, "{\"ActionStatus\":\"OK\",\"Err").into_response()
            } else {
                record.error_code = Some(answer.code);
                self.answer(answer)
            }
        };
        self.lock().log_call(record);
        response
    }

    /// The answer as the service's JSON, counted by ErrorCode.
    fn answer(&self, answer: Answer) -> Response {
        *self
            .lock()
            .stats
            .answers_by_code
            .entry(answer.code)
            .or_default() += 1;
        answer_json(answer)
    }

    /// A response whose body fails at once: hyper closes the connection
    /// without completing the answer.
    fn drop_connection(&self) -> Response {
        self.lock().stats.dropped_connections += 1;
        let failing = futures_util::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "connection dropped by fault injection",
            ))
        });
        Response::new(Body::from_stream(failing))
    }
}

/// The answer as the service's JSON.
fn answer_json(answer: Answer) -> Response {
    let mut body = json!({
        "ActionStatus": if answer.code == 0 { "OK" } else { "FAIL" },
        "ErrorInfo": answer.info,
        "ErrorCode": answer.code,
    });
    if let Some(seq) = answer.msg_seq {
        body["MsgSeq"] = seq.into();
    }
    Json(body).into_response()
}

/// The `Random` of a body, if it has one.
fn body_random(body: &[u8]) -> Option<u32> {
    #[derive(Deserialize)]
    struct OnlyRandom {
        #[serde(rename = "Random")]
        random: Option<u32>,
    }
    serde_json::from_slice::<OnlyRandom>(body).ok()?.random
}

/// The one app a `/simulator/*` request acts on, by its `?sdkappid=`.
struct OneApp(Simulator);

impl FromRequestParts<SimulatorSet> for OneApp {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        set: &SimulatorSet,
    ) -> Result<Self, Self::Rejection> {
        set.select_one(parts.uri.query())
            .map(OneApp)
            .map_err(refusal)
    }
}

/// Why a `/simulator/*` request names no app, as JSON: 400 when it must
/// name one or names it badly, 404 when the app it names is not served.
fn refusal(e: SelectError) -> Response {
    let status = match e {
        SelectError::NotServed(_) => StatusCode::NOT_FOUND,
        SelectError::NotANumber(_) | SelectError::WhichApp(_) => StatusCode::BAD_REQUEST,
    };
    (status, Json(json!({ "error": e.to_string() }))).into_response()
}

/// One app's counters; with several apps and none named, each app's by
/// SDKAppID.
async fn stats_handler(State(set): State<SimulatorSet>, uri: Uri) -> Response {
    match set.select(uri.query()) {
        Ok(Selection::App(sim)) => Json(sim.stats()).into_response(),
        Ok(Selection::Every) => Json(set.stats()).into_response(),
        Err(e) => refusal(e),
    }
}

async fn calls_handler(OneApp(sim): OneApp) -> Json<Vec<CallRecord>> {
    Json(sim.calls())
}

#[derive(Deserialize)]
struct DeliveriesQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn deliveries_handler(
    OneApp(sim): OneApp,
    Query(q): Query<DeliveriesQuery>,
) -> Json<Vec<Delivery>> {
    Json(sim.deliveries(q.after, q.limit.unwrap_or(10_000)))
}

async fn set_faults_handler(OneApp(sim): OneApp, Json(plan): Json<FaultPlan>) -> StatusCode {
    sim.set_faults(plan);
    StatusCode::NO_CONTENT
}

async fn clear_faults_handler(OneApp(sim): OneApp) -> StatusCode {
    sim.set_faults(FaultPlan::default());
    StatusCode::NO_CONTENT
}

async fn reset_handler(OneApp(sim): OneApp) -> StatusCode {
    sim.reset();
    StatusCode::NO_CONTENT
}
