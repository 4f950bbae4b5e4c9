//! The endpoint's link to the broker: one connection and one confirm
//! channel, made on first use and made again after a failure. A publish is
//! answered only once the broker confirmed it (routed: `mandatory`); a
//! broker that blocks publishers (a resource alarm) or cannot be reached is
//! answered at once, as unavailable, so producers retry instead of hanging.

use std::time::Duration;

use lapin::{Channel, Connection};
use tokio::sync::Mutex;

use crate::broker;

use super::error::IngestError;
use super::request::Ready;

/// The longest a publish waits for its confirm before the endpoint answers
/// 503 (the job may still arrive: a retry with the same Idempotency-Key is
/// the same job).
const CONFIRM_WITHIN: Duration = Duration::from_secs(10);
/// The longest a connection attempt takes before the endpoint answers 503.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

pub struct Publisher {
    url: String,
    link: Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
    pub fn new(url: String) -> Self {
        Self {
            url,
            link: Mutex::new(None),
        }
    }

    /// The confirm channel, connecting if there is none; unavailable while
    /// the broker blocks publishers.
    async fn channel(&self) -> Result<Channel, IngestError> {
        let mut link = self.link.lock().await;
        if let Some((connection, channel)) = link.as_ref() {
            if connection.status().connected() && channel.status().connected() {
                if connection.status().blocked() {
                    return Err(IngestError::Unavailable(
                        "the broker blocks publishers (a memory or disk alarm): nothing was published".into(),
                    ));
                }
                return Ok(channel.clone());
            }
        }
        *link = None;
        let connect = async {
            let connection = broker::connect(&self.url, "broadcast-worker ingest").await?;
            let channel = broker::confirm_channel(&connection).await?;
            Ok::<_, broker::BrokerError>((connection, channel))
        };
        let (connection, channel) = tokio::time::timeout(CONNECT_WITHIN, connect)
            .await
            .map_err(|_| {
                IngestError::Unavailable("the broker did not answer: nothing was published".into())
            })?
            .map_err(|e| {
                IngestError::Unavailable(format!(
                    "the broker is unreachable ({e}): nothing was published"
                ))
            })?;
        *link = Some((connection, channel.clone()));
        Ok(channel)
    }

    /// Publishes a job to `queue`, confirmed and routed.
    pub async fn publish(&self, queue: &str, ready: &Ready) -> Result<(), IngestError> {
        let channel = self.channel().await?;
        let result = self.confirmed(&channel, queue, ready).await;
        if matches!(result, Err(IngestError::Unavailable(_))) {
            self.forget_unless_blocked().await;
        }
        result
    }

    /// Publishes several jobs with their confirms outstanding together; one
    /// result each, in order.
    pub async fn publish_all(&self, jobs: &[(&str, &Ready)]) -> Vec<Result<(), IngestError>> {
        let channel = match self.channel().await {
            Ok(channel) => channel,
            Err(e) => return jobs.iter().map(|_| Err(e.clone())).collect(),
        };
        let sends = jobs
            .iter()
            .map(|(queue, ready)| self.confirmed(&channel, queue, ready));
        let results = futures_util::future::join_all(sends).await;
        if results.iter().any(|r| r.is_err()) {
            self.forget_unless_blocked().await;
        }
        results
    }

    /// One publish and its confirm, given up on when the broker blocks
    /// publishers meanwhile (its alarm may last) or after [`CONFIRM_WITHIN`].
    async fn confirmed(
        &self,
        channel: &Channel,
        queue: &str,
        ready: &Ready,
    ) -> Result<(), IngestError> {
        let publish =
            broker::publish_confirmed(channel, "", queue, &ready.body, ready.properties.clone());
        let blocked = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if self.is_blocked().await {
                    return;
                }
            }
        };
        let may_arrive = "it may still be published once the broker takes publishes again: a retry with the same Idempotency-Key is the same job";
        tokio::select! {
            done = tokio::time::timeout(CONFIRM_WITHIN, publish) => match done {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(IngestError::Unavailable(format!("the broker did not take it ({e}): nothing was published"))),
                Err(_) => Err(IngestError::Unavailable(format!("the broker did not confirm it in time: {may_arrive}"))),
            },
            _ = blocked => Err(IngestError::Unavailable(format!(
                "the broker blocks publishers (a memory or disk alarm): {may_arrive}"
            ))),
        }
    }

    async fn is_blocked(&self) -> bool {
        let link = self.link.lock().await;
        link.as_ref()
            .is_some_and(|(connection, _)| connection.status().blocked())
    }

    /// After a failure the link is made again, unless the broker only blocks
    /// publishers (the connection is sound; a new one would be blocked too).
    async fn forget_unless_blocked(&self) {
        if !self.is_blocked().await {
            self.forget().await;
        }
    }

    /// Declares an app's queues (idempotent), so a job posted before any
    /// worker ran is routed.
    pub async fn declare(&self, topology: &broker::Topology) -> Result<(), IngestError> {
        self.channel().await?;
        let link = self.link.lock().await;
        let Some((connection, _)) = link.as_ref() else {
            return Err(IngestError::Unavailable(
                "the broker connection was lost".into(),
            ));
        };
        topology
            .declare(connection)
            .await
            .map_err(|e| IngestError::Unavailable(format!("cannot declare the app's queues ({e})")))
    }

    async fn forget(&self) {
        *self.link.lock().await = None;
    }

    /// Whether the broker takes publishes now (for `/readyz`).
    pub async fn ready(&self) -> bool {
        self.channel().await.is_ok()
    }
}
