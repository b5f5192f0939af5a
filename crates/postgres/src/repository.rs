//! [`PgRepository`]: the domain's [`UserRepository`] on a deadpool pool of diesel-async connections.
//!
//! Every method checks out one connection under the acquire timeout, runs its queries with bound parameters and
//! translates errors at the boundary (see [`crate::errors`]), so callers see only domain types.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, SelectableHelper as _};
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::OffsetDateTime;
use users_domain::accounts::{
    AccountRequest, AccountRequestKind, BackoffPolicy, ConfirmEmailError, EmailChangeRequest, EmailConfirmation,
    EmailTokenPurpose, FailureCount, NewEmailToken, OwnedSession, ProfileChanges, RefreshOutcome, UpdateProfileError,
};
use users_domain::admin::{AdminChanges, AdminWriteError, UserQuery};
use users_domain::permissions::Role;
use users_domain::ports::{InsertUserError, OutgoingMail, PortError, UserRepository};
use users_domain::session::{NewSession, Session, SessionId, TokenHash};
use users_domain::user::{Bio, EmailAddress, NewUser, Nickname, PasswordHash, PersonName, ProfileUrl, User, UserId};

use crate::errors::{
    NICKNAME_UNIQUE_INDEX, acquire_timed_out, insert_user_error, pool_error, query_error, violated_unique_index,
};
use crate::outbox::insert_mail;
use crate::requests;
use crate::rows::{NewRefreshTokenRow, NewSessionRow, NewUserRow, SessionRow, UserRow};
use crate::schema::{email_tokens, login_attempts, refresh_tokens, sessions, users};
use crate::setup::{PgConfig, PgSetupError};
use crate::tls::Connector;
use crate::{accounts, admin, backoff, rotation};

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

/// The `SET` list of a profile change: each field is `None` (left out), `Some(None)` (set to NULL) or
/// `Some(Some(value))`. Shared by the user's own update and an administrator's, so both mean the same.
pub(crate) type ProfileChangeset<'a> = (
    Option<diesel::dsl::Eq<users::nickname, &'a str>>,
    Option<diesel::dsl::Eq<users::first_name, Option<&'a str>>>,
    Option<diesel::dsl::Eq<users::last_name, Option<&'a str>>>,
    Option<diesel::dsl::Eq<users::bio, Option<&'a str>>>,
    Option<diesel::dsl::Eq<users::linkedin_profile_url, Option<&'a str>>>,
    Option<diesel::dsl::Eq<users::github_profile_url, Option<&'a str>>>,
);

/// The [`ProfileChangeset`] of `changes`.
pub(crate) fn profile_changeset(changes: &ProfileChanges) -> ProfileChangeset<'_> {
    (
        changes.nickname.as_ref().map(|nickname| users::nickname.eq(nickname.as_str())),
        changes.first_name.as_ref().map(|name| users::first_name.eq(name.as_ref().map(PersonName::as_str))),
        changes.last_name.as_ref().map(|name| users::last_name.eq(name.as_ref().map(PersonName::as_str))),
        changes.bio.as_ref().map(|bio| users::bio.eq(bio.as_ref().map(Bio::as_str))),
        changes
            .linkedin_profile_url
            .as_ref()
            .map(|url| users::linkedin_profile_url.eq(url.as_ref().map(ProfileUrl::as_str))),
        changes
            .github_profile_url
            .as_ref()
            .map(|url| users::github_profile_url.eq(url.as_ref().map(ProfileUrl::as_str))),
    )
}

/// The Postgres implementation of [`UserRepository`]. Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct PgRepository {
    pool: Pool<AsyncPgConnection>,
    acquire_timeout: Duration,
}

impl fmt::Debug for PgRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PgRepository")
            .field("max_connections", &status.max_size)
            .field("open_connections", &status.size)
            .field("idle_connections", &status.available)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

