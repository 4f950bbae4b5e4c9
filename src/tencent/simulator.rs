//! A local `send_broadcast_msg` that behaves as the documentation describes,
//! for tests, benchmarks and demos: the same checks in the same order, the
//! frequency limit, the 5-minute repeat filter, increasing `MsgSeq`, plus
//! endpoints of its own to read what it delivered and to inject faults.
//!
//! Its own endpoints live under `/simulator/`:
//! - `GET /simulator/stats`: counters (see [`Stats`]).
//! - `GET /simulator/deliveries?after=SEQ&limit=N`: delivered bodies, by `MsgSeq`.
//! - `POST /simulator/faults` with a [`FaultPlan`]; `DELETE /simulator/faults` clears it.
//! - `POST /simulator/reset`: forget deliveries, repeats and counters.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::tencent::body::{parse_body, BodyError};
use crate::tencent::client::{MAX_BODY_BYTES, SEND_BROADCAST_PATH};
use crate::tencent::usersig::{self, SecretKey, VerifyError};

/// The one app the simulator hosts.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    pub sdkappid: u64,
    /// The app admin: the only identifier allowed to broadcast.
    pub identifier: String,
    pub secret_key: SecretKey,
    /// Calls per second: at most `floor(rate)` accepted calls in any one-second
    /// window; below 1, one call in any `1/rate`-second window.
    pub rate: f64,
    pub max_body_bytes: usize,
    /// The same content with the same `Random` within this window is a repeat.
    pub repeat_window: Duration,
    /// When set, a `From_Account` outside it answers 70107 (account not imported).
    pub known_accounts: Option<HashSet<String>>,
    /// Keep each delivered body for `/simulator/deliveries` (off for long benchmarks).
    pub keep_bodies: bool,
}

impl SimulatorConfig {
    pub fn new(sdkappid: u64, identifier: impl Into<String>, secret_key: SecretKey) -> Self {
        Self {
            sdkappid,
            identifier: identifier.into(),
            secret_key,
            rate: 1.0,
            max_body_bytes: MAX_BODY_BYTES,
            repeat_window: Duration::from_secs(300),
            known_accounts: None,
            keep_bodies: true,
        }
    }
}

/// A fault to apply to one API call instead of (or around) the normal answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Answer this ErrorCode without delivering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    /// Answer this HTTP status with an HTML page, without delivering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Process the call, then hold the answer this long (a slow way back: a
    /// client that times out has in fact been delivered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Drop the connection without an answer, `before` or `after` processing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<DropPoint>,
    /// Process the call, then answer with bytes that are not JSON.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub garbage: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DropPoint {
    Before,
    After,
}

/// Which calls get a fault. A scripted fault is used first, one per call; then
/// `always`; then, with `probability`, one of `random_faults` picked at random.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPlan {
    /// One entry per call, in order; an entry of `{}` lets that call through.
    #[serde(default)]
    pub script: VecDeque<Fault>,
    #[serde(default)]
    pub always: Option<Fault>,
    #[serde(default)]
    pub probability: f64,
    #[serde(default)]
    pub random_faults: Vec<Fault>,
    /// A call whose raw body contains a rule's text gets its fault, every
    /// time, before any of the above (a job the service will never accept).
    #[serde(default)]
    pub rules: Vec<FaultRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    pub body_contains: String,
    pub fault: Fault,
}

