//! The guarded writes of one user: [`UserStore::update_user`](users_domain::ports::UserStore::update_user) and
//! [`UserStore::delete_user`](users_domain::ports::UserStore::delete_user), each one transaction.
//!
//! A change is the domain's, worked out in full before it gets here ([`UserUpdate`]): which columns take which
//! values, which email token is consumed, dropped or issued, which sessions end, whose backoff is cleared and
//! which mails go out. The transaction applies it in the order the port states (guard, token consumed, columns,
//! tokens dropped, token issued, sessions ended, backoff cleared, mails queued) and decides nothing: no value is
//! derived from the row, no token or session is touched that the change does not name. On any error it rolls
//! back, so nothing is stored. What it does check is the [`Guard`] the domain decided under, on the row it locks:
//! the row exists, still has the role the decision was made for, and, when asked, is not the last unlocked ADMIN.
//!
//! That last check holds under row locks. A write whose guard asks for another unlocked ADMIN locks its target and
//! every unlocked ADMIN in one statement, in id order: two such writes then queue behind one another instead of
//! deadlocking (each holding its own target while waiting for the other's), and the second sees the first's
//! outcome. Any other write locks only its target.

use diesel::QueryableByName;
use diesel::prelude::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, SelectableHelper as _};
use diesel::sql_types::{Bool, Text};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::OffsetDateTime;
use users_domain::audit::AuditEvent;
use users_domain::permissions::Role;
use users_domain::ports::{Guard, PortError, UpdateError, UserFields, UserUpdate};
use users_domain::user::{Bio, EmailAddress, PersonName, ProfileUrl, User, UserId};
use uuid::Uuid;

use crate::audit::insert_events;
use crate::errors::{EMAIL_UNIQUE_INDEX, NICKNAME_UNIQUE_INDEX, TxError, violated_unique_index};
use crate::outbox::insert_mail;
use crate::rows::{NewEmailTokenRow, UserRow};
use crate::schema::users;
use crate::{email_tokens, sessions, throttle};

/// Locks the target of a change whose guard does not ask for another ADMIN. `FOR NO KEY UPDATE` is the lock the
/// change's own update takes, so it blocks no one the update would not (logins inserting a session, whose foreign
/// key takes a key-share lock on the row, go on).
const LOCK_TARGET_FOR_CHANGE: &str = "SELECT id, role, is_locked FROM users WHERE id = $1 FOR NO KEY UPDATE";

/// Locks the target and every unlocked ADMIN, in id order (the lock is taken row by row on the sorted rows), so
/// that all writes guarding the last admin take their locks in one global order and never deadlock. A row
/// changed meanwhile is re-checked against the condition once its lock is granted, so an ADMIN demoted or locked
/// by a write that committed first is no longer returned. The constants are written out so that the partial
/// index `users_unlocked_admins_idx` matches under any plan.
const LOCK_TARGET_AND_ADMINS_FOR_CHANGE: &str = "\
    SELECT id, role, is_locked FROM users \
    WHERE id = $1 OR (role = 'ADMIN' AND NOT is_locked) \
    ORDER BY id \
    FOR NO KEY UPDATE";

/// [`LOCK_TARGET_FOR_CHANGE`] for a deletion, which needs the full row lock from the start: upgrading a weaker
/// lock later could deadlock with a login that holds a key-share lock on the row (through a new session's foreign
/// key) and waits to update it.
const LOCK_TARGET_FOR_DELETE: &str = "SELECT id, role, is_locked FROM users WHERE id = $1 FOR UPDATE";

/// [`LOCK_TARGET_AND_ADMINS_FOR_CHANGE`] for a deletion, with the full row lock for the same reason.
const LOCK_TARGET_AND_ADMINS_FOR_DELETE: &str = "\
    SELECT id, role, is_locked FROM users \
    WHERE id = $1 OR (role = 'ADMIN' AND NOT is_locked) \
    ORDER BY id \
    FOR UPDATE";

/// A user as locked for a guarded write: just what the guard is checked on.
#[derive(Debug, QueryableByName)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct LockedUser {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    role: String,
    #[diesel(sql_type = Bool)]
    is_locked: bool,
}

impl LockedUser {
    /// Whether this row is an unlocked ADMIN, the condition of [`Guard::another_admin`].
    fn is_unlocked_admin(&self) -> bool {
        self.role == Role::Admin.as_str() && !self.is_locked
    }
}

