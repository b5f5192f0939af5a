//! User administration: the filtered, keyset-paginated listing behind `GET /users`, and the changes and deletions
//! an administrator makes, which must never leave the service without an unlocked ADMIN.
//!
//! The listing is one statement assembled from fixed SQL fragments with every value bound as a parameter. It is
//! built as a raw query on purpose: such a statement is never kept in the prepared-statement cache, so Postgres
//! plans it with the actual values every time. A cached statement could be switched to a generic plan after a few
//! runs, and a generic plan cannot use the prefix indexes, since `LIKE $1` has no known prefix to scan for.
//!
//! The last-admin rule is decided under row locks. A write that could remove an unlocked ADMIN locks its target
//! and every unlocked ADMIN in one statement, in id order: two such writes then queue behind one another instead of
//! deadlocking (each holding its own target while waiting for the other's), and the second sees the first's outcome.

use diesel::QueryableByName;
use diesel::pg::Pg;
use diesel::prelude::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, SelectableHelper as _};
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::result::Error as DieselError;
use diesel::serialize::ToSql;
use diesel::sql_types::{Array, BigInt, Bool, HasSqlType, Text, Timestamptz};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use time::OffsetDateTime;
use users_domain::accounts::EmailTokenPurpose;
use users_domain::admin::{AdminChanges, AdminWriteError, UserCursor, UserQuery, UserSort};
use users_domain::permissions::Role;
use users_domain::ports::{OutgoingMail, PortError};
use users_domain::user::{User, UserId};
use uuid::Uuid;

use crate::accounts::{drop_email_tokens, issue_token_in_transaction};
use crate::errors::{EMAIL_UNIQUE_INDEX, NICKNAME_UNIQUE_INDEX, TxError, query_error, violated_unique_index};
use crate::outbox::insert_mail;
use crate::repository::{PgRepository, profile_changeset};
use crate::rows::UserRow;
use crate::schema::users;

/// The columns [`UserRow`] reads, in its order; `failed_login_count` is not part of a user.
const USER_COLUMNS: &str = "id, email, nickname, first_name, last_name, bio, profile_picture_id, \
     linkedin_profile_url, github_profile_url, role, is_professional, professional_status_updated_at, \
     email_verified, pending_email, is_locked, password_hash, created_at, updated_at, last_login_at";

/// The character that escapes `%`, `_` and itself in a prefix. Every `LIKE` of the listing names it explicitly
/// (`ESCAPE E'\\'`, an escape-string literal, so it reads as one backslash whatever `standard_conforming_strings`
/// says) instead of relying on it being the default.
const LIKE_ESCAPE: char = '\\';

/// Locks the target of a write that cannot remove an unlocked ADMIN; `FOR NO KEY UPDATE` is the lock the update
/// itself takes, so it blocks no one the update would not.
const LOCK_TARGET: &str = "SELECT id, role, is_locked, is_professional FROM users WHERE id = $1 FOR NO KEY UPDATE";

/// Locks the target and every unlocked ADMIN, in id order (the lock is taken row by row on the sorted rows), so
/// that all writes guarding the last admin take their locks in one global order and never deadlock. A row
/// changed meanwhile is re-checked against the condition once its lock is granted, so an ADMIN demoted or locked
/// by a write that committed first is no longer returned. The constants are written out so that the partial
/// index `users_unlocked_admins_idx` matches under any plan.
const LOCK_TARGET_AND_ADMINS_FOR_CHANGE: &str = "\
    SELECT id, role, is_locked, is_professional FROM users \
    WHERE id = $1 OR (role = 'ADMIN' AND NOT is_locked) \
    ORDER BY id \
    FOR NO KEY UPDATE";

/// [`LOCK_TARGET_AND_ADMINS_FOR_CHANGE`] for a deletion, which needs the full row lock from the start: upgrading
/// a weaker lock later could deadlock with a login that holds a key-share lock on the row (through a new
/// session's foreign key) and waits to update it.
const LOCK_TARGET_AND_ADMINS_FOR_DELETE: &str = "\
    SELECT id, role, is_locked, is_professional FROM users \
    WHERE id = $1 OR (role = 'ADMIN' AND NOT is_locked) \
    ORDER BY id \
    FOR UPDATE";

