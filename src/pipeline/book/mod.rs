//! The book: what the worker remembers about jobs and calls, behind one
//! trait with two keepers. [`Ledgered`] keeps it in PostgreSQL (the ledger),
//! fenced by the session that is the app's sender: each job is delivered
//! once across kills, replicas and restarts. [`InMemory`] keeps only the
//! `Random`s used lately: delivery is at least once. The rest of the worker
//! asks the book and never which one it is.
//!
//! Every write that settles a call is fenced: a [`BookEnd::Superseded`]
//! answer means a later session owns the call, and this one must stop.

mod api;
mod in_memory;
mod ledgered;

pub use api::{Book, BookEnd, Claim, Lookup};
pub use in_memory::InMemory;
pub use ledgered::Ledgered;
