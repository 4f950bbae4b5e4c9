//! The HTTP side of `send_broadcast_msg`: the request URL, the response, and a
//! keep-alive reqwest client with timeouts.
//!
//! The UserSig travels in the URL, and reqwest errors print their URL, so every
//! error leaving this module is rebuilt without it.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::tencent::usersig::UserSig;

/// The path of the call, relative to the base URL.
pub const SEND_BROADCAST_PATH: &str = "v4/group_open_http_svc/send_broadcast_msg";

/// Default request timeout: longer than the service's own 3 s.
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Default connect timeout.
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;

/// How to reach the service.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Scheme and host (and optionally a path prefix), e.g. `https://console.tim.qq.com`.
    pub base_url: Url,
    pub sdkappid: u64,
    /// The app admin account the UserSig is signed for.
    pub identifier: String,
    /// Must exceed the service's own 3 s, or a slow success looks like a failure.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl ApiConfig {
    pub fn new(base_url: Url, sdkappid: u64, identifier: impl Into<String>) -> Self {
        Self {
            base_url,
            sdkappid,
            identifier: identifier.into(),
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS),
        }
    }
}

/// The service's answer. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApiResponse {
    #[serde(rename = "ActionStatus", default)]
    pub action_status: String,
    #[serde(rename = "ErrorCode")]
    pub error_code: i64,
    #[serde(rename = "ErrorInfo", default)]
    pub error_info: String,
    #[serde(rename = "MsgSeq", default)]
    pub msg_seq: Option<u64>,
}

/// Why no answer from the service itself came back. None of these carries the
/// request URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("request timed out")]
    Timeout,
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("HTTP status {status}")]
    Status { status: u16 },
    #[error("answer is not a send_broadcast_msg response: {0}")]
    InvalidResponse(String),
    #[error("request failed: {0}")]
    Other(String),
}

impl TransportError {
    fn from_reqwest(err: reqwest::Error) -> Self {
        let err = err.without_url();
        if err.is_timeout() {
            return TransportError::Timeout;
        }
        let text = error_chain(&err);
        if err.is_connect() {
            TransportError::Connect(text)
        } else if err.is_body() || err.is_decode() {
            TransportError::InvalidResponse(text)
        } else {
            TransportError::Other(text)
        }
    }
}

/// An error and its sources on one line. The URL was removed from the top
/// error; the sources (hyper, io) never hold it.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A client for one app's `send_broadcast_msg`. Cheap to clone.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    endpoint: Url,
    sdkappid: u64,
    identifier: String,
}

impl ApiClient {
    pub fn new(config: &ApiConfig) -> Result<Self, TransportError> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            // The service never redirects; following one would carry the
            // UserSig to another host (and reqwest logs redirect URLs).
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(TransportError::from_reqwest)?;
        Ok(Self {
            http,
            endpoint: endpoint(&config.base_url),
            sdkappid: config.sdkappid,
            identifier: config.identifier.clone(),
        })
    }

    /// The request URL with every query parameter, `random` chosen fresh.
    pub fn request_url(&self, usersig: &UserSig) -> Url {
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair("sdkappid", &self.sdkappid.to_string())
            .append_pair("identifier", &self.identifier)
            .append_pair("usersig", usersig.expose())
            .append_pair("random", &rand::random::<u32>().to_string())
            .append_pair("contenttype", "json");
        url
    }

    /// Sends one serialized body. The body is sent byte for byte as given, so a
    /// retry is exactly the same content.
    pub async fn send_broadcast(
        &self,
        usersig: &UserSig,
        body: Vec<u8>,
    ) -> Result<ApiResponse, TransportError> {
        let response = self
            .http
            .post(self.request_url(usersig))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(TransportError::from_reqwest)?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(TransportError::from_reqwest)?;
        if !status.is_success() {
            return Err(TransportError::Status {
                status: status.as_u16(),
            });
        }
        parse_response(&bytes)
    }
}

/// Reads an answer body; anything but a well-formed response is a transport
/// error, never a panic.
pub fn parse_response(bytes: &[u8]) -> Result<ApiResponse, TransportError> {
    serde_json::from_slice(bytes).map_err(|e| TransportError::InvalidResponse(e.to_string()))
}

/// `base` joined with the call's path, whether or not `base` ends in `/`.
fn endpoint(base: &Url) -> Url {
    let mut url = base.clone();
    let path = format!(
        "{}/{SEND_BROADCAST_PATH}",
        base.path().trim_end_matches('/')
    );
    url.set_path(&path);
    url.set_query(None);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_documented_url() {
        let config = ApiConfig::new(
            Url::parse("http://127.0.0.1:9/").unwrap(),
            88888888,
            "admin",
        );
        let client = ApiClient::new(&config).unwrap();
        let url = client.request_url(&UserSig::from_string("s+g"));
        assert_eq!(url.path(), "/v4/group_open_http_svc/send_broadcast_msg");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["sdkappid", "identifier", "usersig", "random", "contenttype"]
        );
        assert_eq!(pairs[0].1, "88888888");
        assert_eq!(pairs[2].1, "s+g");
        assert!(pairs[3].1.parse::<u32>().is_ok());
        assert_eq!(pairs[4].1, "json");
        let again = client.request_url(&UserSig::from_string("s+g"));
        let randoms: Vec<String> = [url, again]
            .iter()
            .map(|u| {
                u.query_pairs()
                    .find(|(k, _)| k == "random")
                    .unwrap()
                    .1
                    .into_owned()
            })
            .collect();
        // Two draws of a u32 collide once in four billion.
        assert_ne!(randoms[0], randoms[1]);
    }

    #[test]
    fn endpoint_keeps_a_path_prefix() {
        let url = endpoint(&Url::parse("http://h/prefix/").unwrap());
        assert_eq!(
            url.path(),
            "/prefix/v4/group_open_http_svc/send_broadcast_msg"
        );
    }

    #[test]
    fn tolerates_unknown_fields_and_refuses_garbage() {
        let ok = parse_response(
            br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0,"MsgSeq":1283,"New":true}"#,
        )
        .unwrap();
        assert_eq!(ok.msg_seq, Some(1283));
        let fail =
            parse_response(br#"{"ActionStatus":"FAIL","ErrorInfo":"busy","ErrorCode":10002}"#)
                .unwrap();
        assert_eq!((fail.error_code, fail.msg_seq), (10002, None));
        for garbage in [
            &b"<html>502</html>"[..],
            b"{\"ActionStatus\":\"OK\",\"Err",
            b"",
            b"{}",
        ] {
            assert!(matches!(
                parse_response(garbage),
                Err(TransportError::InvalidResponse(_))
            ));
        }
    }
}
