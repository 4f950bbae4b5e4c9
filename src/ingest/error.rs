//! What the endpoint answers when it does not take a job: one status and
//! one message per mistake, as JSON (`{"error": "..."}`).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The job or a header is not what the worker takes (400).
    #[error("{0}")]
    Invalid(String),
    /// Larger than any call can be (413).
    #[error("{0}")]
    TooLarge(String),
    /// No token, or not one of ours (401). Never says which.
    #[error("a bearer token is required (Authorization: Bearer ...)")]
    Unauthenticated,
    /// The token is not for this app (403).
    #[error("this token may not publish for app {0}")]
    Forbidden(u64),
    /// The app is not served here (404).
    #[error("app {0} is not served by this endpoint")]
    UnknownApp(u64),
    /// Nothing known of the job (404).
    #[error("{0}")]
    NotFound(String),
    /// The key was used for another body (422).
    #[error("Idempotency-Key {0:?} was used before with another body")]
    KeyReused(String),
    /// The token's request limit (429).
    #[error("too many requests for this token: retry after {} s", .0.as_secs().max(1))]
    Limited(Duration),
    /// The broker blocks publishers (a resource alarm) or cannot be reached,
    /// or the ledger cannot (503). The message says whether the job may
    /// still arrive.
    #[error("{0}; retry later")]
    Unavailable(String),
    /// Asked of the ledger, which this endpoint has none of (501).
    #[error("{0}")]
    NoLedger(&'static str),
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::UnknownApp(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::KeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NoLedger(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// Seconds a client should wait before trying again, when it should.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Limited(wait) => Some(wait.as_secs().max(1)),
            Self::Unavailable(_) => Some(RETRY_AFTER_SECS),
            _ => None,
        }
    }
}

/// What a 503 tells a client to wait.
pub const RETRY_AFTER_SECS: u64 = 5;

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({"error": self.to_string()}));
        let mut response = (self.status(), body).into_response();
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, Self::Unauthenticated) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