impl FaultPlan {
    fn next(&mut self, body: &[u8]) -> Option<Fault> {
        if let Some(rule) = self
            .rules
            .iter()
            .find(|rule| contains(body, rule.body_contains.as_bytes()))
        {
            return Some(rule.fault.clone());
        }
        if let Some(fault) = self.script.pop_front() {
            return Some(fault);
        }
        if let Some(fault) = &self.always {
            return Some(fault.clone());
        }
        if self.probability > 0.0
            && !self.random_faults.is_empty()
            && rand::random::<f64>() < self.probability
        {
            let i = rand::random_range(0..self.random_faults.len());
            return Some(self.random_faults[i].clone());
        }
        None
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// One call to the API path as the simulator answered it, for
/// `/simulator/calls` (the last [`CALL_LOG_LEN`] are kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Unix time in milliseconds when the call arrived.
    pub received_at_ms: u64,
    /// The body's `Random`, when the body had one.
    pub random: Option<u32>,
    pub bytes: usize,
    /// The ErrorCode answered; absent when the answer was an HTTP error, a
    /// dropped connection or garbage.
    pub error_code: Option<i64>,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
}

pub const CALL_LOG_LEN: usize = 100_000;

/// What the simulator has seen, for `/simulator/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests to the API path.
    pub calls: u64,
    /// Messages delivered (repeats not counted).
    pub deliveries: u64,
    /// Calls answered OK but not delivered again: same content and `Random`.
    pub repeats_dropped: u64,
    /// Answers given with each ErrorCode (0 included).
    pub answers_by_code: BTreeMap<i64, u64>,
    /// Calls refused with 10023.
    pub frequency_violations: u64,
    /// Answers that were an HTTP error status.
    pub http_errors: u64,
    pub dropped_connections: u64,
    pub garbage_answers: u64,
    /// The largest request body received, in bytes.
    pub largest_body: usize,
    /// The largest body delivered, in bytes.
    pub largest_delivered_body: usize,
    /// Message elements delivered, summed over deliveries.
    pub elements_delivered: u64,
    /// Requests to other paths.
    pub other_paths: u64,
}

/// One delivered message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub msg_seq: u64,
    /// Unix time in milliseconds when the call arrived.
    pub received_at_ms: u64,
    pub bytes: usize,
    /// The request body as JSON (absent when bodies are not kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

struct State0 {
    next_msg_seq: u64,
    /// Arrival times of the calls that passed the frequency limit, newest last.
    recent_calls: VecDeque<Instant>,
    /// Content key -> (first delivery, its MsgSeq), for the repeat filter.
    seen: HashMap<[u8; 32], (Instant, u64)>,
    seen_order: VecDeque<(Instant, [u8; 32])>,
    deliveries: Vec<Delivery>,
    calls: VecDeque<CallRecord>,
    stats: Stats,
    faults: FaultPlan,
}

/// The simulator's shared state. Cheap to clone; every clone sees the same app.
#[derive(Clone)]
pub struct Simulator {
    config: Arc<SimulatorConfig>,
    state: Arc<Mutex<State0>>,
}

/// The service's answer to one call.
struct Answer {
    code: i64,
    info: String,
    msg_seq: Option<u64>,
}

impl Answer {
    fn fail(code: i64, info: impl Into<String>) -> Self {
        Self {
            code,
            info: info.into(),
            msg_seq: None,
        }
    }
}

