//! The crypto adapters of user-management: password hashing, access tokens, one-time passwords and the sealing of
//! stored secrets.
//!
//! [`Argon2Hasher`] implements the domain's [`PasswordHasher`](users_domain::ports::PasswordHasher) port with
//! argon2id (m=19456 KiB, t=2, p=1), running every hash and verify on threads of its own at a lower scheduling
//! priority, behind a semaphore, so that a login storm queues and then sheds load instead of starving the runtime or
//! slowing the cheap requests down. [`JwtCodec`] implements the
//! [`TokenCodec`](users_domain::ports::TokenCodec) port with ES256 JWTs signed and checked against a [`KeyRing`]: one
//! P-256 key configured (`JWT_PRIVATE_KEY_FILE`), or several stored elsewhere (the service keeps them in the
//! database) with activation times, so keys rotate without a restart. It publishes the keys that still verify as a
//! JWK set. The ring can be replaced while the codec is in use; [`SigningKey`] seals a private key for storage.
//!
//! [`TotpCodec`] implements [`OneTimePasswords`](users_domain::ports::OneTimePasswords) (RFC 6238), sealing
//! secrets with a [`Sealer`]: encrypted with ChaCha20-Poly1305 under a [`DataKey`] (`DATA_ENCRYPTION_KEY_FILE`)
//! when one is configured.
//!
//! Only `main` names these types; everything else sees the ports. Wiring looks like this:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use users_crypto::{Argon2Hasher, HasherConfig, JwtCodec, JwtConfig};
//!
//! // Both constructors do blocking work (one argon2 hash, key file I/O): call them before serving requests.
//! let hasher = Argon2Hasher::new(HasherConfig::default())?;
//! let codec = JwtCodec::load_or_generate(&JwtConfig {
//!     algorithm: "ES256".to_owned(),           // JWT_ALGORITHM
//!     private_key_file: None,                  // JWT_PRIVATE_KEY_FILE
//!     data_dir: "./data".into(),               // DATA_DIR
//!     issuer: "https://users.example.com".to_owned(),
//!     audience: "user-management".to_owned(),
//! })?;
//! // Serve this at /.well-known/jwks.json so other services can check access tokens.
//! let jwks: serde_json::Value = codec.jwks();
//! # let _ = (hasher, jwks);
//! # Ok(())
//! # }
//! ```
//!
//! The hasher needs a tokio runtime with the time driver enabled (actix-web's runtime and `#[tokio::main]` have
//! it): the queue timeout is a tokio timer.

mod data_key;
mod jwt;
mod key_ring;
mod keys;
mod password;
mod totp;

pub use data_key::{DataKey, DataKeyError, Sealer};
pub use jwt::{ACCESS_TOKEN_TYPE, JwtCodec, JwtConfig, MAX_TOKEN_LENGTH, check_algorithm};
pub use key_ring::{KeyRing, KeyState, KeyStatus, RingKey, SIGNING_KEY_PURPOSE, SigningKey, schedule};
pub use keys::{GENERATED_KEY_FILE, KeyError};
pub use password::{Argon2Hasher, HasherConfig, HasherError, ITERATIONS, MEMORY_KIB, PARALLELISM};
pub use totp::{DIGITS, SECRET_BYTES, STEP_SECONDS, TotpCodec};
