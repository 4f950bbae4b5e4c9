//! Any string through the UserSig verifier: accepted or refused with a
//! reason, never a panic, and bounded memory however it inflates.
#![no_main]

use broadcast_worker::tencent::usersig::{self, SecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let key = SecretKey::new("5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e");
    match usersig::verify(&text, &key, 1400000000, "administrator", 1_764_000_000) {
        Ok(claims) => assert_eq!(claims.sdkappid, 1400000000),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
