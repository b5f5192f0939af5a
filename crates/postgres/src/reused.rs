//! Statements that diesel would prepare anew on every execution, kept prepared on the connection instead.
//!
//! diesel-async keeps a statement prepared on its connection only when diesel calls it safe to cache, and diesel
//! calls a raw `sql_query`, every `UPDATE`, every insert of an `Insertable` struct and every upsert's `DO UPDATE`
//! unsafe: their text can vary while their Rust type stays the same, and its cache may key a statement by that
//! type. Such a statement is prepared, run and closed on every execution, which is two round trips instead of one,
//! and Postgres parses, analyses and plans its text each time. A login ran four such statements, a sign-up five, a
//! token refresh three.
//!
//! [`Reused`] runs the same query under a cache key made of its SQL text and the types of its binds instead, which
//! diesel-async's cache supports for queries without a static identity: two texts are never confused, and a text
//! seen again runs the statement prepared the first time. Two limits decide which queries are wrapped:
//!
//! - The cache keeps every text it has seen for the life of the connection, so only queries whose texts come from a
//!   small fixed set: a fixed statement, or a single-row insert whose optional columns each give one of two texts
//!   (`DEFAULT` or a placeholder; five optional columns at most, so 32 texts), or the user listing, assembled from
//!   fixed fragments into 48 texts at most whatever its input. Never a statement whose text grows with its input (a
//!   batch insert of any number of rows, a changeset of any combination of fields, such as a user's update, or SQL
//!   with values written into its text).
//! - After five executions Postgres may keep one generic plan for a prepared statement, made without the values.
//!   That is what a statement on a key wants, but a generic user listing can walk the whole table for a rare
//!   prefix or flag, so the listing is kept prepared only on its own pool's connections, whose sessions plan every
//!   execution with its values (see `users/list.rs`). The outbox's claim, run once per dispatcher round, whose
//!   `LIMIT` a generic plan would guess, stays unprepared.

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};

/// A query kept prepared on the connection under its SQL text (see the module's documentation for which).
pub(crate) struct Reused<Q>(Q);

/// Wraps a query in [`Reused`]: `diesel::update(..).set(..).reused().execute(connection)`. It overrides diesel's
/// judgement whatever the query is, so each use must meet the limits in the module's documentation.
pub(crate) trait Reuse: Sized {
    /// This query, kept prepared on the connection under its text.
    fn reused(self) -> Reused<Self> {
        Reused(self)
    }
}

impl<Q: QueryFragment<Pg>> Reuse for Q {}

impl<Q> QueryId for Reused<Q> {
    // No static identity: the cache keys the statement by its text and bind types.
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Reused<Q> {
    type SqlType = Q::SqlType;
}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Reused<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use diesel::QueryableByName;
    use diesel::prelude::{ExpressionMethods as _, QueryDsl as _};
    use diesel::sql_types::{BigInt, Text};
    use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
    use time::OffsetDateTime;
    use users_testkit::TestDatabase;
    use uuid::Uuid;

    use super::*;
    use crate::schema::users;

    /// An update of one user's login time: a query diesel calls unsafe to cache.
    fn update(id: Uuid) -> impl QueryFragment<Pg> + QueryId + Send {
        diesel::update(users::table.find(id)).set(users::last_login_at.eq(OffsetDateTime::UNIX_EPOCH))
    }

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }

    /// How many statements `connection` holds prepared whose text starts with `start`.
    async fn prepared(connection: &mut AsyncPgConnection, start: &str) -> i64 {
        diesel::sql_query("SELECT count(*) AS count FROM pg_prepared_statements WHERE starts_with(statement, $1)")
            .bind::<Text, _>(start)
            .get_result::<Count>(connection)
            .await
            .unwrap()
            .count
    }

    #[test]
    fn the_wrapped_query_keeps_its_text_and_binds_and_becomes_cacheable() {
        let id = Uuid::nil();
        let wrapped = diesel::debug_query::<Pg, _>(&update(id).reused()).to_string();
        assert_eq!(wrapped, diesel::debug_query::<Pg, _>(&update(id)).to_string());
        assert!(!update(id).is_safe_to_cache_prepared(&Pg).unwrap());
        assert!(update(id).reused().is_safe_to_cache_prepared(&Pg).unwrap());
        assert_eq!(<Reused<()> as QueryId>::query_id(), None, "keyed by its text, never by its Rust type");
    }

    #[tokio::test]
    async fn a_wrapped_statement_is_prepared_once_and_run_again() {
        let database = TestDatabase::create().await;
        let mut connection = AsyncPgConnection::establish(&database.url()).await.unwrap();
        let text = r#"UPDATE "users" SET "last_login_at""#;

        update(Uuid::now_v7()).execute(&mut connection).await.unwrap();
        assert_eq!(prepared(&mut connection, text).await, 0, "diesel closes the statement it would not cache");

        for _ in 0..3 {
            update(Uuid::now_v7()).reused().execute(&mut connection).await.unwrap();
        }
        assert_eq!(prepared(&mut connection, text).await, 1);

        let raw = "SELECT 1::bigint AS count WHERE $1 > 0";
        for value in 1..=3 {
            let row = diesel::sql_query(raw)
                .bind::<BigInt, _>(value)
                .reused()
                .get_result::<Count>(&mut connection)
                .await
                .unwrap();
            assert_eq!(row.count, 1);
        }
        assert_eq!(prepared(&mut connection, raw).await, 1, "a raw statement is kept too");
    }
}