/// A user as locked for an administrator's write: just what the last-admin rule and the change need.
#[derive(Debug, QueryableByName)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct LockedUser {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    role: String,
    #[diesel(sql_type = Bool)]
    is_locked: bool,
    #[diesel(sql_type = Bool)]
    is_professional: bool,
}

impl LockedUser {
    fn is_unlocked_admin(&self) -> bool {
        self.role == Role::Admin.as_str() && !self.is_locked
    }
}

/// One line of an `EXPLAIN` output.
#[derive(Debug, QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text)]
    #[diesel(column_name = "QUERY PLAN")]
    line: String,
}

/// A raw query under construction that numbers its own placeholders, so fragments and binds cannot get out of
/// step.
struct Statement {
    query: BoxedSqlQuery<'static, Pg, SqlQuery>,
    binds: usize,
}

impl Statement {
    fn new(lead: &str) -> Self {
        Self { query: diesel::sql_query(lead).into_boxed(), binds: 0 }
    }

    /// Appends fixed SQL text: never a value.
    fn sql(self, text: &str) -> Self {
        Self { query: self.query.sql(text), ..self }
    }

    /// Appends a placeholder and binds `value` to it.
    fn bind<ST, V>(self, value: V) -> Self
    where
        Pg: HasSqlType<ST>,
        V: ToSql<ST, Pg> + Send + 'static,
        ST: Send + 'static,
    {
        let binds = self.binds + 1;
        Self { query: self.query.sql(format!("${binds}")).bind::<ST, _>(value), binds }
    }
}

/// `prefix` as a `LIKE` pattern body that matches itself literally: the escape character, `%` and `_` are each
/// preceded by the escape character. The caller appends the `%` that makes it a prefix.
fn escape_like(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len() + 8);
    for c in prefix.chars() {
        if matches!(c, '%' | '_') || c == LIKE_ESCAPE {
            escaped.push(LIKE_ESCAPE);
        }
        escaped.push(c);
    }
    escaped
}

/// The listing of `query` as one statement after `lead` (`SELECT` or `EXPLAIN ... SELECT`).
///
/// Every condition is a fixed fragment with bound values: the roles the caller may see (none gives no rows), the
/// flag filters, the prefix over the four searched columns, and the keyset condition of the sort, whose row
/// comparison and `ORDER BY` match an index (see migration 000003) so a page is one short index range scan.
fn list_statement(lead: &str, query: &UserQuery) -> Result<Statement, PortError> {
    let roles: Vec<&'static str> = query.roles.iter().map(|role| role.as_str()).collect();
    let mut statement = Statement::new(lead)
        .sql(&format!("SELECT {USER_COLUMNS} FROM users WHERE role = ANY("))
        .bind::<Array<Text>, _>(roles)
        .sql(")");
    for (column, value) in [
        ("email_verified", query.email_verified),
        ("is_locked", query.is_locked),
        ("is_professional", query.is_professional),
    ] {
        if let Some(value) = value {
            statement = statement.sql(&format!(" AND {column} = ")).bind::<Bool, _>(value);
        }
    }
    // An empty prefix matches everyone, which is no filter at all.
    if let Some(prefix) = query.prefix.as_deref().filter(|prefix| !prefix.is_empty()) {
        let pattern = escape_like(prefix);
        statement = statement.sql(" AND (");
        for (index, column) in ["email", "nickname", "first_name", "last_name"].into_iter().enumerate() {
            let or = if index == 0 { "" } else { " OR " };
            // lower() on both sides makes the match case-insensitive with one case mapping, the database's; the
            // pattern is a constant once the value is bound, so the planner turns it into an index range.
            statement = statement
                .sql(&format!("{or}lower({column}) LIKE (lower("))
                .bind::<Text, _>(pattern.clone())
                .sql(r") || '%') ESCAPE E'\\'");
        }
        statement = statement.sql(")");
    }
    statement = match (query.sort, &query.after) {
        (_, None) => statement,
        (UserSort::CreatedAt, Some(UserCursor::CreatedAt(at, id))) => statement
            .sql(" AND (created_at, id) > (")
            .bind::<Timestamptz, _>(*at)
            .sql(", ")
            .bind::<diesel::sql_types::Uuid, _>(id.as_uuid())
            .sql(")"),
        (UserSort::CreatedAtDesc, Some(UserCursor::CreatedAt(at, id))) => statement
            .sql(" AND (created_at, id) < (")
            .bind::<Timestamptz, _>(*at)
            .sql(", ")
            .bind::<diesel::sql_types::Uuid, _>(id.as_uuid())
            .sql(")"),
        // The cursor's key is lower-cased again in SQL, so it compares exactly like the column side even if the
        // caller's lower-casing differed from the database's.
        (UserSort::Email, Some(UserCursor::Email(email, id))) => statement
            .sql(" AND (lower(email), id) > (lower(")
            .bind::<Text, _>(email.clone())
            .sql("), ")
            .bind::<diesel::sql_types::Uuid, _>(id.as_uuid())
            .sql(")"),
        (UserSort::Nickname, Some(UserCursor::Nickname(nickname, id))) => statement
            .sql(" AND (lower(nickname), id) > (lower(")
            .bind::<Text, _>(nickname.clone())
            .sql("), ")
            .bind::<diesel::sql_types::Uuid, _>(id.as_uuid())
            .sql(")"),
        // The service refuses such a cursor before asking; reaching here is a bug, not a request to start over.
        (sort, Some(_)) => {
            return Err(PortError::Unknown(anyhow::anyhow!(
                "a user listing sorted by {} was given a cursor of another order",
                sort.as_str()
            )));
        }
    };
    let order = match query.sort {
        UserSort::CreatedAt => " ORDER BY created_at, id",
        UserSort::CreatedAtDesc => " ORDER BY created_at DESC, id DESC",
        UserSort::Email => " ORDER BY lower(email), id",
        UserSort::Nickname => " ORDER BY lower(nickname), id",
    };
    Ok(statement.sql(order).sql(" LIMIT ").bind::<BigInt, _>(i64::from(query.limit)))
}

