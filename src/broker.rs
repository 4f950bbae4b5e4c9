//! RabbitMQ: the connection, the topology (jobs queue, dead-letter exchange and
//! queue), and publishing with confirms: jobs (`enqueue`, replay) and dead
//! letters (the worker). Nothing here decides a job's fate; it carries it out.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tracing::warn;

/// The headers the project reads and writes on jobs and dead letters.
pub mod headers {
    /// A job's deadline, unix milliseconds: after it, dead-lettered as expired.
    pub const DEADLINE: &str = "x-deadline";
    /// How often an operator replayed the job from the dead-letter queue.
    pub const REPLAYS: &str = "x-replays";
    /// Why a job was dead-lettered (a [`super::DeadReason`]).
    pub const REASON: &str = "x-reason";
    /// The service's ErrorCode, or void when there was none.
    pub const ERROR_CODE: &str = "x-error-code";
    /// The service's ErrorInfo, or what went wrong in words.
    pub const ERROR_INFO: &str = "x-error-info";
    /// Calls attempted with the job in them.
    pub const ATTEMPTS: &str = "x-attempts";
    /// Unix milliseconds when a worker first received the job.
    pub const FIRST_SEEN: &str = "x-first-seen";
    /// Unix milliseconds when the job was dead-lettered.
    pub const DEAD_LETTERED_AT: &str = "x-dead-lettered-at";
    /// Set by RabbitMQ when it dead-letters a message itself.
    pub const FIRST_DEATH_REASON: &str = "x-first-death-reason";
    /// The job's AMQP `expiration`, which its dead letter does not carry (a
    /// dead letter stays until an operator acts).
    pub const ORIGINAL_EXPIRATION: &str = "x-original-expiration";

    /// Headers that dead-lettering adds (ours and RabbitMQ's): a replay removes
    /// them, so the job goes back as it came.
    pub const ADDED_BY_DEAD_LETTERING: &[&str] = &[
        REASON,
        ERROR_CODE,
        ERROR_INFO,
        ATTEMPTS,
        FIRST_SEEN,
        DEAD_LETTERED_AT,
        ORIGINAL_EXPIRATION,
        "x-death",
        FIRST_DEATH_REASON,
        "x-first-death-queue",
        "x-first-death-exchange",
        "x-last-death-reason",
        "x-last-death-queue",
        "x-last-death-exchange",
        "x-delivery-count",
    ];
}

/// Why a job was dead-lettered: the `x-reason` header, and the ledger's
/// `reason` column, spelled the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// The body is not JSON.
    InvalidJson,
    /// The body is JSON but not a job the service could take.
    InvalidJob,
    /// A call with this job alone is over the byte cap.
    TooLarge,
    /// Its deadline passed before it could be sent.
    Expired,
    /// The service refused it for good.
    Rejected,
    /// Transient failures went on past the attempts or the age allowed.
    RetriesExhausted,
    /// Its call may or may not have been delivered, and can no longer be
    /// resent safely.
    InDoubt,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::InvalidJson => "invalid-json",
            DeadReason::InvalidJob => "invalid-job",
            DeadReason::TooLarge => "too-large",
            DeadReason::Expired => "expired",
            DeadReason::Rejected => "rejected",
            DeadReason::RetriesExhausted => "retries-exhausted",
            DeadReason::InDoubt => "in-doubt",
        }
    }
}

