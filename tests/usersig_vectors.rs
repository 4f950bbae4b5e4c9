//! UserSig v2 against the vectors made by Tencent's reference library, and a
//! sign-then-verify property for any identifier.

use base64::Engine;
use broadcast_worker::tencent::usersig::{self, Claims, SecretKey, VerifyError};
use proptest::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    sdkappid: u64,
    key: String,
    identifier: String,
    time: u64,
    expire: u64,
    userbuf_base64: Option<String>,
    usersig: String,
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("data/usersig_vectors.json");
    let v: Vectors = serde_json::from_str(text).expect("vectors parse");
    assert!(v.vectors.len() >= 4, "the vector file lost entries");
    v.vectors
}

#[test]
fn reference_vectors_verify_at_their_time() {
    for v in vectors() {
        let key = SecretKey::new(&v.key);
        let claims = usersig::verify(&v.usersig, &key, v.sdkappid, &v.identifier, v.time)
            .unwrap_or_else(|e| panic!("vector for {} refused: {e}", v.identifier));
        assert_eq!(claims.identifier, v.identifier);
        assert_eq!((claims.time, claims.expire), (v.time, v.expire));
        let want_userbuf = v
            .userbuf_base64
            .as_deref()
            .map(|b| base64::engine::general_purpose::STANDARD.decode(b).unwrap());
        assert_eq!(claims.userbuf, want_userbuf);
        // Still valid at the last second.
        assert!(usersig::verify(
            &v.usersig,
            &key,
            v.sdkappid,
            &v.identifier,
            v.time + v.expire
        )
        .is_ok());
    }
}

#[test]
fn reference_vectors_expire() {
    for v in vectors() {
        let key = SecretKey::new(&v.key);
        let after = v.time + v.expire + 1;
        assert_eq!(
            usersig::verify(&v.usersig, &key, v.sdkappid, &v.identifier, after),
            Err(VerifyError::Expired {
                expired_at: v.time + v.expire
            })
        );
    }
}

#[test]
fn reference_vectors_fail_under_another_key() {
    for v in vectors() {
        for other in [
            format!("{}x", v.key),
            "another-key".to_string(),
            v.key[1..].to_string(),
        ] {
            assert_eq!(
                usersig::verify(
                    &v.usersig,
                    &SecretKey::new(other),
                    v.sdkappid,
                    &v.identifier,
                    v.time
                ),
                Err(VerifyError::BadSignature)
            );
        }
    }
}

#[test]
fn reference_vectors_fail_for_another_app_or_identifier() {
    for v in vectors() {
        let key = SecretKey::new(&v.key);
        assert!(matches!(
            usersig::verify(&v.usersig, &key, v.sdkappid + 1, &v.identifier, v.time),
            Err(VerifyError::OtherApp { .. })
        ));
        assert_eq!(
            usersig::verify(&v.usersig, &key, v.sdkappid, "someone-else", v.time),
            Err(VerifyError::OtherIdentifier)
        );
    }
}

#[test]
fn our_signature_matches_the_reference_mac() {
    // Same claims as a vector, signed by us: the HMAC must be byte-identical even
    // though the envelope's JSON layout may differ.
    for v in vectors() {
        let key = SecretKey::new(&v.key);
        let ours = usersig::sign(
            &key,
            &Claims {
                identifier: v.identifier.clone(),
                sdkappid: v.sdkappid,
                time: v.time,
                expire: v.expire,
                userbuf: v
                    .userbuf_base64
                    .as_deref()
                    .map(|b| base64::engine::general_purpose::STANDARD.decode(b).unwrap()),
            },
        );
        let (_, their_mac) = usersig::decode(&v.usersig).unwrap();
        let (_, our_mac) = usersig::decode(ours.expose()).unwrap();
        assert_eq!(our_mac, their_mac, "vector for {}", v.identifier);
    }
}

#[test]
fn tampered_signatures_are_refused() {
    let v = &vectors()[0];
    let key = SecretKey::new(&v.key);
    let mut chars: Vec<char> = v.usersig.chars().collect();
    let mid = chars.len() / 2;
    chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    assert!(usersig::verify(&tampered, &key, v.sdkappid, &v.identifier, v.time).is_err());
}

proptest! {
    #[test]
    fn sign_then_verify_round_trips(
        identifier in "\\PC{1,40}",
        sdkappid in 1u64..u64::MAX / 2,
        time in 0u64..4_000_000_000,
        expire in 1u64..400_000_000,
        key in "[ -~]{1,64}",
        userbuf in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
    ) {
        let key = SecretKey::new(key);
        let claims = Claims { identifier: identifier.clone(), sdkappid, time, expire, userbuf };
        let sig = usersig::sign(&key, &claims);
        let back = usersig::verify(sig.expose(), &key, sdkappid, &identifier, time).unwrap();
        prop_assert_eq!(back, claims);
        prop_assert!(sig.expose().chars().all(|c| c.is_ascii_alphanumeric() || "*-_".contains(c)));
    }
}
