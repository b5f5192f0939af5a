//! Sessions and their refresh-token families: the domain's [`SessionStore`] on the `sessions` and `refresh_tokens`
//! tables.
//!
//! Which refresh wins, when a reuse revokes a family and when a session counts as expired are the domain's rules.
//! The store reads rows and applies one compare-and-set: a rotation marks the presented token used only while it is
//! still unused and its session unrevoked, under a row lock on the session that serialises concurrent rotations of
//! one family, so of two concurrent rotations of one token exactly one succeeds. A retry within the reuse grace
//! replaces a spent token's unused successor under the same lock and the same kind of condition.

use std::sync::OnceLock;

use diesel::dsl;
use diesel::pg::Pg;
use diesel::prelude::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, SelectableHelper as _};
use diesel::result::Error as DieselError;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::OffsetDateTime;
use users_domain::audit::AuditEvent;
use users_domain::ports::{PortError, RefreshRecord, Rotation, SessionEnd, SessionStore};
use users_domain::session::{NewSession, Session, SessionId, TokenHash};
use users_domain::user::{User, UserId};
use uuid::Uuid;

use crate::audit::insert_events;
use crate::errors::query_error;
use crate::prebuilt::{KeyedRead, SplitSql, WrittenSql};
use crate::repository::PgRepository;
use crate::reused::Reuse as _;
use crate::rows::{NewRefreshTokenRow, NewSessionRow, SessionRow, UserRow};
use crate::schema::{refresh_tokens, sessions, users};

/// The read behind every authenticated request: a session joined to its user, by the session's id. Its text is
/// written once (see [`crate::prebuilt`]).
struct SessionWithUser;

type SessionWithUserQuery = dsl::Select<
    dsl::Filter<dsl::InnerJoin<sessions::table, users::table>, dsl::Eq<sessions::id, Uuid>>,
    (dsl::AsSelect<SessionRow, Pg>, dsl::AsSelect<UserRow, Pg>),
>;

impl KeyedRead for SessionWithUser {
    type Key = Uuid;
    type KeySql = diesel::sql_types::Uuid;
    type Query = SessionWithUserQuery;

    fn query(id: Uuid) -> SessionWithUserQuery {
        sessions::table
            .inner_join(users::table)
            .filter(sessions::id.eq(id))
            .select((SessionRow::as_select(), UserRow::as_select()))
    }

    fn text() -> &'static WrittenSql {
        static TEXT: OnceLock<WrittenSql> = OnceLock::new();
        SplitSql::written::<Self>(&TEXT, Uuid::nil())
    }
}