impl Simulator {
    pub fn new(config: SimulatorConfig) -> Self {
        Self {
            config: Arc::new(config),
            state: Arc::new(Mutex::new(State0::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State0> {
        // A panic while holding the lock leaves plain counters behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Deliveries with `MsgSeq` above `after`, at most `limit`.
    pub fn deliveries(&self, after: u64, limit: usize) -> Vec<Delivery> {
        let state = self.lock();
        // MsgSeq starts at 1 and increases by one per delivery, so it indexes.
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(state.deliveries.len());
        state.deliveries[start..]
            .iter()
            .take(limit)
            .cloned()
            .collect()
    }

    /// The most recent calls, oldest first.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.lock().calls.iter().cloned().collect()
    }

    pub fn set_faults(&self, plan: FaultPlan) {
        self.lock().faults = plan;
    }

    pub fn reset(&self) {
        *self.lock() = State0::new();
    }

    /// The HTTP routes: the API path, other `/v4/` paths, and `/simulator/*`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/simulator/stats", get(stats_handler))
            .route("/simulator/deliveries", get(deliveries_handler))
            .route("/simulator/calls", get(calls_handler))
            .route(
                "/simulator/faults",
                post(set_faults_handler).delete(clear_faults_handler),
            )
            .route("/simulator/reset", post(reset_handler))
            .fallback(api_handler)
            .with_state(self.clone())
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Binds `addr` (port 0 for any) and serves in the background until the
    /// returned handle is dropped. For tests and benchmarks: it runs on a
    /// thread and runtime of its own, as a separate server would, so its
    /// clock (the frequency limit) does not wait on the caller's tasks.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<SpawnedSimulator> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let sim = self.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("simulator")
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("simulator".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    let _ = sim
                        .serve(listener, async move {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })?;
        Ok(SpawnedSimulator {
            simulator: self,
            addr,
            _stop: stop,
        })
    }

    /// The checks of the service, in order, for one call that arrived `at`.
    fn process(&self, query: Option<&str>, body: &[u8], at: Instant) -> Answer {
        let config = &*self.config;
        let params: HashMap<String, String> =
            url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .into_owned()
                .fold(HashMap::new(), |mut map, (k, v)| {
                    map.entry(k).or_insert(v);
                    map
                });
        let param = |name: &str| {
            params
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };

        let sdkappid = match param("sdkappid") {
            None => return Answer::fail(60012, "sdkappid is missing from the URL"),
            Some(v) => match v.parse::<u64>() {
                Ok(id) => id,
                Err(_) => return Answer::fail(60006, "sdkappid is not a valid SDKAppID"),
            },
        };
        if sdkappid != config.sdkappid {
            return Answer::fail(70020, "SDKAppID not found");
        }
        let Some(identifier) = param("identifier") else {
            return Answer::fail(60002, "identifier is missing from the URL");
        };
        let Some(sig) = param("usersig") else {
            return Answer::fail(60002, "usersig is missing from the URL");
        };
        match param("random").map(str::parse::<u32>) {
            Some(Ok(_)) => {}
            Some(Err(_)) => return Answer::fail(60002, "random must be a 32-bit unsigned integer"),
            None => return Answer::fail(60002, "random is missing from the URL"),
        }
        if param("contenttype") != Some("json") {
            return Answer::fail(60002, "contenttype must be json");
        }
        if let Err(e) = usersig::verify(sig, &config.secret_key, sdkappid, identifier, unix_now()) {
            let code = match e {
                VerifyError::Malformed(_) => 70003,
                VerifyError::OtherApp { .. } => 70014,
                VerifyError::OtherIdentifier => 70013,
                VerifyError::Expired { .. } => 70001,
                VerifyError::BadSignature => 70009,
            };
            return Answer::fail(code, e.to_string());
        }
        if identifier != config.identifier {
            return Answer::fail(10007, "the operating account is not the app admin");
        }

        let mut state = self.lock();
        if !state.admit(config.rate, at) {
            state.stats.frequency_violations += 1;
            return Answer::fail(10023, "the frequency limit for message sending is reached");
        }
        drop(state);

        if body.len() > config.max_body_bytes {
            return Answer::fail(
                80002,
                format!(
                    "message body is {} bytes, over {}",
                    body.len(),
                    config.max_body_bytes
                ),
            );
        }
        let parsed = match parse_body(body) {
            Ok(parsed) => parsed,
            Err(BodyError::NotJson(e)) => {
                return Answer::fail(60003, format!("JSON parse error: {e}"))
            }
            Err(BodyError::Invalid(e)) => return Answer::fail(10004, e),
        };
        let Some(random) = parsed.random else {
            return Answer::fail(10004, "Random is missing");
        };
        if let (Some(known), Some(from)) = (&config.known_accounts, &parsed.from_account) {
            if !known.contains(from) {
                return Answer::fail(70107, "From_Account is not imported");
            }
        }

        let key = content_key(
            &parsed.from_account,
            &parsed.msg_body,
            &parsed.cloud_custom_data,
            random,
        );
        let mut state = self.lock();
        state.forget_before(at, config.repeat_window);
        if let Some(&(_, msg_seq)) = state.seen.get(&key) {
            state.stats.repeats_dropped += 1;
            return Answer {
                code: 0,
                info: String::new(),
                msg_seq: Some(msg_seq),
            };
        }
        let msg_seq = state.next_msg_seq;
        state.next_msg_seq += 1;
        state.seen.insert(key, (at, msg_seq));
        state.seen_order.push_back((at, key));
        state.stats.deliveries += 1;
        state.stats.elements_delivered += parsed.msg_body.len() as u64;
        state.stats.largest_delivered_body = state.stats.largest_delivered_body.max(body.len());
        let body_json = config
            .keep_bodies
            .then(|| serde_json::from_slice(body).unwrap_or(Value::Null));
        state.deliveries.push(Delivery {
            msg_seq,
            received_at_ms: unix_now_ms(),
            bytes: body.len(),
            body: body_json,
        });
        Answer {
            code: 0,
            info: String::new(),
            msg_seq: Some(msg_seq),
        }
    }
}

impl State0 {
    fn new() -> Self {
        Self {
            next_msg_seq: 1,
            recent_calls: VecDeque::new(),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            deliveries: Vec::new(),
            calls: VecDeque::new(),
            stats: Stats::default(),
            faults: FaultPlan::default(),
        }
    }

    /// The frequency limit: admits and records the call, or refuses it.
    fn admit(&mut self, rate: f64, at: Instant) -> bool {
        let (window, limit) = if rate >= 1.0 {
            (Duration::from_secs(1), rate.floor() as usize)
        } else {
            (Duration::from_secs_f64(1.0 / rate.max(1e-9)), 1)
        };
        while let Some(&first) = self.recent_calls.front() {
            if at.duration_since(first) >= window {
                self.recent_calls.pop_front();
            } else {
                break;
            }
        }
        if self.recent_calls.len() >= limit {
            return false;
        }
        self.recent_calls.push_back(at);
        true
    }

    fn forget_before(&mut self, at: Instant, window: Duration) {
        while let Some(&(first, key)) = self.seen_order.front() {
            if at.duration_since(first) >= window {
                self.seen_order.pop_front();
                self.seen.remove(&key);
            } else {
                break;
            }
        }
    }
}

/// What makes two calls "the same message": sender, elements, custom data and
/// `Random`. Maps serialize with sorted keys, so key order does not matter.
fn content_key(
    from: &Option<String>,
    msg_body: &[Value],
    cloud_custom_data: &Option<String>,
    random: u32,
) -> [u8; 32] {
    let canonical = json!([from, msg_body, cloud_custom_data, random]).to_string();
    Sha256::digest(canonical.as_bytes()).into()
}

/// A simulator serving in the background; stops when dropped.
pub struct SpawnedSimulator {
    pub simulator: Simulator,
    pub addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl SpawnedSimulator {
    /// The base URL to give the client.
    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).expect("a socket address makes a URL")
    }
}

async fn api_handler(
    State(sim): State<Simulator>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let path = uri.path().trim_start_matches('/');
    if path != SEND_BROADCAST_PATH {
        sim.lock().stats.other_paths += 1;
        if path.starts_with("v4/") {
            return sim.answer(Answer::fail(10003, "invalid command word"));
        }
        return StatusCode::NOT_FOUND.into_response();
    }
    let fault = {
        let mut state = sim.lock();
        state.stats.calls += 1;
        state.stats.largest_body = state.stats.largest_body.max(body.len());
        state.faults.next(&body)
    };
    let mut record = CallRecord {
        received_at_ms: unix_now_ms(),
        random: body_random(&body),
        bytes: body.len(),
        error_code: None,
        fault: fault.clone(),
    };
    let fault = fault.unwrap_or_default();
    let response = if let Some(code) = fault.code {
        record.error_code = Some(code);
        sim.answer(Answer::fail(code, format!("injected fault {code}")))
    } else if let Some(status) = fault.http_status {
        sim.lock().stats.http_errors += 1;
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, "<html><body>injected error</body></html>").into_response()
    } else if fault.drop == Some(DropPoint::Before) {
        sim.drop_connection()
    } else {
        let answer = if method != Method::POST {
            Answer::fail(60002, "the HTTP method must be POST")
        } else {
            sim.process(uri.query(), &body, at)
        };
        if let Some(ms) = fault.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if fault.drop == Some(DropPoint::After) {
            sim.drop_connection()
        } else if fault.garbage {
            sim.lock().stats.garbage_answers += 1;
            (StatusCode::OK, "{\"ActionStatus\":\"OK\",\"Err").into_response()
        } else {
            record.error_code = Some(answer.code);
            sim.answer(answer)
        }
    };
    let mut state = sim.lock();
    if state.calls.len() >= CALL_LOG_LEN {
        state.calls.pop_front();
    }
    state.calls.push_back(record);
    response
}

/// The `Random` of a body, if it has one.
fn body_random(body: &[u8]) -> Option<u32> {
    #[derive(Deserialize)]
    struct OnlyRandom {
        #[serde(rename = "Random")]
        random: Option<u32>,
    }
    serde_json::from_slice::<OnlyRandom>(body).ok()?.random
}

impl Simulator {
    fn answer(&self, answer: Answer) -> Response {
        *self
            .lock()
            .stats
            .answers_by_code
            .entry(answer.code)
            .or_default() += 1;
        let mut body = json!({
            "ActionStatus": if answer.code == 0 { "OK" } else { "FAIL" },
            "ErrorInfo": answer.info,
            "ErrorCode": answer.code,
        });
        if let Some(seq) = answer.msg_seq {
            body["MsgSeq"] = seq.into();
        }
        Json(body).into_response()
    }

    /// A response whose body fails at once: hyper closes the connection
    /// without completing the answer.
    fn drop_connection(&self) -> Response {
        self.lock().stats.dropped_connections += 1;
        let failing = futures_util::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "connection dropped by fault injection",
            ))
        });
        Response::new(Body::from_stream(failing))
    }
}

