//! A replica's few broker connections, shared by all its apps. Each app's
//! session opens its channels on one of them (picked by the app's id), so
//! the broker sees a small, fixed number of connections whatever the number
//! of apps. A channel error (a queue deleted, a precondition) closes that
//! channel only, and so ends one app's session; the loss of a connection
//! ends the sessions of the apps on it, and the first of them to come back
//! opens the new connection, which the others then share.

use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};

use futures_util::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use lapin::Connection;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::error::BrokerError;
use super::nodes::{Connected, Nodes};
use super::version::{BrokerRules, BrokerVersion};

/// The most connections a fleet's replica opens for its apps.
pub const FLEET_CONNECTIONS: usize = 3;

/// Sessions a replica starts (declares, consumes) per second at most, and
/// how many at once after a quiet spell: a thousand apps reach the broker
/// over twenty seconds, not in one instant.
pub const SESSION_STARTS_PER_SEC: u32 = 50;
const SESSION_STARTS_BURST: u32 = 20;

/// The shared connections (cheap to clone: every clone is the same set).
#[derive(Clone)]
pub struct Links(Arc<Inner>);

struct Inner {
    nodes: Nodes,
    name: String,
    slots: Vec<Mutex<Option<Link>>>,
    /// Receipts' own connection (see [`Links::receipts`]).
    receipts: Mutex<Option<Link>>,
    starts: DefaultDirectRateLimiter,
}

/// One shared connection and what was learned of its node.
#[derive(Clone)]
pub struct Link {
    connection: Arc<Connection>,
    /// The node in use, `host:port/vhost`.
    pub node: String,
    pub version: Option<BrokerVersion>,
    pub rules: BrokerRules,
    lost: Arc<Lost>,
}

/// Whether, and why, a connection was lost.
#[derive(Default)]
struct Lost {
    token: CancellationToken,
    why: OnceLock<String>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("connections", &self.0.slots.len())
            .finish()
    }
}

impl Links {
    /// `count` connections (at least one) to the nodes `amqp_url` lists,
    /// named `name` (with their number) for operators. None is opened yet.
    pub fn new(amqp_url: &str, count: usize, name: &str) -> Result<Self, BrokerError> {
        Ok(Self(Arc::new(Inner {
            nodes: Nodes::parse(amqp_url)?,
            name: name.to_string(),
            slots: (0..count.max(1)).map(|_| Mutex::new(None)).collect(),
            receipts: Mutex::new(None),
            starts: RateLimiter::direct(
                Quota::per_second(NonZeroU32::new(SESSION_STARTS_PER_SEC).expect("positive"))
                    .allow_burst(NonZeroU32::new(SESSION_STARTS_BURST).expect("positive")),
            ),
        })))
    }

    /// Waits for this replica's turn to start a session.
    pub async fn start_turn(&self) {
        self.0.starts.until_ready().await;
    }

    /// How many connections there may be.
    pub fn count(&self) -> usize {
        self.0.slots.len()
    }

    /// The connection `key` (an app's id) goes over: the one open, or a new
    /// one when it was lost or never opened.
    pub async fn link(&self, key: u64) -> Result<Link, BrokerError> {
        let index = (key % self.0.slots.len() as u64) as usize;
        let mut slot = self.0.slots[index].lock().await;
        if let Some(link) = slot.as_ref() {
            if !link.is_lost() {
                return Ok(link.clone());
            }
        }
        let name = if self.0.slots.len() == 1 {
            self.0.name.clone()
        } else {
            format!("{} #{}", self.0.name, index + 1)
        };
        let link = Link::watch(self.0.nodes.connect(&name).await?);
        *slot = Some(link.clone());
        Ok(link)
    }

    /// The connection receipts go out on: one of their own, opened on first
    /// use. A receipt's routing key is a producer's `reply_to`, and RabbitMQ
    /// 3.10 closes the whole connection (541 INTERNAL_ERROR) on a publish to
    /// a forged direct reply-to name (`amq.rabbitmq.reply-to.` and a
    /// decodable key of no live channel): that must never end the sessions
    /// of the apps that share a connection.
    pub async fn receipts(&self) -> Result<Link, BrokerError> {
        let mut slot = self.0.receipts.lock().await;
        if let Some(link) = slot.as_ref() {
            if !link.is_lost() {
                return Ok(link.clone());
            }
        }
        let name = format!("{} receipts", self.0.name);
        let link = Link::watch(self.0.nodes.connect(&name).await?);
        *slot = Some(link.clone());
        Ok(link)
    }

    /// The connections open now (for the status page and tests).
    pub async fn open(&self) -> usize {
        let mut open = 0;
        for slot in &self.0.slots {
            if slot.lock().await.as_ref().is_some_and(|l| !l.is_lost()) {
                open += 1;
            }
        }
        open
    }

    /// Closes every connection: what is unsettled on them returns to its
    /// queue. Bounded, since a connection cut off may never answer.
    pub async fn close(&self, why: &str) {
        let slots = self.0.slots.iter().chain(std::iter::once(&self.0.receipts));
        let closing = slots.map(|slot| async move {
            let Some(link) = slot.lock().await.take() else {
                return;
            };
            let close = link.connection.close(200, why.into());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), close).await;
        });
        futures_util::future::join_all(closing).await;
    }
}

impl Link {
    /// Watches the connection's events, so every session on it learns at
    /// once that it is gone.
    fn watch(connected: Connected) -> Self {
        let link = Self {
            connection: Arc::new(connected.connection),
            node: connected.node,
            version: connected.version,
            rules: connected.rules,
            lost: Arc::new(Lost::default()),
        };
        let mut events = link.connection.events_listener();
        let lost = link.lost.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    // A soft error is one channel's (a queue deleted, a
                    // precondition): it ends that channel's session only.
                    lapin::Event::Error(e) if e.is_amqp_soft_error() => {}
                    lapin::Event::Error(e) => {
                        let _ = lost.why.set(format!("connection lost: {e}"));
                        break;
                    }
                    _ => {}
                }
            }
            let _ = lost.why.set("connection closed".into());
            lost.token.cancel();
        });
        link
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    pub fn is_lost(&self) -> bool {
        self.lost.token.is_cancelled() || !self.connection.status().connected()
    }

    /// Completes when the connection is lost, with why.
    pub async fn lost(&self) -> String {
        self.lost.token.cancelled().await;
        self.lost
            .why
            .get()
            .cloned()
            .unwrap_or_else(|| "connection lost".into())
    }
}
