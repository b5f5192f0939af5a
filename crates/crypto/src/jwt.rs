//! Access tokens as ES256 JWTs (RFC 9068 style `at+jwt`), signed and checked with josekit against a [`KeyRing`].
//!
//! Verification follows RFC 8725: the size is bounded before any parsing, the signature is checked by a verifier
//! pinned to ES256 and to one of this deployment's keys that still verifies (so `alg: none`, HMAC with the public
//! key, other algorithms, foreign and retired keys all fail), key-carrying headers (`jwk`, `jku`, `x5u`) are never
//! consulted, and only then are the claims read, each required one checked by hand: josekit's own validator accepts
//! a token without `exp`.
//!
//! The ring is swapped whole ([`JwtCodec::replace_ring`]) when the keys change; a request reads it once, under a
//! lock held only long enough to clone an `Arc`, and never waits for storage.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use josekit::jws::{JwsHeader, JwsVerifier};
use josekit::jwt::{self, JwtPayload};
use josekit::{JoseError, Value};
use time::OffsetDateTime;
use users_domain::ports::{InvalidToken, PortError, TokenCodec};
use users_domain::session::{AccessClaims, AccessToken, SessionId};
use users_domain::user::UserId;
use uuid::Uuid;

use crate::key_ring::{ALGORITHM, KeyRing, SigningKey};
use crate::keys::{self, KeyError};

/// The `typ` header of access tokens (RFC 9068), which keeps other JWTs signed by the same key (ID tokens, say)
/// from being accepted as access tokens.
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// The longest token accepted, in bytes; ours are about 500. Anything longer is refused before it is parsed.
pub const MAX_TOKEN_LENGTH: usize = 8 * 1024;

/// Where a single signing key comes from and what the tokens say about their origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// `JWT_ALGORITHM`; only `ES256` is accepted.
    pub algorithm: String,
    /// `JWT_PRIVATE_KEY_FILE`: a P-256 private key in PKCS#8 PEM. When absent the key is `DATA_DIR/jwt-es256.pem`,
    /// generated on first start.
    pub private_key_file: Option<PathBuf>,
    /// `DATA_DIR`, where a generated key is kept.
    pub data_dir: PathBuf,
    /// The `iss` claim written and required.
    pub issuer: String,
    /// The `aud` claim written and required.
    pub audience: String,
}

/// The ES256 [`TokenCodec`]: cheap to clone, all clones share one key ring.
#[derive(Clone)]
pub struct JwtCodec {
    inner: Arc<Inner>,
}

struct Inner {
    ring: RwLock<Arc<KeyRing>>,
    issuer: String,
    audience: String,
    verified: VerifiedTokens,
}

/// Tokens that passed every check, by the SHA-256 of their exact text, with their claims and the key that signed
/// them.
///
/// The signature check is the most expensive step of an authenticated request, and a client presents the same
/// token for its whole lifetime, so a verified token is remembered until it expires. Only the time-dependent checks
/// (`exp`, and that its key still verifies) are repeated on a hit; revocation never depended on the token, it is
/// read from the session row on every request. Only valid tokens enter, so callers cannot fill it with garbage; its
/// size is bounded all the same.
#[derive(Default)]
struct VerifiedTokens(std::sync::Mutex<std::collections::HashMap<[u8; 32], (AccessClaims, String)>>);

/// How many verified tokens are remembered at most.
const VERIFIED_TOKENS_MAX: usize = 10_000;

impl VerifiedTokens {
    fn key(token: &str) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    fn get(&self, token: &str, ring: &KeyRing, now: OffsetDateTime) -> Option<AccessClaims> {
        let remembered = self.0.lock().unwrap_or_else(PoisonError::into_inner).get(&Self::key(token)).cloned();
        remembered
            .filter(|(claims, kid)| claims.expires_at > now && ring.verifying_key(kid, now).is_some())
            .map(|(claims, _)| claims)
    }

    fn insert(&self, token: &str, claims: &AccessClaims, kid: &str, now: OffsetDateTime) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= VERIFIED_TOKENS_MAX {
            map.retain(|_, (cached, _)| cached.expires_at > now);
            if map.len() >= VERIFIED_TOKENS_MAX {
                map.clear();
            }
        }
        map.insert(Self::key(token), (claims.clone(), kid.to_owned()));
    }
}

impl std::fmt::Debug for JwtCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtCodec")
            .field("kid", &self.key_id())
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .finish_non_exhaustive()
    }
}

impl JwtCodec {
    /// Loads the configured key, or the generated one under `data_dir`, generating and saving it (mode 0600) if
    /// there is none yet: a ring of that one key. Blocking file I/O: call it at start-up.
    ///
    /// # Errors
    /// [`KeyError`] naming `JWT_ALGORITHM`, `JWT_PRIVATE_KEY_FILE` or `DATA_DIR` when the algorithm is not ES256,
    /// the key file is missing or not a P-256 PKCS#8 key, or the data directory cannot hold the generated key.
    pub fn load_or_generate(config: &JwtConfig) -> Result<Self, KeyError> {
        check_algorithm(&config.algorithm)?;
        let key = keys::load_or_generate(config.private_key_file.as_deref(), &config.data_dir)?;
        let ring = KeyRing::single(SigningKey::from_pair(key)?);
        Ok(Self::with_ring(ring, config.issuer.clone(), config.audience.clone()))
    }