/// Converts a row into a domain user; a row the domain refuses is corrupt data.
fn to_user(row: UserRow) -> Result<User, PortError> {
    User::try_from(row).map_err(PortError::Unknown)
}

impl PgRepository {
    /// Lists one page of users (see [`users_domain::ports::UserRepository::list_users`]).
    pub(crate) async fn list_users_page(&self, query: &UserQuery) -> Result<Vec<User>, PortError> {
        let statement = list_statement("", query)?;
        let mut connection = self.connection().await?;
        match statement.query.load::<UserRow>(&mut connection).await {
            // A row the domain refuses is logged and left out, so one corrupt account cannot take the whole list
            // (and every page containing it) down with it.
            Ok(rows) => Ok(rows
                .into_iter()
                .filter_map(|row| {
                    to_user(row)
                        .inspect_err(
                            |error| tracing::error!(error = %format!("{error:#}"), "skipping an unreadable user row"),
                        )
                        .ok()
                })
                .collect()),
            Err(error) => Err(query_error(error, &mut connection, "listing users")),
        }
    }

    /// The plan Postgres chooses for the listing of `query`, as `EXPLAIN (FORMAT TEXT)` prints it, from the very
    /// statement [`list_users`](users_domain::ports::UserRepository::list_users) runs. For tests that check the
    /// indexes are used.
    ///
    /// # Errors
    /// [`PortError`] when the statement cannot be built or storage fails.
    #[doc(hidden)]
    pub async fn explain_list_users(&self, query: UserQuery) -> Result<String, PortError> {
        let statement = list_statement("EXPLAIN (FORMAT TEXT) ", &query)?;
        let mut connection = self.connection().await?;
        match statement.query.load::<PlanLine>(&mut connection).await {
            Ok(lines) => Ok(lines.into_iter().map(|line| line.line).collect::<Vec<_>>().join("\n")),
            Err(error) => Err(query_error(error, &mut connection, "explaining a user listing")),
        }
    }
}

/// Runs one of the lock statements above for `id`.
async fn lock(connection: &mut AsyncPgConnection, statement: &str, id: Uuid) -> Result<Vec<LockedUser>, DieselError> {
    diesel::sql_query(statement).bind::<diesel::sql_types::Uuid, _>(id).load(connection).await
}

