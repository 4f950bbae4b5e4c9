//! The service's checks for one call, in the documented order: URL
//! parameters, UserSig, admin, frequency limit, size, body (its fields and
//! elements, then one `TIMCustomElem` at most), `Random`, accounts; then the
//! repeat filter and delivery. The first check that fails gives the answer.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::Value;

use super::app::{RepeatBy, Simulator, SimulatorConfig};
use super::state::{content_key, random_key, Delivery};
use crate::clock;
use crate::tencent::elements::{check_one_custom, parse_body, BodyError, ParsedBody};
use crate::tencent::usersig::{self, VerifyError};

/// The service's answer to one call.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) code: i64,
    pub(super) info: String,
    pub(super) msg_seq: Option<u64>,
}

impl Answer {
    pub(super) fn fail(code: i64, info: impl Into<String>) -> Self {
        Self {
            code,
            info: info.into(),
            msg_seq: None,
        }
    }

    fn ok(msg_seq: u64) -> Self {
        Self {
            code: 0,
            info: String::new(),
            msg_seq: Some(msg_seq),
        }
    }
}

impl Simulator {
    /// The checks of the service, in order, for one call that arrived `at`.
    pub(super) fn process(&self, query: Option<&str>, body: &[u8], at: Instant) -> Answer {
        match self.check(query, body, at) {
            Ok((parsed, random)) => self.deliver(&parsed, random, body, at),
            Err(refusal) => refusal,
        }
    }

    /// Every check before delivery; gives the body and its `Random` when all pass.
    fn check(
        &self,
        query: Option<&str>,
        body: &[u8],
        at: Instant,
    ) -> Result<(ParsedBody, u32), Answer> {
        let config = &*self.config;
        let params = UrlParams::parse(query);
        let caller = check_url(config, &params)?;
        check_usersig(config, &caller)?;
        check_admin(config, &caller)?;
        self.check_frequency(at)?;
        check_size(config, body)?;
        let (parsed, random) = check_body(body)?;
        check_account(config, &parsed)?;
        Ok((parsed, random))
    }

    /// The frequency limit; a refused call still counts as a violation.
    fn check_frequency(&self, at: Instant) -> Result<(), Answer> {
        let mut state = self.lock();
        if !state.admit(self.config.rate, at) {
            state.stats.frequency_violations += 1;
            return Err(Answer::fail(
                10023,
                "the frequency limit for message sending is reached",
            ));
        }
        Ok(())
    }

    /// Delivers the message, unless it repeats one delivered within the
    /// repeat window: then it answers OK with that delivery's `MsgSeq`.
    fn deliver(&self, parsed: &ParsedBody, random: u32, body: &[u8], at: Instant) -> Answer {
        let config = &*self.config;
        let key = repeat_key(config.repeat_by, parsed, random);
        let mut state = self.lock();
        state.forget_before(at, config.repeat_window);
        if let Some(msg_seq) = state.repeat_of(&key) {
            state.stats.repeats_dropped += 1;
            return Answer::ok(msg_seq);
        }
        let msg_seq = state.assign_msg_seq(key, at);
        state.stats.deliveries += 1;
        state.stats.elements_delivered += parsed.msg_body.len() as u64;
        state.stats.largest_delivered_body = state.stats.largest_delivered_body.max(body.len());
        let body_json = config
            .keep_bodies
            .then(|| serde_json::from_slice(body).unwrap_or(Value::Null));
        let raw_body = config
            .keep_bodies
            .then(|| String::from_utf8_lossy(body).into_owned());
        state.deliveries.push(Delivery {
            msg_seq,
            received_at_ms: clock::now_ms(),
            bytes: body.len(),
            body: body_json,
            raw_body,
        });
        Answer::ok(msg_seq)
    }
}

/// The repeat filter's key for a call, by the configured reading.
fn repeat_key(by: RepeatBy, parsed: &ParsedBody, random: u32) -> [u8; 32] {
    match by {
        RepeatBy::ContentAndRandom => content_key(
            &parsed.from_account,
            &parsed.msg_body,
            &parsed.cloud_custom_data,
            random,
        ),
        RepeatBy::Random => random_key(random),
    }
}

/// The URL's query parameters: the first of a repeated name wins, and an
/// empty value counts as missing.
pub(super) struct UrlParams(HashMap<String, String>);

