//! The baton: a message in each app's jobs queue that the app's active
//! consumer holds unacked for as long as it is active, so that a replica
//! knows it is the app's sender even while the queue is idle (its status,
//! `broadcast_app_active`, the console and balancing are then right).
//!
//! Single active consumer does the rest: whenever the holder's session ends
//! (a release, a shutdown, a crash, a lost connection) its channel closes,
//! the broker returns the baton, and the next replica in line (now active)
//! receives it (when a session stops rather than dies, it acks the baton
//! and publishes a fresh one for the next consumer, if there is one, so
//! that no baton is left in a queue nobody consumes). Every session
//! publishes one at its first quiet moment with no message ready in the
//! queue, so that it never waits behind a backlog, nor stays in a queue
//! whose session stopped before reaching it (the holder acks any beyond the
//! one it holds, so there is one in all, give or take those on their way);
//! a baton that comes back redelivered is acked
//! and replaced by a fresh one, so its delivery count never nears the
//! queue's delivery limit. A baton is never a job: it is not decoded,
//! counted, recorded or dead-lettered.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::message::Delivery;
use tokio::time::Instant;

use lapin::options::BasicAckOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties, Channel};

use crate::broker::{self, BrokerError};

/// The header that marks a baton (its value is the replica's process id,
/// for operators reading a queue).
pub const BATON_HEADER: &str = "x-broadcast-baton";

/// Whether a delivery is a baton: an empty body with [`BATON_HEADER`]
/// (a producer's message with that header and a body is a job as any other).
pub fn is_baton(delivery: &Delivery) -> bool {
    delivery.data.is_empty()
        && delivery
            .properties
            .headers()
            .as_ref()
            .is_some_and(|h| h.inner().contains_key(BATON_HEADER))
}

/// Publishes a baton to `queue`, confirmed.
pub async fn publish(channel: &Channel, queue: &str) -> Result<(), BrokerError> {
    let mut headers = FieldTable::default();
    headers.insert(
        BATON_HEADER.into(),
        AMQPValue::LongString(std::process::id().to_string().into()),
    );
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    broker::publish_confirmed(channel, "", queue, b"", properties).await
}

/// How long a session waits without a delivery before it offers its baton.
pub const QUIET: Duration = Duration::from_secs(1);
/// The longest wait between two offers while the queue holds a backlog.
const QUIET_AT_MOST: Duration = Duration::from_secs(60);

/// When a session offers its baton: [`QUIET`] after its last delivery, then
/// ever less often while messages stay ready in the queue, and never again
/// once published.
#[derive(Debug)]
pub struct Offer {
    wait: Duration,
    due: Option<Instant>,
}

impl Offer {
    /// A session that can hold a baton offers one.
    fn new(can_hold: bool) -> Self {
        Self {
            wait: QUIET,
            due: can_hold.then(|| Instant::now() + QUIET),
        }
    }

    /// When the next offer is due; `None` once the baton is published.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// A delivery arrived: the queue is not quiet yet.
    pub fn delivered(&mut self) {
        if self.due.is_some() {
            self.due = Some(Instant::now() + self.wait);
        }
    }

    /// The offer was made: `published`, or not (messages were ready), so
    /// wait twice as long before the next.
    pub fn made(&mut self, published: bool) {
        if published {
            self.due = None;
        } else {
            self.wait = (self.wait * 2).min(QUIET_AT_MOST);
            self.due = Some(Instant::now() + self.wait);
        }
    }
}

/// Publishes a baton to `queue` when no message is ready there (so that it
/// is the next delivery, not one behind a backlog); whether it did.
pub async fn offer(channel: &Channel, queue: &str) -> Result<bool, BrokerError> {
    let ready = broker::ready_count(channel, queue)
        .await
        .map_err(BrokerError::Channel)?;
    if ready > 0 {
        return Ok(false);
    }
    publish(channel, queue).await?;
    Ok(true)
}

/// What a session does with the batons it receives. Shared by the
/// session's consumer task (which receives them) and its wind-down (which
/// passes the one held on).
#[derive(Clone)]
pub struct Baton {
    /// The one held, unacked, while this session is active.
    held: Arc<Mutex<Option<Acker>>>,
    /// Whether holding one leaves room for jobs (a prefetch of one would
    /// give it all).
    can_hold: bool,
}

impl Baton {
    pub fn new(prefetch: u16) -> Self {
        Self {
            held: Arc::default(),
            can_hold: prefetch >= 2,
        }
    }

    /// Whether another consumer than this session's stands by on `queue`,
    /// asked while this session still consumes (a quorum queue may count
    /// a consumer just cancelled for a moment longer). `None` when this
    /// session holds no baton, so there is nothing to pass on.
    pub async fn others_waiting(&self, channel: &Channel, queue: &str) -> Option<bool> {
        if !self.holds() {
            return None;
        }
        let declared = broker::inspect(channel, queue).await.ok()?;
        tracing::debug!(consumers = declared.consumer_count(), %queue, "passing the baton on");
        Some(declared.consumer_count() > 1)
    }

    /// The session stopped (its consumer cancelled): the baton goes to the
    /// replica next in line when one stands by; with none, none is left
    /// behind (the next session to start publishes one).
    pub async fn pass_on(
        &self,
        channel: &Channel,
        queue: &str,
        others_waiting: bool,
    ) -> Result<(), BrokerError> {
        let Some(held) = self.take() else {
            return Ok(());
        };
        if others_waiting {
            publish(channel, queue).await?;
        }
        held.ack(BasicAckOptions::default())
            .await
            .map_err(BrokerError::Channel)?;
        Ok(())
    }

    /// When this session offers its baton (never with a prefetch of one).
    pub fn offers(&self) -> Offer {
        Offer::new(self.can_hold)
    }

    fn take(&self) -> Option<Acker> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    fn holds(&self) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some()
    }

    /// A baton arrived: this session is the app's active consumer. Holds
    /// it, or acks it (a spare, or a redelivered one, then replaced).
    pub async fn receive(
        &self,
        delivery: Delivery,
        channel: &Channel,
        queue: &str,
    ) -> Result<(), BrokerError> {
        if !self.holds() && self.can_hold {
            if !delivery.redelivered {
                *self
                    .held
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(delivery.acker);
                return Ok(());
            }
            publish(channel, queue).await?;
        }
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(BrokerError::Channel)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_offer_waits_for_quiet_backs_off_while_messages_are_ready_and_ends_once_published() {
        let start = Instant::now();
        assert!(
            Offer::new(false).due().is_none(),
            "a prefetch of one offers none"
        );
        let mut offer = Offer::new(true);
        assert_eq!(offer.due(), Some(start + QUIET));
        tokio::time::advance(Duration::from_millis(700)).await;
        offer.delivered();
        assert_eq!(
            offer.due(),
            Some(start + Duration::from_millis(700) + QUIET)
        );
        let mut waits = Vec::new();
        for _ in 0..8 {
            let before = Instant::now();
            offer.made(false);
            waits.push((offer.due().unwrap() - before).as_secs());
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        offer.made(true);
        offer.delivered();
        assert_eq!(offer.due(), None, "published: never offered again");
    }
}