/// What a guarded write does to the row, which decides the lock it takes.
#[derive(Debug, Clone, Copy)]
enum Write {
    /// An update of some of its columns.
    Change,
    /// Its deletion.
    Delete,
}

/// Locks user `id` (and, when the guard asks for another ADMIN, every unlocked ADMIN) and checks the guard on the
/// locked rows, in the order the errors are documented: the row exists, holds the expected role, and has an
/// unlocked ADMIN beside it.
async fn lock_and_check(
    connection: &mut AsyncPgConnection,
    id: Uuid,
    guard: Guard,
    write: Write,
) -> Result<(), TxError<UpdateError>> {
    let statement = match (write, guard.another_admin) {
        (Write::Change, false) => LOCK_TARGET_FOR_CHANGE,
        (Write::Change, true) => LOCK_TARGET_AND_ADMINS_FOR_CHANGE,
        (Write::Delete, false) => LOCK_TARGET_FOR_DELETE,
        (Write::Delete, true) => LOCK_TARGET_AND_ADMINS_FOR_DELETE,
    };
    let locked: Vec<LockedUser> =
        diesel::sql_query(statement).bind::<diesel::sql_types::Uuid, _>(id).load(connection).await?;
    let Some(target) = locked.iter().find(|user| user.id == id) else {
        return Err(TxError::Abort(UpdateError::NotFound));
    };
    if guard.role.is_some_and(|expected| target.role != expected.as_str()) {
        return Err(TxError::Abort(UpdateError::RoleChanged));
    }
    if guard.another_admin && !locked.iter().any(|user| user.id != id && user.is_unlocked_admin()) {
        return Err(TxError::Abort(UpdateError::LastAdmin));
    }
    Ok(())
}

/// Writes `fields` to user `id` with `updated_at = now`, and returns the row as written; `None` when no field
/// changes (the row is left as it is, `updated_at` included). A unique violation on the email or nickname index
/// aborts as the port's error for it.
async fn write_fields(
    connection: &mut AsyncPgConnection,
    id: Uuid,
    fields: &UserFields,
    now: OffsetDateTime,
) -> Result<Option<UserRow>, TxError<UpdateError>> {
    if fields.is_empty() {
        return Ok(None);
    }
    let profile = &fields.profile;
    // Each column is `None` (left out of the statement), or its new value; `Some(None)` sets a nullable column to
    // NULL. `updated_at` is always set, so the statement is never empty.
    let changeset = (
        users::updated_at.eq(now),
        (
            profile.nickname.as_ref().map(|nickname| users::nickname.eq(nickname.as_str())),
            profile.first_name.as_ref().map(|name| users::first_name.eq(name.as_ref().map(PersonName::as_str))),
            profile.last_name.as_ref().map(|name| users::last_name.eq(name.as_ref().map(PersonName::as_str))),
            profile.bio.as_ref().map(|bio| users::bio.eq(bio.as_ref().map(Bio::as_str))),
            profile
                .linkedin_profile_url
                .as_ref()
                .map(|url| users::linkedin_profile_url.eq(url.as_ref().map(ProfileUrl::as_str))),
            profile
                .github_profile_url
                .as_ref()
                .map(|url| users::github_profile_url.eq(url.as_ref().map(ProfileUrl::as_str))),
        ),
        fields.email.as_ref().map(|email| users::email.eq(email.as_str())),
        fields
            .pending_email
            .as_ref()
            .map(|pending| users::pending_email.eq(pending.as_ref().map(EmailAddress::as_str))),
        fields.email_verified.map(|verified| users::email_verified.eq(verified)),
        fields.role.map(|role| users::role.eq(role.as_str())),
        fields.is_locked.map(|locked| users::is_locked.eq(locked)),
        fields.professional.map(|(professional, _)| users::is_professional.eq(professional)),
        fields.professional.map(|(_, at)| users::professional_status_updated_at.eq(Some(at))),
        fields.password_hash.as_ref().map(|hash| users::password_hash.eq(hash.as_str())),
    );
    let updated = diesel::update(users::table.find(id))
        .set(changeset)
        .returning(UserRow::as_returning())
        .get_result(connection)
        .await
        .optional();
    match updated {
        Ok(Some(row)) => Ok(Some(row)),
        // The row is locked by this transaction, so it cannot have gone; no row would be a bug.
        Ok(None) => Err(corrupt(format!("users row {id} vanished while locked"))),
        Err(error) if violated_unique_index(&error) == Some(NICKNAME_UNIQUE_INDEX) => {
            Err(TxError::Abort(UpdateError::NicknameTaken))
        }
        Err(error) if violated_unique_index(&error) == Some(EMAIL_UNIQUE_INDEX) => {
            Err(TxError::Abort(UpdateError::EmailTaken))
        }
        Err(error) => Err(TxError::Query(error)),
    }
}

