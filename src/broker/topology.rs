//! The topology: the jobs queue and the urgent lane's queue, the
//! dead-letter exchange and queue, their names and arguments, declared
//! idempotently. A single app has a
//! dead-letter queue of its own; the apps of a fleet share one, and a dead
//! letter's app is the jobs queue it was routed from ([`DeadQueue`]).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};
use tracing::warn;

use super::error::BrokerError;

/// The names a prefix gives: `{prefix}.jobs`, `{prefix}.urgent`,
/// `{prefix}.dead`, `{prefix}.dlx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNames {
    pub jobs: String,
    /// The urgent lane: jobs sent before any waiting in `jobs`.
    pub urgent: String,
    pub dead: String,
    pub dlx: String,
    /// `dead` is the fleet's, shared by its apps: this app's dead letters
    /// are those routed from `jobs`.
    pub shared_dead: bool,
}

impl QueueNames {
    /// A single app's: `{prefix}.jobs`, `{prefix}.urgent`, `{prefix}.dead`,
    /// `{prefix}.dlx`.
    pub fn new(prefix: &str) -> Self {
        Self {
            jobs: format!("{prefix}.jobs"),
            urgent: format!("{prefix}.urgent"),
            dead: format!("{prefix}.dead"),
            dlx: format!("{prefix}.dlx"),
            shared_dead: false,
        }
    }

    /// App `sdkappid`'s in the fleet `fleet_prefix`: its own jobs queue,
    /// urgent lane and dead-letter exchange (`{fleet_prefix}.{sdkappid}.jobs`,
    /// `.urgent`, `.dlx`), and
    /// the fleet's dead-letter queue, `{fleet_prefix}.dead`: one quorum
    /// queue for every app instead of one each.
    pub fn in_fleet(fleet_prefix: &str, sdkappid: u64) -> Self {
        Self {
            dead: format!("{fleet_prefix}.dead"),
            shared_dead: true,
            ..Self::new(&format!("{fleet_prefix}.{sdkappid}"))
        }
    }

    /// The app's own dead-letter queue of the layout before the fleet's was
    /// shared (`{fleet_prefix}.{sdkappid}.dead`), which [`super::retire`]
    /// empties into the shared one.
    pub fn own_dead(&self) -> Option<String> {
        let prefix = self.jobs.strip_suffix(".jobs")?;
        self.shared_dead.then(|| format!("{prefix}.dead"))
    }

    /// Where the worker publishes the app's dead letters: its dead-letter
    /// exchange, under its jobs queue's name (see [`DeadQueue`]).
    pub fn dead_route(&self) -> DeadRoute {
        DeadRoute {
            exchange: self.dlx.clone(),
            routing_key: self.jobs.clone(),
        }
    }

    /// The dead-letter queue as this app sees it.
    pub fn dead_queue(&self) -> DeadQueue {
        DeadQueue {
            name: self.dead.clone(),
            owner: self
                .shared_dead
                .then(|| [self.jobs.clone(), self.urgent.clone()]),
        }
    }
}

/// Where a dead letter is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRoute {
    pub exchange: String,
    pub routing_key: String,
}

/// A dead-letter queue as one app's operator sees it: the queue, and when
/// the apps of a fleet share it, the two queues (jobs, urgent) whose dead
/// letters are the app's. A dead letter keeps the routing key it was published with: the
/// worker publishes each to the dead-letter exchange under its jobs queue's
/// name, and one the broker dead-letters itself keeps the producer's, which
/// is the jobs queue's name for a job published through the default
/// exchange. Headers are not trusted for this: a producer can set any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadQueue {
    pub name: String,
    pub owner: Option<[String; 2]>,
}

