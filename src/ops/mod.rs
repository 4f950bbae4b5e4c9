//! What operators use: telemetry (metrics, health, the worker's status), the
//! dead-letter queue, publishing jobs, and the ledger's answers about a job.
//!
//! - [`telemetry`]: metric names, the worker's status, `/metrics`, `/healthz`, `/readyz`.
//! - [`dlq`]: reading, listing, showing, replaying and purging dead letters.
//! - [`enqueue`]: publishing validated jobs with confirms.
//! - [`jobs`]: the `jobs show` report of what the ledger says of a job.

pub mod dlq;
pub mod enqueue;
pub mod jobs;
pub mod telemetry;
