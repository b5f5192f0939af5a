//! The [`OneTimePasswords`] port: RFC 6238 TOTP (HMAC-SHA-1, 6 digits, 30-second steps) computed by the `totp-rs`
//! crate, with 160-bit secrets sealed by a [`Sealer`].
//!
//! `totp-rs` is a small, maintained implementation checked against the RFC's vectors; it computes one code for one
//! time. Which neighbouring steps count (one either way), the constant-time comparison, the step that matched (so
//! the domain can accept each step once) and the `otpauth://` URI are ours: the URI is built with `url`'s
//! percent-encoding, so any address (even one holding a colon) makes a valid URI.

use rand::RngCore as _;
use time::OffsetDateTime;
use totp_rs::{Algorithm, TOTP};
use users_domain::ports::{NewTotpSecret, OneTimePasswords, PortError, SealedSecret};

use crate::data_key::Sealer;

/// The step length in seconds.
pub const STEP_SECONDS: i64 = 30;
/// The code length.
pub const DIGITS: usize = 6;
/// The secret length in bytes (160 bits, as RFC 4226 recommends).
pub const SECRET_BYTES: usize = 20;
/// The purpose TOTP secrets are sealed under.
const PURPOSE: &str = "totp";

/// RFC 6238 one-time passwords over secrets sealed with the deployment's data key, if any.
#[derive(Debug, Clone, Default)]
pub struct TotpCodec {
    sealer: Sealer,
}

impl TotpCodec {
    /// A codec sealing secrets with `sealer` (`Sealer::new(None)` stores them unencrypted).
    #[must_use]
    pub const fn new(sealer: Sealer) -> Self {
        Self { sealer }
    }

    /// The code of `secret` for a time step, with `digits` digits.
    fn code(secret: &[u8], step: i64, digits: usize) -> Option<String> {
        let time = u64::try_from(step.checked_mul(STEP_SECONDS)?).ok()?;
        // `new_unchecked`: the length checks of `new` would refuse the RFC's 8-digit vectors; ours are fixed above.
        let totp = TOTP::new_unchecked(Algorithm::SHA1, digits, 0, STEP_SECONDS.unsigned_abs(), secret.to_vec());
        Some(totp.generate(time))
    }

    /// The step of a Unix time.
    #[must_use]
    pub const fn step_of(now: OffsetDateTime) -> i64 {
        now.unix_timestamp().div_euclid(STEP_SECONDS)
    }

    /// The current code of a secret given in base32 (what an authenticator app shows), for tests and tools.
    #[must_use]
    pub fn code_at(base32_secret: &str, now: OffsetDateTime) -> Option<String> {
        let secret = base32::decode(base32::Alphabet::Rfc4648 { padding: false }, base32_secret)?;
        Self::code(&secret, Self::step_of(now), DIGITS)
    }
}

/// Compares two byte strings in time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |differ, (x, y)| differ | (x ^ y)) == 0
}

/// `otpauth://totp/{issuer}:{account}?secret=..&issuer=..&algorithm=SHA1&digits=6&period=30`.
fn otpauth_uri(issuer: &str, account: &str, base32_secret: &str) -> String {
    let label: String = url::form_urlencoded::byte_serialize(format!("{issuer}:{account}").as_bytes())
        .collect::<String>()
        .replace('+', "%20");
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("secret", base32_secret)
        .append_pair("issuer", issuer)
        .append_pair("algorithm", "SHA1")
        .append_pair("digits", "6")
        .append_pair("period", "30")
        .finish()
        .replace('+', "%20");
    format!("otpauth://totp/{label}?{query}")
}

