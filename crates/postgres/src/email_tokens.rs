//! Single-use email tokens: the domain's [`EmailTokenStore`] (the read side) on the `email_tokens` table, and the
//! statements a [`UserUpdate`](users_domain::ports::UserUpdate) or a [`NewAccount`](users_domain::ports::NewAccount)
//! writes tokens with, run inside their transaction.
//!
//! A user holds at most one token per purpose (a unique constraint): storing a token replaces the user's previous
//! one of that purpose in one upsert, so of two tokens issued at once the later writer's survives. Consuming a
//! token is one conditional statement, so of two concurrent uses exactly one finds it usable.

use diesel::prelude::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, SelectableHelper as _};
use diesel::result::Error as DieselError;
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use time::OffsetDateTime;
use users_domain::ports::{EmailTokenPurpose, EmailTokenRecord, EmailTokenStore, PortError};
use users_domain::session::TokenHash;
use uuid::Uuid;

use crate::errors::query_error;
use crate::repository::PgRepository;
use crate::reused::Reuse as _;
use crate::rows::{EmailTokenRow, NewEmailTokenRow};
use crate::schema::email_tokens;

impl EmailTokenStore for PgRepository {
    async fn find_email_token(&self, hash: TokenHash) -> Result<Option<EmailTokenRecord>, PortError> {
        let mut connection = self.connection().await?;
        // Expired tokens are returned too: whether a token still works at the domain's `now` is the domain's call.
        let found = email_tokens::table
            .find(hash.as_str())
            .filter(email_tokens::used_at.is_null())
            .select(EmailTokenRow::as_select())
            .get_result::<EmailTokenRow>(&mut connection)
            .await
            .optional();
        match found {
            Ok(row) => row.map(|row| EmailTokenRecord::try_from(row).map_err(PortError::Unknown)).transpose(),
            Err(error) => Err(query_error(error, &mut connection, "finding an email token")),
        }
    }
}

/// Stores a token as the user's only one of its purpose: any previous token of that user and purpose, used or
/// not, is replaced in the same statement, which is what makes the newest one win even when two are stored at
/// once (the second upsert waits for the first and then replaces its row).
pub(crate) async fn store(connection: &mut AsyncPgConnection, row: &NewEmailTokenRow<'_>) -> Result<(), DieselError> {
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
        .reused()
        .execute(connection)
        .await
        .map(drop)
}

/// Marks the token used if it belongs to `user_id`, is unused and expires after `now`; `false` when it is not
/// usable. The conditions and the write are one statement: of two concurrent uses of one token exactly one
/// matches, the other waits for it and then matches nothing.
pub(crate) async fn consume(
    connection: &mut AsyncPgConnection,
    hash: &TokenHash,
    user_id: Uuid,
    now: OffsetDateTime,
) -> Result<bool, DieselError> {
    let consumed = diesel::update(email_tokens::table.find(hash.as_str()))
        .filter(email_tokens::user_id.eq(user_id))
        .filter(email_tokens::used_at.is_null())
        .filter(email_tokens::expires_at.gt(now))
        .set(email_tokens::used_at.eq(now))
        .reused()
        .execute(connection)
        .await?;
    Ok(consumed > 0)
}

/// Deletes the user's unused tokens of these purposes.
pub(crate) async fn drop_unused(
    connection: &mut AsyncPgConnection,
    user_id: Uuid,
    purposes: &[EmailTokenPurpose],
) -> Result<usize, DieselError> {
    if purposes.is_empty() {
        return Ok(0);
    }
    diesel::delete(email_tokens::table)
        .filter(email_tokens::user_id.eq(user_id))
        .filter(email_tokens::used_at.is_null())
        .filter(email_tokens::purpose.eq_any(purposes.iter().map(|purpose| purpose.as_str())))
        .execute(connection)
        .await
}