impl PgRepository {
    /// Builds the connection pool. Connections are opened lazily, on first use, so this succeeds while Postgres is
    /// still starting; readiness is what [`UserRepository::ping`] is for.
    ///
    /// Every checkout is bounded by `acquire_timeout`, so requests fail as unavailable instead of hanging while
    /// Postgres is down, and every idle connection is verified with a round trip before reuse, so connections
    /// broken by a Postgres restart are replaced and the pool recovers without a restart of the service.
    ///
    /// # Errors
    /// [`PgSetupError::InvalidUrl`] when the URL does not parse, [`PgSetupError::InvalidConfig`] for zero
    /// connections or a zero timeout, [`PgSetupError::Pool`] when the pool cannot be built.
    pub async fn connect(config: &PgConfig) -> Result<Self, PgSetupError> {
        // Parsed once: `sslmode`, the roots of `sslrootcert` and the driver's settings serve every connection.
        let connector = Arc::new(Connector::from_url(&config.url)?);
        if config.max_connections == 0 {
            return Err(PgSetupError::InvalidConfig("max_connections must be at least 1"));
        }
        if config.acquire_timeout.is_zero() {
            return Err(PgSetupError::InvalidConfig("acquire_timeout must be longer than zero"));
        }
        // The manager's default recycling method is `Verified` (a `SELECT 1` at checkout, after a local check
        // that the socket is open and no transaction was left dangling): one local round trip per request buys
        // never handing out a connection that a Postgres restart killed.
        let mut manager_config = ManagerConfig::default();
        manager_config.custom_setup = Box::new(move |_url| {
            let connector = Arc::clone(&connector);
            Box::pin(async move { connector.connect().await })
        });
        let manager =
            AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(config.url.clone(), manager_config);
        let pool = Pool::builder(manager)
            .max_size(config.max_connections)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(config.acquire_timeout))
            .create_timeout(Some(config.acquire_timeout))
            .recycle_timeout(Some(config.acquire_timeout))
            .build()
            .map_err(|error| PgSetupError::Pool(Box::new(error)))?;
        Ok(Self { pool, acquire_timeout: config.acquire_timeout })
    }

    /// Checks a connection out of the pool within the acquire timeout.
    ///
    /// The pool's own timeouts apply per step (waiting for a slot, each recycle attempt, opening a connection);
    /// this outer bound makes the acquire timeout hold for the whole checkout, however many steps it takes.
    pub(crate) async fn connection(&self) -> Result<Object<AsyncPgConnection>, PortError> {
        match tokio::time::timeout(self.acquire_timeout, self.pool.get()).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(pool_error(error)),
            Err(_elapsed) => Err(acquire_timed_out(self.acquire_timeout)),
        }
    }
}

/// Converts a row into a domain user; a row the domain refuses is corrupt data, not absence.
fn to_user(row: UserRow) -> Result<User, PortError> {
    User::try_from(row).map_err(PortError::Unknown)
}

impl UserRepository for PgRepository {
    async fn insert_user(&self, user: NewUser) -> Result<User, InsertUserError> {
        let mut connection = self.connection().await?;
        let inserted = diesel::insert_into(users::table)
            .values(NewUserRow::from(&user))
            .returning(UserRow::as_returning())
            .get_result(&mut connection)
            .await;
        match inserted {
            Ok(row) => Ok(to_user(row)?),
            Err(error) => Err(insert_user_error(error, &mut connection, "inserting a user")),
        }
    }