impl OneTimePasswords for TotpCodec {
    fn generate(&self, issuer: &str, account: &str) -> Result<NewTotpSecret, PortError> {
        let mut secret = [0_u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let base32 = base32::encode(base32::Alphabet::Rfc4648 { padding: false }, &secret);
        let otpauth_uri = otpauth_uri(issuer, account, &base32);
        let sealed = SealedSecret(self.sealer.seal(PURPOSE, &secret));
        Ok(NewTotpSecret { base32, otpauth_uri, sealed })
    }

    fn matching_step(&self, secret: &SealedSecret, code: &str, now: OffsetDateTime) -> Result<Option<i64>, PortError> {
        let secret = self
            .sealer
            .open(PURPOSE, &secret.0)
            .map_err(|error| PortError::Unknown(anyhow::Error::new(error).context("opening a TOTP secret")))?;
        if code.len() != DIGITS || !code.bytes().all(|byte| byte.is_ascii_digit()) {
            return Ok(None);
        }
        let current = Self::step_of(now);
        // Every candidate step is computed and compared, so the time taken does not depend on which one matched.
        let mut matched = None;
        for step in [current - 1, current, current + 1] {
            let expected = Self::code(&secret, step, DIGITS).unwrap_or_default();
            if constant_time_eq(expected.as_bytes(), code.as_bytes()) && matched.is_none() {
                matched = Some(step);
            }
        }
        Ok(matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data_key::DataKey;

    /// RFC 6238, appendix B: the SHA-1 seed and the 8-digit codes at the given Unix times.
    const RFC_SEED: &[u8] = b"12345678901234567890";
    const RFC_VECTORS: [(i64, &str); 6] = [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ];

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap_or_else(|error| unreachable!("{error}"))
    }

    #[test]
    fn the_codes_are_those_of_rfc_6238() {
        for (unix, expected) in RFC_VECTORS {
            assert_eq!(TotpCodec::code(RFC_SEED, unix / STEP_SECONDS, 8).as_deref(), Some(expected), "at {unix}");
            // Six digits are the last six of the eight.
            assert_eq!(TotpCodec::code(RFC_SEED, unix / STEP_SECONDS, 6).as_deref(), Some(&expected[2..]));
        }
    }

    #[test]
    fn a_code_matches_its_step_and_one_step_either_side_only() {
        let codec = TotpCodec::default();
        let sealed = SealedSecret(Sealer::new(None).seal(PURPOSE, RFC_SEED));
        let now = at(1_111_111_111);
        let step = TotpCodec::step_of(now);
        for offset in -1..=1 {
            let code = TotpCodec::code(RFC_SEED, step + offset, 6).unwrap_or_default();
            assert_eq!(codec.matching_step(&sealed, &code, now).ok().flatten(), Some(step + offset));
        }
        for offset in [-3, -2, 2, 3] {
            let code = TotpCodec::code(RFC_SEED, step + offset, 6).unwrap_or_default();
            assert_eq!(codec.matching_step(&sealed, &code, now).ok().flatten(), None, "offset {offset}");
        }
        for garbage in ["", "12345", "1234567", "abcdef", "１２３４５６"] {
            assert_eq!(codec.matching_step(&sealed, garbage, now).ok().flatten(), None);
        }
    }

    #[test]
    fn generated_secrets_are_160_bits_sealed_and_read_by_apps() {
        let key = DataKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
            .unwrap_or_else(|error| unreachable!("{error}"));
        let codec = TotpCodec::new(Sealer::new(Some(key)));
        let secret = codec.generate("user-management", "ada:lovelace@example.com").unwrap_or_else(|_| unreachable!());
        assert_eq!(secret.base32.len(), 32, "20 bytes are 32 base32 characters");
        assert!(secret.otpauth_uri.starts_with("otpauth://totp/user-management%3Aada%3Alovelace%40example.com?"));
        assert!(secret.otpauth_uri.contains(&format!("secret={}", secret.base32)));
        assert!(secret.otpauth_uri.contains("issuer=user-management"));
        let now = at(1_700_000_000);
        let code = TotpCodec::code_at(&secret.base32, now).unwrap_or_default();
        assert_eq!(codec.matching_step(&secret.sealed, &code, now).ok().flatten(), Some(TotpCodec::step_of(now)));
        assert!(TotpCodec::default().matching_step(&secret.sealed, &code, now).is_err(), "no key, no secret");
    }
}
