//! A single ES256 signing key in a file: loading it, generating and persisting it, and naming it (`kid`).
//!
//! [`JwtCodec::load_or_generate`](crate::JwtCodec::load_or_generate) signs with one P-256 key: `JWT_PRIVATE_KEY_FILE`
//! when that is set, otherwise `DATA_DIR/jwt-es256.pem`, generated on first use. (The service itself keeps its keys
//! in the database unless the file is set, and reads `DATA_DIR/jwt-es256.pem` only to import the key earlier
//! versions generated there.) Generation writes a temporary file with mode 0600 and then publishes it under the
//! final name in one atomic step, so a crash never leaves half a key and two processes generating together on one
//! data directory end up with the same key.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use josekit::JoseError;
use josekit::jwk::KeyPair as _;
use josekit::jwk::alg::ec::EcKeyPair;
use josekit::jws::ES256;
use sha2::{Digest as _, Sha256};

/// The file name of the generated key inside `DATA_DIR`.
pub const GENERATED_KEY_FILE: &str = "jwt-es256.pem";

/// The only PEM label accepted: an unencrypted PKCS#8 `PrivateKeyInfo`.
const PKCS8_PEM_LABEL: &[u8] = b"-----BEGIN PRIVATE KEY-----";

/// Why the signing key could not be loaded or created. Messages name the setting to fix and never contain key
/// material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `JWT_ALGORITHM` is not `ES256`.
    #[error("JWT_ALGORITHM {found:?} is not supported; use ES256")]
    UnsupportedAlgorithm {
        /// The configured value.
        found: String,
    },
    /// `JWT_PRIVATE_KEY_FILE` is missing or unreadable.
    #[error("JWT_PRIVATE_KEY_FILE {}: cannot read the key file", path.display())]
    KeyFileUnreadable {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `JWT_PRIVATE_KEY_FILE` does not hold a P-256 private key in PKCS#8 PEM.
    #[error("JWT_PRIVATE_KEY_FILE {}: not a P-256 private key in PKCS#8 PEM (\"BEGIN PRIVATE KEY\")", path.display())]
    KeyFileInvalid {
        /// The configured path.
        path: PathBuf,
        /// What the parser found wrong.
        #[source]
        source: anyhow::Error,
    },
    /// The generated key under `DATA_DIR` exists but is not a usable P-256 PKCS#8 key. It is left alone: replacing
    /// it would silently invalidate every token signed with it.
    #[error(
        "DATA_DIR: {} is not a P-256 private key in PKCS#8 PEM; restore or delete it (deleting signs everyone out)",
        path.display()
    )]
    GeneratedKeyInvalid {
        /// The key file's path.
        path: PathBuf,
        /// What the parser found wrong.
        #[source]
        source: anyhow::Error,
    },
    /// The generated key under `DATA_DIR` could not be read or written.
    #[error("DATA_DIR: cannot read or write the JWT key at {}", path.display())]
    GeneratedKeyIo {
        /// The path that failed.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A private key stored in the database does not open: encrypted under another data key, or with none
    /// configured.
    #[error("signing key {kid} stored in the database cannot be opened (check DATA_ENCRYPTION_KEY_FILE): {source}")]
    StoredKeySealed {
        /// The key id of the row.
        kid: String,
        /// Why it does not open.
        #[source]
        source: crate::DataKeyError,
    },
    /// A private key stored in the database opened but is not the key its row names.
    #[error("signing key {kid} stored in the database is unusable: {reason}")]
    StoredKeyInvalid {
        /// The key id of the row.
        kid: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key ring was asked for without any key.
    #[error("there is no signing key")]
    NoSigningKey,
    /// OpenSSL failed to generate or use the key.
    #[error("ES256 key operation failed")]
    Crypto(#[source] JoseError),
}

/// Loads the configured key file, or the generated one under `data_dir`, generating it on first use.
pub(crate) fn load_or_generate(private_key_file: Option<&Path>, data_dir: &Path) -> Result<EcKeyPair, KeyError> {
    if let Some(path) = private_key_file {
        let pem = fs::read(path).map_err(|source| KeyError::KeyFileUnreadable { path: path.to_owned(), source })?;
        return parse_p256_pkcs8(&pem).map_err(|source| KeyError::KeyFileInvalid { path: path.to_owned(), source });
    }
    let path = data_dir.join(GENERATED_KEY_FILE);
    if let Some(key) = read_generated(&path)? {
        return Ok(key);
    }
    let key = ES256.generate_key_pair().map_err(KeyError::Crypto)?;
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| KeyError::GeneratedKeyIo { path, source }
    };
    fs::create_dir_all(data_dir).map_err(io_error(data_dir))?;
    match publish(data_dir, &path, &key.to_pem_private_key()).map_err(io_error(&path))? {
        Published::Ours => {
            tracing::info!(path = %path.display(), "generated a new ES256 signing key");
            Ok(key)
        }
        // Another instance published its key between our read and our publish: use that one, so both sign alike.
        Published::Theirs => read_generated(&path)?.ok_or_else(|| KeyError::GeneratedKeyIo {
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::NotFound, "the key vanished right after it was published"),
        }),
    }
}

/// Reads and parses the generated key; `Ok(None)` when it does not exist yet.
pub(crate) fn read_generated(path: &Path) -> Result<Option<EcKeyPair>, KeyError> {
    match fs::read(path) {
        Ok(pem) => parse_p256_pkcs8(&pem)
            .map(Some)
            .map_err(|source| KeyError::GeneratedKeyInvalid { path: path.to_owned(), source }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KeyError::GeneratedKeyIo { path: path.to_owned(), source }),
    }
}

