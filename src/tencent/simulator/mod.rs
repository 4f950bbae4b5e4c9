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
//! This module owns the [`Simulator`] handle (one app), its configuration
//! and serving; `set` holds several apps and picks the one a request is for,
//! `checks` the service's checks for one call, `state` what it remembers,
//! `faults` fault injection, and `routes` the HTTP side.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use crate::tencent::body::MAX_BODY_BYTES;
use crate::tencent::usersig::SecretKey;

mod checks;
mod faults;
mod routes;
mod set;
mod state;

pub use faults::{DropPoint, Fault, FaultPlan, FaultRule};
pub use set::{SimulatorSet, SimulatorSetError, SpawnedSimulatorSet};
pub use state::{CallRecord, Delivery, Stats, CALL_LOG_LEN};

use state::ServiceState;

/// What makes a call a repeat of one delivered within the repeat window. The
/// documentation says both: its text says the same content and `Random`, an
/// example's comment says the same `Random` alone marks the same message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RepeatBy {
    /// The same sender, elements, `CloudCustomData` and `Random`.
    #[default]
    ContentAndRandom,
    /// The same `Random`, whatever the content: the stricter reading.
    Random,
}

/// The one app the simulator hosts.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    pub sdkappid: u64,
    /// The app admin: the only identifier allowed to broadcast.
    pub identifier: String,
    pub secret_key: SecretKey,
    /// Calls per second: at most `floor(rate)` accepted calls in any one-second
    /// window; below 1, one call in any `1/rate`-second window.
    pub rate: f64,
    pub max_body_bytes: usize,
    /// A call that repeats a delivery within this window (by `repeat_by`) is
    /// answered OK with that delivery's `MsgSeq` and not delivered again.
    pub repeat_window: Duration,
    pub repeat_by: RepeatBy,
    /// When set, a `From_Account` outside it answers 70107 (account not imported).
    pub known_accounts: Option<HashSet<String>>,
    /// Keep each delivered body for `/simulator/deliveries` (off for long benchmarks).
    pub keep_bodies: bool,
}

impl SimulatorConfig {
    pub fn new(sdkappid: u64, identifier: impl Into<String>, secret_key: SecretKey) -> Self {
        Self {
            sdkappid,
            identifier: identifier.into(),
            secret_key,
            rate: 1.0,
            max_body_bytes: MAX_BODY_BYTES,
            repeat_window: Duration::from_secs(300),
            repeat_by: RepeatBy::ContentAndRandom,
            known_accounts: None,
            keep_bodies: true,
        }
    }
}

/// The simulator's shared state. Cheap to clone; every clone sees the same app.
#[derive(Clone)]
pub struct Simulator {
    config: Arc<SimulatorConfig>,
    state: Arc<Mutex<ServiceState>>,
}

impl Simulator {
    pub fn new(config: SimulatorConfig) -> Self {
        Self {
            config: Arc::new(config),
            state: Arc::new(Mutex::new(ServiceState::new())),
        }
    }

    /// The SDKAppID of the app this simulator hosts.
    pub fn sdkappid(&self) -> u64 {
        self.config.sdkappid
    }

    fn lock(&self) -> MutexGuard<'_, ServiceState> {
        // A panic while holding the lock leaves plain counters behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Deliveries with `MsgSeq` above `after`, at most `limit`.
    pub fn deliveries(&self, after: u64, limit: usize) -> Vec<Delivery> {
        let state = self.lock();
        // MsgSeq starts at 1 and increases by one per delivery, so it indexes.
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(state.deliveries.len());
        state.deliveries[start..]
            .iter()
            .take(limit)
            .cloned()
            .collect()
    }

    /// The most recent calls, oldest first.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.lock().calls.iter().cloned().collect()
    }

    pub fn set_faults(&self, plan: FaultPlan) {
        self.lock().faults = plan;
    }

    pub fn reset(&self) {
        *self.lock() = ServiceState::new();
    }

    /// The HTTP routes: the API path, other `/v4/` paths, and `/simulator/*`.
    pub fn router(&self) -> Router {
        SimulatorSet::from(self.clone()).router()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        SimulatorSet::from(self).serve(listener, shutdown).await
    }

    /// Binds `addr` (port 0 for any) and serves in the background until the
    /// returned handle is dropped. For tests and benchmarks: it runs on a
    /// thread and runtime of its own (see `spawn_router`).
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<SpawnedSimulator> {
        let (addr, stop) = spawn_router(self.router(), addr)?;
        Ok(SpawnedSimulator {
            simulator: self,
            addr,
            _stop: stop,
        })
    }
}

/// Binds `addr` and serves `router` until the returned sender is dropped. It
/// runs on a thread and runtime of its own, as a separate server would, so
/// its clock (the frequency limit) does not wait on the caller's tasks.
fn spawn_router(
    router: Router,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("simulator")
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("simulator".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
        })?;
    Ok((addr, stop))
}

/// A simulator serving in the background; stops when dropped.
pub struct SpawnedSimulator {
    pub simulator: Simulator,
    pub addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl SpawnedSimulator {
    /// The base URL to give the client.
    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).expect("a socket address makes a URL")
    }
}
