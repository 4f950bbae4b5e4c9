//! The producers' HTTP endpoint, `broadcast-worker ingest`: a job posted as
//! JSON is validated by the worker's own decoder and published to its app's
//! queue with confirms; it is answered 202 only once the broker confirmed
//! it. It is a process of its own, not a route of `run`'s ops endpoint: it
//! faces producers (often from outside the cluster, behind TLS), scales with
//! their traffic, and needs no app's secret key, while the ops endpoint
//! serves operators and holds the console.
//!
//! - `request`: a posted job and its headers, as the message the worker expects (pure);
//! - `tokens`: bearer tokens, per app or for all, and each one's request limit;
//! - `publisher`: the broker link (confirms, a blocked or lost broker answered at once);
//! - `routes`: the HTTP API (`/v1/...`), described by `openapi/ingest.json`;
//! - `state`: what the handlers share (the apps served, tokens, broker, ledger).

mod error;
mod publisher;
mod request;
mod routes;
mod state;
mod tokens;

pub use error::IngestError;
pub use publisher::Publisher;
pub use request::{prepare, Asked, Ready};
pub use routes::router;
pub use state::{AppRoute, Ingest, JOB_SCHEMA, OPENAPI};
pub use tokens::Tokens;