/// Parses an unencrypted PKCS#8 PEM private key and insists that it is on P-256.
pub(crate) fn parse_p256_pkcs8(pem: &[u8]) -> anyhow::Result<EcKeyPair> {
    // josekit's PEM reader wants the block alone with at most one trailing newline; editors and secret stores
    // often add blank lines, which say nothing about the key.
    let trimmed = pem.trim_ascii();
    if !trimmed.starts_with(PKCS8_PEM_LABEL) {
        anyhow::bail!("expected a PEM block starting with -----BEGIN PRIVATE KEY-----");
    }
    let mut normalised = trimmed.to_vec();
    normalised.push(b'\n');
    // Given ES256, josekit refuses PKCS#8 keys of any other type or curve.
    ES256.key_pair_from_pem(&normalised).map_err(|error| anyhow::Error::new(error).context("not a P-256 key"))
}

/// Who won the race to create the generated key file.
enum Published {
    /// Our key is now the file.
    Ours,
    /// The file already existed; ours was discarded.
    Theirs,
}

/// Writes `pem` to a private temporary file in `dir`, makes it durable, and publishes it as `path` without ever
/// replacing an existing file.
fn publish(dir: &Path, path: &Path, pem: &[u8]) -> io::Result<Published> {
    let temp = dir.join(format!(".{GENERATED_KEY_FILE}.{}.tmp", uuid::Uuid::new_v4()));
    let outcome = write_private(&temp, pem).and_then(|()| link_or_rename(&temp, path));
    // The temporary name is garbage whatever happened; a failure to remove it hides no error worth reporting.
    let _ = fs::remove_file(&temp);
    let published = outcome?;
    // The new directory entry is durable only once the directory itself is synced.
    File::open(dir)?.sync_all()?;
    Ok(published)
}

/// Creates `path` readable by its owner only and writes `bytes` to disk.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        // Set at creation, so there is no moment at which the key is readable by others.
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Publishes `temp` as `path`. A hard link fails if `path` exists, which makes "first writer wins" atomic; on file
/// systems without hard links it falls back to a rename, which is still atomic but lets the last writer win.
fn link_or_rename(temp: &Path, path: &Path) -> io::Result<Published> {
    match fs::hard_link(temp, path) {
        Ok(()) => Ok(Published::Ours),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(Published::Theirs),
        Err(_) => fs::rename(temp, path).map(|()| Published::Ours),
    }
}

/// The public coordinates of a P-256 key, base64url without padding, as in its JWK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicCoordinates {
    pub(crate) x: String,
    pub(crate) y: String,
}

impl PublicCoordinates {
    /// Reads `x` and `y` from the key's public JWK.
    pub(crate) fn of(key: &EcKeyPair) -> Result<Self, KeyError> {
        let jwk = key.to_jwk_public_key();
        let coordinate = |name: &str| match jwk.parameter(name) {
            Some(serde_json::Value::String(value)) => Ok(value.clone()),
            _ => Err(KeyError::Crypto(JoseError::InvalidKeyFormat(anyhow::anyhow!("public JWK lacks {name}")))),
        };
        Ok(Self { x: coordinate("x")?, y: coordinate("y")? })
    }

    /// The RFC 7638 JWK thumbprint: base64url of the SHA-256 of the required members in lexicographic order.
    pub(crate) fn thumbprint(&self) -> String {
        // x and y are base64url, so they need no JSON escaping, and this string is exactly the canonical form.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#, self.x, self.y);
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_follow_rfc_7638() {
        // The P-256 key of RFC 7517 appendix A.1; the expected value was computed independently with
        // `printf '{"crv":"P-256","kty":"EC","x":"…","y":"…"}' | openssl dgst -sha256 -binary | basenc --base64url`, less its padding.
        let key = PublicCoordinates {
            x: "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4".to_owned(),
            y: "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM".to_owned(),
        };
        assert_eq!(key.thumbprint(), "cn-I_WNMClehiVp51i_0VpOENW1upEerA8sEam5hn-s");
    }

    #[test]
    fn only_p256_pkcs8_pem_keys_are_accepted() {
        let p256 = ES256.generate_key_pair().unwrap();
        assert!(parse_p256_pkcs8(&p256.to_pem_private_key()).is_ok());
        let mut padded = b"\n\n".to_vec();
        padded.extend(p256.to_pem_private_key());
        padded.extend(b"\n\n");
        assert!(parse_p256_pkcs8(&padded).is_ok(), "surrounding blank lines are harmless");

        let p384 = josekit::jws::ES384.generate_key_pair().unwrap();
        let ed25519 = josekit::jws::EdDSA.generate_key_pair(josekit::jwk::alg::ed::EdCurve::Ed25519).unwrap();
        for (what, pem) in [
            ("P-384", p384.to_pem_private_key()),
            ("Ed25519", ed25519.to_pem_private_key()),
            ("SEC1 instead of PKCS#8", p256.to_traditional_pem_private_key()),
            ("public key", p256.to_pem_public_key()),
            ("empty", Vec::new()),
            ("garbage", b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n".to_vec()),
            ("truncated", p256.to_pem_private_key()[..60].to_vec()),
        ] {
            assert!(parse_p256_pkcs8(&pem).is_err(), "{what}");
        }
    }
}
