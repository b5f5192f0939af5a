//! Hot reads whose SQL text is written once per process instead of once per execution.
//!
//! diesel-async turns a query into SQL text on every execution, walking the whole query (every selected column)
//! once to write the text and once more to collect the bound values, even when the prepared statement is already
//! cached on the connection. For the read behind every authenticated request (a session joined to its user, some
//! thirty columns) those two walks were about a tenth of the server's samples in a profile under `GET /me`.
//!
//! A [`KeyedRead`] names such a read by its diesel query, so the text still comes from `schema.rs` and the row
//! types, never from hand-written SQL. The first execution writes that query's text once and splits it around its
//! only placeholder; every execution then copies the two halves and binds the one key instead of walking every
//! selected column (diesel-async still assembles and copies that text, and still runs its cheap passes for the bind
//! and the cache). The statement keeps a static query id of its own (the marker type), so the connection's
//! statement cache prepares it once per connection, as it does the diesel query.

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::OnceLock;

use diesel::QueryResult;
use diesel::pg::{Pg, PgQueryBuilder};
use diesel::query_builder::{AstPass, Query, QueryBuilder as _, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::HasSqlType;

/// A read with one bound key, as a diesel query. Each implementor is its own statement: a zero-sized marker type
/// whose [`text`](Self::text) keeps the statement's split text in a `static` of its own.
pub(crate) trait KeyedRead: Sized + 'static {
    /// The key's Rust type.
    type Key: ToSql<Self::KeySql, Pg> + Send + Sync + 'static;
    /// The key's SQL type.
    type KeySql: Send + 'static;
    /// The diesel query this read stands for.
    type Query: Query + QueryFragment<Pg>;

    /// The diesel query for `key`.
    fn query(key: Self::Key) -> Self::Query;

    /// The split text, written on first use by [`SplitSql::written`] with a `static` of the implementor's own.
    fn text() -> &'static WrittenSql;

    /// The statement for `key`, ready for `RunQueryDsl`.
    fn with(key: Self::Key) -> Prebuilt<Self> {
        Prebuilt { key, read: PhantomData }
    }
}

/// The SQL text of a query with one placeholder: what comes before `$1` and what comes after it, and the read it
/// was written for.
#[derive(Debug)]
pub(crate) struct SplitSql {
    read: TypeId,
    before: String,
    after: String,
}

impl SplitSql {
    /// Writes `R`'s query once into `slot` and splits it around its placeholder. A query diesel cannot write, or
    /// whose text has no placeholder or more than one, is a programming error in an implementor: it stays an error
    /// that every execution returns, and the read's test fails on it.
    pub(crate) fn written<R: KeyedRead>(slot: &'static OnceLock<WrittenSql>, sample: R::Key) -> &'static WrittenSql {
        slot.get_or_init(|| {
            let mut builder = PgQueryBuilder::default();
            R::query(sample).to_sql(&mut builder, &Pg).map_err(|error| error.to_string())?;
            let (before, after) = split(&builder.finish()).ok_or("a keyed read needs exactly one placeholder")?;
            Ok(Self { read: TypeId::of::<R>(), before, after })
        })
    }
}

/// What [`SplitSql::written`] keeps: the split text, or why it could not be written.
pub(crate) type WrittenSql = Result<SplitSql, String>;

/// `sql` around its only placeholder `$1`, or `None` when it has none or another one.
fn split(sql: &str) -> Option<(String, String)> {
    let (before, after) = sql.split_once("$1")?;
    let another = |text: &str| text.contains('$');
    let longer = after.starts_with(|c: char| c.is_ascii_digit());
    (!another(before) && !another(after) && !longer).then(|| (before.to_owned(), after.to_owned()))
}

/// One execution of the read `R` for one key.
pub(crate) struct Prebuilt<R: KeyedRead> {
    key: R::Key,
    read: PhantomData<R>,
}

impl<R: KeyedRead> QueryId for Prebuilt<R> {
    // The marker identifies the statement: two reads never share a cached prepared statement.
    type QueryId = R;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<R: KeyedRead> Query for Prebuilt<R> {
    type SqlType = <R::Query as Query>::SqlType;
}

impl<R: KeyedRead> QueryFragment<Pg> for Prebuilt<R>
where
    Pg: HasSqlType<R::KeySql>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let text =
            R::text().as_ref().map_err(|error| diesel::result::Error::QueryBuilderError(error.clone().into()))?;
        // A `static` shared by two implementors (one generic impl, or a copied one) would run another read's text
        // under this read's cache key: refused, and each read's test fails on it.
        if text.read != TypeId::of::<R>() {
            return Err(diesel::result::Error::QueryBuilderError(
                format!("the keyed read {} has no text of its own", std::any::type_name::<R>()).into(),
            ));
        }
        out.push_sql(&text.before);
        out.push_bind_param::<R::KeySql, R::Key>(&self.key)?;
        out.push_sql(&text.after);
        Ok(())
    }
}

