//! Retiring an app's own dead-letter queue of the layout before a fleet's
//! apps shared one (`{fleet}.{app}.dead`): unbound from the app's
//! dead-letter exchange so nothing new lands there, its dead letters moved
//! into the fleet's queue (each published with confirms under the app's
//! jobs queue name, then acked, so a stop at any point loses nothing: at
//! worst one is in both queues, with the same id), and the queue deleted
//! once found empty and unused. Runs with the app's first declare in each process, and is
//! one passive declare when there is nothing to retire.

use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use std::time::Duration;

use lapin::{Channel, Connection, Queue};
use tracing::{info, warn};

use super::channel::{inspect, publish_confirmed};
use super::error::BrokerError;
use super::topology::QueueNames;

/// Empties the app's own dead-letter queue into the fleet's, if it has one.
/// Returns how many dead letters were moved.
pub async fn retire_own_dead(
    connection: &Connection,
    names: &QueueNames,
) -> Result<usize, BrokerError> {
    let Some(own) = names.own_dead() else {
        return Ok(0);
    };
    // Nearly always there is none: one passive declare says so (and closes
    // the channel), and only then is the channel put in confirm mode.
    let channel = connection
        .create_channel()
        .await
        .map_err(BrokerError::Channel)?;
    let waiting = match inspect(&channel, &own).await {
        Ok(queue) => queue.message_count(),
        Err(e) if is_not_found(&e) => return Ok(0),
        Err(e) => return Err(BrokerError::Channel(e)),
    };
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(BrokerError::Channel)?;
    channel
        .queue_unbind(
            own.as_str().into(),
            names.dlx.as_str().into(),
            "".into(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::Channel)?;
    let moved = move_into_fleets(&channel, &own, names, waiting).await?;
    // A quorum queue counts a channel that has read it with basic.get as a
    // consumer until it closes: the check is made on a fresh one.
    let _ = channel.close(200, "moved".into()).await;
    let channel = connection
        .create_channel()
        .await
        .map_err(BrokerError::Channel)?;
    let left = settled(&channel, &own).await?;
    if left.message_count() > 0 || left.consumer_count() > 0 {
        warn!(
            queue = %own,
            moved,
            into = %names.dead,
            left = left.message_count(),
            consumers = left.consumer_count(),
            "dead letters moved into the fleet's queue, but the app's own queue is not empty or \
             in use (a replica of an earlier version?): left as it is, emptied again at the next start"
        );
        let _ = channel.close(200, "retired".into()).await;
        return Ok(moved as usize);
    }
    channel
        .queue_delete(own.as_str().into(), QueueDeleteOptions::default())
        .await
        .map_err(BrokerError::Channel)?;
    info!(queue = %own, moved, into = %names.dead, "dead letters moved into the fleet's queue; the app's own queue deleted");
    let _ = channel.close(200, "retired".into()).await;
    Ok(moved as usize)
}

/// Moves the first `waiting` dead letters of `own` (no more than were there:
/// a replica of an earlier version may bind the queue again meanwhile, and
/// what it routes there waits for the next start) into the fleet's queue.
async fn move_into_fleets(
    channel: &Channel,
    own: &str,
    names: &QueueNames,
    waiting: u32,
) -> Result<u32, BrokerError> {
    let mut moved = 0;
    while moved < waiting {
        let Some(message) = channel
            .basic_get(own.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(BrokerError::Channel)?
        else {
            break;
        };
        let delivery = message.delivery;
        publish_confirmed(
            channel,
            &names.dlx,
            &names.jobs,
            &delivery.data,
            delivery.properties.clone(),
        )
        .await?;
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(BrokerError::Channel)?;
        moved += 1;
    }
    // Deleted only when empty and unused, as checked just before: quorum
    // queues refuse `if-empty` and `if-unused` with a connection error, which
    // would end every app's session on the connection.
    Ok(moved)
}

/// The queue's counts once the acks and the reading channel's close have
/// reached them (a quorum queue counts both asynchronously), or as they are
/// after a second.
async fn settled(channel: &Channel, queue: &str) -> Result<Queue, BrokerError> {
    let mut tries = 0;
    loop {
        let queue = inspect(channel, queue)
            .await
            .map_err(BrokerError::Channel)?;
        tries += 1;
        if (queue.message_count() == 0 && queue.consumer_count() == 0) || tries == 20 {
            return Ok(queue);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
        if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}
