//! Who may use the console: whoever holds its token. A script sends it as
//! `Authorization: Bearer <token>`; a browser logs in once with it and gets
//! a session cookie that is not the token but its expiry and an HMAC of it
//! keyed by the token, so any replica with the same token accepts it and a
//! new token ends every session. Actions from a session carry a CSRF token,
//! an HMAC of the session cookie, in a hidden field. Every comparison is in
//! constant time; the token is never printed.

use std::fmt;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "bw_console";
/// How long a login lasts.
pub const SESSION_SECS: u64 = 12 * 3600;
/// The form field, and the header for API calls, that carry the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Why a console token cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("the console token is empty")]
    Empty,
    #[error("the console token must not hold whitespace or control characters")]
    Spaces,
}

/// The console's token. Its `Debug` hides it.
#[derive(Clone)]
pub struct ConsoleToken(String);

impl fmt::Debug for ConsoleToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConsoleToken(<redacted>)")
    }
}

impl ConsoleToken {
    /// The token, its surrounding whitespace (a file's newline) trimmed.
    pub fn new(text: &str) -> Result<Self, TokenError> {
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TokenError::Spaces);
        }
        Ok(Self(token.to_string()))
    }

    /// A fresh random token (32 hex digits), e.g. for a demo.
    pub fn generate() -> Self {
        Self(format!("{:032x}", rand::random::<u128>()))
    }

    /// The token itself, to hand to whoever opens the console.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// How a request proved it holds the token.
#[derive(Debug, Clone, PartialEq)]
pub enum Authed {
    Bearer,
    /// A browser session: the cookie's value, which its CSRF token is made from.
    Session(String),
}

