//! RabbitMQ: the connection, the topology (jobs queue, dead-letter exchange and
//! queue), and publishing with confirms: jobs (`enqueue`, replay) and dead
//! letters (the worker). Nothing here decides a job's fate; it carries it out.

mod dead_letter;
mod topology;

pub use dead_letter::{headers, DeadLetter, DeadReason};
pub use topology::{QueueNames, Topology, DEAD_DELIVERY_LIMIT};

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

/// A broker failure, said for an operator.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    // The lapin error is kept in the message, not as a source, so that the
    // broker's own words (which name a conflicting argument) print once.
    #[error("cannot connect to RabbitMQ: {0}")]
    Connect(lapin::Error),
    #[error("AMQP_URL is not an AMQP URL: {0}")]
    Url(String),
    #[error("cannot declare {what}: {detail}; if it exists with other arguments, delete it or use another BROADCAST_QUEUE_PREFIX")]
    Topology { what: String, detail: String },
    #[error("RabbitMQ channel failed: {0}")]
    Channel(lapin::Error),
    #[error("publish to {target} was not confirmed: {detail}")]
    NotConfirmed { target: String, detail: String },
}

/// Connects, naming the connection so operators see who it is.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties)
        .await
        .map_err(BrokerError::Connect)
}

/// The same, for a long-lived connection that carries little at a time (an
/// app's consumer and its dead letters, the fleet's presence): it asks for
/// [`SMALL_FRAME_MAX`] unless the URL sets `?frame_max=`. The client keeps
/// two buffers of 32 frames per connection, so the broker's 128 KiB would
/// cost 8 MiB a connection, and a fleet has one per app. Bulk publishers
/// (`enqueue`, `dlq replay`) keep the broker's size.
pub async fn connect_lean(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let mut uri: lapin::uri::AMQPUri = url.parse().map_err(BrokerError::Url)?;
    uri.query.frame_max = uri.query.frame_max.or(Some(SMALL_FRAME_MAX));
    Connection::connect_uri(uri, properties)
        .await
        .map_err(BrokerError::Connect)
}

/// A whole call body (12,000 bytes) and its dead letter still fit in one frame.
pub const SMALL_FRAME_MAX: u32 = 16_384;

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

/// Reads an integer header however the producer typed it. Every time header
/// here is in unix milliseconds, so an AMQP timestamp (seconds) is scaled.
pub fn header_i64(properties: &BasicProperties, name: &str) -> Option<i64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok().map(|s| s * 1000),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).trim().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

/// Reads a string header.
pub fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// Messages ready in `queue` (not those held unacked), by a passive declare.
pub async fn ready_count(channel: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(declared.message_count())
}

pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
