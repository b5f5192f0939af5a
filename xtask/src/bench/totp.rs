//! RFC 6238 TOTP codes for the `login-mfa` scenario: HMAC-SHA-1 over the 30-second time step, dynamically
//! truncated as RFC 4226 describes. The bench computes its codes itself rather than through the server's crates, so
//! it checks the server against an independent implementation.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The length of a time step, in seconds.
pub(super) const STEP_SECONDS: u64 = 30;

/// The digits of the codes the server accepts.
pub(super) const DIGITS: u32 = 6;

/// The time step `time` falls in: whole 30-second periods since the Unix epoch.
pub(super) fn step_at(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs() / STEP_SECONDS)
}

/// The code of `secret` for the time step `step`, `digits` digits long with leading zeros.
///
/// # Errors
/// When `digits` is not between 1 and 9 (a 31-bit value has at most 10 digits, and the 10th is not uniform).
pub(super) fn code(secret: &[u8], step: u64, digits: u32) -> Result<String> {
    anyhow::ensure!((1..=9).contains(&digits), "a TOTP code has 1 to 9 digits, not {digits}");
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).context("HMAC refused the key")?;
    mac.update(&step.to_be_bytes());
    let hash = mac.finalize().into_bytes();
    // Dynamic truncation: the low nibble of the last byte says where 31 bits are taken from.
    let offset = usize::from(hash.last().copied().unwrap_or(0) & 0x0f);
    let window: [u8; 4] = hash
        .get(offset..offset + 4)
        .and_then(|bytes| bytes.try_into().ok())
        .context("the HMAC-SHA-1 output is shorter than 20 bytes")?;
    let value = u32::from_be_bytes(window) & 0x7fff_ffff;
    let width = usize::try_from(digits).unwrap_or(6);
    Ok(format!("{:0width$}", value % 10_u32.pow(digits)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The SHA-1 seed of RFC 6238, appendix B.
    const RFC_SEED: &[u8] = b"12345678901234567890";

    #[test]
    fn the_rfc_6238_sha1_vectors() -> Result<()> {
        // RFC 6238, appendix B: Unix time and the 8-digit SHA-1 code.
        let vectors = [
            (59_u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ];
        for (time, expected) in vectors {
            let step = step_at(UNIX_EPOCH + Duration::from_secs(time));
            assert_eq!(step, time / 30);
            assert_eq!(code(RFC_SEED, step, 8)?, expected, "t = {time}");
        }
        Ok(())
    }

    #[test]
    fn six_digit_codes_are_the_last_six_digits_and_keep_leading_zeros() -> Result<()> {
        // 07081804 in eight digits is 081804 in six: the same truncated value, another modulus.
        assert_eq!(code(RFC_SEED, 1_111_111_109 / 30, DIGITS)?, "081804");
        assert_eq!(code(RFC_SEED, 59 / 30, DIGITS)?, "287082");
        assert!(code(RFC_SEED, 1, 0).is_err());
        assert!(code(RFC_SEED, 1, 10).is_err());
        Ok(())
    }

    #[test]
    fn steps_are_thirty_seconds_long() {
        assert_eq!(step_at(UNIX_EPOCH), 0);
        assert_eq!(step_at(UNIX_EPOCH + Duration::from_secs(29)), 0);
        assert_eq!(step_at(UNIX_EPOCH + Duration::from_secs(30)), 1);
        assert_eq!(step_at(UNIX_EPOCH + Duration::from_secs(1_111_111_111)), 37_037_037);
    }
}
