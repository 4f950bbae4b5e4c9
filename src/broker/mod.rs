//! RabbitMQ: the connection, the topology (jobs queue, dead-letter exchange and
//! queue), and publishing with confirms: jobs (`enqueue`, replay) and dead
//! letters (the worker). Nothing here decides a job's fate; it carries it out.
//!
//! - this file: confirm channels, confirmed publishing, queue counts.
//! - [`nodes`]: the broker as a list of nodes, connected to in turn, TLS.
//! - `links`: a replica's few connections, shared by its apps.
//! - [`version`]: the broker's version, and the rules followed for it.
//! - `topology`: the queues and the exchange, their names and arguments.
//! - `dead_letter`: the header names, dead-letter reasons, a dead letter's properties.
//! - `header_values`: a header's value read however the producer typed it.
//! - [`frame`]: what fits in the broker's frame.
//! - `error`: [`BrokerError`], a broker failure in words for an operator.

mod dead_letter;
mod error;
pub mod frame;
mod header_values;
mod links;
pub mod nodes;
mod topology;
pub mod version;

pub use dead_letter::{headers, DeadLetter, DeadReason};
pub use error::BrokerError;
pub use header_values::{header_i64, header_str, header_time_ms};
pub use links::{Link, Links, FLEET_CONNECTIONS};
pub use nodes::{Connected, Nodes};
pub use topology::{QueueNames, Topology, DEAD_DELIVERY_LIMIT};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};

/// Connects to the first node of `urls` (one AMQP URI, or several
/// comma-separated) that answers, naming the connection so operators see
/// who it is. The frame size is the broker's own (unless a URI lowers it
/// with `?frame_max=`): whatever a producer published arrived in a frame
/// within it, so every delivery can be taken in (see [`frame`]).
pub async fn connect(urls: &str, name: &str) -> Result<Connection, BrokerError> {
    Ok(Nodes::parse(urls)?.connect(name).await?.connection)
}

/// The room a dead letter's properties have on `connection`.
pub fn properties_room(connection: &Connection) -> usize {
    frame::properties_room(connection.configuration().frame_max())
}

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
