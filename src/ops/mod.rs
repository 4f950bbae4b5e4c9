//! What operators use: telemetry (metrics, health, the worker's status), the
//! dead-letter queue, publishing jobs, and the ledger's answers about a job.
//!
//! - [`telemetry`]: metric names, `/metrics`, `/healthz`, `/readyz`, the board of apps.
//! - [`status`]: one app's worker as others see it, its recent flow, and the
//!   sampler of its queues' counts.
//! - [`dlq`]: reading, listing, showing, replaying and purging dead letters.
//! - [`enqueue`]: publishing validated jobs with confirms.
//! - [`jobs`]: the `jobs show` report of what the ledger says of a job.

pub mod dlq;
pub mod enqueue;
pub mod jobs;
pub mod status;
pub mod telemetry;
