//! RabbitMQ: the connection, the topology (jobs queue, dead-letter exchange and
//! queue), and publishing with confirms: jobs (`enqueue`, replay) and dead
//! letters (the worker). Nothing here decides a job's fate; it carries it out.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

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

    /// Headers that dead-lettering adds (ours and RabbitMQ's): a replay removes
    /// them, so the job goes back as it came.
    pub const ADDED_BY_DEAD_LETTERING: &[&str] = &[
        REASON,
        ERROR_CODE,
        ERROR_INFO,
        ATTEMPTS,
        FIRST_SEEN,
        DEAD_LETTERED_AT,
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

    /// Declares everything; idempotent. A queue that exists with other
    /// arguments is an error that quotes the broker, which names the argument.
    pub async fn declare(&self, connection: &Connection) -> Result<(), BrokerError> {
        // A failed declare closes its channel, so each step gets a fresh one.
        let step = |what: String| {
            move |e: lapin::Error| BrokerError::Topology {
                what,
                detail: e.to_string(),
            }
        };
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
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
        let mut dead_args = FieldTable::default();
        dead_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        channel
            .queue_declare(self.names.dead.as_str().into(), durable, dead_args)
            .await
            .map_err(step(format!("queue {}", self.names.dead)))?;
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
                durable,
                self.jobs_arguments(),
            )
            .await
            .map_err(step(format!("queue {}", self.names.jobs)))?;
        let _ = channel.close(200, "topology declared".into()).await;
        Ok(())
    }
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
    /// The original properties plus the headers that say why.
    pub fn properties(&self, original: &BasicProperties) -> BasicProperties {
        let mut table = original.headers().clone().unwrap_or_default();
        let mut set = |name: &str, value: AMQPValue| {
            table.insert(ShortString::from(name), value);
        };
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
        original.clone().with_headers(table)
    }
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
