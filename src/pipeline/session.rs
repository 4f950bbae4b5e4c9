//! One broker session: connect, declare the topology, consume with the
//! decoder on its own task, and run the send loop until the session stops
//! (a shutdown, a release) or the broker goes. The loop waits for work,
//! then for a permit (whatever arrives meanwhile joins the call it allows),
//! sorts the arrivals by what the book knows, and sends what piled up. When
//! the session stops, everything held and unsettled goes back to the queue;
//! when the broker goes, it is simply dropped (the broker redelivers it).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::broker::version::BrokerRules;
use crate::broker::{self, BrokerError, DeadReason, Link, Links};
use crate::clock;
use crate::status::sample_queues;
use crate::status::WorkerStatus;

use super::admit::admit;
use super::attempts::Attempts;
use super::baton::Baton;
use super::book::Book;
use super::config::WorkerConfig;
use super::crash::CrashHook;
use super::decoder::{Decoder, Incoming, UrgentLane};
use super::delivery::Outbox;
use super::end::SessionEnd;
use super::fate::{dead_letter_fate, Settlement};
use super::holding::Holding;
use super::job::Rejection;
use super::receipt::ReceiptOut;
use super::sender::Sender;
use super::settler::Settler;

/// The longest a session's wind-down (cancel, hand back, close) may take.
const WIND_DOWN: Duration = Duration::from_secs(5);
/// The longest the wind-down waits for the decoder to take what was on its
/// way when the consumers were cancelled.
const DRAIN: Duration = Duration::from_secs(2);

/// What a session borrows from its worker: the parts that outlive it.
pub struct Session<'w, B: Book> {
    pub config: &'w WorkerConfig,
    pub status: &'w Arc<WorkerStatus>,
    pub links: &'w Links,
    /// Whether the topology was declared by an earlier session that ended
    /// without a broker error (a release): no need to ask the broker again.
    pub declared: &'w mut bool,
    pub sender: &'w mut Sender,
    pub book: &'w mut B,
    pub crash: &'w CrashHook,
    /// The app's receipts channel (it outlives sessions: one per app).
    pub receipts: &'w ReceiptOut,
}

/// The channels of a session and its consumer's tag.
struct Channels {
    consume: Channel,
    publish: Channel,
    consumer_tag: String,
    queue: String,
    baton: Baton,
    urgent: UrgentLane,
    /// Tells the decoder the session winds down (see [`Decoder::winding`]).
    winding: CancellationToken,
}

