//! The filtered, keyset-paginated listing of users behind `GET /users`
//! ([`UserStore::list_users`](users_domain::ports::UserStore::list_users)).
//!
//! The listing is one statement assembled from fixed SQL fragments with every value bound as a parameter, from a
//! small set of texts: the flag filters are always written and fold away when unset, so only the role condition,
//! the kind of prefix, the sort and the cursor change the text (48 texts at most).
//!
//! It runs on connections of its own (see [`PgRepository`]), whose sessions plan every execution of a prepared
//! statement with its values (`plan_cache_mode = force_custom_plan`), and it is kept prepared there
//! ([`Reused`](crate::reused::Reused)): parsed once per connection and text, planned every time. Under Postgres's
//! default, a prepared statement may be switched to a generic plan, made without the values, after its fifth run,
//! and Postgres never reconsiders on that connection. A generic plan cannot use the prefix indexes (`LIKE $1` has no
//! known prefix to scan for), nor pick between the sort's index and a filter's rows, and it was measured to go wrong
//! at a million users: after five searches of prefixes that the planner misjudges, or of a page size of 100, a rare
//! prefix walked the whole table (about 390 ms instead of 0.4), and after five listings of a role nobody has, a rare
//! flag walked the whole email index (590 ms instead of 120). The setting is the session's, so the main pool's
//! statements on a key keep their plan made once.
//!
//! A prefix that needs no case mapping (ASCII without capitals, which the database's `lower()` leaves alone under
//! any locale) is bound whole as the pattern, which spares Postgres folding `lower()` and `ESCAPE` four times; any
//! other is lower-cased by that `lower()` in the statement, the database's one case mapping.

use diesel::QueryableByName;
use diesel::pg::Pg;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::serialize::ToSql;
use diesel::sql_types::{Array, BigInt, Bool, HasSqlType, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl as _;
use users_domain::permissions::Role;
use users_domain::ports::{PortError, UserCursor, UserQuery, UserSort};
use users_domain::user::User;

use crate::errors::query_error;
use crate::repository::PgRepository;
use crate::reused::Reuse as _;
use crate::rows::UserRow;
use crate::tls::session_setting;

/// The columns [`UserRow`] reads, in its order; `failed_login_count` is not part of a user.
const USER_COLUMNS: &str = "id, email, nickname, first_name, last_name, bio, profile_picture_id, \
     linkedin_profile_url, github_profile_url, role, is_professional, professional_status_updated_at, \
     email_verified, pending_email, is_locked, password_hash, created_at, updated_at, last_login_at, mfa_enabled";

/// The character that escapes `%`, `_` and itself in a prefix: the backslash, `LIKE`'s own default. A pattern
/// lower-cased in the statement names it explicitly (`ESCAPE E'\\'`, an escape-string literal, so it reads as one
/// backslash whatever `standard_conforming_strings` says); a pattern bound whole is a value, never a literal, and
/// relies on the default.
const LIKE_ESCAPE: char = '\\';

/// One line of an `EXPLAIN` output.
#[derive(Debug, QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text)]
    #[diesel(column_name = "QUERY PLAN")]
    line: String,
}

/// A user listing a connection keeps prepared, and how its executions were planned so far.
#[doc(hidden)]
#[derive(Debug, QueryableByName)]
pub struct PreparedListing {
    /// The statement's text.
    #[diesel(sql_type = Text)]
    pub text: String,
    /// Executions that ran a generic plan, made without the values.
    #[diesel(sql_type = BigInt)]
    pub generic_plans: i64,
    /// Executions planned with their values.
    #[diesel(sql_type = BigInt)]
    pub custom_plans: i64,
}

