//! broadcast-worker: a rate-limited RabbitMQ worker for Tencent Cloud Chat's
//! `send_broadcast_msg`.
//!
//! A map of the modules, in the order data flows:
//! - [`tencent`]: the external API, with no AMQP and no SQL: the request body
//!   and its element rules, the UserSig, the HTTP client, the classification
//!   of answers, and a local simulator of the service.
//! - [`broker`]: RabbitMQ: topology, publishing with confirms, dead letters and
//!   the header names they carry.
//! - [`ledger`]: the delivery record in PostgreSQL that makes delivery once.
//! - [`pipeline`]: the worker: deliveries in, calls out, each job settled.
//! - [`ops`]: what operators use: telemetry and status, the dead-letter queue,
//!   `enqueue`, `jobs show`.
//! - [`console`]: the operator's web console and its JSON API on the ops
//!   endpoint: each app's flow, its dead letters, replay and purge.
//! - [`fleet`]: one process serving many apps: the apps file, a worker per
//!   app, reloads, and the active senders spread over the replicas.
//! - [`cli`]: the subcommands and their settings.
//! - [`text`]: text about producer input, cut to a bound with a marker.

pub mod broker;
pub mod cli;
pub mod console;
pub mod fleet;
pub mod ledger;
pub mod ops;
pub mod pipeline;
pub mod settings;
pub mod tencent;
pub mod text;
