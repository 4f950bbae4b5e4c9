//! UserSig version 2: signing the admin's credential from the app's secret key,
//! and verifying one (the simulator and `usersig verify` do).
//!
//! The format follows Tencent's reference libraries: an HMAC-SHA256 over a fixed
//! text, a JSON envelope, zlib, base64 with `+/=` swapped for `*-_`.

use std::fmt;
use std::io::{Read, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The app's secret key. Never printed: `Debug` shows a placeholder.
#[derive(Clone)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(self.0.as_bytes()).expect("HMAC takes keys of any length")
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// A signed UserSig. It is a credential, so `Debug` and `Display` hide it; use
/// [`UserSig::expose`] only where it must go on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct UserSig(String);

impl UserSig {
    pub fn from_string(sig: impl Into<String>) -> Self {
        Self(sig.into())
    }

    /// The credential itself, for the request URL and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserSig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserSig(<redacted>)")
    }
}

impl fmt::Display for UserSig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted usersig>")
    }
}

/// What a UserSig says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub identifier: String,
    pub sdkappid: u64,
    /// Unix seconds at signing.
    pub time: u64,
    /// Validity in seconds from `time`.
    pub expire: u64,
    pub userbuf: Option<Vec<u8>>,
}

impl Claims {
    /// The last second at which the UserSig is valid.
    pub fn expires_at(&self) -> u64 {
        self.time.saturating_add(self.expire)
    }
}

/// Why a UserSig was not accepted. Each cause has its own variant because each
/// maps to its own ErrorCode at the service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed UserSig: {0}")]
    Malformed(String),
    #[error("UserSig was made for SDKAppID {found}, not {expected}")]
    OtherApp { expected: u64, found: u64 },
    #[error("UserSig was made for another identifier")]
    OtherIdentifier,
    #[error("UserSig expired at unix time {expired_at}")]
    Expired { expired_at: u64 },
    #[error("UserSig signature does not match the secret key")]
    BadSignature,
}

/// The text the HMAC covers, exactly as the reference libraries build it,
/// and the userbuf as it appears there (standard base64).
fn content_to_sign(claims: &Claims) -> (String, Option<String>) {
    let userbuf_b64 = claims.userbuf.as_deref().map(|b| STANDARD.encode(b));
    let mut content = format!(
        "TLS.identifier:{}\nTLS.sdkappid:{}\nTLS.time:{}\nTLS.expire:{}\n",
        claims.identifier, claims.sdkappid, claims.time, claims.expire
    );
    if let Some(buf) = &userbuf_b64 {
        content.push_str(&format!("TLS.userbuf:{buf}\n"));
    }
    (content, userbuf_b64)
}

/// Signs a UserSig valid from `time` for `expire` seconds.
pub fn sign(key: &SecretKey, claims: &Claims) -> UserSig {
    let (content, userbuf_b64) = content_to_sign(claims);
    let mut mac = key.mac();
    mac.update(content.as_bytes());
    let sig = STANDARD.encode(mac.finalize().into_bytes());

    let mut doc = json!({
        "TLS.ver": "2.0",
        "TLS.identifier": claims.identifier,
        "TLS.sdkappid": claims.sdkappid,
        "TLS.expire": claims.expire,
        "TLS.time": claims.time,
        "TLS.sig": sig,
    });
    if let Some(buf) = userbuf_b64 {
        doc["TLS.userbuf"] = Value::String(buf);
    }
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    zlib.write_all(doc.to_string().as_bytes())
        .and_then(|_| zlib.finish())
        .map(|compressed| UserSig(to_url_safe(&STANDARD.encode(compressed))))
        .expect("compressing into memory cannot fail")
}

/// Checks a UserSig for an app and identifier at unix time `now`.
pub fn verify(
    sig: &str,
    key: &SecretKey,
    sdkappid: u64,
    identifier: &str,
    now: u64,
) -> Result<Claims, VerifyError> {
    let (claims, sig_b64) = decode(sig)?;
    if claims.sdkappid != sdkappid {
        return Err(VerifyError::OtherApp {
            expected: sdkappid,
            found: claims.sdkappid,
        });
    }
    if claims.identifier != identifier {
        return Err(VerifyError::OtherIdentifier);
    }
    if now > claims.expires_at() {
        return Err(VerifyError::Expired {
            expired_at: claims.expires_at(),
        });
    }
    let (content, _) = content_to_sign(&claims);
    let presented = STANDARD
        .decode(sig_b64.as_bytes())
        .map_err(|_| VerifyError::Malformed("TLS.sig is not base64".into()))?;
    let mut mac = key.mac();
    mac.update(content.as_bytes());
    // `verify_slice` compares in constant time.
    mac.verify_slice(&presented)
        .map_err(|_| VerifyError::BadSignature)?;
    Ok(claims)
}

