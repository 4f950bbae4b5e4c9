//! broadcast-worker: a rate-limited RabbitMQ worker for Tencent Cloud Chat's
//! `send_broadcast_msg`.
//!
//! A map of the modules, in the order data flows:
//! - [`message`]: the request body and the rules of its message elements.
//! - [`usersig`]: signing and verifying the admin's UserSig v2.
//! - [`api`]: the HTTP call, its response, and the client.
//! - [`outcome`]: what an answer means for the jobs of a call.
//! - [`simulator`]: a local `send_broadcast_msg` for tests, benchmarks and demos.
//! - [`config`]: settings shared by the commands; secrets stay hidden.
//! - [`cli`]: the subcommands.

pub mod api;
pub mod broker;
pub mod cli;
pub mod config;
pub mod dlq;
pub mod enqueue;
pub mod job;
pub mod ledger;
pub mod limit;
pub mod merge;
pub mod message;
pub mod outcome;
pub mod simulator;
pub mod telemetry;
pub mod usersig;
pub mod worker;
