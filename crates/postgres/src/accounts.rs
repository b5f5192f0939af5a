//! The account workflows that write several rows at once: registration, email tokens, password reset and change.
//!
//! Each function owns one transaction on a connection the repository checked out, so a workflow commits as a
//! whole or leaves nothing behind: an account never exists without its verification mail queued, a token is never
//! consumed without its effect, and a mail never goes out for a change that rolled back. Errors come back as
//! [`TxError`]s for the repository to translate once the connection is free again.

use diesel::prelude::{
    ExpressionMethods as _, IntoSql as _, OptionalExtension as _, QueryDsl as _, SelectableHelper as _,
};
use diesel::result::Error as DieselError;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::OffsetDateTime;
use users_domain::accounts::{
    ConfirmEmailError, EmailChangeRequest, EmailConfirmation, EmailTokenPurpose, NewEmailToken, ProfileChanges,
    UpdateProfileError,
};
use users_domain::permissions::Role;
use users_domain::ports::{OutgoingMail, PortError};
use users_domain::session::{SessionId, TokenHash};
use users_domain::user::{EmailAddress, NewUser, PasswordHash, User, UserId};

use crate::errors::{EMAIL_UNIQUE_INDEX, NICKNAME_UNIQUE_INDEX, TxError, violated_unique_index};
use crate::outbox::insert_mail;
use crate::repository::profile_changeset;
use crate::rows::{NewEmailTokenRow, NewUserRow, UserRow};
use crate::schema::{email_tokens, login_attempts, sessions, users};

/// Converts a row into a domain user inside a transaction: a row the domain refuses aborts it.
fn to_user<E: From<PortError>>(row: UserRow) -> Result<User, TxError<E>> {
    User::try_from(row).map_err(|error| TxError::Abort(E::from(PortError::Unknown(error))))
}

/// Inserts the user, their verification token and their mail. A unique violation surfaces as the statement's
/// error, which the caller recognises by index name; the transaction has rolled back by then.
pub(crate) async fn register(
    connection: &mut AsyncPgConnection,
    user: &NewUser,
    token: &NewEmailToken,
    mail: &OutgoingMail,
) -> Result<UserRow, DieselError> {
    let user_row = NewUserRow::from(user);
    let token_row = NewEmailTokenRow::from(token);
    connection
        .transaction::<_, DieselError, _>(async |connection| {
            let inserted = diesel::insert_into(users::table)
                .values(&user_row)
                .returning(UserRow::as_returning())
                .get_result(connection)
                .await?;
            upsert_email_token(connection, &token_row).await?;
            insert_mail(connection, mail).await?;
            Ok(inserted)
        })
        .await
}

/// Stores a token as the user's only one of its purpose: any previous token of that user and purpose, used or
/// not, is replaced in the same statement, which is what makes the newest one win even when two are issued at
/// once (the second upsert waits for the first and then replaces its row).
async fn upsert_email_token(connection: &mut AsyncPgConnection, row: &NewEmailTokenRow<'_>) -> Result<(), DieselError> {
    use diesel::upsert::excluded;
    diesel::insert_into(email_tokens::table)
        .values(row)
        .on_conflict((email_tokens::user_id, email_tokens::purpose))
        .do_update()
        .set((
            email_tokens::token_hash.eq(excluded(email_tokens::token_hash)),
            email_tokens::new_email.eq(excluded(email_tokens::new_email)),
            email_tokens::expires_at.eq(excluded(email_tokens::expires_at)),
            email_tokens::created_at.eq(diesel::dsl::now),
            email_tokens::used_at.eq(None::<OffsetDateTime>),
        ))
        .execute(connection)
        .await
        .map(drop)
}

/// Issues a token (replacing the user's previous one of that purpose), records a pending address for an email
/// change, and queues the mails.
pub(crate) async fn issue_email_token(
    connection: &mut AsyncPgConnection,
    token: &NewEmailToken,
    mails: &[OutgoingMail],
) -> Result<(), DieselError> {
    let row = NewEmailTokenRow::from(token);
    connection
        .transaction::<_, DieselError, _>(async |connection| {
            upsert_email_token(connection, &row).await?;
            drop_email_tokens(connection, token.user_id.as_uuid(), &token.drops).await?;
            replace_password(connection, token).await?;
            if token.purpose == EmailTokenPurpose::EmailChange {
                diesel::update(users::table.find(token.user_id.as_uuid()))
                    .set((
                        users::pending_email.eq(token.new_email.as_ref().map(EmailAddress::as_str)),
                        users::updated_at.eq(diesel::dsl::now),
                    ))
                    .execute(connection)
                    .await?;
            }
            for mail in mails {
                insert_mail(connection, mail).await?;
            }
            Ok(())
        })
        .await
}

