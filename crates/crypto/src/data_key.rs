//! Sealing secrets that the service must read back from the database (TOTP secrets): encrypted with
//! ChaCha20-Poly1305 under the deployment's data key (`DATA_ENCRYPTION_KEY_FILE`) when one is set, stored as they
//! are otherwise.
//!
//! A sealed value starts with a format byte: `0` for a value stored without a key, `1` for a 12-byte nonce followed
//! by the ciphertext and its tag. The purpose of the value (for example `totp`) is the associated data, so a
//! ciphertext cannot be moved to a column of another purpose. A value stored before a key was configured still
//! opens after it is set (and is sealed with the key when next written); a value sealed with a key never opens
//! without it.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore as _;

/// The format byte of a value stored without a key.
const PLAIN: u8 = 0;
/// The format byte of a value sealed with ChaCha20-Poly1305.
const SEALED: u8 = 1;
/// The nonce length of ChaCha20-Poly1305.
const NONCE_LEN: usize = 12;

/// Why a data key could not be loaded, or a value not opened.
#[derive(Debug, thiserror::Error)]
pub enum DataKeyError {
    /// The key file could not be read.
    #[error("cannot read the data key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not hold 32 bytes in base64.
    #[error("the data key must be 32 random bytes in base64 (for example `openssl rand -base64 32`)")]
    Malformed,
    /// A stored value is sealed with a key, and none is configured.
    #[error("a stored secret is encrypted, and no data key is configured (DATA_ENCRYPTION_KEY_FILE)")]
    KeyMissing,
    /// A stored value does not open: another key, a corrupt value, or a value of another purpose.
    #[error("a stored secret cannot be decrypted with the configured data key")]
    Undecryptable,
}

/// The deployment's data key: 32 bytes. Its `Debug` form never shows them.
#[derive(Clone)]
pub struct DataKey(Key);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// Parses a key written as base64 (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`DataKeyError::Malformed`] unless it decodes to exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, DataKeyError> {
        let bytes = STANDARD.decode(text.trim()).map_err(|_| DataKeyError::Malformed)?;
        if bytes.len() != 32 {
            return Err(DataKeyError::Malformed);
        }
        Ok(Self(*Key::from_slice(&bytes)))
    }

    /// Reads a key file holding the key in base64.
    ///
    /// # Errors
    /// [`DataKeyError::Read`] or [`DataKeyError::Malformed`].
    pub fn from_file(path: &Path) -> Result<Self, DataKeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| DataKeyError::Read { path: path.display().to_string(), source })?;
        Self::from_base64(&text)
    }
}

/// Seals and opens stored secrets with an optional [`DataKey`].
#[derive(Debug, Clone, Default)]
pub struct Sealer {
    key: Option<DataKey>,
}

impl Sealer {
    /// A sealer that encrypts with `key`, or stores values as they are without one.
    #[must_use]
    pub const fn new(key: Option<DataKey>) -> Self {
        Self { key }
    }

    /// Whether values are encrypted.
    #[must_use]
    pub const fn encrypts(&self) -> bool {
        self.key.is_some()
    }

    /// Seals `secret` for storage; `purpose` names what it is (bound to the ciphertext).
    #[must_use]
    pub fn seal(&self, purpose: &str, secret: &[u8]) -> Vec<u8> {
        let Some(key) = &self.key else {
            let mut out = Vec::with_capacity(secret.len() + 1);
            out.push(PLAIN);
            out.extend_from_slice(secret);
            return out;
        };
        let mut nonce = [0_u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = ChaCha20Poly1305::new(&key.0);
        let payload = Payload { msg: secret, aad: purpose.as_bytes() };
        // Encryption with a valid key and a short message cannot fail; an empty output would only fail to open.
        let ciphertext = cipher.encrypt(Nonce::from_slice(&nonce), payload).unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(SEALED);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Opens a value sealed by [`Sealer::seal`] for the same `purpose`.
    ///
    /// # Errors
    /// [`DataKeyError::KeyMissing`] for an encrypted value without a key, [`DataKeyError::Undecryptable`] for one
    /// that does not open (or an unknown format).
    pub fn open(&self, purpose: &str, sealed: &[u8]) -> Result<Vec<u8>, DataKeyError> {
        match sealed.split_first() {
            Some((&PLAIN, secret)) => Ok(secret.to_vec()),
            Some((&SEALED, rest)) if rest.len() > NONCE_LEN => {
                let key = self.key.as_ref().ok_or(DataKeyError::KeyMissing)?;
                let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
                let cipher = ChaCha20Poly1305::new(&key.0);
                cipher
                    .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: purpose.as_bytes() })
                    .map_err(|_| DataKeyError::Undecryptable)
            }
            _ => Err(DataKeyError::Undecryptable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> DataKey {
        DataKey::from_base64(&STANDARD.encode([byte; 32])).unwrap_or_else(|error| unreachable!("{error}"))
    }

    #[test]
    fn a_sealed_value_opens_with_its_key_and_purpose_only() {
        let sealer = Sealer::new(Some(key(7)));
        let sealed = sealer.seal("totp", b"secret bytes");
        assert_eq!(sealed[0], SEALED);
        assert!(!sealed.windows(12).any(|window| window == b"secret bytes"), "the plaintext is not stored");
        assert_eq!(sealer.open("totp", &sealed).ok(), Some(b"secret bytes".to_vec()));
        assert!(matches!(sealer.open("signing-key", &sealed), Err(DataKeyError::Undecryptable)));
        assert!(matches!(Sealer::new(Some(key(8))).open("totp", &sealed), Err(DataKeyError::Undecryptable)));
        assert!(matches!(Sealer::new(None).open("totp", &sealed), Err(DataKeyError::KeyMissing)));
        assert_ne!(sealer.seal("totp", b"secret bytes"), sealed, "every sealing takes a fresh nonce");
    }

    #[test]
    fn values_stored_without_a_key_still_open_once_one_is_set() {
        let plain = Sealer::new(None).seal("totp", b"abc");
        assert_eq!(plain, vec![PLAIN, b'a', b'b', b'c']);
        assert_eq!(Sealer::new(Some(key(1))).open("totp", &plain).ok(), Some(b"abc".to_vec()));
    }

    #[test]
    fn tampered_truncated_and_unknown_values_are_refused() {
        let sealer = Sealer::new(Some(key(3)));
        let mut sealed = sealer.seal("totp", b"abc");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(sealer.open("totp", &sealed).is_err());
        assert!(sealer.open("totp", &[SEALED, 1, 2]).is_err());
        assert!(sealer.open("totp", &[9, 1, 2]).is_err());
        assert!(sealer.open("totp", &[]).is_err());
    }

    #[test]
    fn only_32_bytes_of_base64_make_a_key() {
        assert!(DataKey::from_base64(&format!("  {}\n", STANDARD.encode([0_u8; 32]))).is_ok());
        assert!(DataKey::from_base64(&STANDARD.encode([0_u8; 16])).is_err());
        assert!(DataKey::from_base64("not base64 at all!").is_err());
        assert_eq!(format!("{:?}", key(5)), "DataKey(..)");
    }
}