impl SessionStore for PgRepository {
    async fn start_session(
        &self,
        session: NewSession,
        at: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> Result<Session, PortError> {
        let mut connection = self.connection().await?;
        // The session, its first refresh token, the login time and the events commit together or not at all: a
        // session without a token could never be refreshed, and a token without a session would dangle.
        let started = connection
            .transaction::<_, DieselError, _>(async |connection| {
                let row = insert_session(connection, &session, at).await?;
                insert_events(connection, &events).await?;
                Ok(row)
            })
            .await;
        match started {
            Ok(row) => Ok(row.into()),
            Err(error) => Err(query_error(error, &mut connection, "starting a session")),
        }
    }

    async fn find_session_with_user(&self, id: SessionId) -> Result<Option<(Session, User)>, PortError> {
        let mut connection = self.connection().await?;
        let found =
            SessionWithUser::with(id.as_uuid()).get_result::<(SessionRow, UserRow)>(&mut connection).await.optional();
        match found {
            Ok(Some((session, user))) => Ok(Some((session.into(), user.into_user()?))),
            Ok(None) => Ok(None),
            Err(error) => Err(query_error(error, &mut connection, "finding a session with its user")),
        }
    }

    async fn find_refresh_token(&self, hash: TokenHash) -> Result<Option<RefreshRecord>, PortError> {
        let mut connection = self.connection().await?;
        let found = find_refresh(&mut connection, &hash).await;
        match found {
            Ok(Some(((used_at, successor), session, user, successor_used_at))) => {
                let rotation = match (used_at, successor) {
                    (Some(at), Some(successor)) => Some(Rotation {
                        at,
                        successor: TokenHash::from_stored(successor),
                        successor_used: successor_used_at.is_some(),
                    }),
                    _ => None,
                };
                Ok(Some(RefreshRecord {
                    session: session.into(),
                    user: user.into_user()?,
                    used: used_at.is_some(),
                    rotation,
                }))
            }
            Ok(None) => Ok(None),
            Err(error) => Err(query_error(error, &mut connection, "finding a refresh token")),
        }
    }

    async fn rotate_refresh_token(
        &self,
        session: SessionId,
        presented: TokenHash,
        next: TokenHash,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, PortError> {
        let mut connection = self.connection().await?;
        let rotated = rotate(&mut connection, session.as_uuid(), &presented, &next, now).await;
        match rotated {
            Ok(row) => Ok(row.map(Session::from)),
            Err(error) => Err(query_error(error, &mut connection, "rotating a refresh token")),
        }
    }

    async fn replace_refresh_successor(
        &self,
        session: SessionId,
        presented: TokenHash,
        successor: TokenHash,
        next: TokenHash,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, PortError> {
        let mut connection = self.connection().await?;
        let tokens = (&presented, &successor, &next);
        let replaced = replace_successor(&mut connection, session.as_uuid(), tokens, now).await;
        match replaced {
            Ok(row) => Ok(row.map(Session::from)),
            Err(DieselError::RollbackTransaction) => Ok(None),
            Err(error) => Err(query_error(error, &mut connection, "replacing the successor of a refresh token")),
        }
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        owner: Option<UserId>,
        now: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> Result<bool, PortError> {
        let mut connection = self.connection().await?;
        let revoked = connection
            .transaction::<_, DieselError, _>(async |connection| {
                // With an owner, the owner is part of the condition, so someone else's session reads as "no such
                // session".
                let mut revoke = diesel::update(sessions::table.find(id.as_uuid()))
                    .filter(sessions::revoked_at.is_null())
                    .into_boxed();
                if let Some(owner) = owner {
                    revoke = revoke.filter(sessions::user_id.eq(owner.as_uuid()));
                }
                let revoked = revoke.set(sessions::revoked_at.eq(now)).execute(connection).await? > 0;
                // Only the request that revoked the session records it: a second revocation changed nothing.
                if revoked {
                    insert_events(connection, &events).await?;
                }
                Ok(revoked)
            })
            .await;
        revoked.map_err(|error| query_error(error, &mut connection, "revoking a session"))
    }

    async fn end_sessions(
        &self,
        user_id: UserId,
        end: SessionEnd,
        now: OffsetDateTime,
        events: Vec<AuditEvent>,
    ) -> Result<(), PortError> {
        if end == SessionEnd::Keep && events.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection().await?;
        let ended = connection
            .transaction::<_, DieselError, _>(async |connection| {
                end_sessions_of(connection, user_id.as_uuid(), end, now).await?;
                insert_events(connection, &events).await
            })
            .await;
        ended.map_err(|error| query_error(error, &mut connection, "ending sessions of a user"))
    }

    async fn list_sessions(&self, user_id: UserId, now: OffsetDateTime) -> Result<Vec<Session>, PortError> {
        let mut connection = self.connection().await?;
        let listed = sessions::table
            .filter(sessions::user_id.eq(user_id.as_uuid()))
            .filter(sessions::revoked_at.is_null())
            .filter(sessions::expires_at.gt(now))
            .order((sessions::created_at.desc(), sessions::id.desc()))
            .select(SessionRow::as_select())
            .load::<SessionRow>(&mut connection)
            .await;
        match listed {
            Ok(rows) => Ok(rows.into_iter().map(Session::from).collect()),
            Err(error) => Err(query_error(error, &mut connection, "listing sessions")),
        }
    }
}

/// Stores a session started at `at` with its first refresh token, and records the login time on its user; run
/// inside a transaction (of [`SessionStore::start_session`], or of a second-factor change that starts a session),
/// so that the three commit together.
pub(crate) async fn insert_session(
    connection: &mut AsyncPgConnection,
    session: &NewSession,
    at: OffsetDateTime,
) -> Result<SessionRow, DieselError> {
    let row = diesel::insert_into(sessions::table)
        .values(NewSessionRow::new(session, at))
        .returning(SessionRow::as_returning())
        .reused()
        .get_result(connection)
        .await?;
    diesel::insert_into(refresh_tokens::table)
        .values(NewRefreshTokenRow::first_of(session, at))
        .reused()
        .execute(connection)
        .await?;
    diesel::update(users::table.find(session.user_id.as_uuid()))
        .set(users::last_login_at.eq(at))
        .reused()
        .execute(connection)
        .await?;
    Ok(row)
}

/// Exchanges `presented` for `next` in session `session_id`, compare-and-set, in one transaction; `None` when the
/// token is not an unused token of that session or the session is revoked (nothing changed then).
async fn rotate(
    connection: &mut AsyncPgConnection,
    session_id: Uuid,
    presented: &TokenHash,
    next: &TokenHash,
    now: OffsetDateTime,
) -> Result<Option<SessionRow>, DieselError> {
    connection
        .transaction::<_, DieselError, _>(async |connection| {
            // NO KEY UPDATE is enough to exclude a concurrent rotation or revocation (it conflicts with itself and
            // with their updates) without blocking the key-share lock that inserting the family's next token takes
            // on this row. A revocation that committed while this waited makes the row fail the condition when it
            // is re-checked under the lock.
            let unrevoked = sessions::table
                .find(session_id)
                .filter(sessions::revoked_at.is_null())
                .select(sessions::id)
                .for_no_key_update()
                .get_result::<Uuid>(connection)
                .await
                .optional()?;
            if unrevoked.is_none() {
                return Ok(None);
            }
            // Conditional even under the lock: the token is consumed only if nobody else consumed it, whatever
            // path they took, so one token can never mint two successors.
            let consumed = diesel::update(refresh_tokens::table.find(presented.as_str()))
                .filter(refresh_tokens::session_id.eq(session_id))
                .filter(refresh_tokens::used_at.is_null())
                .set((refresh_tokens::used_at.eq(now), refresh_tokens::successor_hash.eq(next.as_str())))
                .reused()
                .execute(connection)
                .await?;
            if consumed == 0 {
                return Ok(None);
            }
            diesel::insert_into(refresh_tokens::table)
                .values(NewRefreshTokenRow::next_of(next, session_id, now))
                .reused()
                .execute(connection)
                .await?;
            let session = diesel::update(sessions::table.find(session_id))
                .set(sessions::last_used_at.eq(now))
                .returning(SessionRow::as_returning())
                .reused()
                .get_result::<SessionRow>(connection)
                .await?;
            Ok(Some(session))
        })
        .await
}

/// A refresh token's use and successor, its session and user, and when its successor was used: the successor is
/// looked up in a second query, only for a spent token (rare: a retry or a reuse).
async fn find_refresh(
    connection: &mut AsyncPgConnection,
    hash: &TokenHash,
) -> Result<Option<(RefreshState, SessionRow, UserRow, Option<OffsetDateTime>)>, DieselError> {
    let found = refresh_tokens::table
        .inner_join(sessions::table.inner_join(users::table))
        .filter(refresh_tokens::token_hash.eq(hash.as_str()))
        .select((
            (refresh_tokens::used_at, refresh_tokens::successor_hash),
            SessionRow::as_select(),
            UserRow::as_select(),
        ))
        .get_result::<(RefreshState, SessionRow, UserRow)>(connection)
        .await
        .optional()?;
    let Some((state, session, user)) = found else { return Ok(None) };
    // Read apart from the first query, so a change may fall between the two: a retry that replaced this successor
    // meanwhile left it spent *without* a successor of its own. Only a successor exchanged by its holder (spent and
    // pointing at the next token) counts as used; a discarded one reads as unused, and the retry built on this stale
    // view then loses its compare-and-set and is judged again on a fresh read, instead of passing for a reuse.
    let successor_used_at = match &state.1 {
        Some(successor) => refresh_tokens::table
            .find(successor)
            .select((refresh_tokens::used_at, refresh_tokens::successor_hash))
            .get_result::<(Option<OffsetDateTime>, Option<String>)>(connection)
            .await
            .optional()?
            .and_then(|(used_at, next)| used_at.filter(|_| next.is_some())),
        None => None,
    };
    Ok(Some((state, session, user, successor_used_at)))
}

/// A refresh token's `used_at` and `successor_hash`.
type RefreshState = (Option<OffsetDateTime>, Option<String>);

/// Replaces the unused successor `successor` of the spent token `presented` with `next`, compare-and-set, in one
/// transaction; `None` when the session is revoked, and a rolled-back transaction when either token fails its
/// condition (nothing changed either way).
async fn replace_successor(
    connection: &mut AsyncPgConnection,
    session_id: Uuid,
    (presented, successor, next): (&TokenHash, &TokenHash, &TokenHash),
    now: OffsetDateTime,
) -> Result<Option<SessionRow>, DieselError> {
    connection
        .transaction::<_, DieselError, _>(async |connection| {
            // The same row lock as a rotation: replacements, rotations and revocations of one family take turns.
            let unrevoked = sessions::table
                .find(session_id)
                .filter(sessions::revoked_at.is_null())
                .select(SessionRow::as_select())
                .for_no_key_update()
                .get_result::<SessionRow>(connection)
                .await
                .optional()?;
            let Some(session) = unrevoked else { return Ok(None) };
            // The successor is discarded only while it is the family's unused current token; it is spent with no
            // successor, so presenting it later is a reuse.
            let discarded = diesel::update(refresh_tokens::table.find(successor.as_str()))
                .filter(refresh_tokens::session_id.eq(session_id))
                .filter(refresh_tokens::used_at.is_null())
                .set(refresh_tokens::used_at.eq(now))
                .execute(connection)
                .await?;
            if discarded == 0 {
                return Err(DieselError::RollbackTransaction);
            }
            let retried = diesel::update(refresh_tokens::table.find(presented.as_str()))
                .filter(refresh_tokens::session_id.eq(session_id))
                .filter(refresh_tokens::used_at.is_not_null())
                .filter(refresh_tokens::successor_hash.eq(successor.as_str()))
                .set(refresh_tokens::successor_hash.eq(next.as_str()))
                .execute(connection)
                .await?;
            if retried == 0 {
                return Err(DieselError::RollbackTransaction);
            }
            diesel::insert_into(refresh_tokens::table)
                .values(NewRefreshTokenRow::next_of(next, session_id, now))
                .execute(connection)
                .await?;
            Ok(Some(session))
        })
        .await
}

/// Revokes the user's unrevoked sessions that `end` names; sessions already revoked keep their first revocation
/// time. Also run inside a user change that ends sessions.
pub(crate) async fn end_sessions_of(
    connection: &mut AsyncPgConnection,
    user_id: Uuid,
    end: SessionEnd,
    now: OffsetDateTime,
) -> Result<usize, DieselError> {
    let keep = match end {
        SessionEnd::Keep => return Ok(0),
        SessionEnd::All => None,
        SessionEnd::AllBut(keep) => Some(keep),
    };
    let mut revoke = diesel::update(sessions::table)
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null())
        .into_boxed();
    if let Some(keep) = keep {
        revoke = revoke.filter(sessions::id.ne(keep.as_uuid()));
    }
    let revoked = revoke.set(sessions::revoked_at.eq(now)).execute(connection).await?;
    // Logins waiting for their second step would start sessions after the fact: they end too.
    diesel::delete(crate::schema::mfa_challenges::table.filter(crate::schema::mfa_challenges::user_id.eq(user_id)))
        .execute(connection)
        .await?;
    Ok(revoked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_read_runs_the_text_and_binds_of_its_diesel_query() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        crate::prebuilt::assert_runs_its_query::<SessionWithUser>(id, r#""sessions"."id" = $1"#);
    }
}
