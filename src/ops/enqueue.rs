//! Publishing jobs for producers and operators: each line is validated exactly
//! as the worker will decode it, and only good lines are published, with a
//! `message_id` each and publisher confirms.

use std::collections::VecDeque;
use std::io::BufRead;
use std::time::{Duration, SystemTime};

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, PublisherConfirm};

use crate::broker::headers;
use crate::broker::{self, BrokerError};
use crate::clock;
use crate::pipeline::job;
use crate::pipeline::{CallRules, MAX_COALESCE_KEY_BYTES};

/// How each published job is dressed.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Set as the `x-deadline` header: now plus this.
    pub deadline_in: Option<Duration>,
    /// AMQP `expiration`: past it, RabbitMQ dead-letters the job itself
    /// (`broker:expired`) if no worker took it.
    pub expiration: Option<Duration>,
    /// Set as the `x-coalesce-key` header: a later job of the key
    /// supersedes this one while it waits.
    pub coalesce_key: Option<String>,
    /// What a call may hold, as the worker will check it.
    pub rules: CallRules,
}

/// What one line came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineResult {
    Published { line: usize, id: String },
    Invalid { line: usize, reason: String },
    Failed { line: usize, reason: String },
}

/// The totals of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub published: usize,
    pub invalid: usize,
    pub failed: usize,
}

impl Summary {
    pub fn all_published(&self) -> bool {
        self.invalid == 0 && self.failed == 0
    }
}

/// The body of a one-text broadcast, as `enqueue --text` publishes it.
pub fn text_job(text: &str, from_account: Option<&str>, cloud_custom_data: Option<&str>) -> String {
    let mut body =
        serde_json::json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}]});
    if let Some(from) = from_account {
        body["From_Account"] = from.into();
    }
    if let Some(data) = cloud_custom_data {
        body["CloudCustomData"] = data.into();
    }
    body.to_string()
}

/// A new job id: 128 random bits, hex.
pub fn new_job_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The properties of a job as `enqueue` publishes it.
pub fn job_properties(id: &str, options: &PublishOptions) -> Result<BasicProperties, String> {
    let deadline_ms = options
        .deadline_in
        .map(|deadline_in| clock::unix_ms(SystemTime::now() + deadline_in));
    let mut properties = message_properties(id, deadline_ms, options.coalesce_key.as_deref())?;
    if let Some(expiration) = options.expiration {
        properties = properties.with_expiration(expiration.as_millis().to_string().into());
    }
    Ok(properties)
}

/// A job's message as every producer of this crate dresses it (`enqueue`,
/// the ingest endpoint): its `message_id`, JSON, persistent, stamped, with
/// its deadline (`x-deadline`, unix ms) and latest-wins key when it has them.
pub fn message_properties(
    id: &str,
    deadline_ms: Option<u64>,
    coalesce_key: Option<&str>,
) -> Result<BasicProperties, String> {
    let id =
        ShortString::try_new(id).map_err(|_| "message id longer than 255 bytes".to_string())?;
    let mut properties = BasicProperties::default()
        .with_message_id(id)
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(clock::now_secs());
    let mut headers = FieldTable::default();
    if let Some(deadline) = deadline_ms {
        headers.insert(
            headers::DEADLINE.into(),
            AMQPValue::LongLongInt(i64::try_from(deadline).unwrap_or(i64::MAX)),
        );
    }
    if let Some(key) = coalesce_key {
        if key.is_empty() || key.len() > MAX_COALESCE_KEY_BYTES {
            return Err(format!(
                "a coalesce key has 1 to {MAX_COALESCE_KEY_BYTES} bytes, found {}",
                key.len()
            ));
        }
        headers.insert(
            headers::COALESCE_KEY.into(),
            AMQPValue::LongString(key.into()),
        );
    }
    if !headers.inner().is_empty() {
        properties = properties.with_headers(headers);
    }
    Ok(properties)
}

/// Publishes every valid line of `input` to `queue`, keeping up to `window`
/// confirms outstanding. Calls `report` for each line as its fate is known.
pub async fn publish_lines(
    channel: &Channel,
    queue: &str,
    input: impl BufRead,
    options: &PublishOptions,
    window: usize,
    mut report: impl FnMut(&LineResult),
) -> Result<Summary, BrokerError> {
    let mut summary = Summary::default();
    let mut outstanding: VecDeque<(usize, String, PublisherConfirm)> = VecDeque::new();
    let mut record = |result: LineResult, summary: &mut Summary| {
        match &result {
            LineResult::Published { .. } => summary.published += 1,
            LineResult::Invalid { .. } => summary.invalid += 1,
            LineResult::Failed { .. } => summary.failed += 1,
        }
        report(&result);
    };
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                record(
                    LineResult::Invalid {
                        line: number,
                        reason: format!("unreadable: {e}"),
                    },
                    &mut summary,
                );
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let body = line.trim().as_bytes();
        let id = new_job_id();
        let properties = match checked(body, &id, options) {
            Ok(properties) => properties,
            Err(reason) => {
                record(
                    LineResult::Invalid {
                        line: number,
                        reason,
                    },
                    &mut summary,
                );
                continue;
            }
        };
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .map_err(BrokerError::Channel)?;
        outstanding.push_back((number, id, confirm));
        while outstanding.len() >= window {
            let (line, id, confirm) = outstanding.pop_front().expect("not empty");
            record(confirm_result(queue, line, id, confirm).await, &mut summary);
        }
    }
    while let Some((line, id, confirm)) = outstanding.pop_front() {
        record(confirm_result(queue, line, id, confirm).await, &mut summary);
    }
    Ok(summary)
}

/// The properties of a line's job, once the line is known to be a job.
fn checked(body: &[u8], id: &str, options: &PublishOptions) -> Result<BasicProperties, String> {
    job::decode(body, None, None, &options.rules, SystemTime::now())
        .map_err(|rejection| rejection.to_string())?;
    job_properties(id, options)
}

async fn confirm_result(
    queue: &str,
    line: usize,
    id: String,
    confirm: PublisherConfirm,
) -> LineResult {
    match confirm.await {
        Ok(confirmation) => match broker::check_confirmation(queue, confirmation) {
            Ok(()) => LineResult::Published { line, id },
            Err(e) => LineResult::Failed {
                line,
                reason: e.to_string(),
            },
        },
        Err(e) => LineResult::Failed {
            line,
            reason: format!("publish failed: {e}"),
        },
    }
}