/// Checks that `R` runs the text and binds of its diesel query for `key`, and that the text holds `condition`: the
/// test of each read.
#[cfg(test)]
pub(crate) fn assert_runs_its_query<R: KeyedRead>(key: R::Key, condition: &str)
where
    R::Key: Clone,
    Pg: HasSqlType<R::KeySql>,
{
    let prebuilt = diesel::debug_query::<Pg, _>(&R::with(key.clone())).to_string();
    let query = diesel::debug_query::<Pg, _>(&R::query(key)).to_string();
    assert_eq!(prebuilt, query);
    assert!(prebuilt.contains(condition), "{prebuilt}");
}

#[cfg(test)]
mod tests {
    use diesel::prelude::{ExpressionMethods as _, QueryDsl as _};
    use diesel::{dsl, sql_types};
    use uuid::Uuid;

    use super::*;
    use crate::schema::users;

    /// The ids of users by id: a well-formed keyed read.
    struct Ids;

    impl KeyedRead for Ids {
        type Key = Uuid;
        type KeySql = sql_types::Uuid;
        type Query = dsl::Select<dsl::Filter<users::table, dsl::Eq<users::id, Uuid>>, users::id>;

        fn query(id: Uuid) -> Self::Query {
            users::table.filter(users::id.eq(id)).select(users::id)
        }

        fn text() -> &'static WrittenSql {
            static TEXT: OnceLock<WrittenSql> = OnceLock::new();
            SplitSql::written::<Self>(&TEXT, Uuid::nil())
        }
    }

    /// A copy of [`Ids`] that wrongly hands out the text kept for `Ids`.
    struct Borrower;

    impl KeyedRead for Borrower {
        type Key = Uuid;
        type KeySql = sql_types::Uuid;
        type Query = <Ids as KeyedRead>::Query;

        fn query(id: Uuid) -> Self::Query {
            Ids::query(id)
        }

        fn text() -> &'static WrittenSql {
            Ids::text()
        }
    }

    /// A read that ignores its key, so its text has no placeholder.
    struct Keyless;

    impl KeyedRead for Keyless {
        type Key = Uuid;
        type KeySql = sql_types::Uuid;
        type Query = dsl::Select<users::table, users::id>;

        fn query(_: Uuid) -> Self::Query {
            users::table.select(users::id)
        }

        fn text() -> &'static WrittenSql {
            static TEXT: OnceLock<WrittenSql> = OnceLock::new();
            SplitSql::written::<Self>(&TEXT, Uuid::nil())
        }
    }

    fn written<R: KeyedRead<Key = Uuid, KeySql = sql_types::Uuid>>(key: Uuid) -> QueryResult<String> {
        let mut builder = PgQueryBuilder::default();
        R::with(key).to_sql(&mut builder, &Pg)?;
        Ok(builder.finish())
    }

    #[test]
    fn a_read_writes_the_text_of_its_query() {
        assert_runs_its_query::<Ids>(Uuid::from_u128(7), r#""users"."id" = $1"#);
        assert_eq!(
            written::<Ids>(Uuid::nil()).unwrap(),
            r#"SELECT "users"."id" FROM "users" WHERE ("users"."id" = $1)"#
        );
    }

    #[test]
    fn a_read_that_hands_out_another_reads_text_is_refused() {
        let error = written::<Borrower>(Uuid::nil()).unwrap_err();
        assert!(error.to_string().contains("Borrower"), "{error}");
    }

    #[test]
    fn a_read_without_a_placeholder_is_refused_on_every_execution() {
        for _ in 0..2 {
            let error = written::<Keyless>(Uuid::nil()).unwrap_err();
            assert!(error.to_string().contains("exactly one placeholder"), "{error}");
        }
    }

    #[test]
    fn a_query_splits_around_its_only_placeholder() {
        let (before, after) = split("SELECT a FROM t WHERE (t.id = $1) LIMIT 1").unwrap();
        assert_eq!(before, "SELECT a FROM t WHERE (t.id = ");
        assert_eq!(after, ") LIMIT 1");
    }

    #[test]
    fn no_placeholder_or_a_second_one_is_refused() {
        assert!(split("SELECT 1").is_none());
        assert!(split("SELECT a FROM t WHERE t.id = $1 AND t.b = $2").is_none());
        assert!(split("SELECT a FROM t WHERE t.id = $1 OR t.id = $1").is_none());
        assert!(split("SELECT a FROM t WHERE t.id = $10").is_none());
    }
}