impl<B: Book> Session<'_, B> {
    /// One session on the app's shared connection, until `stop` or the
    /// broker goes. Its channels are its own: closing them (or the broker
    /// closing one) ends this app's session only.
    pub async fn run(self, stop: &CancellationToken) -> Result<SessionEnd, BrokerError> {
        tokio::select! {
            _ = stop.cancelled() => return Ok(SessionEnd::Stopped),
            _ = self.links.start_turn() => {}
        }
        let link = self.links.link(self.config.api.sdkappid).await?;
        let version = link.version.as_ref().map(|v| v.to_string());
        debug!(
            node = %link.node,
            version = version.as_deref().unwrap_or("unknown"),
            returns_spend_deliveries = link.rules.returns_spend_deliveries,
            "session starting on the broker"
        );
        self.status.set_broker(Some((link.node.clone(), version)));
        self.consume(&link, stop).await
    }

    async fn consume(
        mut self,
        link: &Link,
        stop: &CancellationToken,
    ) -> Result<SessionEnd, BrokerError> {
        let connection = link.connection();
        let (channels, consumer) = self.start_consuming(connection, link.rules).await?;
        let outbox = Outbox {
            channel: channels.publish.clone(),
            room: broker::properties_room(connection),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let receipts = self.receipts.clone();
        let decoder = Decoder {
            outbox: outbox.clone(),
            dead_route: self.config.topology.names.dead_route(),
            rules: self.config.call,
            app: self.status.app.clone(),
            status: self.status.clone(),
            queue: self.config.topology.names.jobs.clone(),
            baton: channels.baton.clone(),
            urgent: channels.urgent.clone(),
            receipts: receipts.clone(),
            winding: channels.winding.clone(),
        };
        let consumer_task = tokio::spawn(decoder.run(consumer, tx));
        // The queues' counts (backlog, dead letters), on a channel of their own.
        let sampling = connection
            .create_channel()
            .await
            .map_err(BrokerError::Channel)?;
        let sampler = tokio::spawn(sample_queues(
            sampling.clone(),
            self.config.topology.names.clone(),
            self.status.clone(),
        ));
        let dead_route = self.config.topology.names.dead_route();
        let settler = Settler::new(
            outbox,
            dead_route,
            self.config.api.sdkappid,
            self.book,
            self.crash.clone(),
            receipts,
        );
        let mut send = SendLoop {
            holding: Holding::default(),
            rx,
            settler,
            sender: self.sender,
            config: self.config,
            status: self.status,
            crash: self.crash,
            stop,
        };
        // A lost connection ends the session at once, whatever the loop is
        // waiting on (an ack on a dead connection may never be answered):
        // nothing it holds is settled, so the broker redelivers all of it.
        let end = tokio::select! {
            end = send.run() => match end {
                Ok(never) => match never {},
                Err(end) => end,
            },
            why = link.lost() => SessionEnd::Broker(why),
        };
        sampler.abort();
        if !matches!(end, SessionEnd::Broker(_)) {
            let _ =
                tokio::time::timeout(WIND_DOWN, sampling.close(200, "session over".into())).await;
        }
        send.wind_down(&channels, consumer_task, &end).await;
        send.settler.book.close();
        self.status.set_consuming(false);
        Ok(end)
    }

    async fn start_consuming(
        &mut self,
        connection: &Connection,
        rules: BrokerRules,
    ) -> Result<(Channels, lapin::Consumer), BrokerError> {
        if !*self.declared {
            self.config.topology.declare(connection).await?;
            broker::retire_own_dead(connection, &self.config.topology.names).await?;
            *self.declared = true;
        }
        let queue = self.config.topology.names.jobs.clone();
        let consume = connection
            .create_channel()
            .await
            .map_err(BrokerError::Channel)?;
        consume
            .basic_qos(
                self.config.prefetch,
                BasicQosOptions {
                    global: rules.qos_global,
                },
            )
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
        // Whoever is active learns it from the baton (offered by the
        // decoder once the queue is quiet) even if no job comes.
        let baton = Baton::new(self.config.prefetch);
        info!(%queue, prefetch = self.config.prefetch, "consuming (active, or standing by until the active consumer goes)");
        let urgent = UrgentLane {
            channel: consume.clone(),
            queue: self.config.topology.names.urgent.clone(),
            tag: format!("{consumer_tag}-urgent"),
            opened: Arc::default(),
        };
        let channels = Channels {
            consume,
            publish,
            consumer_tag,
            baton,
            queue,
            urgent,
            winding: CancellationToken::new(),
        };
        Ok((channels, consumer))
    }
}

/// The send loop and what it holds.
struct SendLoop<'s, 'b, B: Book> {
    holding: Holding,
    rx: mpsc::UnboundedReceiver<Incoming>,
    settler: Settler<'b, B>,
    sender: &'s mut Sender,
    config: &'s WorkerConfig,
    status: &'s WorkerStatus,
    crash: &'s CrashHook,
    stop: &'s CancellationToken,
}