/// Whether any unlocked ADMIN other than `id` is among the locked rows.
fn another_unlocked_admin(locked: &[LockedUser], id: Uuid) -> bool {
    locked.iter().any(|user| user.id != id && user.is_unlocked_admin())
}

/// A port error for a row the domain would refuse, aborting the transaction.
fn corrupt(message: String) -> TxError<AdminWriteError> {
    TxError::Abort(AdminWriteError::Port(PortError::Unknown(anyhow::Error::msg(message))))
}

/// Applies `changes` to user `id` and queues `mails`, in one transaction (see
/// [`users_domain::ports::UserRepository::admin_update_user`]).
pub(crate) async fn admin_update_user(
    connection: &mut AsyncPgConnection,
    id: UserId,
    changes: &AdminChanges,
    mails: &[OutgoingMail],
    now: OffsetDateTime,
) -> Result<User, TxError<AdminWriteError>> {
    let id = id.as_uuid();
    // Only a change to the role, or a lock, can take an unlocked ADMIN away; anything else locks just its target
    // and does not wait for other administrators' writes.
    let may_remove_admin = changes.role.is_some_and(|role| role != Role::Admin) || changes.is_locked == Some(true);
    connection
        .transaction::<_, TxError<AdminWriteError>, _>(async |connection| {
            let statement = if may_remove_admin { LOCK_TARGET_AND_ADMINS_FOR_CHANGE } else { LOCK_TARGET };
            let locked = lock(connection, statement, id).await?;
            let Some(target) = locked.iter().find(|user| user.id == id) else {
                return Err(TxError::Abort(AdminWriteError::NotFound));
            };
            let current_role = Role::parse(&target.role)
                .map_err(|_| corrupt(format!("users row {id}: column role holds a value the domain refuses")))?;
            if changes.expected_role.is_some_and(|expected| expected != current_role) {
                return Err(TxError::Abort(AdminWriteError::NotFound));
            }
            let demotes = current_role == Role::Admin && changes.role.is_some_and(|role| role != Role::Admin);
            let locks = target.is_unlocked_admin() && changes.is_locked == Some(true);
            if (demotes || locks) && !another_unlocked_admin(&locked, id) {
                return Err(TxError::Abort(AdminWriteError::LastAdmin));
            }
            // The status time records when the status last changed, so granting it twice keeps the first time.
            let professional_changed =
                changes.is_professional.is_some_and(|is_professional| is_professional != target.is_professional);
            // Verifying an email promotes ANONYMOUS to AUTHENTICATED (the roles rule), also when an administrator
            // marks it verified, unless the same request sets a role of its own. Decided on the locked row.
            let promoted =
                (changes.role.is_none() && changes.email_verified == Some(true) && current_role == Role::Anonymous)
                    .then_some(Role::Authenticated);
            let changeset = (
                users::updated_at.eq(now),
                profile_changeset(&changes.profile),
                changes.role.or(promoted).map(|role| users::role.eq(role.as_str())),
                changes.is_locked.map(|is_locked| users::is_locked.eq(is_locked)),
                changes.email_verified.map(|email_verified| users::email_verified.eq(email_verified)),
                changes.is_professional.map(|is_professional| users::is_professional.eq(is_professional)),
                professional_changed.then(|| users::professional_status_updated_at.eq(Some(now))),
                changes.email.as_ref().map(|email| users::email.eq(email.as_str())),
                changes.email.is_some().then(|| users::pending_email.eq(None::<String>)),
            );
            let updated = diesel::update(users::table.find(id))
                .set(changeset)
                .returning(UserRow::as_returning())
                .get_result(connection)
                .await
                .optional();
            let row = match updated {
                Ok(Some(row)) => row,
                // The row is locked by this transaction, so it cannot have gone; no row would be a bug.
                Ok(None) => return Err(corrupt(format!("users row {id} vanished while locked"))),
                Err(error) if violated_unique_index(&error) == Some(NICKNAME_UNIQUE_INDEX) => {
                    return Err(TxError::Abort(AdminWriteError::NicknameTaken));
                }
                Err(error) if violated_unique_index(&error) == Some(EMAIL_UNIQUE_INDEX) => {
                    return Err(TxError::Abort(AdminWriteError::EmailTaken));
                }
                Err(error) => return Err(TxError::Query(error)),
            };
            if changes.email.is_some() {
                // Links mailed to the old address (or for a pending change) must not act on the new one.
                let purposes =
                    [EmailTokenPurpose::Verify, EmailTokenPurpose::EmailChange, EmailTokenPurpose::PasswordReset];
                drop_email_tokens(connection, id, &purposes).await?;
            }
            if let Some(token) = &changes.email_token {
                issue_token_in_transaction(connection, token).await?;
            }
            for mail in mails {
                insert_mail(connection, mail).await?;
            }
            User::try_from(row).map_err(|error| TxError::Abort(AdminWriteError::Port(PortError::Unknown(error))))
        })
        .await
}

