//! Spreading the apps' senders over the replicas. Which replica sends for an
//! app is the broker's decision: every replica consumes every app's queue,
//! and single active consumer makes one of them active. Balancing only ever
//! gives an app up: a replica active for more than its fair share releases
//! the excess (its session for the app winds down and consumes again,
//! behind the others), and the broker hands each released queue to the next
//! replica in line. The number of replicas up is the number of consumers on
//! a presence queue every replica consumes from.

use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tracing::warn;

use crate::broker::{Link, Links};

/// The most apps one replica should send for: every app shared out, rounded up.
pub fn fair_share(apps: usize, replicas: usize) -> usize {
    apps.div_ceil(replicas.max(1))
}

/// Which of the apps this replica is active for to give up, and how many:
/// those beyond the fair share, the highest SDKAppIDs first (so replicas
/// agree, and long-held apps stay put).
pub fn to_release(mut active: Vec<u64>, apps: usize, replicas: usize) -> Vec<u64> {
    let share = fair_share(apps, replicas);
    active.sort_unstable();
    let excess = active.len().saturating_sub(share);
    active.split_off(active.len() - excess)
}

/// Counts the replicas up: each consumes from `{prefix}.replicas`, a
/// non-durable queue that never holds a message.
pub struct Presence {
    links: Links,
    queue: String,
    /// The connection, and the channel and consumer that are this replica's
    /// presence for as long as they are held.
    joined: Option<(Link, Channel, Consumer)>,
}

impl Presence {
    /// Presence on the first of the replica's shared connections.
    pub fn new(links: Links, prefix: &str) -> Self {
        Self {
            links,
            queue: format!("{prefix}.replicas"),
            joined: None,
        }
    }

    /// Replicas consuming now (this one included), or `None` while the
    /// broker cannot say (the next call reconnects).
    pub async fn replicas(&mut self) -> Option<usize> {
        match self.count().await {
            Ok(n) => Some(n),
            Err(e) => {
                warn!(error = %e, queue = %self.queue, "cannot count the replicas: not balancing for now");
                if let Some((_, channel, _)) = self.joined.take() {
                    let _ = channel.close(200, "presence lost".into()).await;
                }
                None
            }
        }
    }

    async fn count(&mut self) -> Result<usize, String> {
        if self
            .joined
            .as_ref()
            .is_none_or(|(link, channel, _)| link.is_lost() || !channel.status().connected())
        {
            self.joined = Some(self.join().await?);
        }
        let (link, _, _) = self.joined.as_ref().expect("joined above");
        let channel = link
            .connection()
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        let queue = channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let _ = channel.close(200, "counted".into()).await;
        Ok(queue.consumer_count() as usize)
    }

    /// Connects, declares the presence queue and consumes from it.
    async fn join(&self) -> Result<(Link, Channel, Consumer), String> {
        let link = self.links.link(0).await.map_err(|e| e.to_string())?;
        let channel = link
            .connection()
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok((link, channel, consumer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fair_share_rounds_up() {
        assert_eq!(fair_share(6, 3), 2);
        assert_eq!(fair_share(7, 3), 3);
        assert_eq!(fair_share(100, 2), 50);
        assert_eq!(fair_share(5, 0), 5, "no count: every app");
        assert_eq!(fair_share(0, 2), 0);
    }

    #[test]
    fn only_the_excess_is_released_highest_first() {
        assert_eq!(to_release(vec![3, 1, 6, 2, 5, 4], 6, 3), vec![3, 4, 5, 6]);
        assert_eq!(to_release(vec![1, 2], 6, 3), Vec::<u64>::new());
        assert_eq!(to_release(vec![1, 2, 3], 6, 1), Vec::<u64>::new());
        // Six apps, two replicas, one active for all: it keeps three.
        assert_eq!(to_release((1..=6).collect(), 6, 2), vec![4, 5, 6]);
    }
}