/// The token's checks and the values made from it.
#[derive(Debug, Clone)]
pub struct Auth {
    token: ConsoleToken,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Auth {
    pub fn new(token: ConsoleToken) -> Self {
        Self { token }
    }

    fn mac(&self, purpose: &str, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.token.0.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(value.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `presented` is the token, in time that depends on neither
    /// (both are hashed first, so lengths do not show either).
    pub fn token_matches(&self, presented: &str) -> bool {
        let a = Sha256::digest(presented.as_bytes());
        let b = Sha256::digest(self.token.0.as_bytes());
        a.ct_eq(&b).into()
    }

    /// A session cookie's value that expires at `expires` (unix seconds).
    pub fn session_value(&self, expires: u64) -> String {
        format!("v1.{expires}.{}", self.mac("session", &expires.to_string()))
    }

    /// Whether a session cookie's value is one this token made and has
    /// not expired at `now` (unix seconds).
    pub fn session_valid(&self, value: &str, now: u64) -> bool {
        let mut parts = value.splitn(3, '.');
        let (Some("v1"), Some(expires), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let Ok(at) = expires.parse::<u64>() else {
            return false;
        };
        let expected = self.mac("session", &at.to_string());
        let matches: bool = expected.as_bytes().ct_eq(tag.as_bytes()).into();
        matches && at > now
    }

    /// The CSRF token of a session.
    pub fn csrf(&self, session: &str) -> String {
        self.mac("csrf", session)
    }

    pub fn csrf_valid(&self, session: &str, presented: &str) -> bool {
        self.csrf(session)
            .as_bytes()
            .ct_eq(presented.as_bytes())
            .into()
    }

    /// How the request proves it holds the token, if it does. A bearer
    /// header that is wrong is refused even with a good cookie.
    pub fn check(&self, headers: &HeaderMap, now: u64) -> Option<Authed> {
        if let Some(value) = headers.get(AUTHORIZATION) {
            let presented = value.to_str().ok()?.strip_prefix("Bearer ")?;
            return self
                .token_matches(presented.trim())
                .then_some(Authed::Bearer);
        }
        let session = cookie(headers, SESSION_COOKIE)?;
        self.session_valid(&session, now)
            .then_some(Authed::Session(session))
    }

    /// Whether a request may act: bearer requests may; a session needs its
    /// CSRF token.
    pub fn may_act(&self, authed: &Authed, presented_csrf: Option<&str>) -> bool {
        match authed {
            Authed::Bearer => true,
            Authed::Session(session) => {
                presented_csrf.is_some_and(|csrf| self.csrf_valid(session, csrf))
            }
        }
    }
}

/// The value of one cookie of the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

/// The `Set-Cookie` that logs a browser in.
pub fn login_cookie(value: &str) -> String {
    format!("{SESSION_COOKIE}={value}; Path=/; Max-Age={SESSION_SECS}; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` that logs it out.
pub fn logout_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Lets through only requests that hold the token, with how they did in
/// their extensions; the rest get 401 and the login form (or, under
/// `/api/`, a JSON error), which says nothing else.
pub(super) async fn require(
    State(ctx): State<super::Ctx>,
    mut request: Request,
    next: Next,
) -> Response {
    match ctx.console.auth().check(request.headers(), unix_now()) {
        Some(authed) => {
            request.extensions_mut().insert(authed);
            next.run(request).await
        }
        None => super::unauthorized(request.uri()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth() -> Auth {
        Auth::new(ConsoleToken::new(" s3cret-token\n").unwrap())
    }

    #[test]
    fn tokens_are_trimmed_and_checked() {
        assert_eq!(ConsoleToken::new("  \n").unwrap_err(), TokenError::Empty);
        assert_eq!(ConsoleToken::new("a b").unwrap_err(), TokenError::Spaces);
        assert!(!format!("{:?}", ConsoleToken::new("zz").unwrap()).contains("zz"));
        assert!(auth().token_matches("s3cret-token"));
        assert!(!auth().token_matches("s3cret-toke"));
        assert!(!auth().token_matches(""));
        assert_ne!(ConsoleToken::generate().0, ConsoleToken::generate().0);
    }

    #[test]
    fn a_session_is_the_expiry_and_its_hmac_never_the_token() {
        let (a, now) = (auth(), 1_000_000);
        let value = a.session_value(now + 60);
        assert!(!value.contains("s3cret"));
        assert!(a.session_valid(&value, now));
        assert!(!a.session_valid(&value, now + 60), "expired");
        // Another token's session, a changed expiry, garbage: refused.
        let other = Auth::new(ConsoleToken::new("other").unwrap());
        assert!(!other.session_valid(&value, now));
        let stretched = value.replacen(&(now + 60).to_string(), &(now + 9999).to_string(), 1);
        assert!(!a.session_valid(&stretched, now));
        for bad in [
            "",
            "v1",
            "v1.x.y",
            "v2.99999999999.00",
            &value[..value.len() - 1],
        ] {
            assert!(!a.session_valid(bad, now), "{bad:?}");
        }
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let a = auth();
        let (one, two) = (a.session_value(10), a.session_value(20));
        let csrf = a.csrf(&one);
        assert!(a.csrf_valid(&one, &csrf));
        assert!(!a.csrf_valid(&two, &csrf));
        assert!(!a.csrf_valid(&one, ""));
        let session = Authed::Session(one.clone());
        assert!(a.may_act(&session, Some(&csrf)));
        assert!(!a.may_act(&session, None));
        assert!(a.may_act(&Authed::Bearer, None));
    }

    #[test]
    fn requests_prove_the_token_by_bearer_or_cookie() {
        let (a, now) = (auth(), 1_000);
        let mut headers = HeaderMap::new();
        assert_eq!(a.check(&headers, now), None);
        let session = a.session_value(now + 10);
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("x=1; {SESSION_COOKIE}={session}")).unwrap(),
        );
        assert_eq!(a.check(&headers, now), Some(Authed::Session(session)));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer wrong"));
        assert_eq!(a.check(&headers, now), None, "a wrong bearer is refused");
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret-token"),
        );
        assert_eq!(a.check(&headers, now), Some(Authed::Bearer));
        assert!(login_cookie("v").contains("HttpOnly; SameSite=Strict"));
        assert!(logout_cookie().contains("Max-Age=0"));
    }
}