    /// A codec with a fresh P-256 key that lives only in memory: for tests, examples and embedding, where tokens
    /// need not outlive the process. Every call makes a new key, so tokens of one codec fail on another.
    ///
    /// # Errors
    /// [`KeyError::Crypto`] when the key cannot be generated.
    pub fn ephemeral(issuer: &str, audience: &str) -> Result<Self, KeyError> {
        Ok(Self::with_ring(KeyRing::single(SigningKey::generate()?), issuer.to_owned(), audience.to_owned()))
    }

    /// A codec signing and verifying with `ring` (the keys stored in the database, say).
    #[must_use]
    pub fn with_ring(ring: KeyRing, issuer: String, audience: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                ring: RwLock::new(Arc::new(ring)),
                issuer,
                audience,
                verified: VerifiedTokens::default(),
            }),
        }
    }

    /// Replaces the key ring of this codec and all its clones; requests in flight finish with the ring they read.
    pub fn replace_ring(&self, ring: KeyRing) {
        *self.inner.ring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
    }

    /// The key ring in use.
    #[must_use]
    pub fn ring(&self) -> Arc<KeyRing> {
        Arc::clone(&self.inner.ring.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The key id (`kid`) of the key signing now: the RFC 7638 thumbprint of its public key.
    #[must_use]
    pub fn key_id(&self) -> String {
        self.ring().signing_key(OffsetDateTime::now_utc()).kid().to_owned()
    }

    /// The public keys that verify now as a JWK set, `{"keys":[{kty, crv, x, y, kid, use, alg}, ...]}`, for a
    /// `jwks.json` endpoint.
    #[must_use]
    pub fn jwks(&self) -> Value {
        self.ring().jwks(OffsetDateTime::now_utc())
    }

    /// Signs with the key current at the token's issue time.
    fn sign(&self, claims: &AccessClaims) -> Result<String, JoseError> {
        let ring = self.ring();
        let key = ring.signing_key(claims.issued_at);
        let mut header = JwsHeader::new();
        header.set_token_type(ACCESS_TOKEN_TYPE);
        header.set_key_id(key.kid());
        let mut payload = JwtPayload::new();
        payload.set_issuer(&self.inner.issuer);
        payload.set_audience(vec![self.inner.audience.clone()]);
        payload.set_subject(claims.user_id.to_string());
        payload.set_claim("sid", Some(Value::String(claims.session_id.to_string())))?;
        // josekit's time setters write fractional seconds and panic before 1970; whole seconds written here are
        // what every verifier expects. Truncating `exp` can only make a token expire early, never late.
        payload.set_claim("iat", Some(Value::from(claims.issued_at.unix_timestamp())))?;
        payload.set_claim("exp", Some(Value::from(claims.expires_at.unix_timestamp())))?;
        payload.set_jwt_id(claims.token_id.to_string());
        jwt::encode_with_signer(&payload, &header, key.signer())
    }

    /// Checks the signature with the key the `kid` header names, or, for a token without one, with each key that
    /// verifies (there are at most a few). Returns the payload, the header and the key id that verified it.
    fn decode(ring: &KeyRing, token: &str, now: OffsetDateTime) -> Option<(JwtPayload, JwsHeader, String)> {
        let without_kid = Cell::new(false);
        let selected = jwt::decode_with_verifier_selector(token, |header| {
            Ok(match header.key_id() {
                Some(kid) => ring.verifying_key(kid, now).map(|key| key.verifier() as &dyn JwsVerifier),
                None => {
                    without_kid.set(true);
                    None
                }
            })
        });
        if let Ok((payload, header)) = selected {
            let kid = header.key_id()?.to_owned();
            return Some((payload, header, kid));
        }
        if !without_kid.get() {
            return None;
        }
        ring.verifying_keys(now).find_map(|key| {
            jwt::decode_with_verifier(token, key.verifier())
                .ok()
                .map(|(payload, header)| (payload, header, key.kid().to_owned()))
        })
    }

    /// Everything after the signature: the header's type, then each claim. `None` means invalid.
    fn claims(&self, header: &JwsHeader, payload: &JwtPayload, now: OffsetDateTime) -> Option<AccessClaims> {
        // Media types compare case-insensitively, and RFC 7515 lets `typ` drop the `application/` prefix.
        let typ = header.token_type()?.to_ascii_lowercase();
        if typ != ACCESS_TOKEN_TYPE && typ.strip_prefix("application/") != Some(ACCESS_TOKEN_TYPE) {
            return None;
        }
        let expires_at = numeric_date(payload, "exp")?;
        let issued_at = numeric_date(payload, "iat")?;
        if expires_at <= now {
            return None;
        }
        // We never write `nbf`, but a token that carries one must respect it (RFC 7519 section 4.1.5).
        if payload.claim("nbf").is_some() && numeric_date(payload, "nbf")? > now {
            return None;
        }
        if payload.issuer()? != self.inner.issuer {
            return None;
        }
        if !payload.audience()?.contains(&self.inner.audience.as_str()) {
            return None;
        }
        let user_id = UserId::from_uuid(Uuid::try_parse(payload.subject()?).ok()?);
        let session_id = match payload.claim("sid")? {
            Value::String(sid) => SessionId::from_uuid(Uuid::try_parse(sid).ok()?),
            _ => return None,
        };
        let token_id = Uuid::try_parse(payload.jwt_id()?).ok()?;
        Some(AccessClaims { user_id, session_id, issued_at, expires_at, token_id })
    }
}

/// Refuses every `JWT_ALGORITHM` but ES256.
///
/// # Errors
/// [`KeyError::UnsupportedAlgorithm`] naming `JWT_ALGORITHM`.
pub fn check_algorithm(algorithm: &str) -> Result<(), KeyError> {
    if algorithm == ALGORITHM { Ok(()) } else { Err(KeyError::UnsupportedAlgorithm { found: algorithm.to_owned() }) }
}

/// Reads a NumericDate claim as whole seconds. josekit's getters are not used: they accept fractions and panic on
/// values too large for a `Duration`, and a token must never be able to panic the server.
fn numeric_date(payload: &JwtPayload, name: &str) -> Option<OffsetDateTime> {
    match payload.claim(name)? {
        Value::Number(seconds) => OffsetDateTime::from_unix_timestamp(seconds.as_i64()?).ok(),
        _ => None,
    }
}

impl TokenCodec for JwtCodec {
    fn issue(&self, claims: &AccessClaims) -> Result<AccessToken, PortError> {
        self.sign(claims)
            .map(AccessToken::new)
            .map_err(|error| PortError::Unknown(anyhow::Error::new(error).context("signing an access token")))
    }

    fn verify(&self, token: &str, now: OffsetDateTime) -> Result<AccessClaims, InvalidToken> {
        // Bound the work an anonymous caller can cause before base64 and JSON see the input.
        if token.len() > MAX_TOKEN_LENGTH {
            return Err(InvalidToken);
        }
        let ring = self.ring();
        if let Some(claims) = self.inner.verified.get(token, &ring, now) {
            return Ok(claims);
        }
        // josekit requires `alg` to equal the verifier's (ES256), checks the signature with the chosen public key,
        // and refuses any `crit` header, before it decodes the payload. Nothing here logs: the reasons a token
        // fails are the attacker's business, not the log's.
        let (payload, header, kid) = Self::decode(&ring, token, now).ok_or(InvalidToken)?;
        let claims = self.claims(&header, &payload, now).ok_or(InvalidToken)?;
        self.inner.verified.insert(token, &claims, &kid, now);
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use josekit::jwk::KeyPair as _;
    use josekit::jws::alg::ecdsa::EcdsaJwsSigner;
    use josekit::jws::{ES256, JwsSigner};
    use serde_json::json;
    use time::Duration;

    use super::*;
    use crate::key_ring::RingKey;
    use crate::keys::PublicCoordinates;

    const ISSUER: &str = "https://users.example.test";
    const AUDIENCE: &str = "user-management";

    fn now() -> OffsetDateTime {
        // Whole seconds, so that a round trip compares equal.
        OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap()
    }

    /// A directory under the system temp dir, not created (the codec must create it), removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            Self(std::env::temp_dir().join(format!("users-crypto-test-{}", Uuid::new_v4())))
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn config(data_dir: &Path) -> JwtConfig {
        JwtConfig {
            algorithm: "ES256".to_owned(),
            private_key_file: None,
            data_dir: data_dir.to_owned(),
            issuer: ISSUER.to_owned(),
            audience: AUDIENCE.to_owned(),
        }
    }

    /// A codec with a fresh generated key; keep the directory alive as long as the codec is used.
    fn codec() -> (JwtCodec, TempDir) {
        let dir = TempDir::new();
        let codec = JwtCodec::load_or_generate(&config(dir.path())).unwrap();
        (codec, dir)
    }

    /// The signer of the key `codec` signs with now.
    fn signer_of(codec: &JwtCodec) -> EcdsaJwsSigner {
        codec.ring().signing_key(now()).signer().clone()
    }

    fn claims() -> AccessClaims {
        AccessClaims {
            user_id: UserId::generate(),
            session_id: SessionId::generate(),
            issued_at: now(),
            expires_at: now() + Duration::minutes(15),
            token_id: Uuid::new_v4(),
        }
    }

    fn b64_json(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    /// A compact JWS assembled by hand, so that any header and payload can be tried.
    fn signed_by(signer: &dyn JwsSigner, header: &Value, payload: &Value) -> String {
        let message = format!("{}.{}", b64_json(header), b64_json(payload));
        let signature = signer.sign(message.as_bytes()).unwrap();
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn header(codec: &JwtCodec) -> Value {
        json!({ "alg": "ES256", "typ": "at+jwt", "kid": codec.key_id() })
    }

    fn payload() -> Value {
        let now = now().unix_timestamp();
        json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": Uuid::now_v7().to_string(),
            "sid": Uuid::now_v7().to_string(),
            "iat": now,
            "exp": now + 900,
            "jti": Uuid::new_v4().to_string(),
        })
    }

    /// A copy of `value` with one member set, or removed when `new` is `None`.
    fn with(value: &Value, name: &str, new: Option<Value>) -> Value {
        let mut value = value.clone();
        let object = value.as_object_mut().unwrap();
        match new {
            Some(new) => object.insert(name.to_owned(), new),
            None => object.remove(name),
        };
        value
    }

    fn decode_part(token: &str, index: usize) -> Value {
        let part = token.split('.').nth(index).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    fn assert_invalid(codec: &JwtCodec, token: &str, what: &str) {
        assert_eq!(codec.verify(token, now()), Err(InvalidToken), "{what} must be refused");
    }

    #[test]
    fn issued_tokens_verify_back_to_the_same_claims() {
        let (codec, _dir) = codec();
        let claims = claims();
        let token = codec.issue(&claims).unwrap();
        assert_eq!(codec.verify(token.expose(), now()), Ok(claims.clone()));
        assert_eq!(codec.verify(token.expose(), claims.expires_at - Duration::seconds(1)), Ok(claims.clone()));

        assert_eq!(decode_part(token.expose(), 0), json!({ "typ": "at+jwt", "kid": codec.key_id(), "alg": "ES256" }));
        assert_eq!(
            decode_part(token.expose(), 1),
            json!({
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": claims.user_id.to_string(),
                "sid": claims.session_id.to_string(),
                "iat": claims.issued_at.unix_timestamp(),
                "exp": claims.expires_at.unix_timestamp(),
                "jti": claims.token_id.to_string(),
            })
        );
    }

    #[test]
    fn a_remembered_token_still_expires_and_its_altered_copies_are_still_checked() {
        let (codec, _dir) = codec();
        let claims = claims();
        let token = codec.issue(&claims).unwrap();
        assert_eq!(codec.verify(token.expose(), now()), Ok(claims.clone()), "verified once, now remembered");
        assert_eq!(codec.verify(token.expose(), now()), Ok(claims.clone()), "answered from memory");
        assert_eq!(codec.verify(token.expose(), claims.expires_at), Err(InvalidToken));
        let mut altered = token.expose().to_owned();
        let last = altered.pop().unwrap();
        altered.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(codec.verify(&altered, now()), Err(InvalidToken));
    }

    #[test]
    fn the_memory_of_verified_tokens_stays_bounded() {
        let (codec, _dir) = codec();
        let mut first = None;
        for _ in 0..(VERIFIED_TOKENS_MAX + 5) {
            let token = codec.issue(&claims()).unwrap();
            assert!(codec.verify(token.expose(), now()).is_ok());
            first.get_or_insert(token);
        }
        let size = codec.inner.verified.0.lock().unwrap().len();
        assert!(size <= VERIFIED_TOKENS_MAX, "{size}");
        assert!(codec.verify(first.unwrap().expose(), now()).is_ok(), "a forgotten token verifies the long way");
    }

    #[test]
    fn tokens_expire_at_exp_and_not_a_second_later() {
        let (codec, _dir) = codec();
        let claims = claims();
        let token = codec.issue(&claims).unwrap();
        assert_eq!(codec.verify(token.expose(), claims.expires_at), Err(InvalidToken));
        assert_eq!(codec.verify(token.expose(), claims.expires_at + Duration::hours(1)), Err(InvalidToken));
    }

    #[test]
    fn hand_built_tokens_with_the_right_key_and_claims_verify() {
        // The baseline for the attack tests below: each of them changes one thing about a token like these.
        let (codec, _dir) = codec();
        let signer = &signer_of(&codec);
        let header = header(&codec);
        let payload = payload();
        for (what, header, payload) in [
            ("as built", header.clone(), payload.clone()),
            ("without kid", with(&header, "kid", None), payload.clone()),
            ("with typ in capitals", with(&header, "typ", Some(json!("AT+JWT"))), payload.clone()),
            ("with typ application/at+jwt", with(&header, "typ", Some(json!("application/at+jwt"))), payload.clone()),
            ("with aud as an array", header.clone(), with(&payload, "aud", Some(json!(["other", AUDIENCE])))),
            ("with a past nbf", header.clone(), with(&payload, "nbf", Some(json!(now().unix_timestamp())))),
        ] {
            let token = signed_by(signer, &header, &payload);
            assert!(codec.verify(&token, now()).is_ok(), "{what}");
        }
    }

    #[test]
    fn the_generated_key_is_saved_privately_and_reloaded_with_the_same_kid() {
        let root = TempDir::new();
        let data_dir = root.path().join("nested").join("data");
        let first = JwtCodec::load_or_generate(&config(&data_dir)).unwrap();
        let token = first.issue(&claims()).unwrap();

        let key_file = data_dir.join(crate::GENERATED_KEY_FILE);
        let pem = fs::read_to_string(&key_file).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let entries: Vec<_> = fs::read_dir(&data_dir).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(entries, [crate::GENERATED_KEY_FILE], "no temporary file is left behind");

        let second = JwtCodec::load_or_generate(&config(&data_dir)).unwrap();
        assert_eq!(second.key_id(), first.key_id());
        assert!(second.verify(token.expose(), now()).is_ok());
        assert_eq!(fs::read_to_string(&key_file).unwrap(), pem, "loading does not rewrite the key");
    }

    #[test]
    fn a_key_generated_elsewhere_does_not_verify_our_tokens() {
        let (ours, _ours_dir) = codec();
        let (theirs, _theirs_dir) = codec();
        assert_ne!(ours.key_id(), theirs.key_id());
        let token = ours.issue(&claims()).unwrap();
        assert_eq!(theirs.verify(token.expose(), now()), Err(InvalidToken));
        // Even when the foreign signer claims our kid, the signature gives it away.
        let forged = signed_by(&signer_of(&theirs), &header(&ours), &payload());
        assert_invalid(&ours, &forged, "a token signed by another key under our kid");
    }

    #[test]
    fn a_configured_key_file_is_used_instead_of_the_data_dir() {
        let dir = TempDir::new();
        fs::create_dir_all(dir.path()).unwrap();
        let key = ES256.generate_key_pair().unwrap();
        let key_file = dir.path().join("configured.pem");
        fs::write(&key_file, key.to_pem_private_key()).unwrap();
        let data_dir = dir.path().join("data");
        let codec =
            JwtCodec::load_or_generate(&JwtConfig { private_key_file: Some(key_file.clone()), ..config(&data_dir) })
                .unwrap();
        assert_eq!(codec.key_id(), PublicCoordinates::of(&key).unwrap().thumbprint());
        assert!(!data_dir.exists(), "nothing is generated when a key is configured");
        let again =
            JwtCodec::load_or_generate(&JwtConfig { private_key_file: Some(key_file), ..config(&data_dir) }).unwrap();
        assert!(again.verify(codec.issue(&claims()).unwrap().expose(), now()).is_ok());
    }

    #[test]
    fn a_missing_or_wrong_key_file_is_an_error_naming_jwt_private_key_file() {
        let dir = TempDir::new();
        fs::create_dir_all(dir.path()).unwrap();
        let p384 = dir.path().join("p384.pem");
        fs::write(&p384, josekit::jws::ES384.generate_key_pair().unwrap().to_pem_private_key()).unwrap();
        let sec1 = dir.path().join("sec1.pem");
        fs::write(&sec1, ES256.generate_key_pair().unwrap().to_traditional_pem_private_key()).unwrap();
        for (what, path) in [("missing", dir.path().join("absent.pem")), ("P-384", p384), ("SEC1", sec1)] {
            let error = JwtCodec::load_or_generate(&JwtConfig {
                private_key_file: Some(path.clone()),
                ..config(&dir.path().join("data"))
            })
            .unwrap_err();
            let message = error.to_string();
            assert!(message.contains("JWT_PRIVATE_KEY_FILE"), "{what}: {message}");
            assert!(message.contains(&path.display().to_string()), "{what}: {message}");
        }
    }

    #[test]
    fn only_es256_is_accepted_as_jwt_algorithm() {
        let dir = TempDir::new();
        for algorithm in ["RS256", "HS256", "none", "es256", "ES384", ""] {
            let error =
                JwtCodec::load_or_generate(&JwtConfig { algorithm: algorithm.to_owned(), ..config(dir.path()) })
                    .unwrap_err();
            assert!(matches!(error, KeyError::UnsupportedAlgorithm { .. }), "{algorithm}: {error:?}");
            assert!(error.to_string().contains("JWT_ALGORITHM"), "{error}");
        }
        assert!(!dir.path().exists(), "a refused configuration generates nothing");
    }

    #[test]
    fn a_corrupt_generated_key_is_reported_and_left_alone() {
        let dir = TempDir::new();
        fs::create_dir_all(dir.path()).unwrap();
        let key_file = dir.path().join(crate::GENERATED_KEY_FILE);
        fs::write(&key_file, "-----BEGIN PRIVATE KEY-----\ntruncat").unwrap();
        let error = JwtCodec::load_or_generate(&config(dir.path())).unwrap_err();
        assert!(matches!(error, KeyError::GeneratedKeyInvalid { .. }), "{error:?}");
        assert!(error.to_string().contains("DATA_DIR"), "{error}");
        assert_eq!(fs::read_to_string(&key_file).unwrap(), "-----BEGIN PRIVATE KEY-----\ntruncat");
    }

    #[test]
    fn the_jwks_publishes_only_the_public_key_and_it_verifies_our_tokens() {
        let (codec, _dir) = codec();
        let jwks = codec.jwks();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        let jwk = keys[0].as_object().unwrap();
        let mut members: Vec<&str> = jwk.keys().map(String::as_str).collect();
        members.sort_unstable();
        assert_eq!(members, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(jwk["kid"], codec.key_id());

        // A relying party that knows only the JWKS can check our tokens.
        let published = josekit::jwk::Jwk::from_map(jwk.clone()).unwrap();
        let verifier = ES256.verifier_from_jwk(&published).unwrap();
        let token = codec.issue(&claims()).unwrap();
        assert!(jwt::decode_with_verifier(token.expose(), &verifier).is_ok());
    }

    #[test]
    fn unsigned_alg_none_tokens_are_refused() {
        let (codec, _dir) = codec();
        let payload = b64_json(&payload());
        for alg in ["none", "None", "NONE"] {
            let header = b64_json(&json!({ "alg": alg, "typ": "at+jwt" }));
            assert_invalid(&codec, &format!("{header}.{payload}."), alg);
            assert_invalid(&codec, &format!("{header}.{payload}"), alg);
        }
    }

    #[test]
    fn hmac_signed_with_the_public_key_is_refused() {
        let (codec, dir) = codec();
        let key = ES256.key_pair_from_pem(fs::read(dir.path().join(crate::GENERATED_KEY_FILE)).unwrap()).unwrap();
        let jwk = serde_json::to_vec(&codec.jwks()["keys"][0]).unwrap();
        for (what, secret) in
            [("public PEM", key.to_pem_public_key()), ("public DER", key.to_der_public_key()), ("public JWK", jwk)]
        {
            let signer = josekit::jws::HS256.signer_from_bytes(secret).unwrap();
            let header = with(&header(&codec), "alg", Some(json!("HS256")));
            assert_invalid(&codec, &signed_by(&signer, &header, &payload()), what);
        }
    }

    #[test]
    fn other_algorithms_and_keys_are_refused() {
        let (codec, _dir) = codec();
        let es384 = josekit::jws::ES384.generate_key_pair().unwrap();
        let es384 = josekit::jws::ES384.signer_from_der(es384.to_der_private_key()).unwrap();
        let rs256 = josekit::jws::RS256.generate_key_pair(2048).unwrap();
        let rs256 = josekit::jws::RS256.signer_from_der(rs256.to_der_private_key()).unwrap();
        let header = header(&codec);
        assert_invalid(&codec, &signed_by(&es384, &with(&header, "alg", Some(json!("ES384"))), &payload()), "ES384");
        assert_invalid(&codec, &signed_by(&rs256, &with(&header, "alg", Some(json!("RS256"))), &payload()), "RS256");
        // An RSA signature under an ES256 header: the algorithm matches, the signature cannot.
        assert_invalid(&codec, &signed_by(&rs256, &header, &payload()), "RS256 signature labelled ES256");
    }

    #[test]
    fn a_jwk_header_carrying_the_attackers_key_is_ignored() {
        let (codec, _dir) = codec();
        let attacker = ES256.generate_key_pair().unwrap();
        let signer = ES256.signer_from_der(attacker.to_der_private_key()).unwrap();
        let attacker_jwk = Value::Object(attacker.to_jwk_public_key().into());
        let embedded = with(&header(&codec), "jwk", Some(attacker_jwk.clone()));
        assert_invalid(&codec, &signed_by(&signer, &embedded, &payload()), "jwk header with our kid");
        let embedded = with(&embedded, "kid", None);
        assert_invalid(&codec, &signed_by(&signer, &embedded, &payload()), "jwk header without kid");
        for (name, url) in [("jku", "https://attacker.example/jwks.json"), ("x5u", "https://attacker.example/cert.pem")]
        {
            let pointing = with(&header(&codec), name, Some(json!(url)));
            assert_invalid(&codec, &signed_by(&signer, &pointing, &payload()), name);
        }
    }

    #[test]
    fn a_tampered_payload_is_refused() {
        let (codec, _dir) = codec();
        let token = codec.issue(&claims()).unwrap();
        let parts: Vec<&str> = token.expose().split('.').collect();
        let payload = with(&decode_part(token.expose(), 1), "sub", Some(json!(Uuid::now_v7().to_string())));
        let tampered = format!("{}.{}.{}", parts[0], b64_json(&payload), parts[2]);
        assert_invalid(&codec, &tampered, "a token whose sub was changed");
        let swapped_header = format!("{}.{}.{}", b64_json(&json!({"alg":"ES256","typ":"at+jwt"})), parts[1], parts[2]);
        assert_invalid(&codec, &swapped_header, "a token whose header was changed");
    }

    #[test]
    fn signed_tokens_with_bad_claims_are_refused() {
        // Signed with our own key, so only the claim checks stand between these and acceptance.
        let (codec, _dir) = codec();
        let signer = &signer_of(&codec);
        let payload = payload();
        let now = now().unix_timestamp();
        for (what, payload) in [
            ("missing exp", with(&payload, "exp", None)),
            ("string exp", with(&payload, "exp", Some(json!("9999999999")))),
            ("fractional exp", with(&payload, "exp", Some(json!(9_999_999_999.5_f64)))),
            ("astronomic exp", with(&payload, "exp", Some(json!(1e300_f64)))),
            ("exp past i64", with(&payload, "exp", Some(json!(u64::MAX)))),
            ("exp now", with(&payload, "exp", Some(json!(now)))),
            ("expired", with(&payload, "exp", Some(json!(now - 1)))),
            ("missing iat", with(&payload, "iat", None)),
            ("string iat", with(&payload, "iat", Some(json!("1750000000")))),
            ("future nbf", with(&payload, "nbf", Some(json!(now + 60)))),
            ("string nbf", with(&payload, "nbf", Some(json!("0")))),
            ("missing iss", with(&payload, "iss", None)),
            ("wrong iss", with(&payload, "iss", Some(json!("https://evil.example")))),
            ("missing aud", with(&payload, "aud", None)),
            ("wrong aud", with(&payload, "aud", Some(json!("other-service")))),
            ("aud array without ours", with(&payload, "aud", Some(json!(["a", "b"])))),
            ("empty aud array", with(&payload, "aud", Some(json!([])))),
            ("missing sub", with(&payload, "sub", None)),
            ("sub not a uuid", with(&payload, "sub", Some(json!("admin")))),
            ("missing sid", with(&payload, "sid", None)),
            ("numeric sid", with(&payload, "sid", Some(json!(1)))),
            ("sid not a uuid", with(&payload, "sid", Some(json!("session")))),
            ("missing jti", with(&payload, "jti", None)),
            ("jti not a uuid", with(&payload, "jti", Some(json!("1")))),
        ] {
            assert_invalid(&codec, &signed_by(signer, &header(&codec), &payload), what);
        }
        assert_invalid(&codec, &signed_by(signer, &header(&codec), &json!([1, 2])), "a payload that is no object");
    }

    #[test]
    fn signed_tokens_with_bad_headers_are_refused() {
        let (codec, _dir) = codec();
        let signer = &signer_of(&codec);
        let header = header(&codec);
        for (what, header) in [
            ("typ JWT", with(&header, "typ", Some(json!("JWT")))),
            ("missing typ", with(&header, "typ", None)),
            ("typ application/jwt", with(&header, "typ", Some(json!("application/jwt")))),
            ("foreign kid", with(&header, "kid", Some(json!("someone-else")))),
            ("numeric kid", with(&header, "kid", Some(json!(1)))),
            ("missing alg", with(&header, "alg", None)),
            ("crit b64", with(&with(&header, "crit", Some(json!(["b64"]))), "b64", Some(json!(false)))),
            ("crit unknown", with(&header, "crit", Some(json!(["exp"])))),
        ] {
            assert_invalid(&codec, &signed_by(signer, &header, &payload()), what);
        }
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let (codec, _dir) = codec();
        let valid = codec.issue(&claims()).unwrap();
        let parts: Vec<&str> = valid.expose().split('.').collect();
        let zero_signature = URL_SAFE_NO_PAD.encode([0_u8; 64]);
        let short_signature = URL_SAFE_NO_PAD.encode([1_u8; 63]);
        for garbage in [
            String::new(),
            ".".to_owned(),
            "..".to_owned(),
            "...".to_owned(),
            "a.b.c".to_owned(),
            "Bearer x".to_owned(),
            "\u{0}\u{7f}\u{feff}é".to_owned(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{}.{}.{}.", parts[0], parts[1], parts[2]),
            format!("{}.{}.", parts[0], parts[1]),
            format!("{}.{}.{zero_signature}", parts[0], parts[1]),
            format!("{}.{}.{short_signature}", parts[0], parts[1]),
            format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
            format!(" {}", valid.expose()),
            format!("{}.{}.{}", b64_json(&json!("ES256")), parts[1], parts[2]),
            format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("{"), parts[1], parts[2]),
        ] {
            assert_invalid(&codec, &garbage, &format!("{garbage:?}"));
        }
    }

    #[test]
    fn every_single_character_change_is_refused() {
        let (codec, _dir) = codec();
        let token = codec.issue(&claims()).unwrap();
        let token = token.expose();
        for (index, original) in token.char_indices() {
            let replacement = if original == 'A' { 'B' } else { 'A' };
            let mut mutated = token.to_owned();
            mutated.replace_range(index..=index, &replacement.to_string());
            assert_invalid(&codec, &mutated, &format!("a change at byte {index}"));
        }
    }

    #[test]
    fn oversized_tokens_are_refused_before_parsing() {
        let (codec, _dir) = codec();
        let signer = &signer_of(&codec);
        // A padding claim makes otherwise valid, correctly signed tokens of a chosen size.
        let padded =
            |bytes: usize| signed_by(signer, &header(&codec), &with(&payload(), "pad", Some(json!("x".repeat(bytes)))));
        let near_limit = padded(5_000);
        assert!(near_limit.len() < MAX_TOKEN_LENGTH);
        assert!(codec.verify(&near_limit, now()).is_ok());
        let oversized = padded(100 * 1024);
        assert!(oversized.len() > 100 * 1024);
        assert_invalid(&codec, &oversized, "a 100 KiB token");
        assert_invalid(&codec, &"a".repeat(100 * 1024), "100 KiB of garbage");
    }
    /// How long a key keeps verifying after it stopped signing, in the rotation tests.
    const GRACE: Duration = Duration::minutes(15);

    /// A codec over three keys: `old` activated an hour ago and stopped signing five minutes ago (so it retires in
    /// ten minutes), `current` signing since then, and `next`, pending for another 15 seconds.
    fn rotated() -> (JwtCodec, [Arc<SigningKey>; 3]) {
        let keys = [(), (), ()].map(|()| Arc::new(SigningKey::generate().unwrap()));
        let activations = [now() - Duration::hours(1), now() - Duration::minutes(5), now() + Duration::seconds(15)];
        let ring_keys =
            keys.iter().zip(activations).map(|(key, activates_at)| RingKey { key: Arc::clone(key), activates_at });
        let ring = KeyRing::new(ring_keys.collect(), GRACE).unwrap();
        (JwtCodec::with_ring(ring, ISSUER.to_owned(), AUDIENCE.to_owned()), keys)
    }

    /// A valid token signed by `key` under its kid (or none), expiring in two hours: longer than any grace, so only
    /// the key's state decides.
    fn long_lived_token(key: &SigningKey, with_kid: bool) -> String {
        let kid = if with_kid { Some(json!(key.kid())) } else { None };
        let header = with(&json!({ "alg": "ES256", "typ": "at+jwt" }), "kid", kid);
        let payload = with(&payload(), "exp", Some(json!((now() + Duration::hours(2)).unix_timestamp())));
        signed_by(key.signer(), &header, &payload)
    }

    fn kids(jwks: &Value) -> Vec<String> {
        jwks["keys"].as_array().unwrap().iter().map(|jwk| jwk["kid"].as_str().unwrap().to_owned()).collect()
    }

    #[test]
    fn tokens_are_signed_with_the_key_current_at_their_issue_time() {
        let (codec, [old, current, next]) = rotated();
        let kid_of = |issued_at: OffsetDateTime| {
            let claims = AccessClaims { issued_at, expires_at: issued_at + Duration::minutes(15), ..claims() };
            let token = codec.issue(&claims).unwrap();
            assert_eq!(codec.verify(token.expose(), issued_at), Ok(claims), "our own token verifies");
            decode_part(token.expose(), 0)["kid"].as_str().unwrap().to_owned()
        };
        assert_eq!(kid_of(now() - Duration::minutes(30)), old.kid());
        assert_eq!(kid_of(now()), current.kid());
        assert_eq!(kid_of(now() + Duration::seconds(14)), current.kid(), "a pending key does not sign yet");
        assert_eq!(kid_of(now() + Duration::seconds(15)), next.kid());
    }

    #[test]
    fn a_token_of_an_earlier_key_verifies_until_its_retirement_and_not_after() {
        let (codec, [old, _, _]) = rotated();
        let retirement = now() + Duration::minutes(10);
        for with_kid in [true, false] {
            let token = long_lived_token(&old, with_kid);
            assert!(codec.verify(&token, now()).is_ok(), "kid {with_kid}: verifies while the key is verifying");
            assert!(codec.verify(&token, retirement - Duration::seconds(1)).is_ok(), "kid {with_kid}: remembered");
            // The remembered answer does not outlive the key.
            assert_eq!(codec.verify(&token, retirement), Err(InvalidToken), "kid {with_kid}: retired");
            // Nor does a fresh check.
            let fresh = long_lived_token(&old, with_kid);
            assert_eq!(codec.verify(&fresh, retirement + Duration::seconds(1)), Err(InvalidToken));
        }
    }

    #[test]
    fn a_pending_key_already_verifies() {
        // Another instance may have reached the activation time a moment before this one.
        let (codec, [_, _, next]) = rotated();
        assert!(codec.verify(&long_lived_token(&next, true), now()).is_ok());
    }

    #[test]
    fn the_jwks_lists_exactly_the_keys_that_are_not_retired() {
        let (codec, [old, current, next]) = rotated();
        let ring = codec.ring();
        assert_eq!(kids(&ring.jwks(now())), [old.kid(), current.kid(), next.kid()]);
        assert_eq!(kids(&ring.jwks(now() + Duration::minutes(10))), [current.kid(), next.kid()]);
        // Once `next` has signed for the grace period, `current` retires too.
        let later = now() + Duration::seconds(15) + GRACE;
        assert_eq!(kids(&ring.jwks(later)), [next.kid()]);
        for jwk in ring.jwks(now())["keys"].as_array().unwrap() {
            assert!(jwk.get("d").is_none(), "no private part is published: {jwk}");
        }
    }

    #[test]
    fn an_unknown_or_retired_kid_is_refused() {
        let (codec, [old, current, _]) = rotated();
        let stranger = SigningKey::generate().unwrap();
        assert_invalid(&codec, &long_lived_token(&stranger, true), "a key the ring does not hold");
        assert_invalid(&codec, &long_lived_token(&stranger, false), "a foreign key without kid");
        let header = json!({ "alg": "ES256", "typ": "at+jwt", "kid": "no-such-key" });
        assert_invalid(&codec, &signed_by(current.signer(), &header, &payload()), "our key under an unknown kid");
        // The current key's signature under the old key's kid: the kid picks the verifier, which refuses it.
        let header = json!({ "alg": "ES256", "typ": "at+jwt", "kid": old.kid() });
        assert_invalid(&codec, &signed_by(current.signer(), &header, &payload()), "a signature under another kid");
        let retired = long_lived_token(&old, true);
        assert_eq!(codec.verify(&retired, now() + Duration::minutes(11)), Err(InvalidToken));
    }

    #[test]
    fn a_replaced_ring_takes_over_in_every_clone_and_keeps_the_keys_it_still_holds() {
        let first = Arc::new(SigningKey::generate().unwrap());
        let ring = |keys: Vec<RingKey>| KeyRing::new(keys, GRACE).unwrap();
        let codec = JwtCodec::with_ring(
            ring(vec![RingKey { key: Arc::clone(&first), activates_at: now() - Duration::hours(1) }]),
            ISSUER.to_owned(),
            AUDIENCE.to_owned(),
        );
        let clone = codec.clone();
        let before = codec.issue(&claims()).unwrap();
        let second = Arc::new(SigningKey::generate().unwrap());
        codec.replace_ring(ring(vec![
            RingKey { key: Arc::clone(&first), activates_at: now() - Duration::hours(1) },
            RingKey { key: Arc::clone(&second), activates_at: now() - Duration::seconds(1) },
        ]));
        let after = clone.issue(&claims()).unwrap();
        assert_eq!(decode_part(after.expose(), 0)["kid"], second.kid());
        assert!(clone.verify(before.expose(), now()).is_ok(), "the earlier key still verifies");
        assert!(codec.verify(after.expose(), now()).is_ok());
        assert!(KeyRing::new(Vec::new(), GRACE).is_err(), "a ring needs a key");
    }
}
