//! Recovery codes and how a presented code is read.

use rand::Rng as _;

use crate::session::TokenHash;

/// Recovery codes handed out at a time.
pub const RECOVERY_CODES: usize = 10;
/// The alphabet of recovery codes: lower-case RFC 4648 base32, with no `0`/`o` or `1`/`l` pairs to confuse.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Characters in a recovery code (80 bits), written in groups of four.
const LENGTH: usize = 16;

/// A single-use recovery code, shown once to its owner and stored as a hash. Its `Debug` form hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCode(String);

impl std::fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryCode(<redacted>)")
    }
}

impl RecoveryCode {
    /// A fresh set of [`RECOVERY_CODES`] codes.
    #[must_use]
    pub fn generate_set() -> Vec<Self> {
        let mut rng = rand::thread_rng();
        (0..RECOVERY_CODES)
            .map(|_| Self((0..LENGTH).map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())])).collect()))
            .collect()
    }

    /// The code as shown: four groups of four characters, `abcd-efgh-ijkl-mnop`.
    #[must_use]
    pub fn display(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        chars.chunks(4).map(|group| group.iter().collect::<String>()).collect::<Vec<_>>().join("-")
    }

    /// What is stored.
    #[must_use]
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

/// A presented code, by its shape.
#[derive(Debug)]
pub(crate) enum CodeInput {
    /// Six digits (spaces removed): a TOTP code.
    Totp(String),
    /// Sixteen base32 characters (dashes and spaces removed, case ignored): a recovery code, by its hash.
    Recovery(TokenHash),
    /// Neither: wrong whatever the account.
    Malformed,
}

impl CodeInput {
    /// Reads a presented code.
    pub(crate) fn parse(raw: &str) -> Self {
        let compact: String = raw.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
        if compact.len() == 6 && compact.bytes().all(|byte| byte.is_ascii_digit()) {
            return Self::Totp(compact);
        }
        let lower = compact.to_ascii_lowercase();
        if lower.len() == LENGTH && lower.bytes().all(|byte| ALPHABET.contains(&byte)) {
            return Self::Recovery(TokenHash::of(&lower));
        }
        Self::Malformed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_ten_distinct_codes_that_read_back_as_themselves() {
        let codes = RecoveryCode::generate_set();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let distinct: std::collections::HashSet<_> = codes.iter().map(RecoveryCode::display).collect();
        assert_eq!(distinct.len(), RECOVERY_CODES);
        for code in &codes {
            let shown = code.display();
            assert_eq!(shown.len(), 19);
            assert!(matches!(CodeInput::parse(&shown), CodeInput::Recovery(hash) if hash == code.hash()));
            let shouted = shown.to_uppercase().replace('-', " ");
            assert!(matches!(CodeInput::parse(&shouted), CodeInput::Recovery(hash) if hash == code.hash()));
            assert_eq!(format!("{code:?}"), "RecoveryCode(<redacted>)");
        }
    }
}