impl DeadQueue {
    /// Whether a dead letter read from the queue is this app's: every one
    /// when the queue is the app's own. A routing key that names one of the
    /// fleet's queues (`{fleet}.*.jobs`, `{fleet}.*.urgent`) settles it; a
    /// job routed to its queue by another key (through an exchange of the
    /// operator's) is known by the queue the broker names in
    /// `x-first-death-queue`.
    pub fn owns(&self, routing_key: &str, first_death_queue: Option<&str>) -> bool {
        let Some(own) = &self.owner else {
            return true;
        };
        let fleet = self.name.strip_suffix("dead").unwrap_or(&self.name);
        let names_a_queue = routing_key.ends_with(".jobs") || routing_key.ends_with(".urgent");
        if routing_key.starts_with(fleet) && names_a_queue {
            own.iter().any(|queue| queue == routing_key)
        } else {
            first_death_queue.is_some_and(|first| own.iter().any(|queue| queue == first))
        }
    }
}

/// The queues and how the jobs queue behaves.
#[derive(Debug, Clone)]
pub struct Topology {
    pub names: QueueNames,
    /// Deliveries of one job before the broker dead-letters it by itself (a
    /// job that keeps crashing the worker).
    pub delivery_limit: u32,
}

impl Topology {
    /// The jobs queue's arguments (the urgent lane's too): quorum, single
    /// active consumer (one sender per app), a delivery limit, and
    /// at-least-once dead-lettering to the DLX.
    fn jobs_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.names.dlx.as_str().into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        // At-least-once dead-lettering requires refusing publishes when full.
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        args
    }

    /// Declares everything; idempotent. A queue that exists with other
    /// arguments is an error that quotes the broker, which names the
    /// argument, except for the delivery limits (see [`Self::declare_dead`]
    /// and [`Self::declare_jobs`]).
    pub async fn declare(&self, connection: &Connection) -> Result<(), BrokerError> {
        // A failed declare closes its channel, so each step gets a fresh one.
        let step = |what: String| move |e: lapin::Error| declare_failed(what, e);
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::Channel)?;
        channel
            .exchange_declare(
                self.names.dlx.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(step(format!("exchange {}", self.names.dlx)))?;
        self.declare_dead(connection).await?;
        channel
            .queue_bind(
                self.names.dead.as_str().into(),
                self.names.dlx.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(step(format!(
                "binding {} to {}",
                self.names.dead, self.names.dlx
            )))?;
        let _ = channel.close(200, "topology declared".into()).await;
        self.declare_jobs(connection, &self.names.jobs).await?;
        self.declare_jobs(connection, &self.names.urgent).await?;
        Ok(())
    }

    /// Declares `{prefix}.dead` with [`dead_arguments`]. One that exists
    /// without them (declared by an earlier version) is used as it is, with
    /// a warning: a queue's arguments cannot change, the worker only
    /// publishes to the exchange, and refusing to start would strand every
    /// existing deployment with its dead letters.
    async fn declare_dead(&self, connection: &Connection) -> Result<(), BrokerError> {
        let queue = self.names.dead.as_str();
        let Some(refused) = declare_or_find(connection, queue, dead_arguments()).await? else {
            return Ok(());
        };
        warn!(
            queue,
            broker = %refused,
            "{queue} exists with other arguments than x-delivery-limit = {DEAD_DELIVERY_LIMIT} \
             (declared by an earlier version?): using it as it is. On RabbitMQ 4.x such a queue \
             has a delivery limit of 20 and each `dlq list` or `dlq show` counts one delivery of \
             every dead letter it reads, so reading it 20 times drops them: give it a policy \
             {{\"delivery-limit\": -1}}, or move its dead letters and declare it again"
        );
        Ok(())
    }

    /// Declares `{prefix}.jobs` (or `.urgent`, with the same arguments).
    /// One that exists with another delivery limit (an earlier default, or
    /// another setting) and every other argument as the worker declares it
    /// is used as it is, with a warning; any other difference is an error
    /// that quotes the broker.
    async fn declare_jobs(&self, connection: &Connection, queue: &str) -> Result<(), BrokerError> {
        let Some(refused) = declare_or_find(connection, queue, self.jobs_arguments()).await? else {
            return Ok(());
        };
        let broker = refused.to_string();
        let refusal = || BrokerError::Topology {
            what: format!("queue {queue}"),
            detail: broker.clone(),
        };
        // The broker names one argument only: declaring again with the
        // queue's own limit shows whether the rest are as they should be.
        let Some(current) = current_delivery_limit(&broker) else {
            return Err(refusal());
        };
        let as_it_is = Topology {
            delivery_limit: current,
            ..self.clone()
        };
        if declare_or_find(connection, queue, as_it_is.jobs_arguments())
            .await?
            .is_some()
        {
            return Err(refusal());
        }
        warn!(
            queue,
            %broker,
            "{queue} exists with x-delivery-limit = {current}, not {} (declared by an earlier \
             version or setting): using it as it is. Every restart or reconnect of the worker \
             counts one delivery of each job it held, so a low limit dead-letters healthy jobs \
             after that many restarts: drain the queue and declare it again to raise it",
            self.delivery_limit
        );
        Ok(())
    }
}

