//! Hot reads whose SQL text is written once per process instead of once per execution.
//!
//! diesel-async turns a query into SQL text on every execution, walking the whole query (every selected column)
//! once to write the text and once more to collect the bound values, even when the prepared statement is already
//! cached on the connection. For the read behind every authenticated request (a session joined to its user, some
//! thirty columns) that was about a tenth of the server's CPU per `GET /me`.
//!
//! A [`KeyedRead`] names such a read by its diesel query, so the text still comes from `schema.rs` and the row
//! types, never from hand-written SQL. The first execution writes that query's text once and splits it around its
//! only placeholder; every execution then pushes the two halves and binds the one key. The statement keeps a static
//! query id of its own (the marker type), so the connection's statement cache prepares it once per connection, as
//! it does the diesel query.

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
    fn text() -> &'static SplitSql;

    /// The statement for `key`, ready for `RunQueryDsl`.
    fn with(key: Self::Key) -> Prebuilt<Self> {
        Prebuilt { key, read: PhantomData }
    }
}

/// The SQL text of a query with one placeholder: what comes before `$1` and what comes after it.
#[derive(Debug)]
pub(crate) struct SplitSql {
    before: String,
    after: String,
}

impl SplitSql {
    /// Writes `R`'s query once into `slot` and splits it around its placeholder.
    ///
    /// # Panics
    /// When the query's text has no placeholder or more than one, or diesel cannot write it: both are programming
    /// errors in an implementor, caught by the module's tests before anything runs.
    pub(crate) fn written<R: KeyedRead>(slot: &'static OnceLock<Self>, sample: R::Key) -> &'static Self {
        slot.get_or_init(|| {
            let mut builder = PgQueryBuilder::default();
            R::query(sample).to_sql(&mut builder, &Pg).expect("diesel writes the text of a keyed read");
            Self::split(&builder.finish()).expect("a keyed read has exactly one placeholder")
        })
    }

    /// `sql` around its only placeholder `$1`, or `None` when it has none or another one.
    fn split(sql: &str) -> Option<Self> {
        let (before, after) = sql.split_once("$1")?;
        let another = |text: &str| text.contains('$');
        (!another(before) && !another(after)).then(|| Self { before: before.to_owned(), after: after.to_owned() })
    }
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
        let text = R::text();
        out.push_sql(&text.before);
        out.push_bind_param::<R::KeySql, R::Key>(&self.key)?;
        out.push_sql(&text.after);
        Ok(())
    }
}

/// The text and binds `R` runs for `key`, and those of its diesel query: a test of each read compares them.
#[cfg(test)]
pub(crate) fn both_texts<R: KeyedRead>(key: R::Key) -> (String, String)
where
    R::Key: Clone,
    Pg: HasSqlType<R::KeySql>,
{
    let prebuilt = diesel::debug_query::<Pg, _>(&R::with(key.clone())).to_string();
    let query = diesel::debug_query::<Pg, _>(&R::query(key)).to_string();
    (prebuilt, query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_splits_around_its_only_placeholder() {
        let split = SplitSql::split("SELECT a FROM t WHERE (t.id = $1) LIMIT 1").unwrap();
        assert_eq!(split.before, "SELECT a FROM t WHERE (t.id = ");
        assert_eq!(split.after, ") LIMIT 1");
    }

    #[test]
    fn no_placeholder_or_a_second_one_is_refused() {
        assert!(SplitSql::split("SELECT 1").is_none());
        assert!(SplitSql::split("SELECT a FROM t WHERE t.id = $1 AND t.b = $2").is_none());
        assert!(SplitSql::split("SELECT a FROM t WHERE t.id = $1 OR t.id = $1").is_none());
    }
}