/// `PATCH /me` in one transaction: the profile changes, then, with an email change, its token, the pending address
/// and its mails (see the port's `update_me`).
pub(crate) async fn update_me(
    connection: &mut AsyncPgConnection,
    user_id: UserId,
    changes: &ProfileChanges,
    email_change: Option<&EmailChangeRequest>,
    now: OffsetDateTime,
) -> Result<User, TxError<UpdateProfileError>> {
    connection
        .transaction::<_, TxError<UpdateProfileError>, _>(async |connection| {
            // `updated_at` is always set, so the statement is never empty.
            let updated = diesel::update(users::table.find(user_id.as_uuid()))
                .set((users::updated_at.eq(now), profile_changeset(changes)))
                .returning(UserRow::as_returning())
                .get_result(connection)
                .await
                .optional();
            let mut row = match updated {
                Ok(Some(row)) => row,
                Ok(None) => return Err(TxError::Abort(UpdateProfileError::NotFound)),
                Err(error) if violated_unique_index(&error) == Some(NICKNAME_UNIQUE_INDEX) => {
                    return Err(TxError::Abort(UpdateProfileError::NicknameTaken));
                }
                Err(error) => return Err(TxError::Query(error)),
            };
            if let Some(change) = email_change {
                upsert_email_token(connection, &NewEmailTokenRow::from(&change.token)).await?;
                row = diesel::update(users::table.find(user_id.as_uuid()))
                    .set(users::pending_email.eq(change.token.new_email.as_ref().map(EmailAddress::as_str)))
                    .returning(UserRow::as_returning())
                    .get_result(connection)
                    .await?;
                for mail in &change.mails {
                    insert_mail(connection, mail).await?;
                }
            }
            User::try_from(row).map_err(|error| TxError::Abort(UpdateProfileError::Port(PortError::Unknown(error))))
        })
        .await
}

/// Consumes a verification or email-change token of `user_id` and applies it.
pub(crate) async fn confirm_email(
    connection: &mut AsyncPgConnection,
    user_id: UserId,
    hash: &TokenHash,
    now: OffsetDateTime,
) -> Result<EmailConfirmation, TxError<ConfirmEmailError>> {
    connection
        .transaction::<_, TxError<ConfirmEmailError>, _>(async |connection| {
            // The conditions and the consumption are one statement, so of two concurrent clicks on one link
            // exactly one finds the token unused; the other waits for it and then matches nothing.
            let consumed: Option<(String, Option<String>)> = diesel::update(email_tokens::table)
                .filter(email_tokens::token_hash.eq(hash.as_str()))
                .filter(email_tokens::user_id.eq(user_id.as_uuid()))
                .filter(email_tokens::used_at.is_null())
                .filter(email_tokens::expires_at.gt(now))
                .filter(
                    email_tokens::purpose
                        .eq_any([EmailTokenPurpose::Verify.as_str(), EmailTokenPurpose::EmailChange.as_str()]),
                )
                .set(email_tokens::used_at.eq(now))
                .returning((email_tokens::purpose, email_tokens::new_email))
                .get_result(connection)
                .await
                .optional()?;
            let Some((purpose, new_email)) = consumed else {
                return Err(TxError::Abort(ConfirmEmailError::InvalidToken));
            };
            match EmailTokenPurpose::parse(&purpose) {
                Some(EmailTokenPurpose::Verify) => {
                    let row = verify_user(connection, user_id, now).await?;
                    Ok(EmailConfirmation::Verified(to_user(row)?))
                }
                Some(EmailTokenPurpose::EmailChange) => {
                    let Some(new_email) = new_email else {
                        return Err(corrupt_token("an email-change token without an address"));
                    };
                    let row = change_email(connection, user_id, &new_email, now).await?;
                    Ok(EmailConfirmation::EmailChanged(to_user(row)?))
                }
                // The filter above only matches the two purposes; anything else is a row the schema should have
                // refused.
                Some(EmailTokenPurpose::PasswordReset) | None => Err(corrupt_token("a token of an unexpected purpose")),
            }
        })
        .await
}

fn corrupt_token(what: &'static str) -> TxError<ConfirmEmailError> {
    TxError::Abort(ConfirmEmailError::Port(PortError::Unknown(anyhow::anyhow!("email_tokens holds {what}"))))
}

