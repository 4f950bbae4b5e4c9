//! The sender: one attempt of a call. It signs, sends and classifies, and
//! owns the app's [`Pacer`] whose turn every attempt waits for. The outcome
//! it returns is the input of [`super::decision::decide`].

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::status::WorkerStatus;
use crate::telemetry;
use crate::tencent::classify::{Classifier, Outcome};
use crate::tencent::client::{ApiClient, ApiConfig, ApiResponse, TransportError};
use crate::tencent::usersig::Signer;

use super::call::Call;
use super::config::WorkerConfig;
use super::pacer::Pacer;

/// One attempt's answer, as the logs, metrics and dead letters tell it.
pub struct Attempt {
    /// Calls attempted with these jobs so far, this one included.
    pub number: u32,
    pub outcome: Outcome,
    pub code: Option<i64>,
    pub info: String,
}

/// Everything one attempt needs, for the app's whole life: its UserSig
/// outlives sessions, as its pace does.
pub struct Sender {
    pub pacer: Pacer,
    /// How to reach the service; its client is built on the first attempt,
    /// so an app that never sends never holds one (nor its TLS setup).
    api: ApiConfig,
    client: Option<ApiClient>,
    signer: Signer,
    classifier: Classifier,
    status: Arc<WorkerStatus>,
    /// The app, as the metrics' `sdkappid` label spells it.
    app: String,
}

impl Sender {
    pub fn new(config: &WorkerConfig, status: Arc<WorkerStatus>) -> Self {
        let app = status.app.clone();
        Self {
            pacer: Pacer::new(
                app.clone(),
                config.rate,
                config.rate_guard,
                config.slow_down.clone(),
            ),
            api: config.api.clone(),
            client: None,
            signer: Signer::new(
                config.secret_key.clone(),
                config.api.sdkappid,
                config.api.identifier.clone(),
                config.usersig_ttl,
            ),
            classifier: config.classifier.clone(),
            status,
            app,
        }
    }

    /// Signs, sends and classifies; `previous` is the outcome of the
    /// attempt before, if any. The call in flight is always finished,
    /// shutdown or not.
    pub async fn attempt(&mut self, call: &mut Call, previous: Option<&'static str>) -> Attempt {
        let usersig = self.signer.current();
        for queued in &mut call.batch.jobs {
            queued.delivery.attempts += 1;
        }
        self.count_attempt(call, previous);
        self.pacer.sent();
        let sent = Instant::now();
        let result = match self.client() {
            Ok(client) => {
                client
                    .send_broadcast(&usersig, call.batch.body.clone())
                    .await
            }
            Err(e) => Err(e),
        };
        self.pacer.answered();
        metrics::histogram!(telemetry::CALL_SECONDS, telemetry::SDKAPPID => self.app.clone())
            .record(sent.elapsed().as_secs_f64());
        let outcome = self.classifier.classify(&result);
        metrics::counter!(telemetry::CALLS, telemetry::SDKAPPID => self.app.clone(), "outcome" => outcome_label(&outcome), "code" => code_label(&result))
            .increment(1);
        let (code, info) = describe(&result);
        let failure = !matches!(outcome, Outcome::Delivered { .. });
        self.status.record_call(
            call.batch.body.len(),
            self.pacer.current_rate(),
            failure.then_some((code, info.as_str())),
        );
        Attempt {
            number: call.batch.jobs[0].delivery.attempts,
            outcome,
            code,
            info,
        }
    }

    /// The app's HTTP client, built on first use (a failure to build it is
    /// an attempt that failed in transport, retried as one).
    fn client(&mut self) -> Result<&ApiClient, TransportError> {
        if self.client.is_none() {
            self.client = Some(ApiClient::new(&self.api)?);
        }
        Ok(self.client.as_ref().expect("built above"))
    }

    /// A fresh UserSig for the next attempt (the last one expired, or a
    /// halt's probe).
    pub fn resign(&mut self) {
        self.signer.invalidate();
    }

    /// A frequency-limit answer: every send pauses and slows down.
    pub fn on_rate_limited(&mut self, min_pause: Duration) {
        self.pacer.on_rate_limited(min_pause);
    }

    fn count_attempt(&self, call: &Call, previous: Option<&'static str>) {
        let app = self.app.clone();
        match previous {
            None => {
                metrics::histogram!(telemetry::CALL_BYTES, telemetry::SDKAPPID => app.clone())
                    .record(call.batch.body.len() as f64);
                metrics::histogram!(telemetry::CALL_JOBS, telemetry::SDKAPPID => app)
                    .record(call.batch.jobs.len() as f64);
            }
            Some(after) => {
                metrics::counter!(telemetry::RETRIES, telemetry::SDKAPPID => app, "after" => after)
                    .increment(1)
            }
        }
    }
}

pub fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Delivered { .. } => "delivered",
        Outcome::Transient => "transient",
        Outcome::RateLimited { .. } => "rate_limited",
        Outcome::Resign => "resign",
        Outcome::Permanent => "permanent",
        Outcome::PermanentCall => "permanent_call",
        Outcome::AppFault => "app_fault",
    }
}

/// The ErrorCode as a label, or the kind of transport failure.
fn code_label(result: &Result<ApiResponse, TransportError>) -> String {
    match result {
        Ok(response) => response.error_code.to_string(),
        Err(TransportError::Status { status }) => format!("http_{status}"),
        Err(TransportError::Timeout) => "timeout".into(),
        Err(TransportError::Connect(_)) => "connect".into(),
        Err(TransportError::InvalidResponse(_)) => "invalid_response".into(),
        Err(TransportError::Other(_)) => "transport".into(),
    }
}

/// The ErrorCode and text of an attempt, for logs and dead letters. The text
/// of a transport error never holds the URL (see [`crate::tencent::client`]).
fn describe(result: &Result<ApiResponse, TransportError>) -> (Option<i64>, String) {
    match result {
        Ok(response) => (Some(response.error_code), response.error_info.clone()),
        Err(e) => (None, e.to_string()),
    }
}
