//! What operators see of a running worker: Prometheus metrics, `/healthz`,
//! `/readyz` and, when enabled, the console, on one HTTP endpoint; the board
//! of the apps served and their statuses ([`WorkerStatus`]). The metric names
//! live here, so README's table and the code cannot drift apart. No label
//! ever carries a secret: labels are the SDKAppID, outcomes, reasons and
//! ErrorCodes (so their number is bounded by the apps served).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::console::Console;
pub use crate::ops::status::WorkerStatus;

pub const JOBS_RECEIVED: &str = "broadcast_jobs_received_total";
pub const JOBS_DELIVERED: &str = "broadcast_jobs_delivered_total";
pub const JOBS_ACKED_KNOWN: &str = "broadcast_jobs_already_settled_total";
pub const JOBS_DEAD_LETTERED: &str = "broadcast_jobs_dead_lettered_total";
pub const CALLS: &str = "broadcast_calls_total";
pub const CALL_SECONDS: &str = "broadcast_call_duration_seconds";
pub const CALL_BYTES: &str = "broadcast_call_bytes";
pub const CALL_JOBS: &str = "broadcast_call_jobs";
pub const PERMIT_WAIT_SECONDS: &str = "broadcast_permit_wait_seconds";
pub const RETRIES: &str = "broadcast_retries_total";
pub const OLDEST_UNSETTLED_SECONDS: &str = "broadcast_oldest_unsettled_job_age_seconds";
pub const APP_ACTIVE: &str = "broadcast_app_active";
pub const APP_SERVED: &str = "broadcast_app_served";
pub const CONNECTED: &str = "broadcast_broker_connected";
pub const HALTED: &str = "broadcast_halted";
pub const LEDGER_DOWN: &str = "broadcast_ledger_down";
pub const RATE: &str = "broadcast_rate_calls_per_second";
pub const LEDGER_ROUND_TRIPS: &str = "broadcast_ledger_round_trips_total";
pub const LEDGER_SECONDS: &str = "broadcast_ledger_seconds";
pub const BACKLOG_JOBS: &str = "broadcast_backlog_jobs";

/// The label every metric about one app carries.
pub const SDKAPPID: &str = "sdkappid";

/// Installs the process-wide Prometheus recorder. Call once, at start.
pub fn install_recorder() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let seconds = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let bytes = [
        500.0, 1000.0, 2000.0, 4000.0, 8000.0, 10000.0, 11000.0, 11500.0, 12000.0,
    ];
    let jobs = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 150.0, 200.0];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(CALL_SECONDS.into()), &seconds)?
        .set_buckets_for_metric(Matcher::Full(LEDGER_SECONDS.into()), &seconds)?
        .set_buckets_for_metric(Matcher::Full(PERMIT_WAIT_SECONDS.into()), &seconds)?
        .set_buckets_for_metric(Matcher::Full(CALL_BYTES.into()), &bytes)?
        .set_buckets_for_metric(Matcher::Full(CALL_JOBS.into()), &jobs)?
        .install_recorder()
}

/// Describes every metric, for the `# HELP` lines.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        JOBS_RECEIVED,
        "Jobs received from the jobs queue (redeliveries included)"
    );
    describe_counter!(
        JOBS_DELIVERED,
        "Jobs acked after the service took their call"
    );
    describe_counter!(
        JOBS_ACKED_KNOWN,
        "Redelivered jobs the ledger knew as settled, acked without a call"
    );
    describe_counter!(
        JOBS_DEAD_LETTERED,
        "Jobs dead-lettered, by reason and ErrorCode"
    );
    describe_counter!(CALLS, "Call attempts, by outcome and ErrorCode");
    describe_histogram!(CALL_SECONDS, Unit::Seconds, "Time of one call attempt");
    describe_histogram!(CALL_BYTES, Unit::Bytes, "Body size of each call");
    describe_histogram!(CALL_JOBS, "Jobs merged into each call");
    describe_histogram!(
        PERMIT_WAIT_SECONDS,
        Unit::Seconds,
        "Time the sender waited for a permit"
    );
    describe_counter!(RETRIES, "Attempts after the first, by kind");
    describe_gauge!(
        OLDEST_UNSETTLED_SECONDS,
        Unit::Seconds,
        "Age of the oldest job held and not yet settled"
    );
    describe_gauge!(
        APP_ACTIVE,
        "1 on the replica sending for the app (its session received the app's jobs), 0 elsewhere"
    );
    describe_gauge!(
        APP_SERVED,
        "1 while this process serves the app (it is in the apps file), 0 once it was removed"
    );
    describe_gauge!(CONNECTED, "1 while connected to the broker and consuming");
    describe_gauge!(HALTED, "1 while sending is stopped by an app-wide fault");
    describe_gauge!(
        LEDGER_DOWN,
        "1 while sending is stopped because the ledger is unreachable"
    );
    describe_gauge!(RATE, "The rate the token bucket runs at now");
    describe_gauge!(
        BACKLOG_JOBS,
        "Jobs ready in the app's jobs queue, as the broker counted them last (every few seconds)"
    );
    describe_counter!(
        LEDGER_ROUND_TRIPS,
        "Statements sent to the ledger database, each a round trip"
    );
    describe_histogram!(
        LEDGER_SECONDS,
        Unit::Seconds,
        "Time of each ledger operation, its round trips together"
    );
}

