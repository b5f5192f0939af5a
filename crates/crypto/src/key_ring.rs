//! Several signing keys at once: the key ring that lets keys rotate without a restart.
//!
//! Each key has an activation time. At any moment the **current** key is the newest one whose activation time has
//! passed; it signs. Keys activated later are **pending**: already published and accepted, so that every instance
//! and every relying party knows a key before anyone signs with it. An older key stops signing when its successor
//! activates and keeps **verifying** for a grace period (the access-token lifetime: no token it signed can outlive
//! that), after which it is **retired**: no longer published nor accepted.
//!
//! States are worked out from the activation times at the moment of use, never stored, so every instance reading
//! the same keys agrees on them without talking to the others. When no key has activated yet (a clock slightly
//! behind the instance that created the first key), the earliest one signs, so a deployment always has a key.
//!
//! Private keys kept in the database are sealed with the [`Sealer`] under the purpose [`SIGNING_KEY_PURPOSE`], so
//! a sealed signing key cannot be passed off as another sealed secret or the other way round.

use std::sync::Arc;

use josekit::Value;
use josekit::jwk::alg::ec::EcKeyPair;
use josekit::jws::ES256;
use josekit::jws::alg::ecdsa::{EcdsaJwsSigner, EcdsaJwsVerifier};
use time::{Duration, OffsetDateTime};

use crate::data_key::Sealer;
use crate::keys::{self, KeyError, PublicCoordinates};

/// The associated data a private signing key is sealed under.
pub const SIGNING_KEY_PURPOSE: &str = "jwt-signing-key";

/// The only algorithm the ring signs and accepts.
pub(crate) const ALGORITHM: &str = "ES256";

/// One ES256 key pair, named by its RFC 7638 thumbprint, with the signer and verifier built from it. Its `Debug`
/// form shows only the key id.
pub struct SigningKey {
    pair: EcKeyPair,
    kid: String,
    signer: EcdsaJwsSigner,
    verifier: EcdsaJwsVerifier,
    jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh P-256 key.
    ///
    /// # Errors
    /// [`KeyError::Crypto`] when OpenSSL cannot generate one.
    pub fn generate() -> Result<Self, KeyError> {
        Self::from_pair(ES256.generate_key_pair().map_err(KeyError::Crypto)?)
    }

    /// The key generated under `data_dir` by earlier versions (`DATA_DIR/jwt-es256.pem`), if there is one: imported
    /// as the first database key so tokens issued before the upgrade keep verifying.
    ///
    /// # Errors
    /// [`KeyError::GeneratedKeyInvalid`] or [`KeyError::GeneratedKeyIo`] naming `DATA_DIR`.
    pub fn read_generated(data_dir: &std::path::Path) -> Result<Option<Self>, KeyError> {
        keys::read_generated(&data_dir.join(keys::GENERATED_KEY_FILE))?.map(Self::from_pair).transpose()
    }

