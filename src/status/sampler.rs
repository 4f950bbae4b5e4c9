//! The sampler that counts an app's queues on the broker every few seconds,
//! for its status (the console's counts, the backlog's gauge).

use std::sync::Arc;
use std::time::Duration;

use lapin::Channel;

use super::worker::WorkerStatus;
use crate::broker::{self, QueueNames};

/// How often the replica counts each app's queues.
pub const SAMPLE_QUEUES_EVERY: Duration = Duration::from_secs(5);

/// Counts the app's jobs and dead letters every few seconds with passive
/// declares on `channel` (its own: a failed declare closes it), until the
/// channel fails or the task is aborted with its session.
pub async fn sample_queues(channel: Channel, queues: QueueNames, status: Arc<WorkerStatus>) {
    let mut tick = tokio::time::interval(SAMPLE_QUEUES_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (Ok(jobs), Ok(dead)) = (
            ready(&channel, &queues.jobs).await,
            ready(&channel, &queues.dead).await,
        ) else {
            tracing::debug!("cannot count the app's queues: sampling stops until the next session");
            return;
        };
        status.set_queue_counts(jobs, dead);
    }
}

/// Messages ready in `queue`, by a passive declare.
async fn ready(channel: &Channel, queue: &str) -> Result<u64, lapin::Error> {
    Ok(u64::from(broker::ready_count(channel, queue).await?))
}
