//! A channel's plain uses: confirm mode, a publish that waits for its
//! confirm, and what a passive declare says of a queue.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::error::BrokerError;

/// A channel in confirm mode.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(BrokerError::Channel)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(BrokerError::Channel)?;
    Ok(channel)
}

/// Publishes with `mandatory` and waits for the broker's confirm; a nack or a
/// return (nothing bound to take it) is an error.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    let target = if exchange.is_empty() {
        routing_key
    } else {
        exchange
    };
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await
        .map_err(BrokerError::Channel)?
        .await
        .map_err(BrokerError::Channel)?;
    check_confirmation(target, confirm)
}

/// A confirm is good only if it is an ack of a message that was not returned.
pub fn check_confirmation(target: &str, confirm: Confirmation) -> Result<(), BrokerError> {
    let not_confirmed = |detail: String| BrokerError::NotConfirmed {
        target: target.to_string(),
        detail,
    };
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(not_confirmed(format!(
            "returned as unroutable ({} {})",
            returned.reply_code, returned.reply_text
        ))),
        Confirmation::Nack(_) => Err(not_confirmed("nacked by the broker".into())),
        Confirmation::NotRequested => {
            Err(not_confirmed("the channel is not in confirm mode".into()))
        }
    }
}

/// What the broker says of `queue` (its ready messages and consumers), by
/// a passive declare; a missing queue closes the channel with a 404.
pub async fn inspect(channel: &Channel, queue: &str) -> Result<lapin::Queue, lapin::Error> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Messages ready in `queue` (not those held unacked), by a passive declare.
pub async fn ready_count(channel: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    Ok(inspect(channel, queue).await?.message_count())
}