/// The apps this process serves and their statuses, as the ops endpoint
/// reads them (a fleet adds and removes apps on reload).
#[derive(Debug, Clone, Default)]
pub struct StatusBoard(Arc<RwLock<BTreeMap<u64, Arc<WorkerStatus>>>>);

impl StatusBoard {
    pub fn of(sdkappid: u64, status: Arc<WorkerStatus>) -> Self {
        let board = Self::default();
        board.insert(sdkappid, status);
        board
    }

    pub fn insert(&self, sdkappid: u64, status: Arc<WorkerStatus>) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sdkappid, status);
    }

    pub fn remove(&self, sdkappid: u64) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&sdkappid);
    }

    pub fn apps(&self) -> Vec<(u64, Arc<WorkerStatus>)> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(app, status)| (*app, status.clone()))
            .collect()
    }
}

/// The ops endpoint: `/metrics`, `/healthz`, `/readyz`, and with a console
/// its pages (`/`, `/apps/...`) and API (`/api/...`); without one those
/// answer 404.
pub fn router(handle: PrometheusHandle, board: StatusBoard, console: Option<Console>) -> Router {
    let ops = Router::new()
        .route(
            "/metrics",
            get(
                |State((handle, _)): State<(PrometheusHandle, StatusBoard)>| async move {
                    handle.run_upkeep();
                    handle.render()
                },
            ),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(
                |State((_, board)): State<(PrometheusHandle, StatusBoard)>| async move {
                    readiness(&board)
                },
            ),
        )
        .with_state((handle, board.clone()));
    match console {
        Some(console) => ops.merge(crate::console::router(console, board)),
        None => ops,
    }
}

/// Ready: every app connected and consuming (active or standing by), none
/// halted by an app-wide fault, the ledger reachable.
fn readiness(board: &StatusBoard) -> impl IntoResponse {
    let body = readiness_body(board);
    let code = if body["ready"] == true {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// One app's readiness; `ledger_error` says why the ledger is down (null when up).
fn app_readiness(status: &WorkerStatus) -> serde_json::Value {
    let consuming = status.consuming.load(Ordering::Relaxed);
    let halted = status.halted.load(Ordering::Relaxed);
    let ledger_down = status.ledger_down.load(Ordering::Relaxed);
    serde_json::json!({
        "ready": consuming && !halted && !ledger_down,
        "active": status.is_active(),
        "consuming": consuming,
        "halted_by_app_fault": halted,
        "ledger_down": ledger_down,
        "ledger_error": status.ledger_error(),
    })
}

/// `/readyz`'s JSON: each app under `apps`, and at the top what holds for
/// them all (ready, consuming) or for any (halted, ledger down, its error).
fn readiness_body(board: &StatusBoard) -> serde_json::Value {
    let apps: serde_json::Map<String, serde_json::Value> = board
        .apps()
        .iter()
        .map(|(app, status)| (app.to_string(), app_readiness(status)))
        .collect();
    let all = |key: &str| !apps.is_empty() && apps.values().all(|a| a[key] == true);
    let any = |key: &str| apps.values().any(|a| a[key] == true);
    let ledger_error = apps
        .values()
        .find_map(|a| a["ledger_error"].as_str().map(str::to_owned));
    serde_json::json!({
        "ready": all("ready"),
        "consuming": all("consuming"),
        "halted_by_app_fault": any("halted_by_app_fault"),
        "ledger_down": any("ledger_down"),
        "ledger_error": ledger_error,
        "apps": apps,
    })
}

/// Binds the ops endpoint (with the console, if given) and serves it in the
/// background; returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    board: StatusBoard,
    console: Option<Console>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(handle, board, console);
    // With each connection's peer: the console counts wrong tokens by client.
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_says_why_the_ledger_is_down() {
        let status = Arc::new(WorkerStatus::for_app(1400000001));
        let board = StatusBoard::of(1400000001, status.clone());
        status.set_consuming(true);
        assert_eq!(readiness_body(&board)["ready"], true);
        assert_eq!(
            readiness_body(&board)["ledger_error"],
            serde_json::Value::Null
        );
        assert!(!status.set_ledger_down(Some("refused: invalid byte sequence".into())));
        let body = readiness_body(&board);
        assert_eq!(
            (body["ready"].clone(), body["ledger_down"].clone()),
            (false.into(), true.into())
        );
        assert_eq!(body["ledger_error"], "refused: invalid byte sequence");
        assert_eq!(
            body["apps"]["1400000001"]["ledger_error"],
            "refused: invalid byte sequence"
        );
        assert!(status.set_ledger_down(None));
        assert_eq!(
            readiness_body(&board)["ledger_error"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn readyz_reports_each_app() {
        let (one, two) = (
            Arc::new(WorkerStatus::for_app(1)),
            Arc::new(WorkerStatus::for_app(2)),
        );
        let board = StatusBoard::of(1, one.clone());
        board.insert(2, two.clone());
        one.set_consuming(true);
        two.set_consuming(true);
        two.set_active(true);
        two.set_halted(true);
        let body = readiness_body(&board);
        assert_eq!(body["ready"], false, "one app halted: {body}");
        assert_eq!(body["halted_by_app_fault"], true);
        assert_eq!(body["apps"]["1"]["ready"], true);
        assert_eq!(body["apps"]["2"]["ready"], false);
        assert_eq!(body["apps"]["2"]["active"], true);
        assert_eq!(body["apps"]["1"]["active"], false);
        board.remove(2);
        assert_eq!(readiness_body(&board)["ready"], true);
    }
}
