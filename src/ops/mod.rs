//! What operators use, above the worker: the dead-letter queue, publishing
//! jobs, and the ledger's answers about a job. (The metrics are in
//! [`crate::telemetry`], each app's status in [`crate::status`], and the
//! HTTP endpoint that serves them in [`crate::ops_endpoint`].)
//!
//! - [`dlq`]: reading, selecting, replaying and purging dead letters.
//! - [`enqueue`]: publishing validated jobs with confirms.
//! - [`jobs`]: the `jobs show` report of what the ledger says of a job.

pub mod dlq;
pub mod enqueue;
pub mod jobs;