/// Marks the user's address verified and promotes ANONYMOUS to AUTHENTICATED; any higher role stays as it is.
async fn verify_user(
    connection: &mut AsyncPgConnection,
    user_id: UserId,
    now: OffsetDateTime,
) -> Result<UserRow, TxError<ConfirmEmailError>> {
    // Decided in SQL on the row as locked by this update, so a concurrent role change by an admin is never
    // overwritten with a value read earlier.
    let promoted = diesel::dsl::case_when(
        users::role.eq(Role::Anonymous.as_str()),
        Role::Authenticated.as_str().into_sql::<Text>(),
    )
    .otherwise(users::role);
    let row = diesel::update(users::table.find(user_id.as_uuid()))
        .set((users::email_verified.eq(true), users::role.eq(promoted), users::updated_at.eq(now)))
        .returning(UserRow::as_returning())
        .get_result(connection)
        .await
        .optional()?;
    // The token's foreign key cascades, so a consumed token always has its user; no row means a bug.
    row.ok_or_else(|| corrupt_token("a token whose user is missing"))
}

/// Makes the confirmed address the account's email; a unique violation means someone else took it meanwhile.
async fn change_email(
    connection: &mut AsyncPgConnection,
    user_id: UserId,
    new_email: &str,
    now: OffsetDateTime,
) -> Result<UserRow, TxError<ConfirmEmailError>> {
    // Following the link proves the address like a registration link does, so ANONYMOUS is promoted the same way.
    let promoted = diesel::dsl::case_when(
        users::role.eq(Role::Anonymous.as_str()),
        Role::Authenticated.as_str().into_sql::<Text>(),
    )
    .otherwise(users::role);
    let updated = diesel::update(users::table.find(user_id.as_uuid()))
        .set((
            users::email.eq(new_email),
            users::email_verified.eq(true),
            users::role.eq(promoted),
            users::pending_email.eq(None::<String>),
            users::updated_at.eq(now),
        ))
        .returning(UserRow::as_returning())
        .get_result(connection)
        .await
        .optional();
    match updated {
        Ok(Some(row)) => {
            // A reset link already mailed to the old address must not outlive the change of address.
            diesel::delete(email_tokens::table)
                .filter(email_tokens::user_id.eq(user_id.as_uuid()))
                .filter(email_tokens::purpose.eq(EmailTokenPurpose::PasswordReset.as_str()))
                .execute(connection)
                .await?;
            Ok(row)
        }
        Ok(None) => Err(corrupt_token("a token whose user is missing")),
        // Aborting rolls the consumption back with everything else, so the token stays usable.
        Err(error) if violated_unique_index(&error) == Some(EMAIL_UNIQUE_INDEX) => {
            Err(TxError::Abort(ConfirmEmailError::EmailTaken))
        }
        Err(error) => Err(TxError::Query(error)),
    }
}

/// Consumes a password-reset token and applies the new password; `Ok(false)` when the token was not usable.
pub(crate) async fn reset_password(
    connection: &mut AsyncPgConnection,
    hash: &TokenHash,
    password_hash: &PasswordHash,
    mail: &OutgoingMail,
    now: OffsetDateTime,
) -> Result<bool, TxError<PortError>> {
    connection
        .transaction::<_, TxError<PortError>, _>(async |connection| {
            let consumed = diesel::update(email_tokens::table)
                .filter(email_tokens::token_hash.eq(hash.as_str()))
                .filter(email_tokens::purpose.eq(EmailTokenPurpose::PasswordReset.as_str()))
                .filter(email_tokens::used_at.is_null())
                .filter(email_tokens::expires_at.gt(now))
                .set(email_tokens::used_at.eq(now))
                .returning(email_tokens::user_id)
                .get_result::<uuid::Uuid>(connection)
                .await
                .optional()?;
            let Some(user_id) = consumed else { return Ok(false) };
            // The reset link proves control of the mailbox, so it confirms the address like a verification link
            // (ANONYMOUS becomes AUTHENTICATED, never demoting): an account someone else created for this address
            // before its owner is taken back by the reset.
            let promoted = diesel::dsl::case_when(
                users::role.eq(Role::Anonymous.as_str()),
                Role::Authenticated.as_str().into_sql::<Text>(),
            )
            .otherwise(users::role);
            let email: String = diesel::update(users::table.find(user_id))
                .set((
                    users::password_hash.eq(password_hash.as_str()),
                    users::pending_email.eq(None::<String>),
                    users::email_verified.eq(true),
                    users::role.eq(promoted),
                    users::updated_at.eq(now),
                ))
                .returning(users::email)
                .get_result(connection)
                .await?;
            revoke_sessions(connection, user_id, None, now).await?;
            cancel_email_change(connection, user_id).await?;
            // The backoff is keyed by the canonical (lower-cased) address, the same key the login flow uses.
            let key = EmailAddress::parse(&email)
                .map_err(|error| {
                    TxError::Abort(PortError::Unknown(
                        anyhow::Error::new(error).context(format!("users row {user_id}: column email is invalid")),
                    ))
                })?
                .canonical();
            diesel::delete(login_attempts::table.find(key)).execute(connection).await?;
            insert_mail(connection, mail).await?;
            Ok(true)
        })
        .await
}

