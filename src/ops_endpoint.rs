//! The ops endpoint: Prometheus's `/metrics`, `/healthz`, `/readyz` (each
//! app's readiness from the [`StatusBoard`]) and, when enabled, the
//! console's pages and API, on one HTTP listener. The floor above both the
//! status and the console: it mounts the console's router, and neither
//! knows of it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::console::Console;
use crate::status::{StatusBoard, WorkerStatus};

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
    let (broker_node, broker_version) = status.broker().unzip();
    serde_json::json!({
        "ready": consuming && !halted && !ledger_down,
        "active": status.is_active(),
        "consuming": consuming,
        "halted_by_app_fault": halted,
        "ledger_down": ledger_down,
        "ledger_error": status.ledger_error(),
        "broker_node": broker_node,
        "broker_version": broker_version.flatten(),
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
    use std::sync::Arc;

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
