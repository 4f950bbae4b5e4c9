//! How a broker session ends, or why a step of it cannot go on.

use crate::broker::BrokerError;

use super::book::BookEnd;

#[derive(Debug)]
pub enum SessionEnd {
    /// The session's stop token fired: a shutdown, or the app released to
    /// the next replica. The worker's run loop tells which from its own
    /// shutdown token.
    Stopped,
    /// The broker went, or refused a step.
    Broker(String),
    /// The book says a later session owns a call this one held: the broker
    /// has handed the queue on, whether or not this connection noticed.
    Superseded { call: i64 },
}

impl From<BrokerError> for SessionEnd {
    fn from(e: BrokerError) -> Self {
        SessionEnd::Broker(e.to_string())
    }
}

impl From<BookEnd> for SessionEnd {
    fn from(end: BookEnd) -> Self {
        match end {
            BookEnd::Stopped => SessionEnd::Stopped,
            BookEnd::Superseded { call } => SessionEnd::Superseded { call },
        }
    }
}
