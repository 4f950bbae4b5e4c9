//! Who may publish: bearer tokens from a file, each for one app or for all
//! (`*`), compared in constant time and never logged, each with its own
//! request limit so that one producer cannot swamp the broker.
//!
//! The file has one token per line: the app it may publish for (an
//! SDKAppID, or `*`), a space, the token (16 characters or more). Blank
//! lines and lines starting with `#` are skipped.

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::IngestError;

/// The apps a token may publish for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    App(u64),
    All,
}

struct Token {
    /// SHA-256 of the token: compared whole, in constant time.
    digest: [u8; 32],
    scope: Scope,
}

/// The tokens and their limits.
pub struct Tokens {
    tokens: Vec<Token>,
    limiter: DefaultKeyedRateLimiter<usize>,
}

/// The shortest token accepted.
pub const MIN_TOKEN_CHARS: usize = 16;

impl Tokens {
    /// Reads the tokens file; `per_second` requests per token, with a burst
    /// of twice that.
    pub fn read(path: &Path, per_second: u32) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the tokens file {}: {e}", path.display()))?;
        Self::parse(&text, per_second).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str, per_second: u32) -> Result<Self, String> {
        let mut tokens = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The token itself is never quoted back.
            let (scope, token) = line.split_once(char::is_whitespace).ok_or_else(|| {
                format!(
                    "line {}: expected `APP TOKEN` (APP an SDKAppID or *)",
                    n + 1
                )
            })?;
            let scope = match scope {
                "*" => Scope::All,
                app => Scope::App(app.parse().map_err(|_| {
                    format!("line {}: {app:?} is neither an SDKAppID nor *", n + 1)
                })?),
            };
            let token = token.trim();
            if token.chars().count() < MIN_TOKEN_CHARS || token.contains(char::is_whitespace) {
                return Err(format!(
                    "line {}: a token has {MIN_TOKEN_CHARS} or more characters and no spaces",
                    n + 1
                ));
            }
            tokens.push(Token {
                digest: Sha256::digest(token.as_bytes()).into(),
                scope,
            });
        }
        if tokens.is_empty() {
            return Err("no token: the endpoint would refuse everyone".into());
        }
        let per_second =
            NonZeroU32::new(per_second).ok_or("the request limit must be at least 1")?;
        let burst = per_second.saturating_mul(NonZeroU32::new(2).expect("2 > 0"));
        let limiter = RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst));
        Ok(Self { tokens, limiter })
    }

    /// Checks a request's `Authorization` header for `app`, and spends one
    /// of its token's requests.
    pub fn admit(&self, authorization: Option<&str>, app: u64) -> Result<(), IngestError> {
        let presented = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(IngestError::Unauthenticated)?;
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        // Every token is compared, whichever matches.
        let mut found = None;
        for (index, token) in self.tokens.iter().enumerate() {
            if bool::from(token.digest.ct_eq(&digest)) {
                found = Some(index);
            }
        }
        let index = found.ok_or(IngestError::Unauthenticated)?;
        match self.tokens[index].scope {
            Scope::App(own) if own != app => return Err(IngestError::Forbidden(app)),
            _ => {}
        }
        self.limiter.check_key(&index).map_err(|not_yet| {
            let wait: Duration = not_yet.wait_time_from(DefaultClock::default().now());
            IngestError::Limited(wait)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# producers\n1400000000 token-for-app-one-0001\n* token-for-every-app-02\n";

    #[test]
    fn a_token_publishes_for_its_app_only_and_within_its_limit() {
        let tokens = Tokens::parse(FILE, 1).unwrap();
        let one = Some("Bearer token-for-app-one-0001");
        assert!(tokens.admit(one, 1400000000).is_ok());
        assert!(matches!(
            tokens.admit(one, 1400000001),
            Err(IngestError::Forbidden(1400000001))
        ));
        assert!(tokens
            .admit(Some("Bearer token-for-every-app-02"), 1400000001)
            .is_ok());
        for refused in [
            None,
            Some("token-for-app-one-0001"),
            Some("Bearer wrong-token-000000"),
        ] {
            assert!(matches!(
                tokens.admit(refused, 1400000000),
                Err(IngestError::Unauthenticated)
            ));
        }
        // A burst of two, then the limit.
        assert!(tokens.admit(one, 1400000000).is_ok());
        assert!(matches!(
            tokens.admit(one, 1400000000),
            Err(IngestError::Limited(_))
        ));
        assert!(
            tokens
                .admit(Some("Bearer token-for-every-app-02"), 1400000000)
                .is_ok(),
            "each token its own limit"
        );
    }

    #[test]
    fn a_bad_file_says_which_line_without_quoting_a_token() {
        let short = Tokens::parse("1 short\n", 10).err().unwrap();
        assert!(
            short.contains("line 1") && !short.contains("short\""),
            "{short}"
        );
        assert!(Tokens::parse("app token-for-app-one-0001\n", 10)
            .err()
            .unwrap()
            .contains("neither"));
        assert!(Tokens::parse("# none\n", 10)
            .err()
            .unwrap()
            .contains("no token"));
    }
}