impl UrlParams {
    pub(super) fn parse(query: Option<&str>) -> Self {
        let params = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .fold(HashMap::new(), |mut map, (k, v)| {
                map.entry(k).or_insert(v);
                map
            });
        Self(params)
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Who the URL says is calling.
struct Caller<'a> {
    sdkappid: u64,
    identifier: &'a str,
    usersig: &'a str,
}

/// The URL's `sdkappid`: present and a number. Whether it names an app is
/// for the caller to say, with [`unknown_app`].
pub(super) fn url_sdkappid(params: &UrlParams) -> Result<u64, Answer> {
    match params.get("sdkappid") {
        None => Err(Answer::fail(60012, "sdkappid is missing from the URL")),
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| Answer::fail(60006, "sdkappid is not a valid SDKAppID")),
    }
}

/// The answer to a call for an SDKAppID the service does not host.
pub(super) fn unknown_app() -> Answer {
    Answer::fail(70020, "SDKAppID not found")
}

/// The URL parameters: present, well formed, and for this app.
fn check_url<'a>(config: &SimulatorConfig, params: &'a UrlParams) -> Result<Caller<'a>, Answer> {
    let sdkappid = url_sdkappid(params)?;
    if sdkappid != config.sdkappid {
        return Err(unknown_app());
    }
    let Some(identifier) = params.get("identifier") else {
        return Err(Answer::fail(60002, "identifier is missing from the URL"));
    };
    let Some(usersig) = params.get("usersig") else {
        return Err(Answer::fail(60002, "usersig is missing from the URL"));
    };
    match params.get("random").map(str::parse::<u32>) {
        Some(Ok(_)) => {}
        Some(Err(_)) => {
            return Err(Answer::fail(
                60002,
                "random must be a 32-bit unsigned integer",
            ))
        }
        None => return Err(Answer::fail(60002, "random is missing from the URL")),
    }
    if params.get("contenttype") != Some("json") {
        return Err(Answer::fail(60002, "contenttype must be json"));
    }
    Ok(Caller {
        sdkappid,
        identifier,
        usersig,
    })
}

/// The UserSig: signed with the app's key, for this app and identifier, unexpired.
fn check_usersig(config: &SimulatorConfig, caller: &Caller) -> Result<(), Answer> {
    let verified = usersig::verify(
        caller.usersig,
        &config.secret_key,
        caller.sdkappid,
        caller.identifier,
        clock::now_secs(),
    );
    let Err(e) = verified else {
        return Ok(());
    };
    let code = match e {
        VerifyError::Malformed(_) => 70003,
        VerifyError::OtherApp { .. } => 70014,
        VerifyError::OtherIdentifier => 70013,
        VerifyError::Expired { .. } => 70001,
        VerifyError::BadSignature => 70009,
    };
    Err(Answer::fail(code, e.to_string()))
}

/// Only the app admin may broadcast.
fn check_admin(config: &SimulatorConfig, caller: &Caller) -> Result<(), Answer> {
    if caller.identifier != config.identifier {
        return Err(Answer::fail(
            10007,
            "the operating account is not the app admin",
        ));
    }
    Ok(())
}

fn check_size(config: &SimulatorConfig, body: &[u8]) -> Result<(), Answer> {
    if body.len() > config.max_body_bytes {
        return Err(Answer::fail(
            80002,
            format!(
                "message body is {} bytes, over {}",
                body.len(),
                config.max_body_bytes
            ),
        ));
    }
    Ok(())
}

/// The body: JSON, valid by the element rules, at most one custom element
/// ("Message Formats"), and with a `Random`.
fn check_body(body: &[u8]) -> Result<(ParsedBody, u32), Answer> {
    let parsed = parse_body(body).map_err(|e| match e {
        BodyError::NotJson(e) => Answer::fail(60003, format!("JSON parse error: {e}")),
        BodyError::Invalid(e) => Answer::fail(10004, e),
    })?;
    check_one_custom(&parsed.msg_body).map_err(|e| Answer::fail(10004, e))?;
    let Some(random) = parsed.random else {
        return Err(Answer::fail(10004, "Random is missing"));
    };
    Ok((parsed, random))
}

/// When the app lists its accounts, the sender must be one of them.
fn check_account(config: &SimulatorConfig, parsed: &ParsedBody) -> Result<(), Answer> {
    if let (Some(known), Some(from)) = (&config.known_accounts, &parsed.from_account) {
        if !known.contains(from) {
            return Err(Answer::fail(70107, "From_Account is not imported"));
        }
    }
    Ok(())
}
