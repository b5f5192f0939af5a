//! Sessions and the tokens that stand for them.
//!
//! A session is one login on one device. Its refresh tokens are opaque random strings of which only a SHA-256
//! hash is stored; its access tokens are short-lived signed claims naming the session (`sid`), so revoking the
//! session stops them on the next request.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::user::UserId;

/// The identifier of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(Uuid);

impl SessionId {
    /// A new, time-ordered id.
    #[must_use]
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps an id read from storage, a token or a path.
    #[must_use]
    pub const fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The underlying UUID.
    #[must_use]
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session's id, also the `sid` claim of its access tokens.
    pub id: SessionId,
    /// Whose session it is.
    pub user_id: UserId,
    /// When the user logged in.
    pub created_at: OffsetDateTime,
    /// When a token of the session was last used to refresh.
    pub last_used_at: OffsetDateTime,
    /// The absolute end of the session, whatever its use.
    pub expires_at: OffsetDateTime,
    /// When the session was revoked, if it was.
    pub revoked_at: Option<OffsetDateTime>,
    /// The client's `User-Agent` at login, shortened.
    pub user_agent: Option<String>,
    /// The client's address at login.
    pub ip: Option<String>,
}

impl Session {
    /// Whether the session still grants access at `now`.
    #[must_use]
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// What a new session is created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// The new session's id.
    pub id: SessionId,
    /// Whose session it is.
    pub user_id: UserId,
    /// The absolute end of the session.
    pub expires_at: OffsetDateTime,
    /// The hash of the first refresh token.
    pub refresh_token_hash: TokenHash,
    /// The client's `User-Agent`, shortened.
    pub user_agent: Option<String>,
    /// The client's address.
    pub ip: Option<String>,
}

/// A SHA-256 hash of an opaque token, hex encoded: what is stored instead of the token.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenHash(String);

impl TokenHash {
    /// Hashes an opaque token as presented by a client.
    #[must_use]
    pub fn of(token: &str) -> Self {
        Self(hex::encode(Sha256::digest(token.as_bytes())))
    }

    /// Wraps a hash read from storage.
    #[must_use]
    pub const fn from_stored(hex: String) -> Self {
        Self(hex)
    }

    /// The hex string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

/// An opaque secret handed to a client: 256 random bits, base64url without padding.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

impl RefreshToken {
    /// A fresh random token from the operating system's generator.
    #[must_use]
    pub fn generate() -> Self {
        let mut bytes = [0_u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The token to give to the client.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash under which the token is stored.
    #[must_use]
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken(<redacted>)")
    }
}

/// The claims of an access token that the domain cares about; the codec adds and checks `iss`, `aud` and `typ`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    /// The user (`sub`).
    pub user_id: UserId,
    /// The session (`sid`).
    pub session_id: SessionId,
    /// Issued at (`iat`).
    pub issued_at: OffsetDateTime,
    /// Expires at (`exp`).
    pub expires_at: OffsetDateTime,
    /// The token's unique id (`jti`).
    pub token_id: Uuid,
}

/// A signed access token, ready for the `Authorization: Bearer` header.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    /// Wraps a compact JWS produced by a token codec.
    #[must_use]
    pub const fn new(compact: String) -> Self {
        Self(compact)
    }

    /// The compact serialisation.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// What a successful login or refresh hands to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPair {
    /// The signed access token.
    pub access_token: AccessToken,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// The opaque refresh token.
    pub refresh_token: RefreshToken,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_are_256_bit_url_safe_and_unique() {
        let a = RefreshToken::generate();
        let b = RefreshToken::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 43);
        assert!(a.expose().chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn token_hashes_are_sha256_hex_and_stable() {
        assert_eq!(TokenHash::of("abc").as_str(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let token = RefreshToken::generate();
        assert_eq!(token.hash(), TokenHash::of(token.expose()));
    }
}