    async fn find_user(&self, id: UserId) -> Result<Option<User>, PortError> {
        let mut connection = self.connection().await?;
        let found =
            users::table.find(id.as_uuid()).select(UserRow::as_select()).get_result(&mut connection).await.optional();
        match found {
            Ok(row) => row.map(to_user).transpose(),
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
            Ok(row) => row.map(to_user).transpose(),
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

    async fn promote_to_admin(&self, id: UserId, password_hash: PasswordHash) -> Result<Option<User>, PortError> {
        let mut connection = self.connection().await?;
        let updated = diesel::update(users::table.find(id.as_uuid()))
            .set((
                users::role.eq(Role::Admin.as_str()),
                users::email_verified.eq(true),
                users::is_locked.eq(false),
                users::password_hash.eq(password_hash.as_str()),
                users::updated_at.eq(diesel::dsl::now),
            ))
            .returning(UserRow::as_returning())
            .get_result(&mut connection)
            .await
            .optional();
        match updated {
            Ok(row) => row.map(to_user).transpose(),
            Err(error) => Err(query_error(error, &mut connection, "promoting a user to ADMIN")),
        }
    }

    async fn start_session(&self, session: NewSession, at: OffsetDateTime) -> Result<Session, PortError> {
        let mut connection = self.connection().await?;
        let session_row = NewSessionRow::new(&session, at);
        let token_row = NewRefreshTokenRow::first_of(&session, at);
        let user_id = session.user_id.as_uuid();
        // The session, its first refresh token and the login time commit together or not at all: a session
        // without a token could never be refreshed, and a token without a session would dangle.
        let started = connection
            .transaction::<_, diesel::result::Error, _>(async |connection| {
                let row = diesel::insert_into(sessions::table)
                    .values(&session_row)
                    .returning(SessionRow::as_returning())
                    .get_result(connection)
                    .await?;
                diesel::insert_into(refresh_tokens::table).values(&token_row).execute(connection).await?;
                diesel::update(users::table.find(user_id)).set(users::last_login_at.eq(at)).execute(connection).await?;
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
        let found = sessions::table
            .inner_join(users::table)
            .filter(sessions::id.eq(id.as_uuid()))
            .select((SessionRow::as_select(), UserRow::as_select()))
            .get_result::<(SessionRow, UserRow)>(&mut connection)
            .await
            .optional();
        match found {
            Ok(Some((session, user))) => Ok(Some((session.into(), to_user(user)?))),
            Ok(None) => Ok(None),
            Err(error) => Err(query_error(error, &mut connection, "finding a session with its user")),
        }
    }

    async fn ping(&self) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        match diesel::sql_query("SELECT 1").execute(&mut connection).await {
            Ok(_) => Ok(()),
            Err(error) => Err(query_error(error, &mut connection, "pinging the database")),
        }
    }

    async fn register(&self, user: NewUser, token: NewEmailToken, mail: OutgoingMail) -> Result<User, InsertUserError> {
        // A token bound to another account would verify the wrong one; refused before anything is written.
        if token.user_id != user.id {
            return Err(InsertUserError::Port(PortError::Unknown(anyhow::anyhow!(
                "a registration's verification token must belong to the new user"
            ))));
        }
        let mut connection = self.connection().await?;
        match accounts::register(&mut connection, &user, &token, &mail).await {
            Ok(row) => Ok(to_user(row)?),
            Err(error) => Err(insert_user_error(error, &mut connection, "registering a user")),
        }
    }

    async fn queue_mail(&self, mail: OutgoingMail) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        match insert_mail(&mut connection, &mail).await {
            Ok(()) => Ok(()),
            Err(error) => Err(query_error(error, &mut connection, "queueing a mail")),
        }
    }

    async fn issue_email_token(&self, token: NewEmailToken, mails: Vec<OutgoingMail>) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        match accounts::issue_email_token(&mut connection, &token, &mails).await {
            Ok(()) => Ok(()),
            Err(error) => Err(query_error(error, &mut connection, "issuing an email token")),
        }
    }

    async fn confirm_email(
        &self,
        user_id: UserId,
        hash: TokenHash,
        now: OffsetDateTime,
    ) -> Result<EmailConfirmation, ConfirmEmailError> {
        let mut connection = self.connection().await?;
        let confirmed = accounts::confirm_email(&mut connection, user_id, &hash, now).await;
        confirmed.map_err(|error| error.into_port(&mut connection, "confirming an email address"))
    }

    async fn find_reset_token_user(&self, hash: TokenHash, now: OffsetDateTime) -> Result<Option<User>, PortError> {
        let mut connection = self.connection().await?;
        // Newest wins by construction: a user holds one reset token at most, so a usable one is the newest.
        let found = email_tokens::table
            .inner_join(users::table)
            .filter(email_tokens::token_hash.eq(hash.as_str()))
            .filter(email_tokens::purpose.eq(EmailTokenPurpose::PasswordReset.as_str()))
            .filter(email_tokens::used_at.is_null())
            .filter(email_tokens::expires_at.gt(now))
            .select(UserRow::as_select())
            .get_result(&mut connection)
            .await
            .optional();
        match found {
            Ok(row) => row.map(to_user).transpose(),
            Err(error) => Err(query_error(error, &mut connection, "finding the user of a reset token")),
        }
    }

    async fn reset_password(
        &self,
        hash: TokenHash,
        password_hash: PasswordHash,
        mail: OutgoingMail,
        now: OffsetDateTime,
    ) -> Result<bool, PortError> {
        let mut connection = self.connection().await?;
        let reset = accounts::reset_password(&mut connection, &hash, &password_hash, &mail, now).await;
        reset.map_err(|error| error.into_port(&mut connection, "resetting a password"))
    }

    async fn change_password(
        &self,
        user_id: UserId,
        password_hash: PasswordHash,
        keep: SessionId,
        mail: OutgoingMail,
        now: OffsetDateTime,
    ) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        let changed = accounts::change_password(&mut connection, user_id, &password_hash, keep, &mail, now).await;
        changed.map_err(|error| error.into_port(&mut connection, "changing a password"))
    }

