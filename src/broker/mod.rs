//! RabbitMQ: the connection, the topology (jobs queue, dead-letter exchange and
//! queue), and publishing with confirms: jobs (`enqueue`, replay) and dead
//! letters (the worker). Nothing here decides a job's fate; it carries it out.
//!
//! - this file: connecting, and the room a dead letter's properties have.
//! - `channel`: confirm channels, confirmed publishing, queue counts.
//! - [`nodes`]: the broker as a list of nodes, connected to in turn, TLS.
//! - `links`: a replica's few connections, shared by its apps.
//! - [`version`]: the broker's version, and the rules followed for it.
//! - `topology`: the queues and the exchange, their names and arguments.
//! - `retire`: an app's own dead-letter queue of the earlier layout, emptied
//!   into its fleet's.
//! - `dead_letter`: the header names, dead-letter reasons, a dead letter's properties.
//! - `header_values`: a header's value read however the producer typed it.
//! - [`frame`]: what fits in the broker's frame.
//! - `error`: [`BrokerError`], a broker failure in words for an operator.

mod channel;
mod dead_letter;
mod error;
pub mod frame;
mod header_values;
mod links;
pub mod nodes;
mod retire;
mod topology;
pub mod version;

pub use channel::{check_confirmation, confirm_channel, inspect, publish_confirmed, ready_count};
pub use dead_letter::{headers, DeadLetter, DeadReason};
pub use error::BrokerError;
pub use header_values::{header_i64, header_str, header_time_ms};
pub use links::{Link, Links, FLEET_CONNECTIONS};
pub use nodes::{Connected, Nodes};
pub use retire::retire_own_dead;
pub use topology::{DeadQueue, DeadRoute, QueueNames, Topology, DEAD_DELIVERY_LIMIT};

use lapin::Connection;

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