    pub(crate) fn from_pair(pair: EcKeyPair) -> Result<Self, KeyError> {
        let coordinates = PublicCoordinates::of(&pair)?;
        let kid = coordinates.thumbprint();
        let signer = ES256.signer_from_der(pair.to_der_private_key()).map_err(KeyError::Crypto)?;
        // No key id on the verifier: josekit would then demand a `kid` header, while ours is optional (the ring
        // picks the verifier by `kid` itself).
        let verifier = ES256.verifier_from_der(pair.to_der_public_key()).map_err(KeyError::Crypto)?;
        let jwk = serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": coordinates.x,
            "y": coordinates.y,
            "kid": kid,
            "use": "sig",
            "alg": ALGORITHM,
        });
        Ok(Self { pair, kid, signer, verifier, jwk })
    }

    /// The key id (`kid`): the RFC 7638 thumbprint of the public key.
    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (`kty`, `crv`, `x`, `y`, `kid`, `use`, `alg`).
    #[must_use]
    pub fn public_jwk(&self) -> &Value {
        &self.jwk
    }

    /// The private key in PKCS#8 PEM, sealed for storage (encrypted when the sealer has a data key).
    #[must_use]
    pub fn seal(&self, sealer: &Sealer) -> Vec<u8> {
        sealer.seal(SIGNING_KEY_PURPOSE, &self.pair.to_pem_private_key())
    }

    /// Opens a key sealed by [`SigningKey::seal`] and stored under `kid`, checking that it is the key `kid` names.
    ///
    /// # Errors
    /// [`KeyError::StoredKeySealed`] when it does not open with the sealer's data key (or none is configured),
    /// [`KeyError::StoredKeyInvalid`] when it is not a P-256 PKCS#8 key or its thumbprint is not `kid`.
    pub fn open(sealer: &Sealer, kid: &str, sealed: &[u8]) -> Result<Self, KeyError> {
        let pem = sealer
            .open(SIGNING_KEY_PURPOSE, sealed)
            .map_err(|source| KeyError::StoredKeySealed { kid: kid.to_owned(), source })?;
        let invalid = |reason: &str| KeyError::StoredKeyInvalid { kid: kid.to_owned(), reason: reason.to_owned() };
        let pair = keys::parse_p256_pkcs8(&pem).map_err(|_| invalid("not a P-256 private key in PKCS#8 PEM"))?;
        let key = Self::from_pair(pair)?;
        // A row whose key was swapped for another would otherwise sign under a kid that names a different key.
        if key.kid != kid {
            return Err(invalid("the key's thumbprint is not its kid"));
        }
        Ok(key)
    }

    pub(crate) const fn signer(&self) -> &EcdsaJwsSigner {
        &self.signer
    }

    pub(crate) const fn verifier(&self) -> &EcdsaJwsVerifier {
        &self.verifier
    }
}

/// What a key is doing at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published and accepted; signs once its activation time has passed.
    Pending,
    /// Signs new tokens.
    Current,
    /// No longer signs; still published and accepted until its retirement.
    Verifying,
    /// Neither published nor accepted.
    Retired,
}

impl KeyState {
    /// The state's name as `keys list` prints it.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Current => "current",
            Self::Verifying => "verifying",
            Self::Retired => "retired",
        }
    }
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One key's place in the schedule at a given moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// The key id.
    pub kid: String,
    /// Its state at the moment asked about.
    pub state: KeyState,
    /// When it starts (or started) signing.
    pub activates_at: OffsetDateTime,
    /// When its successor took over, once one has.
    pub stopped_signing_at: Option<OffsetDateTime>,
    /// When it is (or was) retired, once it has stopped signing.
    pub retires_at: Option<OffsetDateTime>,
}

/// The schedule of a set of keys at `now`: each key's state and dates, ordered by activation (ties by kid, so every
/// instance orders alike). `grace` is how long a key keeps verifying after it stopped signing.
#[must_use]
pub fn schedule(keys: &[(String, OffsetDateTime)], grace: Duration, now: OffsetDateTime) -> Vec<KeyStatus> {
    let mut ordered: Vec<&(String, OffsetDateTime)> = keys.iter().collect();
    ordered.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    // The newest activated key; the earliest when none has activated yet.
    let current = ordered.iter().rposition(|(_, activates_at)| *activates_at <= now).unwrap_or(0);
    ordered
        .iter()
        .enumerate()
        .map(|(index, (kid, activates_at))| {
            let successor = ordered.get(index + 1).filter(|_| index < current).map(|(_, at)| *at);
            let retires_at = successor.map(|stopped| stopped + grace);
            let state = if index == current {
                KeyState::Current
            } else if index > current {
                KeyState::Pending
            } else if retires_at.is_some_and(|retires_at| retires_at <= now) {
                KeyState::Retired
            } else {
                KeyState::Verifying
            };
            KeyStatus {
                kid: kid.clone(),
                state,
                activates_at: *activates_at,
                stopped_signing_at: successor,
                retires_at,
            }
        })
        .collect()
}

/// A key of the ring with its activation time.
#[derive(Debug, Clone)]
pub struct RingKey {
    /// The key.
    pub key: Arc<SigningKey>,
    /// When it starts signing.
    pub activates_at: OffsetDateTime,
}

