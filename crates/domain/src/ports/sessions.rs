//! Sessions and their refresh-token families, as stored. Which refresh wins, when a reuse revokes a family and
//! when a session counts as expired are the domain's rules; the store reads rows and applies compare-and-set
//! writes.

use std::future::Future;

use time::OffsetDateTime;

use super::PortError;
use crate::audit::AuditEvent;
use crate::session::{NewSession, Session, SessionId, TokenHash};
use crate::user::{User, UserId};

/// A refresh token as found by its hash, with its session and the session's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    /// The session (token family) the token belongs to, revoked and expired ones included.
    pub session: Session,
    /// The session's user, as stored now.
    pub user: User,
    /// Whether the token is spent: exchanged for a successor, or discarded when a retry replaced it.
    pub used: bool,
    /// The token's last exchange, when it was exchanged (a discarded token has none).
    pub rotation: Option<Rotation>,
}

/// The last exchange of a refresh token: when it happened and what became of the token it was exchanged for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// When the token was exchanged.
    pub at: OffsetDateTime,
    /// The hash of the token it was (last) exchanged for.
    pub successor: TokenHash,
    /// Whether that successor is spent too.
    pub successor_used: bool,
}

/// Which of a user's sessions a change ends. Ending any also drops the user's logins waiting for their second step
/// (they would start sessions after the fact).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SessionEnd {
    /// None.
    #[default]
    Keep,
    /// Every session.
    All,
    /// Every session but this one (the one making the request).
    AllBut(SessionId),
}

/// Storage of sessions and refresh tokens.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait SessionStore: Send + Sync + 'static {
    /// Stores a new session with its first refresh token, records `at` as the user's last login and writes
    /// `events`, in one transaction.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn start_session(
        &self,
        session: NewSession,
        at: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<Session, PortError>> + Send;

    /// A session with its user, in one round trip: what every authenticated request needs. Revoked and expired
    /// sessions are returned too.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn find_session_with_user(
        &self,
        id: SessionId,
    ) -> impl Future<Output = Result<Option<(Session, User)>, PortError>> + Send;

    /// The refresh token with this hash, used or not, with its session and user.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn find_refresh_token(
        &self,
        hash: TokenHash,
    ) -> impl Future<Output = Result<Option<RefreshRecord>, PortError>> + Send;

    /// Exchanges `presented` for `next`, compare-and-set: only when `presented` is still unused and its session
    /// `session` is not revoked, it is marked used at `now` with `next` as its successor, `next` becomes the
    /// family's current token and the session's last use becomes `now`, atomically. Of two concurrent exchanges of one token exactly one succeeds.
    /// `Ok(None)` when the condition did not hold (nothing changed).
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn rotate_refresh_token(
        &self,
        session: SessionId,
        presented: TokenHash,
        next: TokenHash,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<Session>, PortError>> + Send;

    /// Replaces the successor of an exchanged token with `next` (a retry of an exchange whose answer was lost),
    /// compare-and-set: only when session `session` is not revoked, `presented` is a spent token of it whose
    /// successor is `successor`, and `successor` is still unused (the family's current token), `successor` is
    /// discarded (spent, with no successor of its own), `next` becomes the family's current token and
    /// `presented`'s successor, issued at `now`, atomically. The session itself is unchanged: its last use stays
    /// that of the exchange being retried. Of two concurrent replacements of one successor exactly one succeeds. `Ok(None)`
    /// when the condition did not hold (nothing changed).
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn replace_refresh_successor(
        &self,
        session: SessionId,
        presented: TokenHash,
        successor: TokenHash,
        next: TokenHash,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<Session>, PortError>> + Send;

    /// Revokes a session, keeping the first revocation time of one already revoked. With `owner`, only a session
    /// of that user is revoked. `events` are written with the revocation, and only when it revoked a session.
    /// `Ok(false)` when no unrevoked session matched.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn revoke_session(
        &self,
        id: SessionId,
        owner: Option<UserId>,
        now: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// Revokes the user's sessions that `end` names and writes `events`, in one transaction.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn end_sessions(
        &self,
        user_id: UserId,
        end: SessionEnd,
        now: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<(), PortError>> + Send;

    /// The user's unrevoked sessions whose absolute end is after `now`, newest first.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn list_sessions(
        &self,
        user_id: UserId,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Vec<Session>, PortError>> + Send;
}