/// The queue's own delivery limit, from the broker's refusal of another:
/// "inequivalent arg 'x-delivery-limit' ...: received '1000' but current is '20'".
fn current_delivery_limit(refusal: &str) -> Option<u32> {
    if !refusal.contains("inequivalent arg 'x-delivery-limit'") {
        return None;
    }
    let (_, current) = refusal.split_once("current is '")?;
    current.split_once('\'')?.0.parse().ok()
}

/// Declares `queue` with `arguments` on a channel of its own. When the queue
/// exists with other arguments, answers the broker's refusal (after making
/// sure the queue is there); any other failure is an error.
async fn declare_or_find(
    connection: &Connection,
    queue: &str,
    arguments: FieldTable,
) -> Result<Option<lapin::Error>, BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(BrokerError::Channel)?;
    let refused = match channel
        .queue_declare(queue.into(), durable(), arguments)
        .await
    {
        Ok(_) => {
            let _ = channel.close(200, "queue declared".into()).await;
            return Ok(None);
        }
        Err(e) => e,
    };
    if !is_precondition_failed(&refused) {
        return Err(declare_failed(format!("queue {queue}"), refused));
    }
    let refusal = || BrokerError::Topology {
        what: format!("queue {queue}"),
        detail: refused.to_string(),
    };
    // The refusal closed that channel; a passive declare only asks whether
    // the queue is there.
    let channel = connection
        .create_channel()
        .await
        .map_err(BrokerError::Channel)?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    if channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .is_err()
    {
        return Err(refusal());
    }
    let _ = channel.close(200, "queue exists".into()).await;
    Ok(Some(refused))
}

/// `{prefix}.dead`'s `x-delivery-limit`. Reading the dead-letter queue (`dlq
/// list`, `show`) gives each message back to it, and a quorum queue counts
/// every return as a delivery: on RabbitMQ 4.x a quorum queue has a limit of
/// 20 unless told otherwise, and a message over it is dropped when the queue
/// has no dead-letter target, as this one has none. -1, unlimited on 4.x, is
/// accepted unchecked by 3.10, which then drops a message at its first
/// return; 2^31 - 1 is taken by both, and no reader comes near it.
pub const DEAD_DELIVERY_LIMIT: i64 = 2_147_483_647;

/// The dead-letter queue's arguments: quorum, and a delivery limit no reading
/// reaches.
fn dead_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DEAD_DELIVERY_LIMIT),
    );
    args
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// A declare the broker refused for what the topology is (it exists with
/// other arguments or of another kind, or this user may not declare it) is
/// a conflict that reconnecting cannot fix. Any other failure (the
/// connection cut in the middle of declaring, a node going down, a queue
/// leader not yet elected) is the session's: it is retried like any lost
/// session.
fn declare_failed(what: String, error: lapin::Error) -> BrokerError {
    let refused = matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
    if matches!(e.kind(), AMQPErrorKind::Soft(
        AMQPSoftError::PRECONDITIONFAILED | AMQPSoftError::ACCESSREFUSED | AMQPSoftError::RESOURCELOCKED
    )));
    if refused {
        BrokerError::Topology {
            what,
            detail: error.to_string(),
        }
    } else {
        BrokerError::Channel(error)
    }
}