/// The keys a codec signs and verifies with, and the grace period of the ones that stopped signing.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<RingKey>,
    grace: Duration,
}

impl KeyRing {
    /// A ring of one key that signs forever (the key of `JWT_PRIVATE_KEY_FILE`, or of an embedded codec).
    #[must_use]
    pub fn single(key: SigningKey) -> Self {
        Self {
            keys: vec![RingKey { key: Arc::new(key), activates_at: OffsetDateTime::UNIX_EPOCH }],
            grace: Duration::ZERO,
        }
    }

    /// A ring of `keys`, each verifying for `grace` after its successor activated.
    ///
    /// # Errors
    /// [`KeyError::NoSigningKey`] when `keys` is empty.
    pub fn new(mut keys: Vec<RingKey>, grace: Duration) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::NoSigningKey);
        }
        keys.sort_by(|a, b| a.activates_at.cmp(&b.activates_at).then_with(|| a.key.kid.cmp(&b.key.kid)));
        Ok(Self { keys, grace })
    }

    /// Every key's state and dates at `now`, in activation order.
    #[must_use]
    pub fn schedule(&self, now: OffsetDateTime) -> Vec<KeyStatus> {
        let keys: Vec<(String, OffsetDateTime)> =
            self.keys.iter().map(|ring_key| (ring_key.key.kid.clone(), ring_key.activates_at)).collect();
        schedule(&keys, self.grace, now)
    }

    /// The key with this id, whatever its state (to reuse an opened key when the ring is rebuilt).
    #[must_use]
    pub fn get(&self, kid: &str) -> Option<Arc<SigningKey>> {
        self.keys.iter().find(|ring_key| ring_key.key.kid == kid).map(|ring_key| Arc::clone(&ring_key.key))
    }

    /// The index of the key that signs at `now`, as [`schedule`] decides: the newest activated key, the earliest
    /// when none has activated. [`KeyRing::new`] sorted the keys as `schedule` orders them.
    fn current(&self, now: OffsetDateTime) -> usize {
        self.keys.iter().rposition(|ring_key| ring_key.activates_at <= now).unwrap_or(0)
    }

    /// The keys and their states at `now`, as [`schedule`] works them out, without allocating (this runs on every
    /// request).
    fn with_states(&self, now: OffsetDateTime) -> impl Iterator<Item = (&SigningKey, KeyState)> {
        let current = self.current(now);
        self.keys.iter().enumerate().map(move |(index, ring_key)| {
            let state = match index.cmp(&current) {
                std::cmp::Ordering::Equal => KeyState::Current,
                std::cmp::Ordering::Greater => KeyState::Pending,
                // Before the current key, a successor exists and has activated.
                std::cmp::Ordering::Less => match self.keys.get(index + 1) {
                    Some(successor) if successor.activates_at + self.grace <= now => KeyState::Retired,
                    _ => KeyState::Verifying,
                },
            };
            (ring_key.key.as_ref(), state)
        })
    }

    /// The key that signs at `now`.
    #[must_use]
    pub fn signing_key(&self, now: OffsetDateTime) -> &SigningKey {
        // `new` refuses an empty ring, so the index is always valid.
        &self.keys[self.current(now)].key
    }

    /// The keys that verify at `now`: every key not retired.
    pub fn verifying_keys(&self, now: OffsetDateTime) -> impl Iterator<Item = &SigningKey> {
        self.with_states(now).filter(|(_, state)| *state != KeyState::Retired).map(|(key, _)| key)
    }

    /// The key `kid` names, if it verifies at `now`.
    #[must_use]
    pub fn verifying_key(&self, kid: &str, now: OffsetDateTime) -> Option<&SigningKey> {
        self.verifying_keys(now).find(|key| key.kid == kid)
    }

    /// The public keys that verify at `now` as a JWK set, `{"keys":[...]}`, in activation order.
    #[must_use]
    pub fn jwks(&self, now: OffsetDateTime) -> Value {
        let keys: Vec<Value> = self.verifying_keys(now).map(|key| key.jwk.clone()).collect();
        serde_json::json!({ "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;
    use crate::DataKey;

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000) + Duration::seconds(seconds)
    }

    fn data_key(byte: u8) -> DataKey {
        DataKey::from_base64(&base64::engine::general_purpose::STANDARD.encode([byte; 32])).unwrap()
    }

    #[test]
    fn the_schedule_moves_keys_from_pending_to_current_to_verifying_to_retired() {
        let keys = vec![("b".to_owned(), at(100)), ("a".to_owned(), at(0))];
        let grace = Duration::seconds(60);
        let states =
            |now| schedule(&keys, grace, now).into_iter().map(|status| status.state).collect::<Vec<KeyState>>();
        let expectations = [
            (at(50), [KeyState::Current, KeyState::Pending]),
            (at(100), [KeyState::Verifying, KeyState::Current]),
            (at(159), [KeyState::Verifying, KeyState::Current]),
            (at(160), [KeyState::Retired, KeyState::Current]),
            // Before any activation time, the earliest key signs.
            (at(-10), [KeyState::Current, KeyState::Pending]),
        ];
        // The ring works the states out on its own (without allocating); it must agree with the schedule.
        let (a, b) = (Arc::new(SigningKey::generate().unwrap()), Arc::new(SigningKey::generate().unwrap()));
        let ring = KeyRing::new(
            vec![
                RingKey { key: Arc::clone(&b), activates_at: at(100) },
                RingKey { key: Arc::clone(&a), activates_at: at(0) },
            ],
            grace,
        )
        .unwrap();
        for (now, expected) in expectations {
            assert_eq!(states(now), expected, "schedule at {now}");
            let ring_states: Vec<KeyState> = ring.with_states(now).map(|(_, state)| state).collect();
            assert_eq!(ring_states, expected, "ring at {now}");
            let signing = if expected[0] == KeyState::Current { a.kid() } else { b.kid() };
            assert_eq!(ring.signing_key(now).kid(), signing);
        }

        let listed = schedule(&keys, grace, at(120));
        assert_eq!(listed[0].kid, "a");
        assert_eq!(listed[0].stopped_signing_at, Some(at(100)));
        assert_eq!(listed[0].retires_at, Some(at(160)));
        assert_eq!((listed[1].stopped_signing_at, listed[1].retires_at), (None, None));
    }

    #[test]
    fn a_sealed_key_opens_only_with_its_data_key_and_kid() {
        let key = SigningKey::generate().unwrap();
        let pem = key.pair.to_pem_private_key();
        let sealer = Sealer::new(Some(data_key(1)));
        let sealed = key.seal(&sealer);
        assert!(!sealed.windows(pem.len()).any(|window| window == pem.as_slice()), "the PEM is not stored");
        assert!(!sealed.windows(11).any(|window| window == b"PRIVATE KEY"), "not even its label");
        assert_eq!(SigningKey::open(&sealer, key.kid(), &sealed).unwrap().kid(), key.kid());

        let wrong = SigningKey::open(&Sealer::new(Some(data_key(2))), key.kid(), &sealed).unwrap_err();
        assert!(matches!(wrong, KeyError::StoredKeySealed { .. }), "{wrong:?}");
        assert!(wrong.to_string().contains(key.kid()) && wrong.to_string().contains("cannot be decrypted"), "{wrong}");
        let missing = SigningKey::open(&Sealer::new(None), key.kid(), &sealed).unwrap_err();
        assert!(missing.to_string().contains("DATA_ENCRYPTION_KEY_FILE"), "{missing}");
        let other = SigningKey::generate().unwrap();
        let swapped = SigningKey::open(&sealer, other.kid(), &sealed).unwrap_err();
        assert!(matches!(swapped, KeyError::StoredKeyInvalid { .. }), "{swapped:?}");
        // A secret sealed for another purpose is not a signing key.
        let totp = sealer.seal("totp", &pem);
        assert!(SigningKey::open(&sealer, key.kid(), &totp).is_err());
    }
}