/// What one connection of a pool keeps prepared of the user listing, and how its session plans prepared statements.
#[doc(hidden)]
#[derive(Debug)]
pub struct ListingsOnConnection {
    /// Its `plan_cache_mode`.
    pub plan_cache_mode: String,
    /// The user listings it keeps prepared.
    pub prepared: Vec<PreparedListing>,
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

/// Whether the database's `lower()` leaves `prefix` as it is whatever its locale: ASCII without capitals. (A
/// capital `I` alone already lower-cases differently under a Turkish locale.)
fn needs_no_case_mapping(prefix: &str) -> bool {
    prefix.bytes().all(|byte| byte.is_ascii() && !byte.is_ascii_uppercase())
}

/// The listing of `query` as one statement after `lead` (`SELECT` or `EXPLAIN ... SELECT`).
///
/// Every condition is a fixed fragment with bound values: the roles the caller may see (none gives no rows; all four
/// give no condition), the
/// flag filters, the prefix over the four searched columns, and the keyset condition of the sort, whose row
/// comparison and `ORDER BY` match an index (see migration 000003) so a page is one short index range scan.
fn list_statement(lead: &str, query: &UserQuery) -> Result<Statement, PortError> {
    let mut statement = Statement::new(lead).sql(&format!("SELECT {USER_COLUMNS} FROM users WHERE "));
    // A caller who may see every role (an ADMIN) gets no role condition at all: `role` is NOT NULL and checked to be
    // one of the four, so the condition would hold for every row, yet it costs a comparison on each row a search
    // walks (about 15 % of a prefix search's execution at a million users).
    statement = if Role::ALL.iter().all(|role| query.roles.contains(role)) {
        statement.sql("TRUE")
    } else {
        let roles: Vec<&'static str> = query.roles.iter().map(|role| role.as_str()).collect();
        statement.sql("role = ANY(").bind::<Array<Text>, _>(roles).sql(")")
    };
    // Written whether set or not, so they do not multiply the statement's texts: planned with its values, an unset
    // filter (`col = NULL OR NULL IS NULL`) folds to nothing and a set one to `col = value`.
    for (column, value) in [
        ("email_verified", query.email_verified),
        ("is_locked", query.is_locked),
        ("is_professional", query.is_professional),
    ] {
        statement = statement
            .sql(&format!(" AND ({column} = "))
            .bind::<Nullable<Bool>, _>(value)
            .sql(" OR ")
            .bind::<Nullable<Bool>, _>(value)
            .sql("::boolean IS NULL)");
    }
    // An empty prefix matches everyone, which is no filter at all.
    if let Some(prefix) = query.prefix.as_deref().filter(|prefix| !prefix.is_empty()) {
        let pattern = escape_like(prefix);
        let bound_whole = needs_no_case_mapping(prefix);
        statement = statement.sql(" AND (");
        for (index, column) in
            ["search_email", "search_nickname", "search_first_name", "search_last_name"].into_iter().enumerate()
        {
            let or = if index == 0 { "" } else { " OR " };
            // Each `search_*` column is its column lower-cased by the database when the row was written
            // (migration `search_columns`), and the pattern is lower-cased by the same function here (or needs
            // none): case-insensitive with one case mapping, the database's, and no lower() per row looked at. The
            // pattern is a constant once the value is bound, so the planner turns it into a range of the column's
            // prefix index.
            statement = if bound_whole {
                statement.sql(&format!("{or}{column} LIKE ")).bind::<Text, _>(format!("{pattern}%"))
            } else {
                statement
                    .sql(&format!("{or}{column} LIKE (lower("))
                    .bind::<Text, _>(pattern.clone())
                    .sql(r") || '%') ESCAPE E'\\'")
            };
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

impl PgRepository {
    /// Lists one page of users (see [`users_domain::ports::UserStore::list_users`]).
    pub(crate) async fn list_users_page(&self, query: &UserQuery) -> Result<Vec<User>, PortError> {
        let statement = list_statement("", query)?;
        let mut connection = self.listing_connection().await?;
        match statement.query.reused().load::<UserRow>(&mut connection).await {
            // A row the domain refuses is logged and left out, so one corrupt account cannot take the whole list
            // (and every page containing it) down with it.
            Ok(rows) => Ok(rows
                .into_iter()
                .filter_map(|row| {
                    row.into_user()
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
    /// statement [`list_users`](users_domain::ports::UserStore::list_users) runs. For tests that check the
    /// indexes are used.
    ///
    /// # Errors
    /// [`PortError`] when the statement cannot be built or storage fails.
    #[doc(hidden)]
    pub async fn explain_list_users(&self, query: UserQuery) -> Result<String, PortError> {
        let statement = list_statement("EXPLAIN (FORMAT TEXT) ", &query)?;
        let mut connection = self.listing_connection().await?;
        match statement.query.load::<PlanLine>(&mut connection).await {
            Ok(lines) => Ok(lines.into_iter().map(|line| line.line).collect::<Vec<_>>().join("\n")),
            Err(error) => Err(query_error(error, &mut connection, "explaining a user listing")),
        }
    }

    /// What a connection of the listing's own pool (`listing_pool`) or of the main one keeps prepared of the user
    /// listing, with its session's `plan_cache_mode`. With a pool of one connection, that is the connection every
    /// listing ran on. For the tests that check listings are only ever planned with their values.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    #[doc(hidden)]
    pub async fn listings_on_connection(&self, listing_pool: bool) -> Result<ListingsOnConnection, PortError> {
        let mut connection = if listing_pool { self.listing_connection().await? } else { self.connection().await? };
        let mode = session_setting(&mut connection, "plan_cache_mode").await;
        let prepared = diesel::sql_query(
            "SELECT statement AS text, generic_plans, custom_plans FROM pg_prepared_statements \
             WHERE starts_with(statement, 'SELECT id, email, ')",
        )
        .load::<PreparedListing>(&mut connection)
        .await;
        match mode.and_then(|mode| prepared.map(|prepared| (mode, prepared))) {
            Ok((plan_cache_mode, prepared)) => Ok(ListingsOnConnection { plan_cache_mode, prepared }),
            Err(error) => Err(query_error(error, &mut connection, "reading the prepared listings")),
        }
    }
}

#[cfg(test)]
mod tests {
    use users_domain::permissions::Role;
    use users_domain::user::UserId;

    use super::*;

    #[test]
    fn escaping_makes_wildcards_and_the_escape_character_literal() {
        assert_eq!(escape_like("ada"), "ada");
        assert_eq!(escape_like("50%_off"), r"50\%\_off");
        assert_eq!(escape_like(r"back\slash"), r"back\\slash");
        assert_eq!(escape_like("o'brien"), "o'brien", "quotes need no escaping: the value is bound");
    }

    /// The listing of `prefix` with two roles, two of the three flags set and an email cursor.
    fn filtered(prefix: &str) -> UserQuery {
        UserQuery {
            limit: 20,
            sort: UserSort::Email,
            after: Some(UserCursor::Email("x'; DROP TABLE users; --".to_owned(), UserId::generate())),
            prefix: Some(prefix.to_owned()),
            roles: vec![Role::Anonymous, Role::Authenticated],
            email_verified: Some(true),
            is_locked: None,
            is_professional: Some(false),
        }
    }

    #[test]
    fn the_listing_binds_every_value_and_orders_by_the_sort_key_and_id() {
        let statement = list_statement("", &filtered("O'b%")).unwrap();
        let sql = diesel::debug_query::<Pg, _>(&statement.query).to_string();
        let text = sql.split(" -- binds: ").next().unwrap();
        assert!(!text.contains("DROP") && !text.contains("'b"), "{text}");
        assert!(text.contains("AND (lower(email), id) > (lower($12), $13)"), "{text}");
        assert!(text.contains(r"OR search_last_name LIKE (lower($11) || '%') ESCAPE E'\\')"), "{text}");
        assert!(text.ends_with("ORDER BY lower(email), id LIMIT $14"), "{text}");
        assert_eq!(statement.binds, 14);
    }

    #[test]
    fn a_prefix_without_case_mapping_is_bound_whole() {
        let statement = list_statement("", &filtered("o'b%")).unwrap();
        let sql = diesel::debug_query::<Pg, _>(&statement.query).to_string();
        let (text, binds) = sql.split_once(" -- binds: ").unwrap();
        assert!(text.contains("AND (search_email LIKE $8 OR search_nickname LIKE $9"), "{text}");
        assert!(text.contains("OR search_last_name LIKE $11) AND (lower(email), id)") && !text.contains("ESCAPE"));
        assert!(binds.contains(r#""o'b\\%%", "o'b\\%%""#), "escaped, then the wildcard: {binds}");
        assert_eq!(statement.binds, 14);
    }

    #[test]
    fn the_flag_filters_are_written_whether_set_or_not() {
        let unset = UserQuery { email_verified: None, is_professional: None, ..filtered("ada") };
        let texts = [filtered("ada"), unset].map(|query| {
            let statement = list_statement("", &query).unwrap();
            let sql = diesel::debug_query::<Pg, _>(&statement.query).to_string();
            (sql.split(" -- binds: ").next().unwrap().to_owned(), statement.binds)
        });
        assert_eq!(texts[0], texts[1], "one text whichever flags are set");
        assert!(texts[0].0.contains("AND (email_verified = $2 OR $3::boolean IS NULL)"), "{}", texts[0].0);
        assert!(texts[0].0.contains("AND (is_professional = $6 OR $7::boolean IS NULL)"), "{}", texts[0].0);
    }

    #[test]
    fn only_ascii_without_capitals_needs_no_case_mapping() {
        for prefix in ["user12", "o'b%", r"back\slash", "ada@example.com", "50_off"] {
            assert!(needs_no_case_mapping(prefix), "{prefix}");
        }
        for prefix in ["User12", "I", "é", "ÉMILE", "ı", "İ", "\u{212a}"] {
            assert!(!needs_no_case_mapping(prefix), "{prefix}");
        }
    }

    #[test]
    fn a_caller_who_sees_every_role_gets_no_role_condition_and_one_who_sees_none_gets_no_rows() {
        let query = |roles: Vec<Role>| UserQuery {
            limit: 20,
            sort: UserSort::CreatedAt,
            after: None,
            prefix: Some("user12".to_owned()),
            roles,
            email_verified: None,
            is_locked: None,
            is_professional: None,
        };
        let text = |roles| {
            let statement = list_statement("", &query(roles)).unwrap();
            (diesel::debug_query::<Pg, _>(&statement.query).to_string(), statement.binds)
        };
        let (all, binds) = text(Role::ALL.into_iter().rev().collect());
        assert!(all.contains("FROM users WHERE TRUE AND (email_verified =") && !all.contains("role ="), "{all}");
        assert_eq!(binds, 11, "three flags twice, four prefixes and the limit");
        let (some, binds) = text(vec![Role::Anonymous, Role::Authenticated, Role::Manager]);
        assert!(some.contains("WHERE role = ANY($1) AND"), "{some}");
        assert_eq!(binds, 12);
        let (none, _) = text(Vec::new());
        assert!(none.contains("WHERE role = ANY($1) AND"), "an empty list matches nothing: {none}");
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
