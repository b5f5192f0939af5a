//! The edge's per-client-address request counts: the domain's [`RequestCounter`] on the `rate_limit_windows`
//! table, so that every instance on one database counts into the same windows.
//!
//! A counted request is one statement, one round trip: an upsert that adds to the current window of its route and
//! address or, when that window has ended, starts a new one in its place, and returns the count and the window's
//! start. Concurrent counts of one row queue on its row lock and each sees the count the one before it left.

use std::net::IpAddr;

use diesel::data_types::PgInterval;
use diesel::sql_types::{Integer, Interval, Text, Timestamptz};
use diesel_async::RunQueryDsl as _;
use time::{Duration, OffsetDateTime};
use users_domain::ports::{PortError, RequestCounter, WindowCount};

use crate::errors::query_error;
use crate::repository::PgRepository;

/// Counts one request. In `DO UPDATE SET` every `w.` column is the row as it was, so both assignments decide on
/// the same old window: a window that started `$4` or more before `$3` ended, and the request opens a new one.
/// The count stops short of the column's range, so a flood can never make the statement fail.
const COUNT_REQUEST: &str = "\
    INSERT INTO rate_limit_windows AS w (route, client, window_start, hits) VALUES ($1, $2, $3, 1) \
    ON CONFLICT (route, client) DO UPDATE SET \
        window_start = CASE WHEN w.window_start <= $3 - $4 THEN $3 ELSE w.window_start END, \
        hits = CASE WHEN w.window_start <= $3 - $4 THEN 1 ELSE least(w.hits, 2147483646) + 1 END \
    RETURNING w.hits, w.window_start";

/// What the upsert returns.
#[derive(diesel::QueryableByName)]
struct Counted {
    #[diesel(sql_type = Integer)]
    hits: i32,
    #[diesel(sql_type = Timestamptz)]
    window_start: OffsetDateTime,
}

impl RequestCounter for PgRepository {
    async fn count_request(
        &self,
        route: &'static str,
        client: IpAddr,
        now: OffsetDateTime,
        window: Duration,
    ) -> Result<WindowCount, PortError> {
        let window_end = |start: OffsetDateTime| {
            start.checked_add(window).ok_or_else(|| {
                PortError::Unknown(anyhow::anyhow!("a rate-limit window of {window} runs past the calendar"))
            })
        };
        let mut connection = self.connection().await?;
        let counted = diesel::sql_query(COUNT_REQUEST)
            .bind::<Text, _>(route)
            .bind::<Text, _>(client.to_string())
            .bind::<Timestamptz, _>(now)
            .bind::<Interval, _>(interval(window))
            .get_result::<Counted>(&mut connection)
            .await;
        match counted {
            Ok(counted) => Ok(WindowCount {
                // The column's check keeps it positive.
                hits: u32::try_from(counted.hits).unwrap_or(0),
                ends_at: window_end(counted.window_start)?,
            }),
            Err(error) => Err(query_error(error, &mut connection, "counting a request for the rate limit")),
        }
    }
}

/// A duration as a Postgres interval, in microseconds (saturating: no window is anywhere near that long).
pub(crate) fn interval(duration: Duration) -> PgInterval {
    PgInterval::from_microseconds(i64::try_from(duration.whole_microseconds()).unwrap_or(i64::MAX))
}
