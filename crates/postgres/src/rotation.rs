//! Refresh-token rotation with reuse detection (RFC 9700), in one transaction per presented token.
//!
//! Concurrent rotations of one token family are serialised by a row lock on their session: whoever takes it
//! second reads the token again after the first committed, and so sees it used. Of two concurrent uses of one
//! token exactly one therefore rotates; the other is a reuse, which revokes the family.

use diesel::prelude::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, SelectableHelper as _};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::{Duration, OffsetDateTime};
use users_domain::accounts::RefreshOutcome;
use users_domain::ports::PortError;
use users_domain::session::{Session, TokenHash};
use users_domain::user::User;
use uuid::Uuid;

use crate::errors::TxError;
use crate::rows::{NewRefreshTokenRow, SessionRow, UserRow};
use crate::schema::{refresh_tokens, sessions, users};

/// Rotates `presented` into `next`; see [`RefreshOutcome`] for what each outcome changed.
pub(crate) async fn rotate_refresh_token(
    connection: &mut AsyncPgConnection,
    presented: &TokenHash,
    next: &TokenHash,
    now: OffsetDateTime,
    idle_ttl: Duration,
) -> Result<RefreshOutcome, TxError<PortError>> {
    connection
        .transaction::<_, TxError<PortError>, _>(async |connection| {
            let Some(session_id) = refresh_tokens::table
                .find(presented.as_str())
                .select(refresh_tokens::session_id)
                .get_result::<Uuid>(connection)
                .await
                .optional()?
            else {
                return Ok(RefreshOutcome::Invalid);
            };
            // NO KEY UPDATE is enough to exclude a concurrent rotation (it conflicts with itself) without blocking
            // the key-share locks that inserting the family's next token takes on this row.
            let Some(session) = sessions::table
                .find(session_id)
                .select(SessionRow::as_select())
                .for_no_key_update()
                .get_result::<SessionRow>(connection)
                .await
                .optional()?
            else {
                return Ok(RefreshOutcome::Invalid);
            };
            let session = Session::from(session);
            // Read after the lock, in a statement of its own: its snapshot includes whatever a rotation that held
            // the lock before us committed, so a token it used reads as used here.
            let Some((used_at, user_row)) = refresh_tokens::table
                .inner_join(sessions::table.inner_join(users::table))
                .filter(refresh_tokens::token_hash.eq(presented.as_str()))
                .select((refresh_tokens::used_at, UserRow::as_select()))
                .get_result::<(Option<OffsetDateTime>, UserRow)>(connection)
                .await
                .optional()?
            else {
                return Ok(RefreshOutcome::Invalid);
            };
            let user = User::try_from(user_row).map_err(|error| TxError::Abort(PortError::Unknown(error)))?;

            // A lock answers before anything else and changes nothing, so that an unlock restores the session.
            if user.is_locked {
                return Ok(RefreshOutcome::Locked);
            }
            if used_at.is_some() {
                revoke_family(connection, session_id, now).await?;
                return Ok(RefreshOutcome::Reused);
            }
            let idle_expired = session.last_used_at.checked_add(idle_ttl).is_some_and(|idle_end| idle_end <= now);
            if session.revoked_at.is_some() || session.expires_at <= now || idle_expired {
                return Ok(RefreshOutcome::Invalid);
            }
            // Conditional even under the lock: the token is consumed only if nobody else consumed it, whatever
            // path they took, so one token can never mint two successors.
            let consumed = diesel::update(refresh_tokens::table.find(presented.as_str()))
                .filter(refresh_tokens::used_at.is_null())
                .set(refresh_tokens::used_at.eq(now))
                .execute(connection)
                .await?;
            if consumed == 0 {
                revoke_family(connection, session_id, now).await?;
                return Ok(RefreshOutcome::Reused);
            }
            diesel::insert_into(refresh_tokens::table)
                .values(NewRefreshTokenRow::next_of(next, session_id, now))
                .execute(connection)
                .await?;
            let session = diesel::update(sessions::table.find(session_id))
                .set(sessions::last_used_at.eq(now))
                .returning(SessionRow::as_returning())
                .get_result::<SessionRow>(connection)
                .await?;
            Ok(RefreshOutcome::Rotated { session: session.into(), user })
        })
        .await
}

/// Revokes a token family (its session), keeping the first revocation time of a session already revoked.
async fn revoke_family(
    connection: &mut AsyncPgConnection,
    session_id: Uuid,
    now: OffsetDateTime,
) -> Result<(), diesel::result::Error> {
    diesel::update(sessions::table.find(session_id))
        .filter(sessions::revoked_at.is_null())
        .set(sessions::revoked_at.eq(now))
        .execute(connection)
        .await
        .map(drop)
}