impl<'b, B: Book> SendLoop<'_, 'b, B> {
    /// Waits for work, then for a permit, then sends what piled up, until
    /// the session stops or the broker goes.
    async fn run(&mut self) -> Result<Infallible, SessionEnd> {
        self.wait_for_work().await?;
        // The first delivery of a session makes this replica the app's
        // sender: the pacer keeps a full period from now, and the book opens
        // (with a ledger, its token is later than that of every sender before).
        self.sender.pacer.become_sender();
        self.status.set_active(true);
        self.settler.book.open(self.stop).await?;
        // What a sender before this one settled and did not see confirmed.
        let waiting = self.settler.book.receipts_waiting().await?;
        self.settler.send_receipts(&waiting).await;
        loop {
            // Copies set aside while their first was held get another look.
            self.holding.readmit_duplicates();
            self.admit().await?;
            if self.holding.is_empty() {
                self.wait_for_work().await?;
                continue;
            }
            self.permit_while_arriving().await?;
            while let Ok(incoming) = self.rx.try_recv() {
                self.holding.arrive(Some(incoming))?;
            }
            self.admit().await?;
            let expired = take_expired(&mut self.holding);
            self.settler.settle(expired).await?;
            if let Some(call) = self.holding.next_call(&self.config.call) {
                let look_again = self.attempts().deliver(call).await?;
                self.holding.arrived.extend(look_again);
            }
        }
    }

    /// Waits until something arrives; nothing held, nothing waits unsettled.
    async fn wait_for_work(&mut self) -> Result<(), SessionEnd> {
        self.status.set_oldest_unsettled(0.0);
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => Err(SessionEnd::Stopped),
            incoming = self.rx.recv() => self.holding.arrive(incoming),
        }
    }

    /// Waits for the pacer's permit and the gap before the next send;
    /// whatever arrives meanwhile joins the holding area, so the call it
    /// allows carries it.
    async fn permit_while_arriving(&mut self) -> Result<(), SessionEnd> {
        self.status
            .set_oldest_unsettled(self.holding.oldest_age_secs());
        let permit = self.sender.pacer.ready();
        tokio::pin!(permit);
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Err(SessionEnd::Stopped),
                _ = &mut permit => return Ok(()),
                incoming = self.rx.recv() => self.holding.arrive(incoming)?,
            }
        }
    }

    async fn admit(&mut self) -> Result<(), SessionEnd> {
        admit(
            &mut self.holding,
            &mut self.settler,
            self.config,
            &self.status.app,
        )
        .await
    }

    fn attempts(&mut self) -> Attempts<'_, 'b, B> {
        Attempts {
            sender: &mut *self.sender,
            settler: &mut self.settler,
            config: self.config,
            status: self.status,
            crash: self.crash,
            stop: self.stop,
        }
    }

    /// Stops consuming, then (when the session stopped, rather than lost
    /// its broker) hands back everything not settled, job by job by
    /// `basic.nack` with requeue (see [`BrokerRules`]); bounded in time,
    /// since the connection may be gone.
    async fn wind_down(
        &mut self,
        channels: &Channels,
        consumer_task: tokio::task::JoinHandle<()>,
        end: &SessionEnd,
    ) {
        let mut consumer_task = consumer_task;
        let wind_down = async {
            // No baton offered from now (one would outlive the session).
            channels.winding.cancel();
            // The urgent lane first: the next replica opens its own once it
            // is active on the jobs queue, which this session's cancel there
            // (below) allows.
            if channels.urgent.is_open() {
                let _ = channels
                    .consume
                    .basic_cancel(
                        channels.urgent.tag.as_str().into(),
                        BasicCancelOptions::default(),
                    )
                    .await;
            }
            let others_waiting = match end {
                SessionEnd::Stopped => {
                    let (publish, queue) = (&channels.publish, &channels.queue);
                    channels.baton.others_waiting(publish, queue).await
                }
                _ => None,
            };
            let _ = channels
                .consume
                .basic_cancel(
                    channels.consumer_tag.as_str().into(),
                    BasicCancelOptions::default(),
                )
                .await;
            // The decoder takes what was already on its way, up to the
            // cancel's end of its consumers: a baton among it is then held
            // and passed on (or acked) below, never left in the queue.
            let _ = tokio::time::timeout(DRAIN, &mut consumer_task).await;
            consumer_task.abort();
            if matches!(end, SessionEnd::Stopped) {
                self.hand_back().await;
                // Unsure whether anyone stands by, none is passed on: a
                // session that starts offers its own once the queue is quiet,
                // while a baton left in a queue nobody consumes stays there.
                let passed = channels.baton.pass_on(
                    &channels.publish,
                    &channels.queue,
                    others_waiting.unwrap_or(false),
                );
                if let Err(e) = passed.await {
                    debug!(error = %e, "the app's baton was not passed on: it returns to the queue with the channel");
                }
            }
            let _ = channels.consume.close(200, "worker stopping".into()).await;
            let _ = channels.publish.close(200, "worker stopping".into()).await;
        };
        if tokio::time::timeout(WIND_DOWN, wind_down).await.is_err() {
            warn!("the broker did not answer while the session wound down: what it holds returns to the queue when its channels or the connection close");
        }
    }

    /// The session stopped: every job held, and every one still on its way
    /// from the decoder, goes back to the queue.
    async fn hand_back(&mut self) {
        let mut left = self.holding.drain();
        while let Ok(incoming) = self.rx.try_recv() {
            if let Incoming::Job(_, pending) = incoming {
                left.push(pending);
            }
        }
        self.settler.hand_back(left).await;
    }
}

/// Jobs whose deadline passed while they waited, to be dead-lettered as expired.
fn take_expired(holding: &mut Holding) -> Vec<Settlement> {
    let now = SystemTime::now();
    let mut expired = holding.urgent.take_expired(now);
    expired.extend(holding.batcher.take_expired(now));
    expired
        .into_iter()
        .map(|q| {
            let deadline_ms = q.job.deadline.map(clock::unix_ms).unwrap_or(0);
            let info = Rejection::Expired { deadline_ms }.to_string();
            let fate = dead_letter_fate(&q.delivery, DeadReason::Expired, None, info, None);
            (q.job, q.delivery, fate)
        })
        .collect()
}