/// Deletes user `id` unless it is the last unlocked ADMIN (see
/// [`users_domain::ports::UserRepository::admin_delete_user`]).
pub(crate) async fn admin_delete_user(
    connection: &mut AsyncPgConnection,
    id: UserId,
    expected_role: Option<Role>,
) -> Result<(), TxError<AdminWriteError>> {
    let id = id.as_uuid();
    connection
        .transaction::<_, TxError<AdminWriteError>, _>(async |connection| {
            let locked = lock(connection, LOCK_TARGET_AND_ADMINS_FOR_DELETE, id).await?;
            let Some(target) = locked.iter().find(|user| user.id == id) else {
                return Err(TxError::Abort(AdminWriteError::NotFound));
            };
            if expected_role.is_some_and(|expected| Role::parse(&target.role) != Ok(expected)) {
                return Err(TxError::Abort(AdminWriteError::NotFound));
            }
            if target.is_unlocked_admin() && !another_unlocked_admin(&locked, id) {
                return Err(TxError::Abort(AdminWriteError::LastAdmin));
            }
            // Sessions, their refresh tokens and the email tokens go with the row through ON DELETE CASCADE.
            diesel::delete(users::table.find(id)).execute(connection).await?;
            Ok(())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_makes_wildcards_and_the_escape_character_literal() {
        assert_eq!(escape_like("ada"), "ada");
        assert_eq!(escape_like("50%_off"), r"50\%\_off");
        assert_eq!(escape_like(r"back\slash"), r"back\\slash");
        assert_eq!(escape_like("o'brien"), "o'brien", "quotes need no escaping: the value is bound");
    }

    #[test]
    fn the_listing_binds_every_value_and_orders_by_the_sort_key_and_id() {
        let query = UserQuery {
            limit: 20,
            sort: UserSort::Email,
            after: Some(UserCursor::Email("x'; DROP TABLE users; --".to_owned(), UserId::generate())),
            prefix: Some("o'b%".to_owned()),
            roles: vec![Role::Anonymous, Role::Authenticated],
            email_verified: Some(true),
            is_locked: None,
            is_professional: Some(false),
        };
        let statement = list_statement("", &query).unwrap();
        let sql = diesel::debug_query::<Pg, _>(&statement.query).to_string();
        let text = sql.split(" -- binds: ").next().unwrap();
        assert!(!text.contains("DROP") && !text.contains("o'b"), "{text}");
        assert!(text.contains("AND (lower(email), id) > (lower($8), $9)"), "{text}");
        assert!(text.contains(r"OR lower(last_name) LIKE (lower($7) || '%') ESCAPE E'\\')"), "{text}");
        assert!(text.ends_with("ORDER BY lower(email), id LIMIT $10"), "{text}");
        assert_eq!(statement.binds, 10);
    }

    #[test]
    fn a_cursor_of_another_order_is_refused() {
        let query = UserQuery {
            limit: 20,
            sort: UserSort::Nickname,
            after: Some(UserCursor::Email("ada@example.com".to_owned(), UserId::generate())),
            prefix: None,
            roles: vec![Role::Anonymous],
            email_verified: None,
            is_locked: None,
            is_professional: None,
        };
        assert!(matches!(list_statement("", &query), Err(PortError::Unknown(_))));
    }
}
