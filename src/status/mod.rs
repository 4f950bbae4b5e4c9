//! What others (health checks, the ops endpoint, the fleet, the console,
//! tests) can see of each app's worker: its flags and gauges, its recent
//! flow with the per-minute history the console charts, the board of the
//! apps served, and the sampler of its queues' counts. The console only
//! renders this data; the worker only writes it.
//!
//! - [`worker`]: [`WorkerStatus`], one app's flags and recent [`Flow`].
//! - [`history`]: the last hour of calls per minute, and the last minute per second.
//! - [`board`]: [`StatusBoard`], the apps this process serves.
//! - [`sampler`]: [`sample_queues`], the queues counted every few seconds.

pub mod board;
pub mod history;
pub mod sampler;
pub mod worker;

pub use board::StatusBoard;
pub use sampler::{sample_queues, SAMPLE_QUEUES_EVERY};
pub use worker::{Failure, Flow, QueueCounts, WorkerStatus};
