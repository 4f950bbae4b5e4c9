//! What fits in one AMQP frame. A message's properties travel in one content
//! header frame, which may not be split: a publish whose properties overflow
//! the negotiated `frame_max` closes the publisher's connection, and a
//! delivery whose properties overflow the consumer's closes the consumer's.
//! So every connection takes the broker's own `frame_max` (whatever a
//! producer published arrived within it), and what the worker writes keeps
//! below it: reasons cut to [`MAX_HEADER_TEXT`] (by [`crate::text`]), and
//! a dead letter's properties fitted to [`properties_room`].

use lapin::protocol::basic::gen_properties;
use lapin::BasicProperties;

/// A content header frame's bytes besides the properties: the frame's type,
/// channel and size (7), its end octet (1), class, weight and body size (12).
const HEADER_FRAME_OVERHEAD: usize = 20;

/// What the broker may add to a message's properties after it was published:
/// `x-delivery-count` when it is delivered again, `x-death` when the broker
/// dead-letters it. A dead letter the worker writes leaves this much room,
/// so that every client can still read it when the broker has added them.
pub const BROKER_ADDS: usize = 4096;

/// The longest text the worker writes in one header (a reason, the
/// service's ErrorInfo); longer text is cut with a marker ([`crate::text::cut_text`]).
pub const MAX_HEADER_TEXT: usize = 1024;

/// The bytes `properties` take in a content header frame.
pub fn properties_bytes(properties: &BasicProperties) -> usize {
    cookie_factory::gen_simple(gen_properties(properties), Vec::new())
        .map(|bytes| bytes.len())
        // Serializing to memory cannot fail but for a short string over 255
        // bytes, which `ShortString` never holds: count it as too large.
        .unwrap_or(usize::MAX)
}

/// The room for a dead letter's properties on a connection that negotiated
/// `frame_max`: the frame, less its overhead and what the broker may add.
/// (On a broker configured with a small frame, the margin is a quarter of it.)
pub fn properties_room(frame_max: u32) -> usize {
    let payload = usize::try_from(frame_max)
        .unwrap_or(usize::MAX)
        .saturating_sub(HEADER_FRAME_OVERHEAD);
    payload - BROKER_ADDS.min(payload / 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldTable, LongString};

    #[test]
    fn properties_are_measured_as_encoded() {
        let empty = BasicProperties::default();
        assert_eq!(properties_bytes(&empty), 2, "the flags alone");
        let with_id = BasicProperties::default().with_message_id("abc".into());
        assert_eq!(properties_bytes(&with_id), 2 + 1 + 3);
        let mut table = FieldTable::default();
        table.insert(
            "x-pad".into(),
            AMQPValue::LongString(LongString::from("p".repeat(17_000))),
        );
        let padded = BasicProperties::default().with_headers(table);
        // Flags, the table's length, the key (1 + 5), the type and length
        // of the value (1 + 4), the value.
        assert_eq!(properties_bytes(&padded), 2 + 4 + 6 + 5 + 17_000);
    }

    #[test]
    fn room_keeps_clear_of_the_frame_and_of_what_the_broker_adds() {
        assert_eq!(properties_room(131_072), 131_072 - 20 - BROKER_ADDS);
        assert_eq!(properties_room(4096), 4076 - 1019);
    }
}