/// The row of user `id` as it stands inside the transaction.
async fn read_row(connection: &mut AsyncPgConnection, id: Uuid) -> Result<UserRow, TxError<UpdateError>> {
    let row = users::table.find(id).select(UserRow::as_select()).get_result(connection).await.optional()?;
    row.ok_or_else(|| corrupt(format!("users row {id} vanished while locked")))
}

/// An abort for a state the locks rule out, or a row the domain refuses: a bug or corrupt data.
fn corrupt(message: String) -> TxError<UpdateError> {
    TxError::Abort(UpdateError::Port(PortError::Unknown(anyhow::Error::msg(message))))
}

/// Applies `update` in one transaction and returns the user as stored after it (see
/// [`UserStore::update_user`](users_domain::ports::UserStore::update_user)).
pub(super) async fn update_user(
    connection: &mut AsyncPgConnection,
    update: &UserUpdate,
) -> Result<User, TxError<UpdateError>> {
    let id = update.id.as_uuid();
    let now = update.now;
    let token_row = update.issue_token.as_ref().map(NewEmailTokenRow::from);
    connection
        .transaction::<_, TxError<UpdateError>, _>(async |connection| {
            lock_and_check(connection, id, update.guard, Write::Change).await?;
            if let Some(hash) = &update.consume_token
                && !email_tokens::consume(connection, hash, id, now).await?
            {
                return Err(TxError::Abort(UpdateError::TokenUnusable));
            }
            let written = write_fields(connection, id, &update.fields, now).await?;
            email_tokens::drop_unused(connection, id, &update.drop_tokens).await?;
            if let Some(token_row) = &token_row {
                email_tokens::store(connection, token_row).await?;
            }
            sessions::end_sessions_of(connection, id, update.end_sessions, now).await?;
            if let Some(key) = &update.clear_failures {
                throttle::clear(connection, key).await?;
            }
            for mail in &update.mails {
                insert_mail(connection, mail).await?;
            }
            insert_events(connection, &update.events).await?;
            let row = match written {
                Some(row) => row,
                None => read_row(connection, id).await?,
            };
            row.into_user().map_err(|error| TxError::Abort(UpdateError::Port(error)))
        })
        .await
}

/// Deletes user `id` after checking `guard` on the locked row (see
/// [`UserStore::delete_user`](users_domain::ports::UserStore::delete_user)). Sessions, their refresh tokens, the
/// email tokens, the picture records and the second factor (secret, recovery codes, pending login steps) go with
/// the row through `ON DELETE CASCADE`; queued mail stays, since it is addressed to a mailbox, not to an account,
/// and may be the deletion notice itself.
pub(super) async fn delete_user(
    connection: &mut AsyncPgConnection,
    id: UserId,
    guard: Guard,
    events: &[AuditEvent],
) -> Result<(), TxError<UpdateError>> {
    let id = id.as_uuid();
    connection
        .transaction::<_, TxError<UpdateError>, _>(async |connection| {
            lock_and_check(connection, id, guard, Write::Delete).await?;
            diesel::delete(users::table.find(id)).execute(connection).await?;
            insert_events(connection, events).await?;
            Ok(())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locked(role: Role, is_locked: bool) -> LockedUser {
        LockedUser { id: Uuid::now_v7(), role: role.as_str().to_owned(), is_locked }
    }

    #[test]
    fn only_an_unlocked_admin_counts_as_one() {
        assert!(locked(Role::Admin, false).is_unlocked_admin());
        assert!(!locked(Role::Admin, true).is_unlocked_admin());
        assert!(!locked(Role::Manager, false).is_unlocked_admin());
    }
}
