//! A broker failure, in words for an operator: what every broker operation
//! (connecting, declaring the topology, publishing) answers when it fails.

/// A broker failure, said for an operator.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    // The lapin error is kept in the message, not as a source, so that the
    // broker's own words (which name a conflicting argument) print once.
    /// Every address of `AMQP_URL` was tried; each one's failure, by node.
    #[error("cannot connect to RabbitMQ at any address of AMQP_URL: {tried}")]
    Unreachable { tried: String },
    #[error("AMQP_URL is not an AMQP URL: {0}")]
    Url(String),
    #[error("cannot declare {what}: {detail}; if it exists with other arguments, delete it or use another BROADCAST_QUEUE_PREFIX")]
    Topology { what: String, detail: String },
    #[error("RabbitMQ channel failed: {0}")]
    Channel(lapin::Error),
    #[error("publish to {target} was not confirmed: {detail}")]
    NotConfirmed { target: String, detail: String },
}