/// The broker's answer to a declare whose arguments differ from the queue's.
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
        if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_app_names_its_own_jobs_queue_and_the_fleets_dead_letter_queue() {
        let names = QueueNames::in_fleet("bw", 1400000001);
        assert_eq!(names.jobs, "bw.1400000001.jobs");
        assert_eq!(names.dlx, "bw.1400000001.dlx");
        assert_eq!(names.urgent, "bw.1400000001.urgent");
        assert_eq!(names.dead, "bw.dead");
        assert_eq!(names.own_dead().as_deref(), Some("bw.1400000001.dead"));
        assert_eq!(
            names.dead_route(),
            DeadRoute {
                exchange: "bw.1400000001.dlx".into(),
                routing_key: "bw.1400000001.jobs".into(),
            }
        );
        let single = QueueNames::new("bw");
        assert_eq!(single.dead, "bw.dead");
        assert_eq!(single.own_dead(), None, "a single app's queue is its own");
        assert_eq!(single.dead_queue().owner, None);
    }

    #[test]
    fn a_shared_dead_letter_is_the_apps_whose_jobs_queue_it_came_from() {
        let a = QueueNames::in_fleet("bw", 1).dead_queue();
        let b = QueueNames::in_fleet("bw", 2).dead_queue();
        // Published by the worker, or dead-lettered by the broker after the
        // default exchange: the routing key is the jobs queue.
        assert!(a.owns("bw.1.jobs", None));
        assert!(a.owns("bw.1.urgent", None));
        assert!(!b.owns("bw.1.jobs", None));
        assert!(!b.owns("bw.1.urgent", None));
        assert!(a.owns("gifts", Some("bw.1.urgent")));
        assert!(!b.owns("gifts", Some("bw.1.urgent")));
        // A producer's header cannot claim another app's dead letter.
        assert!(!b.owns("bw.1.jobs", Some("bw.2.jobs")));
        // Routed by an exchange of the operator's under another key: the
        // queue the broker dead-lettered it from.
        assert!(a.owns("gifts", Some("bw.1.jobs")));
        assert!(!b.owns("gifts", Some("bw.1.jobs")));
        assert!(a.owns("gifts.jobs", Some("bw.1.jobs")));
        assert!(!a.owns("gifts", None), "nobody's is no app's");
        // An app's own queue holds only its own.
        assert!(QueueNames::new("bw.1").dead_queue().owns("anything", None));
    }

    #[test]
    fn the_queues_own_delivery_limit_is_read_from_the_refusal() {
        let refusal = "protocol error: AMQP soft error: PRECONDITION-FAILED: PRECONDITION_FAILED - \
            inequivalent arg 'x-delivery-limit' for queue 'q.jobs' in vhost '/': received '1000' but current is '20'";
        assert_eq!(current_delivery_limit(refusal), Some(20));
        let other = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q.jobs' in vhost '/': \
            received 'quorum' but current is 'classic'";
        assert_eq!(current_delivery_limit(other), None);
        assert_eq!(
            current_delivery_limit("inequivalent arg 'x-delivery-limit': current is 'none'"),
            None
        );
    }

    #[test]
    fn only_a_refusal_of_the_topology_stops_the_worker_other_failures_are_retried() {
        let refusal = |kind: AMQPSoftError| {
            let error = lapin::protocol::AMQPError::new(AMQPErrorKind::Soft(kind), "no".into());
            lapin::Error::from(lapin::ErrorKind::ProtocolError(error))
        };
        for kind in [
            AMQPSoftError::PRECONDITIONFAILED,
            AMQPSoftError::ACCESSREFUSED,
            AMQPSoftError::RESOURCELOCKED,
        ] {
            assert!(matches!(
                declare_failed("queue q".into(), refusal(kind)),
                BrokerError::Topology { .. }
            ));
        }
        // A node going down, or the connection cut mid-declare: retried.
        let cut = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(
            declare_failed("queue q".into(), cut),
            BrokerError::Channel(_)
        ));
        assert!(matches!(
            declare_failed("queue q".into(), refusal(AMQPSoftError::NOTFOUND)),
            BrokerError::Channel(_)
        ));
    }

    #[test]
    fn the_dead_letter_queue_has_a_delivery_limit_no_reader_reaches() {
        let args = dead_arguments();
        assert_eq!(
            args.inner().get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(i64::from(i32::MAX)))
        );
        assert_eq!(
            args.inner().get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
    }
}
