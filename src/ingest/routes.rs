//! The HTTP API: one job, a batch of up to 1,000, a job's record, the
//! OpenAPI document, and health. Every `/v1/apps/...` route needs a bearer
//! token for the app; nothing is published unless the whole job is valid.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::ledger::{KeyClaim, Scope};

use super::error::IngestError;
use super::request::{deadline_header, prepare, Asked, Ready};
use super::state::{AppRoute, Ingest, JOB_SCHEMA, OPENAPI};

/// The largest single job body taken (a call is at most 12,000 bytes once
/// compacted; whitespace around it is allowed up to this).
pub const MAX_JOB_BYTES: usize = 64 * 1024;
/// The most jobs in one batch, and the largest batch body.
pub const MAX_BATCH_JOBS: usize = 1000;
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

pub fn router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route(
            "/v1/apps/{sdkappid}/broadcasts",
            post(post_one).layer(DefaultBodyLimit::max(MAX_JOB_BYTES)),
        )
        .route(
            "/v1/apps/{sdkappid}/broadcasts:batch",
            post(post_batch).layer(DefaultBodyLimit::max(MAX_BATCH_BYTES)),
        )
        .route("/v1/apps/{sdkappid}/broadcasts/{id}", get(get_one))
        .route("/v1/openapi.json", get(|| async { json_text(OPENAPI) }))
        .route(
            "/v1/job.schema.json",
            get(|| async { json_text(JOB_SCHEMA) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(ingest)
}

fn json_text(text: &'static str) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}

async fn readyz(State(ingest): State<Arc<Ingest>>) -> Response {
    if ingest.publisher.ready().await {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker does not take publishes",
        )
            .into_response()
    }
}

/// The app a request names, once its token may publish for it.
fn admitted<'a>(
    ingest: &'a Ingest,
    headers: &HeaderMap,
    app: &str,
) -> Result<(u64, &'a AppRoute), IngestError> {
    let app: u64 = app
        .parse()
        .map_err(|_| IngestError::Invalid(format!("{app:?} is not an SDKAppID")))?;
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    ingest.tokens.admit(authorization, app)?;
    let route = ingest.apps.get(&app).ok_or(IngestError::UnknownApp(app))?;
    Ok((app, route))
}

/// The request's body, or why it could not be read (past `limit`: 413, as
/// JSON like every other refusal).
fn read_body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, IngestError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            IngestError::TooLarge(format!("the body is over {limit} bytes"))
        } else {
            IngestError::Invalid(format!(
                "the body could not be read: {}",
                rejection.body_text()
            ))
        }
    })
}

/// A single POST's headers, as asked.
fn asked_of(headers: &HeaderMap) -> Result<Asked, IngestError> {
    let text = |name: &str| -> Result<Option<String>, IngestError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(str::to_owned)
                    .map_err(|_| IngestError::Invalid(format!("{name} is not text")))
            })
            .transpose()
    };
    let urgent = match text("x-urgent")?.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(IngestError::Invalid(format!(
                "X-Urgent must be true or false, found {other:?}"
            )))
        }
    };
    Ok(Asked {
        idempotency_key: text("idempotency-key")?,
        deadline_ms: text("x-deadline")?
            .as_deref()
            .map(deadline_header)
            .transpose()?,
        coalesce_key: text("x-coalesce-key")?,
        urgent,
    })
}

