//! Users: the domain's [`UserStore`] on the `users` table, with the changes that write what hangs off a user
//! (email tokens, sessions, the login backoff, mail) in the same transaction.
//!
//! The reads and the insert are here; the keyset listing is in [`list`], and the guarded change and deletion of
//! one user in [`update`].

mod list;
mod update;

#[doc(hidden)]
pub use list::{ListingsOnConnection, PreparedListing};

use std::sync::OnceLock;

use diesel::dsl;
use diesel::pg::Pg;
use diesel::prelude::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, SelectableHelper as _};
use diesel::result::Error as DieselError;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use users_domain::audit::AuditEvent;
use users_domain::permissions::Role;
use users_domain::ports::{
    Guard, InsertUserError, NewAccount, PortError, UpdateError, UserQuery, UserStore, UserUpdate,
};
use users_domain::user::{EmailAddress, Nickname, User, UserId};
use uuid::Uuid;

use crate::audit::insert_events;
use crate::email_tokens;
use crate::errors::{insert_user_error, query_error};
use crate::outbox::insert_mail;
use crate::prebuilt::{KeyedRead, SplitSql, WrittenSql};
use crate::repository::PgRepository;
use crate::reused::Reuse as _;
use crate::rows::{NewEmailTokenRow, NewUserRow, UserRow};
use crate::schema::users;

/// SQL functions diesel does not declare for text.
mod sql {
    use diesel::sql_types::Text;

    #[diesel::declare_sql_function]
    extern "SQL" {
        /// Postgres' `lower(text)`: the expression the case-insensitive unique indexes are built on, so a lookup
        /// through it uses the index.
        fn lower(value: Text) -> Text;
    }
}

/// One user by id: behind `GET /users/{id}` and every change of another user. Its text is written once (see
/// [`crate::prebuilt`]).
struct UserById;

impl KeyedRead for UserById {
    type Key = Uuid;
    type KeySql = diesel::sql_types::Uuid;
    type Query = dsl::Select<dsl::Find<users::table, Uuid>, dsl::AsSelect<UserRow, Pg>>;

    fn query(id: Uuid) -> Self::Query {
        users::table.find(id).select(UserRow::as_select())
    }

    fn text() -> &'static WrittenSql {
        static TEXT: OnceLock<WrittenSql> = OnceLock::new();
        SplitSql::written::<Self>(&TEXT, Uuid::nil())
    }
}

impl UserStore for PgRepository {
    async fn insert_user(&self, account: NewAccount) -> Result<User, InsertUserError> {
        // A token bound to another account would act on the wrong one; refused before anything is written.
        if account.token.as_ref().is_some_and(|token| token.user_id != account.user.id) {
            return Err(InsertUserError::Port(PortError::Unknown(anyhow::anyhow!(
                "a new account's email token must belong to the new user"
            ))));
        }
        let mut connection = self.connection().await?;
        match insert_account(&mut connection, &account).await {
            Ok(row) => Ok(row.into_user()?),
            Err(error) => Err(insert_user_error(error, &mut connection, "inserting a user")),
        }
    }

    async fn find_user(&self, id: UserId) -> Result<Option<User>, PortError> {
        let mut connection = self.connection().await?;
        let found = UserById::with(id.as_uuid()).get_result::<UserRow>(&mut connection).await.optional();
        match found {
            Ok(row) => row.map(UserRow::into_user).transpose(),
            Err(error) => Err(query_error(error, &mut connection, "finding a user by id")),
        }
    }

    async fn find_user_by_email(&self, email: EmailAddress) -> Result<Option<User>, PortError> {
        let mut connection = self.connection().await?;
        let found = users::table
            .filter(sql::lower(users::email).eq(email.canonical()))
            .select(UserRow::as_select())
            .get_result(&mut connection)
            .await
            .optional();
        match found {
            Ok(row) => row.map(UserRow::into_user).transpose(),
            Err(error) => Err(query_error(error, &mut connection, "finding a user by email")),
        }
    }

    async fn nickname_exists(&self, nickname: Nickname) -> Result<bool, PortError> {
        let mut connection = self.connection().await?;
        let lowered = nickname.as_str().to_ascii_lowercase();
        let found = diesel::select(diesel::dsl::exists(users::table.filter(sql::lower(users::nickname).eq(lowered))))
            .get_result::<bool>(&mut connection)
            .await;
        found.map_err(|error| query_error(error, &mut connection, "checking a nickname"))
    }

    async fn another_unlocked_admin(&self, besides: UserId) -> Result<bool, PortError> {
        let mut connection = self.connection().await?;
        let others = users::table
            .filter(users::role.eq(Role::Admin.as_str()))
            .filter(users::is_locked.eq(false))
            .filter(users::id.ne(besides.as_uuid()));
        let found = diesel::select(diesel::dsl::exists(others)).get_result::<bool>(&mut connection).await;
        found.map_err(|error| query_error(error, &mut connection, "looking for another admin"))
    }

    async fn list_users(&self, query: UserQuery) -> Result<Vec<User>, PortError> {
        self.list_users_page(&query).await
    }

    async fn update_user(&self, update: UserUpdate) -> Result<User, UpdateError> {
        // As at insertion: a token for another account would act on the wrong one.
        if update.issue_token.as_ref().is_some_and(|token| token.user_id != update.id) {
            return Err(UpdateError::Port(PortError::Unknown(anyhow::anyhow!(
                "a change's new email token must belong to the changed user"
            ))));
        }
        let mut connection = self.connection().await?;
        let updated = update::update_user(&mut connection, &update).await;
        updated.map_err(|error| error.into_port(&mut connection, "updating a user"))
    }

    async fn delete_user(&self, id: UserId, guard: Guard, events: Vec<AuditEvent>) -> Result<(), UpdateError> {
        let mut connection = self.connection().await?;
        let deleted = update::delete_user(&mut connection, id, guard, &events).await;
        deleted.map_err(|error| error.into_port(&mut connection, "deleting a user"))
    }

    async fn ping(&self) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        match diesel::sql_query("SELECT 1").execute(&mut connection).await {
            Ok(_) => Ok(()),
            Err(error) => Err(query_error(error, &mut connection, "pinging the database")),
        }
    }
}

/// Inserts the user, their email token, their mails and events in one transaction. A unique violation surfaces as the
/// statement's error, which the caller recognises by index name; the transaction has rolled back by then.
async fn insert_account(connection: &mut AsyncPgConnection, account: &NewAccount) -> Result<UserRow, DieselError> {
    let user_row = NewUserRow::from(&account.user);
    let token_row = account.token.as_ref().map(NewEmailTokenRow::from);
    connection
        .transaction::<_, DieselError, _>(async |connection| {
            let inserted = diesel::insert_into(users::table)
                .values(&user_row)
                .returning(UserRow::as_returning())
                .reused()
                .get_result(connection)
                .await?;
            if let Some(token_row) = &token_row {
                email_tokens::store(connection, token_row).await?;
            }
            for mail in &account.mails {
                insert_mail(connection, mail).await?;
            }
            insert_events(connection, &account.events).await?;
            Ok(inserted)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_read_runs_the_text_and_binds_of_its_diesel_query() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        crate::prebuilt::assert_runs_its_query::<UserById>(id, r#""users"."id" = $1"#);
    }
}
