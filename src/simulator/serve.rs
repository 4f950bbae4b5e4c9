//! Serving simulated apps over HTTP: a [`Simulator`] or a [`SimulatorSet`]
//! until a shutdown future completes, or spawned in the background on a
//! thread and runtime of its own (for tests, benchmarks and the demo),
//! stopping when its handle is dropped. A single app is served as a set of one.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;

use super::app::Simulator;
use super::routes;
use super::set::SimulatorSet;

impl Simulator {
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

impl SimulatorSet {
    /// The HTTP routes: the API path, other `/v4/` paths, and `/simulator/*`.
    pub fn router(&self) -> Router {
        routes::router(self.clone())
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Binds `addr` (port 0 for any) and serves in the background, on a
    /// thread and runtime of its own, until the returned handle is dropped.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<SpawnedSimulatorSet> {
        let (addr, stop) = spawn_router(self.router(), addr)?;
        Ok(SpawnedSimulatorSet {
            set: self,
            addr,
            _stop: stop,
        })
    }
}

/// A set of apps serving in the background; stops when dropped.
pub struct SpawnedSimulatorSet {
    pub set: SimulatorSet,
    pub addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl SpawnedSimulatorSet {
    /// The base URL to give every app's client.
    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).expect("a socket address makes a URL")
    }

    /// The app with this SDKAppID; panics when it is not served (for tests).
    pub fn app(&self, sdkappid: u64) -> &Simulator {
        self.set
            .get(sdkappid)
            .unwrap_or_else(|| panic!("no app with sdkappid {sdkappid} is simulated here"))
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
