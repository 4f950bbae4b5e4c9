//! The sampler that counts an app's queues on the broker every few seconds,
//! for its status (the console's counts, the backlog's gauge).

use std::sync::Arc;
use std::time::Duration;

use lapin::Channel;

use super::worker::WorkerStatus;
use crate::broker::{self, QueueNames};

/// How often the replica counts a busy app's queues.
pub const SAMPLE_QUEUES_EVERY: Duration = Duration::from_secs(5);
/// How often it counts an idle app's (nothing delivered for a minute, no
/// backlog), give or take a fifth so that a thousand apps spread out.
pub const SAMPLE_IDLE_QUEUES_EVERY: Duration = Duration::from_secs(60);

/// Counts the app's jobs (both lanes) and (in a queue of its own) dead letters with
/// passive declares on `channel` (its own: a failed declare closes it),
/// every few seconds while the app is busy and every minute while it is
/// idle (woken when deliveries start again), until the channel fails or the
/// task is aborted with its session.
pub async fn sample_queues(channel: Channel, queues: QueueNames, status: Arc<WorkerStatus>) {
    loop {
        let dead = async {
            match queues.shared_dead {
                true => Ok(None),
                false => ready(&channel, &queues.dead).await.map(Some),
            }
        };
        let jobs = async {
            Ok::<_, lapin::Error>(
                ready(&channel, &queues.jobs).await? + ready(&channel, &queues.urgent).await?,
            )
        };
        let (Ok(jobs), Ok(dead)) = (jobs.await, dead.await) else {
            tracing::debug!("cannot count the app's queues: sampling stops until the next session");
            return;
        };
        status.set_queue_counts(jobs, dead);
        let pause = if jobs > 0 || status.is_busy() {
            SAMPLE_QUEUES_EVERY
        } else {
            SAMPLE_IDLE_QUEUES_EVERY.mul_f64(rand::random_range(0.8..1.2))
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = status.woken.notified() => {}
        }
    }
}

/// Messages ready in `queue`, by a passive declare.
async fn ready(channel: &Channel, queue: &str) -> Result<u64, lapin::Error> {
    Ok(u64::from(broker::ready_count(channel, queue).await?))
}
