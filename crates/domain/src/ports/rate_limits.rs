//! Per-client-address request counts of the edge's rate limits, shared by every instance.
//!
//! The domain itself never limits by address (the per-account login backoff is [`super::LoginThrottle`]); the
//! HTTP edge counts requests to the routes attackers hammer through this port, so that the limit holds for all
//! instances on one database together rather than for each on its own.

use std::future::Future;
use std::net::IpAddr;

use time::{Duration, OffsetDateTime};

use super::PortError;

/// The fixed window a counted request fell into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCount {
    /// Requests counted in this window, the one just counted included.
    pub hits: u32,
    /// When the window ends and counting starts again from zero.
    pub ends_at: OffsetDateTime,
}

/// Fixed-window request counts per route and client address.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait RequestCounter: Send + Sync + 'static {
    /// Counts one request to `route` from `client` at `now`, atomically with any concurrent count: into the
    /// current window of that route and address, or, when there is none or it ended (it started `window` or more
    /// before `now`), into a new one starting at `now`. Returns the window's count and end; whether that is too
    /// many is the caller's call.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn count_request(
        &self,
        route: &'static str,
        client: IpAddr,
        now: OffsetDateTime,
        window: Duration,
    ) -> impl Future<Output = Result<WindowCount, PortError>> + Send;
}