    async fn update_me(
        &self,
        user_id: UserId,
        changes: ProfileChanges,
        email_change: Option<EmailChangeRequest>,
        now: OffsetDateTime,
    ) -> Result<User, UpdateProfileError> {
        let mut connection = self.connection().await?;
        let updated = accounts::update_me(&mut connection, user_id, &changes, email_change.as_ref(), now).await;
        updated.map_err(|error| error.into_port(&mut connection, "updating a profile"))
    }

    async fn update_profile(
        &self,
        user_id: UserId,
        changes: ProfileChanges,
        now: OffsetDateTime,
    ) -> Result<User, UpdateProfileError> {
        let mut connection = self.connection().await?;
        // `updated_at` is always set, so the statement is never empty.
        let changeset = (users::updated_at.eq(now), profile_changeset(&changes));
        let updated = diesel::update(users::table.find(user_id.as_uuid()))
            .set(changeset)
            .returning(UserRow::as_returning())
            .get_result(&mut connection)
            .await
            .optional();
        match updated {
            Ok(Some(row)) => Ok(to_user(row)?),
            Ok(None) => Err(UpdateProfileError::NotFound),
            Err(error) if violated_unique_index(&error) == Some(NICKNAME_UNIQUE_INDEX) => {
                Err(UpdateProfileError::NicknameTaken)
            }
            Err(error) => Err(query_error(error, &mut connection, "updating a profile").into()),
        }
    }

    async fn delete_user(&self, user_id: UserId) -> Result<bool, PortError> {
        let mut connection = self.connection().await?;
        // Sessions, their refresh tokens and the email tokens go with the row through ON DELETE CASCADE. Queued
        // mail stays: it is addressed to a mailbox, not to an account, and may be the deletion notice itself.
        match diesel::delete(users::table.find(user_id.as_uuid())).execute(&mut connection).await {
            Ok(deleted) => Ok(deleted > 0),
            Err(error) => Err(query_error(error, &mut connection, "deleting a user")),
        }
    }

    async fn rotate_refresh_token(
        &self,
        presented: TokenHash,
        next: TokenHash,
        now: OffsetDateTime,
        idle_ttl: time::Duration,
    ) -> Result<RefreshOutcome, PortError> {
        let mut connection = self.connection().await?;
        let outcome = rotation::rotate_refresh_token(&mut connection, &presented, &next, now, idle_ttl).await;
        outcome.map_err(|error| error.into_port(&mut connection, "rotating a refresh token"))
    }

