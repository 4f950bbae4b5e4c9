//! Tencent Cloud Chat's `send_broadcast_msg`, with no AMQP and no SQL: what a
//! call looks like, how it is signed and sent, and what its answer means.
//! (The local service that behaves as the documentation says is
//! [`crate::simulator`].)
//!
//! - [`body`]: the request body, a call's exact bytes, its size and `Random`.
//! - [`elements`]: the rules of the body's fields and message elements.
//! - [`envelope`]: many custom payloads in the one custom element a message may hold.
//! - [`usersig`]: signing and verifying the admin's UserSig v2.
//! - [`client`]: the HTTP call and its response.
//! - [`classify`]: what one answer means for the jobs of a call.

pub mod body;
pub mod classify;
pub mod client;
pub mod elements;
pub mod envelope;
pub mod usersig;
