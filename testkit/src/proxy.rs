//! A TCP proxy between the worker and RabbitMQ or PostgreSQL, so a test can
//! cut, refuse, stall or slow the worker's connections without touching the
//! shared server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct TcpProxy {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// While set, new connections are closed at once.
    down: Arc<AtomicBool>,
    /// Stalls and delays applied to the bytes in flight.
    pub faults: Arc<ProxyFaults>,
    cut: watch::Sender<u64>,
    partition: watch::Sender<u64>,
    task: JoinHandle<()>,
}

/// What the proxy does to bytes in flight: hold them (a stalled link),
/// delay each chunk (a slow one), or rewrite what the client sends.
#[derive(Default)]
pub struct ProxyFaults {
    pub stalled: AtomicBool,
    pub delay_ms: AtomicU64,
    /// Every occurrence of the first in the client's bytes becomes the
    /// second (of the same length, so frames keep their sizes): how a test
    /// publishes what a client library refuses to write, such as a
    /// `message_id` that is not UTF-8.
    pub rewrite: std::sync::Mutex<Option<(Vec<u8>, Vec<u8>)>>,
    /// The first connection whose client sends these bytes is cut before
    /// they reach the server (once): a connection lost in the middle of a
    /// given command, such as a queue's declare.
    pub cut_on: std::sync::Mutex<Option<Vec<u8>>>,
}

impl TcpProxy {
    pub async fn start(upstream: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cuts) = watch::channel(0u64);
        let (partition, partitions) = watch::channel(0u64);
        let upstream = upstream.to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let down = Arc::new(AtomicBool::new(false));
        let refusing = down.clone();
        let faults = Arc::new(ProxyFaults::default());
        let proxy_faults = faults.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if refusing.load(SeqCst) {
                    drop(client);
                    continue;
                }
                counter.fetch_add(1, SeqCst);
                let upstream = upstream.clone();
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                let mut partitions = partitions.clone();
                partitions.borrow_and_update();
                let faults = faults.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let partitioned = tokio::select! {
                        _ = pump_rewriting(&mut client_read, &mut server_write, faults.clone()) => false,
                        _ = pump(&mut server_read, &mut client_write, faults) => false,
                        _ = cuts.changed() => false,
                        _ = partitions.changed() => true,
                    };
                    if partitioned {
                        // The server sees the connection close; the client's
                        // side stays open and silent, so it notices nothing.
                        drop((server_read, server_write));
                        tokio::select! {
                            _ = swallow(&mut client_read) => {}
                            _ = cuts.changed() => {}
                        }
                    }
                });
            }
        });
        TcpProxy {
            addr,
            accepted,
            faults: proxy_faults,
            down,
            cut,
            partition,
            task,
        }
    }

    /// Partitions every connection open now: the server's side is closed
    /// (the broker hands the queue to another consumer), while the client's
    /// side stays open and silent, so the client believes it is still
    /// connected (until its heartbeats tell it otherwise).
    pub fn partition_all(&self) {
        self.partition.send_modify(|n| *n += 1);
    }

    /// Drops every connection open now (new ones are accepted).
    pub fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Cuts every connection and refuses new ones until `set_down(false)`.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, SeqCst);
        if down {
            self.cut_all();
        }
    }

    /// Rewrites every `pattern` the client sends into `replacement`, which
    /// must be as long.
    pub fn rewrite(&self, pattern: &[u8], replacement: &[u8]) {
        assert_eq!(pattern.len(), replacement.len(), "frames keep their sizes");
        *self.faults.rewrite.lock().unwrap() = Some((pattern.to_vec(), replacement.to_vec()));
    }

    /// Cuts the first connection that sends `pattern`, before it arrives.
    pub fn cut_on(&self, pattern: &[u8]) {
        *self.faults.cut_on.lock().unwrap() = Some(pattern.to_vec());
    }

    /// Whether the cut asked by `cut_on` has happened.
    pub fn cut_done(&self) -> bool {
        self.faults.cut_on.lock().unwrap().is_none()
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads and drops whatever the client sends, until it closes.
async fn swallow(from: &mut OwnedReadHalf) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// Copies the client's bytes to the server, rewritten as the faults say. A
/// pattern may straddle two reads, so the last bytes of a read wait for the
/// next one, or for a moment of quiet.
async fn pump_rewriting(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    faults: Arc<ProxyFaults>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let rewrite = faults.rewrite.lock().unwrap().clone();
        let cutting = faults.cut_on.lock().unwrap().clone();
        let rewrite = match (rewrite, &cutting) {
            (Some(rewrite), _) => Some(rewrite),
            // Cutting only: a pattern that rewrites nothing keeps the
            // straddling logic below in one place.
            (None, Some(cut)) => Some((cut.clone(), cut.clone())),
            (None, None) => None,
        };
        let Some((pattern, replacement)) = rewrite else {
            if !pending.is_empty() && to.write_all(&std::mem::take(&mut pending)).await.is_err() {
                return;
            }
            return pump(from, to, faults).await;
        };
        let read = tokio::time::timeout(Duration::from_millis(5), from.read(&mut buf)).await;
        let quiet = match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                pending.extend_from_slice(&buf[..n]);
                false
            }
            Err(_) => true,
        };
        if let Some(cut) = &cutting {
            if find(&pending, cut).is_some() && faults.cut_on.lock().unwrap().take().is_some() {
                return;
            }
        }
        let mut at = 0;
        while let Some(found) = find(&pending[at..], &pattern) {
            let start = at + found;
            pending[start..start + pattern.len()].copy_from_slice(&replacement);
            at = start + pattern.len();
        }
        let keep = if quiet {
            0
        } else {
            (pattern.len() - 1).min(pending.len())
        };
        let ready: Vec<u8> = pending.drain(..pending.len() - keep).collect();
        if !ready.is_empty() && to.write_all(&ready).await.is_err() {
            return;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Copies one direction, chunk by chunk, under the proxy's faults.
async fn pump(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, faults: Arc<ProxyFaults>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while faults.stalled.load(SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let delay = faults.delay_ms.load(SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
