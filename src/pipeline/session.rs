//! One broker session: connect, declare the topology, consume with the
//! decoder on its own task, and run the send loop (wait for work, then for a
//! permit, then send what piled up) until shutdown or the broker goes. On
//! shutdown everything held and unsettled goes back to the queue.

use std::time::{Duration, SystemTime};

use futures_util::StreamExt;

use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::{self, BrokerError, DeadReason};
use crate::status::sample_queues;
use crate::telemetry;

use super::decoder::{Decoder, Incoming};
use super::delivery::Outbox;
use super::holding::Holding;
use super::job::Rejection;
use super::ledger_retry::with_ledger;
use super::settle::{dead_letter_fate, Settlement};
use super::{SessionEnd, Worker};

/// The longest a session's wind-down (cancel, hand back, close) may take.
const WIND_DOWN: Duration = Duration::from_secs(5);

/// The channels of a session and its consumer's tag.
struct Channels {
    consume: Channel,
    publish: Channel,
    consumer_tag: String,
}

impl Worker {
    /// One connection's worth of work.
    pub(super) async fn session(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, BrokerError> {
        let connection = broker::connect(&self.config.amqp_url, "broadcast-worker run").await?;
        // This session stops on shutdown, or when the app is released.
        let stop = shutdown.child_token();
        let release = self.release.clone();
        let releasing = {
            let stop = stop.clone();
            tokio::spawn(async move {
                release.notified().await;
                stop.cancel();
            })
        };
        let result = self.consume(&connection, &stop).await;
        releasing.abort();
        // Bounded: a connection cut off without a word may never answer.
        let closing = connection.close(200, "worker session over".into());
        let _ = tokio::time::timeout(WIND_DOWN, closing).await;
        result
    }

    async fn consume(
        &mut self,
        connection: &Connection,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, BrokerError> {
        let (channels, consumer) = self.start_consuming(connection).await?;
        let outbox = Outbox {
            channel: channels.publish.clone(),
            room: broker::properties_room(connection),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let decoder = Decoder {
            outbox: outbox.clone(),
            dlx: self.config.topology.names.dlx.clone(),
            rules: self.config.call,
            app: self.app(),
        };
        let consumer_task = tokio::spawn(decoder.run(consumer, tx));
        // The queues' counts (backlog, dead letters), on a channel of their own.
        let sampling = connection
            .create_channel()
            .await
            .map_err(BrokerError::Channel)?;
        let sampler = tokio::spawn(sample_queues(
            sampling,
            self.config.topology.names.clone(),
            self.status.clone(),
        ));

        let mut holding = Holding::default();
        // A lost connection ends the session at once, whatever the loop is
        // waiting on (an ack on a dead connection may never be answered):
        // nothing it holds is settled, so the broker redelivers all of it.
        let end = tokio::select! {
            end = self.send_loop(&mut holding, &mut rx, &outbox, shutdown) => match end {
                Ok(never) => match never {},
                Err(end) => end,
            },
            why = connection_lost(connection) => SessionEnd::Broker(why),
        };
        sampler.abort();

        // Stop consuming, then hand back everything not settled; bounded in
        // time, since the connection may be gone.
        let wind_down = async {
            let _ = channels
                .consume
                .basic_cancel(
                    channels.consumer_tag.as_str().into(),
                    BasicCancelOptions::default(),
                )
                .await;
            consumer_task.abort();
            if matches!(end, SessionEnd::Shutdown) {
                hand_back(&mut holding, &mut rx).await;
            }
            let _ = channels.consume.close(200, "worker stopping".into()).await;
            let _ = channels.publish.close(200, "worker stopping".into()).await;
        };
        if tokio::time::timeout(WIND_DOWN, wind_down).await.is_err() {
            warn!("the broker did not answer while the session wound down: closing the connection, which returns every unsettled job");
        }
        Ok(end)
    }

    async fn start_consuming(
        &mut self,
        connection: &Connection,
    ) -> Result<(Channels, lapin::Consumer), BrokerError> {
        self.config.topology.declare(connection).await?;
        let queue = self.config.topology.names.jobs.clone();
        let consume = connection
            .create_channel()
            .await
            .map_err(BrokerError::Channel)?;
        consume
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await
            .map_err(BrokerError::Channel)?;
        let publish = broker::confirm_channel(connection).await?;
        let consumer_tag = format!(
            "broadcast-worker-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let consumer = consume
            .basic_consume(
                queue.as_str().into(),
                consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::Channel)?;
        self.status.set_consuming(true);
        info!(%queue, prefetch = self.config.prefetch, "consuming (active, or standing by until the active consumer goes)");
        let channels = Channels {
            consume,
            publish,
            consumer_tag,
        };
        Ok((channels, consumer))
    }

    /// Waits for work, then for a permit, then sends what piled up, until
    /// shutdown or the broker goes.
    async fn send_loop(
        &mut self,
        holding: &mut Holding,
        rx: &mut mpsc::UnboundedReceiver<Incoming>,
        outbox: &Outbox,
        shutdown: &CancellationToken,
    ) -> Result<std::convert::Infallible, SessionEnd> {
        let mut active = false;
        loop {
            holding.readmit_duplicates();
            if holding.is_empty() {
                // Nothing held: nothing waits unsettled.
                self.status.set_oldest_unsettled(0.0);
            }
            while holding.is_empty() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Err(SessionEnd::Shutdown),
                    incoming = rx.recv() => holding.arrive(incoming)?,
                }
                if !std::mem::replace(&mut active, true) {
                    self.become_sender(shutdown).await?;
                }
                self.admit(holding, outbox, shutdown).await?;
            }
            self.wait_for_permit_while_arriving(holding, rx, shutdown)
                .await?;
            while let Ok(incoming) = rx.try_recv() {
                holding.arrive(Some(incoming))?;
            }
            self.admit(holding, outbox, shutdown).await?;
            let expired = take_expired(holding);
            self.settle(expired, outbox, shutdown).await?;
            let next = holding.next_call(&self.config.call);
            if let Some(call) = next {
                let look_again = self.deliver(call, outbox, shutdown).await?;
                if !look_again.is_empty() {
                    holding.arrived.extend(look_again);
                    self.admit(holding, outbox, shutdown).await?;
                }
            }
        }
    }

    /// The first delivery of a session makes this replica the app's sender:
    /// a restart, or a standby taking over from one that was killed a moment
    /// after a call. That call went out at most now, so the first send here
    /// keeps a full period from now, and the app's quota holds across them.
    /// With a ledger, the session draws its token now: later than that of
    /// every sender before it.
    async fn become_sender(&mut self, shutdown: &CancellationToken) -> Result<(), SessionEnd> {
        let now = Instant::now();
        self.last_send = Some(self.last_send.map_or(now, |last| last.max(now)));
        self.status.set_active(true);
        if let Some(ledger) = self.config.ledger.clone() {
            let session = with_ledger(&self.status, shutdown, || ledger.open_session()).await?;
            info!(token = session.token(), "this session is the app's sender");
            self.ledger_session = Some(session);
        }
        Ok(())
    }

    /// Waits for the limiter's permit; whatever arrives meanwhile joins the
    /// holding area, so the call it allows carries it.
    async fn wait_for_permit_while_arriving(
        &mut self,
        holding: &mut Holding,
        rx: &mut mpsc::UnboundedReceiver<Incoming>,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        self.status.set_oldest_unsettled(holding.oldest_age_secs());
        let waiting = Instant::now();
        let app = self.app();
        {
            let permit = self.limiter.acquire();
            tokio::pin!(permit);
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Err(SessionEnd::Shutdown),
                    _ = &mut permit => break,
                    incoming = rx.recv() => holding.arrive(incoming)?,
                }
            }
        }
        metrics::histogram!(telemetry::PERMIT_WAIT_SECONDS, telemetry::SDKAPPID => app)
            .record(waiting.elapsed().as_secs_f64());
        self.show_rate();
        Ok(())
    }
}