async fn post_one(
    State(ingest): State<Arc<Ingest>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, IngestError> {
    let (app, route) = admitted(&ingest, &headers, &app)?;
    let body = read_body(body, MAX_JOB_BYTES)?;
    let asked = asked_of(&headers)?;
    let ready = prepare(&body, &asked, &route.rules)?;
    let repeated = publish_once(&ingest, app, route, &ready).await?;
    let mut response = (StatusCode::ACCEPTED, Json(accepted(app, route, &ready))).into_response();
    if repeated {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

fn accepted(app: u64, route: &AppRoute, ready: &Ready) -> Value {
    json!({"id": ready.id, "sdkappid": app, "queue": queue_of(route, ready.urgent)})
}

fn queue_of(route: &AppRoute, urgent: bool) -> &str {
    if urgent {
        &route.topology.names.urgent
    } else {
        &route.topology.names.jobs
    }
}

/// A keyed job's claim: `None` to publish it, `Some` when its job was
/// published before (answered as it was, not published again).
async fn claim(
    ingest: &Ingest,
    app: u64,
    route: &AppRoute,
    ready: &Ready,
) -> Result<Option<()>, IngestError> {
    let Some(ledger) = ingest_ledger(ingest, app, route).filter(|_| ready.keyed) else {
        return Ok(None);
    };
    let digest = body_digest(ready);
    let claimed = ledger
        .claim_key(&ready.id, &digest, ready.urgent)
        .await
        .map_err(|e| {
            IngestError::Unavailable(format!(
                "the ledger is unreachable ({e}): nothing was published"
            ))
        })?;
    match claimed {
        KeyClaim::New => Ok(None),
        KeyClaim::Seen {
            body_digest,
            urgent,
            ..
        } if body_digest != digest || urgent != ready.urgent => {
            Err(IngestError::KeyReused(ready.id.clone()))
        }
        KeyClaim::Seen {
            published: true, ..
        } => Ok(Some(())),
        // Claimed, never confirmed (a crash, a broker that did not
        // confirm): published again under the same id.
        KeyClaim::Seen {
            published: false, ..
        } => Ok(None),
    }
}

fn ingest_ledger(ingest: &Ingest, app: u64, route: &AppRoute) -> Option<crate::ledger::Ledger> {
    let scope = Scope::new(app, route.topology.names.jobs.clone());
    ingest.ledger.clone().map(|ledger| ledger.in_scope(scope))
}

/// What a key was first used for: the job and its lane (not its deadline,
/// which a retry may give relative to a later now).
fn body_digest(ready: &Ready) -> String {
    let mut hash = Sha256::new();
    hash.update(&ready.body);
    let coalesce = ready
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-coalesce-key").cloned());
    hash.update(format!("{coalesce:?}").as_bytes());
    format!("{:x}", hash.finalize())
}

/// Declares the app's queues once per process (a job posted before any
/// worker ran is still routed).
async fn declared(ingest: &Ingest, app: u64, route: &AppRoute) -> Result<(), IngestError> {
    if ingest.declared.lock().await.contains(&app) {
        return Ok(());
    }
    ingest.publisher.declare(&route.topology).await?;
    ingest.declared.lock().await.insert(app);
    Ok(())
}

/// Publishes a job unless its key's job was published before; whether it
/// was a repeat.
async fn publish_once(
    ingest: &Ingest,
    app: u64,
    route: &AppRoute,
    ready: &Ready,
) -> Result<bool, IngestError> {
    if claim(ingest, app, route, ready).await?.is_some() {
        return Ok(true);
    }
    declared(ingest, app, route).await?;
    ingest
        .publisher
        .publish(queue_of(route, ready.urgent), ready)
        .await?;
    mark_published(ingest, app, route, ready).await;
    Ok(false)
}

/// Best effort: a key left unmarked is published again by its next post,
/// under the same id.
async fn mark_published(ingest: &Ingest, app: u64, route: &AppRoute, ready: &Ready) {
    if let Some(ledger) = ingest_ledger(ingest, app, route).filter(|_| ready.keyed) {
        if let Err(e) = ledger.key_published(&ready.id).await {
            tracing::warn!(error = %e, "an idempotency key not marked published: its next post publishes it again");
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    jobs: Vec<BatchItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    job: Box<RawValue>,
    #[serde(flatten)]
    asked: Asked,
}

async fn post_batch(
    State(ingest): State<Arc<Ingest>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, IngestError> {
    let app = app.strip_suffix(":batch").map(str::to_owned).unwrap_or(app);
    let (app, route) = admitted(&ingest, &headers, &app)?;
    let body = read_body(body, MAX_BATCH_BYTES)?;
    let batch: Batch = serde_json::from_slice(&body).map_err(|e| {
        IngestError::Invalid(format!(
            "the batch is not {{\"jobs\": [...]}} as documented: {e}"
        ))
    })?;
    if batch.jobs.is_empty() || batch.jobs.len() > MAX_BATCH_JOBS {
        return Err(IngestError::Invalid(format!(
            "a batch holds 1 to {MAX_BATCH_JOBS} jobs, found {}",
            batch.jobs.len()
        )));
    }
    let mut results: Vec<Option<Result<(Ready, bool), IngestError>>> =
        Vec::with_capacity(batch.jobs.len());
    let mut to_publish = Vec::new();
    for (index, item) in batch.jobs.iter().enumerate() {
        let prepared = prepare(item.job.get().as_bytes(), &item.asked, &route.rules);
        let result = match prepared {
            Ok(ready) => match claim(&ingest, app, route, &ready).await {
                Ok(Some(())) => Some(Ok((ready, true))),
                Ok(None) => {
                    to_publish.push(index);
                    Some(Ok((ready, false)))
                }
                Err(e) => Some(Err(e)),
            },
            Err(e) => Some(Err(e)),
        };
        results.push(result);
    }
    publish_prepared(&ingest, app, route, &mut results, &to_publish).await;
    let answers: Vec<Value> = results
        .into_iter()
        .enumerate()
        .map(
            |(index, result)| match result.expect("every job has a result") {
                Ok((ready, repeated)) => {
                    let mut answer = accepted(app, route, &ready);
                    answer["index"] = index.into();
                    answer["status"] = 202.into();
                    answer["repeated"] = repeated.into();
                    answer
                }
                Err(e) => {
                    json!({"index": index, "status": e.status().as_u16(), "error": e.to_string()})
                }
            },
        )
        .collect();
    Ok((StatusCode::OK, Json(json!({"results": answers}))).into_response())
}

/// Publishes the batch's jobs at `to_publish` together; a failure becomes
/// that job's result.
async fn publish_prepared(
    ingest: &Ingest,
    app: u64,
    route: &AppRoute,
    results: &mut [Option<Result<(Ready, bool), IngestError>>],
    to_publish: &[usize],
) {
    if to_publish.is_empty() {
        return;
    }
    let published = match declared(ingest, app, route).await {
        Ok(()) => {
            let jobs: Vec<(&str, &Ready)> = to_publish
                .iter()
                .map(|&i| match &results[i] {
                    Some(Ok((ready, _))) => (queue_of(route, ready.urgent), ready),
                    _ => unreachable!("only prepared jobs are published"),
                })
                .collect();
            ingest.publisher.publish_all(&jobs).await
        }
        Err(e) => to_publish.iter().map(|_| Err(e.clone())).collect(),
    };
    for (&index, outcome) in to_publish.iter().zip(published) {
        match outcome {
            Ok(()) => {
                if let Some(Ok((ready, _))) = &results[index] {
                    mark_published(ingest, app, route, ready).await;
                }
            }
            Err(e) => results[index] = Some(Err(e)),
        }
    }
}

async fn get_one(
    State(ingest): State<Arc<Ingest>>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, IngestError> {
    let (app, route) = admitted(&ingest, &headers, &app)?;
    let ledger = ingest_ledger(&ingest, app, route).ok_or(IngestError::NoLedger(
        "this endpoint has no ledger (DATABASE_URL): it cannot say what became of a job",
    ))?;
    let report = ledger
        .show(&id)
        .await
        .map_err(|e| IngestError::Unavailable(format!("the ledger is unreachable ({e})")))?;
    match report {
        Some(report) => Ok(Json(report).into_response()),
        None => Err(IngestError::NotFound(format!(
            "the ledger has no record of {id:?}: not yet in a call (waiting in the queue), never published, or pruned"
        ))),
    }
}
