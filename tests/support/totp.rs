//! The tests' own RFC 6238 implementation (HMAC-SHA-1, RFC 4226 truncation), independent of the service's, so the
//! end-to-end tests compute codes from a secret the way an authenticator app would. `second_factor.rs` checks it
//! against the RFC's test vectors.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac as _};

/// The code of `secret` for a time step, with `digits` digits.
pub fn totp(secret: &[u8], step: u64, digits: u32) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).unwrap();
    mac.update(&step.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let value = u32::from_be_bytes([digest[offset] & 0x7f, digest[offset + 1], digest[offset + 2], digest[offset + 3]]);
    format!("{:0width$}", value % 10_u32.pow(digits), width = digits as usize)
}

/// Decodes RFC 4648 base32 without padding.
pub fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut count, mut out) = (0_u32, 0, Vec::new());
    for byte in text.bytes() {
        let value = ALPHABET.iter().position(|c| *c == byte).unwrap_or_else(|| panic!("not base32: {text}"));
        bits = (bits << 5) | u32::try_from(value).unwrap();
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push(u8::try_from((bits >> count) & 0xff).unwrap());
        }
    }
    out
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Waits, if needed, until at least `needed` seconds are left in the current 30-second step, and returns the step:
/// the codes of that step and its neighbours then stay valid while the test uses them.
pub async fn step_with_time_left(needed: u64) -> u64 {
    loop {
        let now = unix_now();
        if 30 - now % 30 >= needed {
            return now / 30;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