/// Completes when the connection reports an error, with its text.
async fn connection_lost(connection: &Connection) -> String {
    let mut events = connection.events_listener();
    while let Some(event) = events.next().await {
        if let lapin::Event::Error(e) = event {
            return format!("connection lost: {e}");
        }
    }
    std::future::pending().await
}

/// Jobs whose deadline passed while they waited, to be dead-lettered as expired.
fn take_expired(holding: &mut Holding) -> Vec<Settlement> {
    holding
        .batcher
        .take_expired(SystemTime::now())
        .into_iter()
        .map(|q| {
            let deadline_ms = q.job.deadline.map(broker::unix_ms).unwrap_or(0);
            let info = Rejection::Expired { deadline_ms }.to_string();
            let fate = dead_letter_fate(&q.tag, DeadReason::Expired, None, info, None);
            (q.job, q.tag, fate)
        })
        .collect()
}

/// Shutdown: every job held, and every one still on its way from the
/// decoder, goes back to the queue.
async fn hand_back(holding: &mut Holding, rx: &mut mpsc::UnboundedReceiver<Incoming>) {
    let mut left = holding.drain();
    while let Ok(Incoming::Job(_, pending)) = rx.try_recv() {
        left.push(pending);
    }
    let count = left.len();
    for pending in left {
        let _ = pending.requeue().await;
    }
    info!(
        returned = count,
        "shutdown: unsent jobs returned to the queue"
    );
}