impl std::fmt::Display for DeadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The names a prefix gives: `{prefix}.jobs`, `{prefix}.dead`, `{prefix}.dlx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNames {
    pub jobs: String,
    pub dead: String,
    pub dlx: String,
}

impl QueueNames {
    pub fn new(prefix: &str) -> Self {
        Self {
            jobs: format!("{prefix}.jobs"),
            dead: format!("{prefix}.dead"),
            dlx: format!("{prefix}.dlx"),
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

/// A broker failure, said for an operator.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    // The lapin error is kept in the message, not as a source, so that the
    // broker's own words (which name a conflicting argument) print once.
    #[error("cannot connect to RabbitMQ: {0}")]
    Connect(lapin::Error),
    #[error("cannot declare {what}: {detail}; if it exists with other arguments, delete it or use another BROADCAST_QUEUE_PREFIX")]
    Topology { what: String, detail: String },
    #[error("RabbitMQ channel failed: {0}")]
    Channel(lapin::Error),
    #[error("publish to {target} was not confirmed: {detail}")]
    NotConfirmed { target: String, detail: String },
}

/// Connects, naming the connection so operators see who it is.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties)
        .await
        .map_err(BrokerError::Connect)
}

impl Topology {
    /// The jobs queue's arguments: quorum, single active consumer (one sender
    /// per app), a delivery limit, and at-least-once dead-lettering to the DLX.
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

    /// Declares everything; idempotent. A jobs queue that exists with other
    /// arguments is an error that quotes the broker, which names the argument;
    /// a dead-letter queue that does is kept (see [`Self::declare_dead`]).
    pub async fn declare(&self, connection: &Connection) -> Result<(), BrokerError> {
        // A failed declare closes its channel, so each step gets a fresh one.
        let step = |what: String| {
            move |e: lapin::Error| BrokerError::Topology {
                what,
                detail: e.to_string(),
            }
        };
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
        channel
            .queue_declare(
                self.names.jobs.as_str().into(),
                durable(),
                self.jobs_arguments(),
            )
            .await
            .map_err(step(format!("queue {}", self.names.jobs)))?;
        let _ = channel.close(200, "topology declared".into()).await;
        Ok(())
    }

    /// Declares `{prefix}.dead` with [`dead_arguments`], on channels of its
    /// own. One that exists without them (declared by an earlier version) is
    /// used as it is, with a warning: a queue's arguments cannot change, the
    /// worker only publishes to the exchange, and refusing to start would
    /// strand every existing deployment with its dead letters.
    async fn declare_dead(&self, connection: &Connection) -> Result<(), BrokerError> {
        let queue = self.names.dead.as_str();
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::Channel)?;
        let refused = match channel
            .queue_declare(queue.into(), durable(), dead_arguments())
            .await
        {
            Ok(_) => {
                let _ = channel
                    .close(200, "dead-letter queue declared".into())
                    .await;
                return Ok(());
            }
            Err(e) => e,
        };
        let refusal = BrokerError::Topology {
            what: format!("queue {queue}"),
            detail: refused.to_string(),
        };
        if !is_precondition_failed(&refused) {
            return Err(refusal);
        }
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
            return Err(refusal);
        }
        let _ = channel.close(200, "dead-letter queue exists".into()).await;
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

/// The broker's answer to a declare whose arguments differ from the queue's.
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
        if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
}

/// A channel in confirm mode.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(BrokerError::Channel)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(BrokerError::Channel)?;
    Ok(channel)
}

/// Publishes with `mandatory` and waits for the broker's confirm; a nack or a
/// return (nothing bound to take it) is an error.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    let target = if exchange.is_empty() {
        routing_key
    } else {
        exchange
    };
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await
        .map_err(BrokerError::Channel)?
        .await
        .map_err(BrokerError::Channel)?;
    check_confirmation(target, confirm)
}

/// A confirm is good only if it is an ack of a message that was not returned.
pub fn check_confirmation(target: &str, confirm: Confirmation) -> Result<(), BrokerError> {
    let not_confirmed = |detail: String| BrokerError::NotConfirmed {
        target: target.to_string(),
        detail,
    };
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(not_confirmed(format!(
            "returned as unroutable ({} {})",
            returned.reply_code, returned.reply_text
        ))),
        Confirmation::Nack(_) => Err(not_confirmed("nacked by the broker".into())),
        Confirmation::NotRequested => {
            Err(not_confirmed("the channel is not in confirm mode".into()))
        }
    }
}

/// Why a job was dead-lettered, as headers on the dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: DeadReason,
    pub error_code: Option<i64>,
    pub error_info: String,
    /// Calls attempted with this job in them.
    pub attempts: u32,
    /// Unix milliseconds when this worker first received the job.
    pub first_seen_ms: u64,
}

impl DeadLetter {
    /// The original properties plus the headers that say why, less the AMQP
    /// `expiration`: a dead letter stays until an operator acts, so the job's
    /// expiration is only recorded, in `x-original-expiration`.
    pub fn properties(&self, original: &BasicProperties) -> BasicProperties {
        let mut table = original.headers().clone().unwrap_or_default();
        let mut set = |name: &str, value: AMQPValue| {
            table.insert(ShortString::from(name), value);
        };
        if let Some(expiration) = original.expiration() {
            set(
                headers::ORIGINAL_EXPIRATION,
                AMQPValue::LongString(expiration.as_str().into()),
            );
        }
        set(
            headers::REASON,
            AMQPValue::LongString(self.reason.as_str().into()),
        );
        match self.error_code {
            Some(code) => set(headers::ERROR_CODE, AMQPValue::LongLongInt(code)),
            None => set(headers::ERROR_CODE, AMQPValue::Void),
        }
        set(
            headers::ERROR_INFO,
            AMQPValue::LongString(LongString::from(self.error_info.as_str())),
        );
        set(
            headers::ATTEMPTS,
            AMQPValue::LongLongInt(i64::from(self.attempts)),
        );
        set(
            headers::FIRST_SEEN,
            AMQPValue::LongLongInt(i64::try_from(self.first_seen_ms).unwrap_or(i64::MAX)),
        );
        set(
            headers::DEAD_LETTERED_AT,
            AMQPValue::LongLongInt(i64::try_from(unix_ms(SystemTime::now())).unwrap_or(i64::MAX)),
        );
        without_expiration(original).with_headers(table)
    }
}

/// A copy of `original` with every property but `expiration` (lapin can set a
/// property, not unset one).
fn without_expiration(original: &BasicProperties) -> BasicProperties {
    let mut copy = BasicProperties::default();
    macro_rules! keep {
        ($($get:ident => $with:ident),* $(,)?) => {
            $(if let Some(value) = original.$get() {
                copy = copy.$with(value.clone());
            })*
        };
    }
    keep!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        headers => with_headers,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        user_id => with_user_id,
        app_id => with_app_id,
        cluster_id => with_cluster_id,
    );
    copy
}

/// Reads an integer header however the producer typed it. Every time header
/// here is in unix milliseconds, so an AMQP timestamp (seconds) is scaled.
pub fn header_i64(properties: &BasicProperties, name: &str) -> Option<i64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok().map(|s| s * 1000),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).trim().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

/// Reads a string header.
pub fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_property() -> BasicProperties {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("identity".into())
            .with_headers(FieldTable::from(std::collections::BTreeMap::from([(
                ShortString::from(headers::DEADLINE),
                AMQPValue::LongLongInt(42),
            )])))
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("corr".into())
            .with_reply_to("reply".into())
            .with_expiration("5000".into())
            .with_message_id("job-1".into())
            .with_timestamp(1_700_000_000)
            .with_type("broadcast".into())
            .with_user_id("guest".into())
            .with_app_id("producer".into())
            .with_cluster_id("cluster".into())
    }

    fn dead_letter() -> DeadLetter {
        DeadLetter {
            reason: DeadReason::Rejected,
            error_code: Some(80001),
            error_info: "refused".into(),
            attempts: 1,
            first_seen_ms: 1,
        }
    }

    #[test]
    fn a_dead_letter_keeps_every_property_but_its_expiration() {
        let original = every_property();
        let dead = dead_letter().properties(&original);
        assert_eq!(dead.expiration(), &None);
        assert_eq!(
            header_str(&dead, headers::ORIGINAL_EXPIRATION).as_deref(),
            Some("5000")
        );
        assert_eq!(header_i64(&dead, headers::DEADLINE), Some(42));
        assert_eq!(
            header_str(&dead, headers::REASON).as_deref(),
            Some("rejected")
        );
        // Every other property as it came: compare all fields, serialized.
        let fields = |p: &BasicProperties| {
            let mut v = serde_json::to_value(p).unwrap();
            let map = v.as_object_mut().unwrap();
            map.remove("expiration");
            map.remove("headers");
            v
        };
        assert_eq!(fields(&dead), fields(&original));
    }

    #[test]
    fn a_job_without_expiration_gets_no_original_expiration() {
        let dead = dead_letter().properties(&BasicProperties::default());
        assert_eq!(header_str(&dead, headers::ORIGINAL_EXPIRATION), None);
        assert!(headers::ADDED_BY_DEAD_LETTERING.contains(&headers::ORIGINAL_EXPIRATION));
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
