//! The harness shared by broadcast-worker's integration tests and benchmarks.
//! Tests and benches `use testkit::*;`.
//!
//! - [`harness`]: a test app (its own queues and simulator, a worker to start
//!   and stop), publishing, waiting, and reading dead letters.
//! - [`console`]: an app with dead letters of several reasons, and the
//!   worker binary serving it with the console on.
//! - [`fleet`]: several apps under one prefix, an apps file, and replicas
//!   running `run --apps-file`.
//! - [`cluster`]: a RabbitMQ cluster of private nodes, killed and restarted at will.
//! - [`proxy`]: a TCP proxy that cuts, refuses, stalls or slows connections.
//! - [`browser`]: a headless Chromium (chromedriver) and screenshots.
//! - [`database`]: a PostgreSQL database of the test's own.
//! - [`postgres_node`]: a private PostgreSQL server that accepts TLS only.
//! - [`process`]: the worker binary as a child process, signals, and its
//!   resource use.
//! - [`tls`]: a test CA and the server and client certificates it signs.
//! - [`report`]: the benchmark report written into BENCHMARKS.md.
//!
//! RabbitMQ (127.0.0.1:5672, guest/guest) and PostgreSQL (127.0.0.1:5432,
//! user postgres, trust auth) are expected; a test that needs one panics with
//! a message saying so when it is unreachable.

pub mod browser;
pub mod cluster;
pub mod console;
pub mod database;
pub mod fleet;
pub mod harness;
pub mod postgres_node;
pub mod process;
pub mod proxy;
pub mod report;
pub mod tls;

pub use browser::*;
pub use cluster::*;
pub use console::*;
pub use database::*;
pub use fleet::*;
pub use harness::*;
pub use postgres_node::*;
pub use process::*;
pub use proxy::*;
pub use report::*;
pub use tls::*;
