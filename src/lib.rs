//! broadcast-worker: a rate-limited RabbitMQ worker for Tencent Cloud Chat's
//! `send_broadcast_msg`.
//!
//! A map of the modules, one line each, from the floor up: a module
//! imports only modules above it in this list (`.ci/structure.py` checks
//! that no file imports, directly or not, one that imports it).
//! - [`clock`]: unix time, written once; imports nothing of the crate.
//! - [`text`]: text about producer input, cut to a bound with a marker.
//! - [`telemetry`]: metric names and descriptions, the Prometheus recorder; imports nothing of the crate.
//! - [`tencent`]: the external API, no AMQP, no SQL: body, element rules, UserSig, client, classification.
//! - [`simulator`]: a local `send_broadcast_msg`, a test double and the demo's engine.
//! - [`broker`]: RabbitMQ: topology, confirmed publishing, dead letters and their headers.
//! - [`ledger`]: the delivery record in PostgreSQL that makes delivery once.
//! - [`status`]: each app's worker as others see it: flags, recent flow, the board, the queue sampler.
//! - [`pipeline`]: the worker: deliveries in, calls out, each job settled.
//! - [`settings`]: an app's sending settings, from flags or an apps file, checked and applied once.
//! - [`fleet`]: one process serving many apps: the apps file, a worker per app, reloads, balancing.
//! - [`ops`]: what operators use above the worker: the dead-letter queue, `enqueue`, `jobs show`.
//! - [`console`]: the operator's web console and its JSON API: each app's flow, dead letters, replay, purge.
//! - [`ingest`]: the producers' HTTP endpoint: jobs posted, validated, published with confirms.
//! - [`ops_endpoint`]: `/metrics`, `/healthz`, `/readyz`, with the console's routes mounted.
//! - [`cli`]: the subcommands, their settings, and the life `run` shares with the fleet.

pub mod broker;
pub mod cli;
pub mod clock;
pub mod console;
pub mod fleet;
pub mod ingest;
pub mod ledger;
pub mod ops;
pub mod ops_endpoint;
pub mod pipeline;
pub mod settings;
pub mod simulator;
pub mod status;
pub mod telemetry;
pub mod tencent;
pub mod text;