/// Stores a new password hash, revokes every other session and queues the notice.
pub(crate) async fn change_password(
    connection: &mut AsyncPgConnection,
    user_id: UserId,
    password_hash: &PasswordHash,
    keep: SessionId,
    mail: &OutgoingMail,
    now: OffsetDateTime,
) -> Result<(), TxError<PortError>> {
    connection
        .transaction::<_, TxError<PortError>, _>(async |connection| {
            let updated = diesel::update(users::table.find(user_id.as_uuid()))
                .set((
                    users::password_hash.eq(password_hash.as_str()),
                    users::pending_email.eq(None::<String>),
                    users::updated_at.eq(now),
                ))
                .execute(connection)
                .await?;
            // The caller has just authenticated this user, so a missing row is a concurrent deletion; queueing a
            // "password changed" notice for an account that no longer exists would be wrong, so nothing commits.
            if updated == 0 {
                return Err(TxError::Abort(PortError::Unknown(anyhow::anyhow!(
                    "cannot change the password of user {user_id}: no such user"
                ))));
            }
            revoke_sessions(connection, user_id.as_uuid(), Some(keep), now).await?;
            // A reset link mailed before the change would undo it: it dies with the pending email change.
            let purposes = [EmailTokenPurpose::EmailChange, EmailTokenPurpose::PasswordReset];
            drop_email_tokens(connection, user_id.as_uuid(), &purposes).await?;
            insert_mail(connection, mail).await?;
            Ok(())
        })
        .await
}

/// Stores an email token inside the caller's transaction: replaces the user's token of the same purpose and drops
/// those of the purposes in `token.drops`.
pub(crate) async fn issue_token_in_transaction(
    connection: &mut AsyncPgConnection,
    token: &NewEmailToken,
) -> Result<(), DieselError> {
    upsert_email_token(connection, &NewEmailTokenRow::from(token)).await?;
    drop_email_tokens(connection, token.user_id.as_uuid(), &token.drops).await?;
    replace_password(connection, token).await?;
    Ok(())
}

/// Applies a token's `replaces_password`, if any.
async fn replace_password(connection: &mut AsyncPgConnection, token: &NewEmailToken) -> Result<(), DieselError> {
    if let Some(hash) = &token.replaces_password {
        diesel::update(users::table.find(token.user_id.as_uuid()))
            .set(users::password_hash.eq(hash.as_str()))
            .execute(connection)
            .await?;
    }
    Ok(())
}

/// Drops the user's outstanding email tokens of these purposes.
pub(crate) async fn drop_email_tokens(
    connection: &mut AsyncPgConnection,
    user_id: uuid::Uuid,
    purposes: &[EmailTokenPurpose],
) -> Result<usize, DieselError> {
    if purposes.is_empty() {
        return Ok(0);
    }
    diesel::delete(email_tokens::table)
        .filter(email_tokens::user_id.eq(user_id))
        .filter(email_tokens::purpose.eq_any(purposes.iter().map(|purpose| purpose.as_str())))
        .execute(connection)
        .await
}

/// Drops a pending email change. A password reset or change is how an owner takes an account back, so an email
/// change requested by whoever held the old password must not survive it (its link would hand the account over).
async fn cancel_email_change(connection: &mut AsyncPgConnection, user_id: uuid::Uuid) -> Result<usize, DieselError> {
    diesel::delete(email_tokens::table)
        .filter(email_tokens::user_id.eq(user_id))
        .filter(email_tokens::purpose.eq(EmailTokenPurpose::EmailChange.as_str()))
        .execute(connection)
        .await
}

/// Revokes the user's unrevoked sessions, except `keep`; sessions already revoked keep their first revocation time.
pub(crate) async fn revoke_sessions(
    connection: &mut AsyncPgConnection,
    user_id: uuid::Uuid,
    keep: Option<SessionId>,
    now: OffsetDateTime,
) -> Result<usize, DieselError> {
    let mut query = diesel::update(sessions::table)
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null())
        .into_boxed();
    if let Some(keep) = keep {
        query = query.filter(sessions::id.ne(keep.as_uuid()));
    }
    query.set(sessions::revoked_at.eq(now)).execute(connection).await
}
