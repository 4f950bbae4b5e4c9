//! The HTTP side: the route table, the API handler that applies a call's
//! fault around the checks, the `/simulator/*` endpoints, and how an answer,
//! an HTTP error or a dropped connection goes back on the wire.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::checks::Answer;
use super::faults::{DropPoint, FaultPlan};
use super::state::{unix_now_ms, CallRecord, Delivery, Stats};
use super::Simulator;
use crate::tencent::client::SEND_BROADCAST_PATH;

/// The API path, other `/v4/` paths, and `/simulator/*`.
pub(super) fn router(sim: Simulator) -> Router {
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
        .with_state(sim)
}

async fn api_handler(
    State(sim): State<Simulator>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let path = uri.path().trim_start_matches('/');
    if path != SEND_BROADCAST_PATH {
        sim.lock().stats.other_paths += 1;
        if path.starts_with("v4/") {
            return sim.answer(Answer::fail(10003, "invalid command word"));
        }
        return StatusCode::NOT_FOUND.into_response();
    }
    let fault = {
        let mut state = sim.lock();
        state.stats.calls += 1;
        state.stats.largest_body = state.stats.largest_body.max(body.len());
        state.faults.next(&body)
    };
    let mut record = CallRecord {
        received_at_ms: unix_now_ms(),
        random: body_random(&body),
        bytes: body.len(),
        error_code: None,
        fault: fault.clone(),
    };
    let fault = fault.unwrap_or_default();
    let response = if let Some(code) = fault.code {
        record.error_code = Some(code);
        sim.answer(Answer::fail(code, format!("injected fault {code}")))
    } else if let Some(status) = fault.http_status {
        sim.lock().stats.http_errors += 1;
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, "<html><body>injected error</body></html>").into_response()
    } else if fault.drop == Some(DropPoint::Before) {
        sim.drop_connection()
    } else {
        let answer = if method != Method::POST {
            Answer::fail(60002, "the HTTP method must be POST")
        } else {
            sim.process(uri.query(), &body, at)
        };
        if let Some(ms) = fault.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if fault.drop == Some(DropPoint::After) {
            sim.drop_connection()
        } else if fault.garbage {
            sim.lock().stats.garbage_answers += 1;
            (StatusCode::OK, "{\"ActionStatus\":\"OK\",\"Err").into_response()
        } else {
            record.error_code = Some(answer.code);
            sim.answer(answer)
        }
    };
    sim.lock().log_call(record);
    response
}

impl Simulator {
    /// The answer as the service's JSON, counted by ErrorCode.
    fn answer(&self, answer: Answer) -> Response {
        *self
            .lock()
            .stats
            .answers_by_code
            .entry(answer.code)
            .or_default() += 1;
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

/// The `Random` of a body, if it has one.
fn body_random(body: &[u8]) -> Option<u32> {
    #[derive(Deserialize)]
    struct OnlyRandom {
        #[serde(rename = "Random")]
        random: Option<u32>,
    }
    serde_json::from_slice::<OnlyRandom>(body).ok()?.random
}

async fn calls_handler(State(sim): State<Simulator>) -> Json<Vec<CallRecord>> {
    Json(sim.calls())
}

async fn stats_handler(State(sim): State<Simulator>) -> Json<Stats> {
    Json(sim.stats())
}

#[derive(Deserialize)]
struct DeliveriesQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn deliveries_handler(
    State(sim): State<Simulator>,
    Query(q): Query<DeliveriesQuery>,
) -> Json<Vec<Delivery>> {
    Json(sim.deliveries(q.after, q.limit.unwrap_or(10_000)))
}

async fn set_faults_handler(
    State(sim): State<Simulator>,
    Json(plan): Json<FaultPlan>,
) -> StatusCode {
    sim.set_faults(plan);
    StatusCode::NO_CONTENT
}

async fn clear_faults_handler(State(sim): State<Simulator>) -> StatusCode {
    sim.set_faults(FaultPlan::default());
    StatusCode::NO_CONTENT
}

async fn reset_handler(State(sim): State<Simulator>) -> StatusCode {
    sim.reset();
    StatusCode::NO_CONTENT
}