/// Reads the claims of a UserSig without checking its signature, plus the
/// signature as written.
pub fn decode(sig: &str) -> Result<(Claims, String), VerifyError> {
    let malformed = |why: &str| VerifyError::Malformed(why.to_string());
    let compressed = STANDARD
        .decode(from_url_safe(sig.trim()).as_bytes())
        .map_err(|_| malformed("not base64"))?;
    // A UserSig is a few hundred bytes; refuse to inflate anything huge.
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(compressed.as_slice())
        .take(64 * 1024)
        .read_to_end(&mut json)
        .map_err(|_| malformed("not zlib data"))?;
    let doc: Value = serde_json::from_slice(&json).map_err(|_| malformed("not JSON"))?;
    let field = |name: &str| doc.get(name).filter(|v| !v.is_null());
    let number = |name: &str| -> Result<u64, VerifyError> {
        match field(name) {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| malformed(&format!("{name} missing or not a number")))
    };
    let string = |name: &str| -> Result<String, VerifyError> {
        field(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| malformed(&format!("{name} missing or not a string")))
    };
    if let Some(ver) = field("TLS.ver") {
        if ver.as_str() != Some("2.0") {
            return Err(malformed("TLS.ver is not 2.0"));
        }
    }
    let userbuf = match field("TLS.userbuf") {
        None => None,
        Some(Value::String(b64)) => Some(
            STANDARD
                .decode(b64)
                .map_err(|_| malformed("TLS.userbuf is not base64"))?,
        ),
        Some(_) => return Err(malformed("TLS.userbuf is not a string")),
    };
    let claims = Claims {
        identifier: string("TLS.identifier")?,
        sdkappid: number("TLS.sdkappid")?,
        time: number("TLS.time")?,
        expire: number("TLS.expire")?,
        userbuf,
    };
    Ok((claims, string("TLS.sig")?))
}

fn to_url_safe(b64: &str) -> String {
    b64.chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            c => c,
        })
        .collect()
}

fn from_url_safe(sig: &str) -> String {
    sig.chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            c => c,
        })
        .collect()
}

/// The admin's UserSig, signed once and reused until it nears expiry; signed
/// anew at once when the service says it expired (70001).
pub struct Signer {
    key: SecretKey,
    sdkappid: u64,
    identifier: String,
    /// Validity of each UserSig signed.
    ttl: std::time::Duration,
    current: Option<(UserSig, std::time::Instant)>,
}

impl Signer {
    pub fn new(
        key: SecretKey,
        sdkappid: u64,
        identifier: impl Into<String>,
        ttl: std::time::Duration,
    ) -> Self {
        Self {
            key,
            sdkappid,
            identifier: identifier.into(),
            ttl,
            current: None,
        }
    }

    /// A UserSig with at least a quarter of its validity left.
    pub fn current(&mut self) -> UserSig {
        let fresh_enough =
            |(_, signed): &(UserSig, std::time::Instant)| signed.elapsed() < self.ttl.mul_f64(0.75);
        match &self.current {
            Some(current) if fresh_enough(current) => current.0.clone(),
            _ => {
                let sig = sign(
                    &self.key,
                    &Claims {
                        identifier: self.identifier.clone(),
                        sdkappid: self.sdkappid,
                        time: crate::clock::now_secs(),
                        expire: self.ttl.as_secs().max(1),
                        userbuf: None,
                    },
                );
                self.current = Some((sig.clone(), std::time::Instant::now()));
                sig
            }
        }
    }

    /// Forget the cached UserSig; the next [`Signer::current`] signs anew.
    pub fn invalidate(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(identifier: &str) -> Claims {
        Claims {
            identifier: identifier.into(),
            sdkappid: 1400000001,
            time: 1_700_000_000,
            expire: 3600,
            userbuf: None,
        }
    }

    #[test]
    fn each_failure_has_its_own_error() {
        let key = SecretKey::new("k1");
        let sig = sign(&key, &claims("admin"));
        let at = 1_700_000_100;
        assert!(verify(sig.expose(), &key, 1400000001, "admin", at).is_ok());
        assert_eq!(
            verify(sig.expose(), &key, 1400000002, "admin", at),
            Err(VerifyError::OtherApp {
                expected: 1400000002,
                found: 1400000001
            })
        );
        assert_eq!(
            verify(sig.expose(), &key, 1400000001, "root", at),
            Err(VerifyError::OtherIdentifier)
        );
        assert_eq!(
            verify(sig.expose(), &key, 1400000001, "admin", 1_700_003_601),
            Err(VerifyError::Expired {
                expired_at: 1_700_003_600
            })
        );
        assert!(verify(sig.expose(), &key, 1400000001, "admin", 1_700_003_600).is_ok());
        assert_eq!(
            verify(sig.expose(), &SecretKey::new("k2"), 1400000001, "admin", at),
            Err(VerifyError::BadSignature)
        );
        for junk in ["", "!!!", "eJyrVgrxCdYrSy1SslJQMtIzUNJRAItk"] {
            assert!(matches!(
                verify(junk, &key, 1400000001, "admin", at),
                Err(VerifyError::Malformed(_))
            ));
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let key = SecretKey::new("topsecret");
        let sig = sign(&key, &claims("admin"));
        assert!(!format!("{key:?}").contains("topsecret"));
        assert!(!format!("{sig:?} {sig}").contains(sig.expose()));
    }
}