async fn calls_handler(State(sim): State<Simulator>) -> Json<Vec<CallRecord>> {
    Json(sim.calls())
}

async fn stats_handler(State(sim): State<Simulator>) -> Json<Stats> {
    Json(sim.stats())
}

#[derive(Deserialize)]
struct DeliveriesQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn deliveries_handler(
    State(sim): State<Simulator>,
    Query(q): Query<DeliveriesQuery>,
) -> Json<Vec<Delivery>> {
    Json(sim.deliveries(q.after, q.limit.unwrap_or(10_000)))
}

async fn set_faults_handler(
    State(sim): State<Simulator>,
    Json(plan): Json<FaultPlan>,
) -> StatusCode {
    sim.set_faults(plan);
    StatusCode::NO_CONTENT
}

async fn clear_faults_handler(State(sim): State<Simulator>) -> StatusCode {
    sim.set_faults(FaultPlan::default());
    StatusCode::NO_CONTENT
}

async fn reset_handler(State(sim): State<Simulator>) -> StatusCode {
    sim.reset();
    StatusCode::NO_CONTENT
}

use crate::tencent::usersig::unix_now;

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequency_window_slides() {
        let mut state = State0::new();
        let t0 = Instant::now();
        assert!(state.admit(2.0, t0));
        assert!(state.admit(2.0, t0 + Duration::from_millis(500)));
        assert!(!state.admit(2.0, t0 + Duration::from_millis(999)));
        assert!(state.admit(2.0, t0 + Duration::from_millis(1000)));
        assert!(!state.admit(2.0, t0 + Duration::from_millis(1400)));
        assert!(state.admit(2.0, t0 + Duration::from_millis(1500)));
        // Below one call a second, the window widens.
        let mut slow = State0::new();
        assert!(slow.admit(0.5, t0));
        assert!(!slow.admit(0.5, t0 + Duration::from_millis(1999)));
        assert!(slow.admit(0.5, t0 + Duration::from_millis(2000)));
    }

    #[test]
    fn content_key_ignores_key_order_but_not_random() {
        let a: Value =
            serde_json::from_str(r#"[{"MsgType":"TIMTextElem","MsgContent":{"Text":"x"}}]"#)
                .unwrap();
        let b: Value =
            serde_json::from_str(r#"[{"MsgContent":{"Text":"x"},"MsgType":"TIMTextElem"}]"#)
                .unwrap();
        let (a, b) = (a.as_array().unwrap().clone(), b.as_array().unwrap().clone());
        assert_eq!(
            content_key(&None, &a, &None, 1),
            content_key(&None, &b, &None, 1)
        );
        assert_ne!(
            content_key(&None, &a, &None, 1),
            content_key(&None, &a, &None, 2)
        );
        assert_ne!(
            content_key(&None, &a, &None, 1),
            content_key(&Some("x".into()), &a, &None, 1)
        );
    }
}
