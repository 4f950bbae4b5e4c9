//! A local `send_broadcast_msg` that behaves as the documentation describes,
//! for tests, benchmarks and demos: the same checks in the same order, the
//! frequency limit, the 5-minute repeat filter (under either reading of the
//! documentation, see [`RepeatBy`]), increasing `MsgSeq`, plus endpoints of
//! its own to read what it delivered and to inject faults.
//!
//! Its own endpoints live under `/simulator/`:
//! - `GET /simulator/stats`: counters (see [`Stats`]).
//! - `GET /simulator/deliveries?after=SEQ&limit=N`: delivered bodies, by `MsgSeq`.
//! - `GET /simulator/calls`: the most recent calls (see [`CallRecord`]).
//! - `POST /simulator/faults` with a [`FaultPlan`]; `DELETE /simulator/faults` clears it.
//! - `POST /simulator/reset`: forget deliveries, repeats and counters.
//!
//! Several apps can share one listener ([`SimulatorSet`]): calls go to the
//! app their `sdkappid` names, and the endpoints above take `?sdkappid=` to
//! say which app they are about.
//!
//! A test double of the service and the demo's engine, outside `tencent`
//! (which the worker ships with); it uses `tencent`'s rules to check calls.
//!
//! - `app`: the [`Simulator`] handle (one app) and its [`SimulatorConfig`].
//! - `checks`: the service's checks for one call, in order.
//! - `state`: what an app remembers: counters, deliveries, repeats, calls.
//! - `faults`: fault plans to inject.
//! - `set`: several apps ([`SimulatorSet`]) and the one a request is for.
//! - `routes`: the HTTP routes and how answers are written.
//! - `serve`: serving a simulator or a set, or spawning one in the background.

mod app;
mod checks;
mod faults;
mod routes;
mod serve;
mod set;
mod state;

pub use app::{RepeatBy, Simulator, SimulatorConfig};
pub use faults::{DropPoint, Fault, FaultPlan, FaultRule};
pub use serve::{SpawnedSimulator, SpawnedSimulatorSet};
pub use set::{SimulatorSet, SimulatorSetError};
pub use state::{CallRecord, Delivery, Stats, CALL_LOG_LEN};
