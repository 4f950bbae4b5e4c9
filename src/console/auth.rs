//! Who may use the console: whoever holds its token. A script sends it as
//! `Authorization: Bearer <token>`; a browser logs in once with it and gets
//! a session cookie that is not the token but its expiry, a random session
//! id and an HMAC of both keyed by the token, so any replica with the same
//! token accepts it and a new token ends every session (a logout ends one:
//! see [`super::sessions`]). Actions from a session carry a CSRF token, an
//! HMAC of the session cookie, in a hidden field. Every comparison is in
//! constant time; neither the token nor a session is ever printed.

use std::fmt;

use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::HeaderMap;
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

/// A browser session, from a cookie this token made. Its `Debug` hides
/// the cookie's value.
#[derive(Clone, PartialEq)]
pub struct Session {
    /// The cookie's value, which its CSRF token is made from.
    pub value: String,
    /// The random id a logout ends it by.
    pub id: String,
    /// Unix seconds.
    pub expires: u64,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Session(<redacted>, expires {})", self.expires)
    }
}

/// How a request proved it holds the token.
#[derive(Debug, Clone, PartialEq)]
pub enum Authed {
    Bearer,
    Session(Session),
}

/// What a request presents, before a session's revocation is looked up.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    /// An `Authorization` header: whether it is `Bearer` and the token.
    Bearer { right: bool },
    /// A session cookie this token made, not yet expired.
    Session(Session),
    /// Neither (or a cookie that is not valid: expired, forged, old).
    Nothing,
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

    /// A new session's cookie value, expiring at `expires` (unix seconds),
    /// with a fresh random id: `v2.{expires}.{id}.{hmac}`.
    pub fn session_value(&self, expires: u64) -> String {
        let id = format!("{:032x}", rand::random::<u128>());
        let signed = format!("{expires}.{id}");
        format!("v2.{signed}.{}", self.mac("session", &signed))
    }

    /// The session of a cookie value this token made that has not expired
    /// at `now` (unix seconds); none for anything else (earlier formats
    /// included: their holders log in again).
    pub fn session(&self, value: &str, now: u64) -> Option<Session> {
        let mut parts = value.splitn(4, '.');
        let (Some("v2"), Some(expires), Some(id), Some(tag)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let at = expires.parse::<u64>().ok()?;
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let expected = self.mac("session", &format!("{at}.{id}"));
        let matches: bool = expected.as_bytes().ct_eq(tag.as_bytes()).into();
        (matches && at > now).then(|| Session {
            value: value.to_string(),
            id: id.to_string(),
            expires: at,
        })
    }

    /// Whether a session cookie's value is one this token made and has
    /// not expired at `now` (its revocation aside).
    pub fn session_valid(&self, value: &str, now: u64) -> bool {
        self.session(value, now).is_some()
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

    /// What the request presents. An `Authorization` header decides alone:
    /// a wrong one is refused even with a good cookie.
    pub fn credential(&self, headers: &HeaderMap, now: u64) -> Credential {
        if let Some(value) = headers.get(AUTHORIZATION) {
            let presented = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer "));
            let right = presented.is_some_and(|token| self.token_matches(token.trim()));
            return Credential::Bearer { right };
        }
        match cookie(headers, SESSION_COOKIE).and_then(|value| self.session(&value, now)) {
            Some(session) => Credential::Session(session),
            None => Credential::Nothing,
        }
    }

    /// Whether a request may act: bearer requests may; a session needs its
    /// CSRF token.
    pub fn may_act(&self, authed: &Authed, presented_csrf: Option<&str>) -> bool {
        match authed {
            Authed::Bearer => true,
            Authed::Session(session) => {
                presented_csrf.is_some_and(|csrf| self.csrf_valid(&session.value, csrf))
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

/// The attribute that keeps a cookie off plain http, when the console is
/// served over https.
fn secure_attr(secure: bool) -> &'static str {
    if secure {
        "; Secure"
    } else {
        ""
    }
}

/// The `Set-Cookie` that logs a browser in; `secure` over https.
pub fn login_cookie(value: &str, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={value}; Path=/; Max-Age={SESSION_SECS}; HttpOnly; SameSite=Strict{}",
        secure_attr(secure)
    )
}

/// The `Set-Cookie` that logs it out.
pub fn logout_cookie(secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        secure_attr(secure)
    )
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
    fn a_session_is_an_expiry_an_id_and_their_hmac_never_the_token() {
        let (a, now) = (auth(), 1_000_000);
        let value = a.session_value(now + 60);
        assert!(!value.contains("s3cret"));
        let session = a.session(&value, now).expect("valid");
        assert_eq!((session.expires, session.id.len()), (now + 60, 32));
        assert!(
            !format!("{session:?}").contains(&session.id),
            "Debug hides it"
        );
        assert!(!a.session_valid(&value, now + 60), "expired");
        let other = a.session_value(now + 60);
        assert_ne!(
            a.session(&other, now).unwrap().id,
            session.id,
            "ids are drawn"
        );
        // Another token's session, a changed expiry or id, garbage, and the
        // earlier format: refused.
        let by_other = Auth::new(ConsoleToken::new("other").unwrap());
        assert!(!by_other.session_valid(&value, now));
        let stretched = value.replacen(&(now + 60).to_string(), &(now + 9999).to_string(), 1);
        assert!(!a.session_valid(&stretched, now));
        let swapped = value.replacen(&session.id, &"0".repeat(32), 1);
        assert!(!a.session_valid(&swapped, now));
        let v1 = format!(
            "v1.{}.{}",
            now + 60,
            a.mac("session", &(now + 60).to_string())
        );
        for bad in [
            "",
            "v2",
            "v2.x.y.z",
            "v2.99999999999.00.00",
            v1.as_str(),
            &value[..value.len() - 1],
        ] {
            assert!(!a.session_valid(bad, now), "{bad:?}");
        }
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let a = auth();
        let (one, two) = (a.session_value(10), a.session_value(10));
        let csrf = a.csrf(&one);
        assert!(a.csrf_valid(&one, &csrf));
        assert!(!a.csrf_valid(&two, &csrf));
        assert!(!a.csrf_valid(&one, ""));
        let session = Authed::Session(a.session(&one, 0).unwrap());
        assert!(a.may_act(&session, Some(&csrf)));
        assert!(!a.may_act(&session, None));
        assert!(a.may_act(&Authed::Bearer, None));
    }

    #[test]
    fn requests_present_a_bearer_or_a_cookie() {
        let (a, now) = (auth(), 1_000);
        let mut headers = HeaderMap::new();
        assert_eq!(a.credential(&headers, now), Credential::Nothing);
        let value = a.session_value(now + 10);
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("x=1; {SESSION_COOKIE}={value}")).unwrap(),
        );
        assert_eq!(
            a.credential(&headers, now),
            Credential::Session(a.session(&value, now).unwrap())
        );
        assert_eq!(
            a.credential(&headers, now + 10),
            Credential::Nothing,
            "expired"
        );
        for wrong in ["Bearer wrong", "Basic czNjcmV0LXRva2Vu", "s3cret-token"] {
            headers.insert(AUTHORIZATION, HeaderValue::from_static(wrong));
            let refused = Credential::Bearer { right: false };
            assert_eq!(a.credential(&headers, now), refused, "{wrong}");
        }
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret-token"),
        );
        assert_eq!(
            a.credential(&headers, now),
            Credential::Bearer { right: true }
        );
        assert!(login_cookie("v", false).ends_with("HttpOnly; SameSite=Strict"));
        assert!(login_cookie("v", true).ends_with("SameSite=Strict; Secure"));
        assert!(logout_cookie(false).contains("Max-Age=0"));
        assert!(logout_cookie(true).ends_with("; Secure"));
    }
}