    async fn revoke_session_by_refresh_token(
        &self,
        presented: TokenHash,
        now: OffsetDateTime,
    ) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        let family = refresh_tokens::table
            .filter(refresh_tokens::token_hash.eq(presented.as_str()))
            .select(refresh_tokens::session_id);
        let revoked = diesel::update(sessions::table)
            .filter(sessions::id.eq_any(family))
            .filter(sessions::revoked_at.is_null())
            .set(sessions::revoked_at.eq(now))
            .execute(&mut connection)
            .await;
        match revoked {
            Ok(_) => Ok(()),
            Err(error) => Err(query_error(error, &mut connection, "revoking a session by its refresh token")),
        }
    }

    async fn revoke_session(&self, owned: OwnedSession, now: OffsetDateTime) -> Result<bool, PortError> {
        let mut connection = self.connection().await?;
        // The owner is part of the condition, so a session id of someone else's reads as "no such session".
        let revoked = diesel::update(sessions::table.find(owned.session_id.as_uuid()))
            .filter(sessions::user_id.eq(owned.user_id.as_uuid()))
            .filter(sessions::revoked_at.is_null())
            .filter(sessions::expires_at.gt(now))
            .set(sessions::revoked_at.eq(now))
            .execute(&mut connection)
            .await;
        match revoked {
            Ok(revoked) => Ok(revoked > 0),
            Err(error) => Err(query_error(error, &mut connection, "revoking a session")),
        }
    }

    async fn revoke_all_sessions(&self, user_id: UserId, now: OffsetDateTime) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        match accounts::revoke_sessions(&mut connection, user_id.as_uuid(), None, now).await {
            Ok(_) => Ok(()),
            Err(error) => Err(query_error(error, &mut connection, "revoking every session of a user")),
        }
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

    async fn queue_account_request(
        &self,
        kind: AccountRequestKind,
        email: EmailAddress,
        now: OffsetDateTime,
    ) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        let queued = requests::queue(&mut connection, kind, &email, now).await;
        queued.map_err(|error| query_error(error, &mut connection, "queueing an account request"))
    }

    async fn claim_account_requests(
        &self,
        now: OffsetDateTime,
        limit: u32,
        lease: time::Duration,
    ) -> Result<Vec<AccountRequest>, PortError> {
        let mut connection = self.connection().await?;
        let claimed = requests::claim(&mut connection, now, limit, lease).await;
        claimed.map_err(|error| query_error(error, &mut connection, "claiming account requests"))
    }

    async fn finish_account_request(&self, id: uuid::Uuid) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        let finished = requests::finish(&mut connection, id).await;
        finished.map_err(|error| query_error(error, &mut connection, "finishing an account request"))
    }

    async fn login_failures(&self, key: String) -> Result<Option<FailureCount>, PortError> {
        let mut connection = self.connection().await?;
        let found = backoff::failures(&mut connection, &key).await;
        found.map_err(|error| error.into_port(&mut connection, "reading the login backoff"))
    }

    async fn record_login_failure(
        &self,
        key: String,
        now: OffsetDateTime,
        policy: BackoffPolicy,
    ) -> Result<Option<OffsetDateTime>, PortError> {
        let mut connection = self.connection().await?;
        let recorded = backoff::record_failure(&mut connection, &key, now, policy).await;
        recorded.map_err(|error| error.into_port(&mut connection, "counting a failed login"))
    }

    async fn list_users(&self, query: UserQuery) -> Result<Vec<User>, PortError> {
        self.list_users_page(&query).await
    }

    async fn admin_update_user(
        &self,
        id: UserId,
        changes: AdminChanges,
        mails: Vec<OutgoingMail>,
        now: OffsetDateTime,
    ) -> Result<User, AdminWriteError> {
        let mut connection = self.connection().await?;
        let updated = admin::admin_update_user(&mut connection, id, &changes, &mails, now).await;
        updated.map_err(|error| error.into_port(&mut connection, "updating a user as an administrator"))
    }

    async fn admin_delete_user(&self, id: UserId, expected_role: Option<Role>) -> Result<(), AdminWriteError> {
        let mut connection = self.connection().await?;
        let deleted = admin::admin_delete_user(&mut connection, id, expected_role).await;
        deleted.map_err(|error| error.into_port(&mut connection, "deleting a user as an administrator"))
    }

    async fn clear_login_failures(&self, key: String) -> Result<(), PortError> {
        let mut connection = self.connection().await?;
        match diesel::delete(login_attempts::table.find(&key)).execute(&mut connection).await {
            Ok(_) => Ok(()),
            Err(error) => Err(query_error(error, &mut connection, "clearing the login backoff")),
        }
    }
}
