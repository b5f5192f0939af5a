//! Per-client-IP rate limits on the routes attackers hammer: login (both steps), register, forgot-password and
//! resend.
//!
//! A fixed one-minute window per (route, client address), counted in Postgres through the
//! [`RequestCounter`] port, so the limit holds for every instance on one database together: two instances do not
//! allow twice the limit. Counting is one upsert, one round trip per limited request. When the count cannot be
//! taken because the database is unreachable, the request is answered 503: the routes limited here need the
//! database anyway. `RATE_LIMITS=off` turns it off for load tests.
//!
//! An IPv6 client is counted by its /64 network, not its full address: a /64 is what one subscriber is usually
//! given and what one host can pick any address from, so counting single IPv6 addresses would hand every attacker
//! 2^64 budgets. An IPv4 address mapped into IPv6 counts as the IPv4 address it is.

use std::net::{IpAddr, Ipv6Addr};

use time::{Duration, OffsetDateTime};
use users_domain::ports::RequestCounter;

use crate::error::ApiError;

/// The length of a window.
pub const WINDOW: Duration = Duration::minutes(1);

/// The prefix length an IPv6 client is counted by.
const IPV6_CLIENT_PREFIX: u32 = 64;

/// What a client address is counted as (see the module docs): an IPv4 address as it is, an IPv6 one as its /64.
#[must_use]
pub fn counted_as(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or_else(
            || {
                let mask = u128::MAX << (128 - IPV6_CLIENT_PREFIX);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            },
            IpAddr::V4,
        ),
    }
}

/// The limiter's settings, shared by all workers; the counts live behind the port.
#[derive(Debug, Clone, Copy)]
pub struct RateLimiter {
    per_minute: Option<u32>,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` requests per route and address, or none at all when `enabled` is false.
    #[must_use]
    pub const fn new(enabled: bool, per_minute: u32) -> Self {
        Self { per_minute: if enabled { Some(per_minute) } else { None } }
    }

    /// Counts a request to `route` from `ip` (as [`counted_as`] groups it) at `now` in `counter`. Nothing is
    /// counted when limits are off or the request has no client address.
    ///
    /// # Errors
    /// 429 `rate_limited` with `Retry-After` (the rest of the window) once the address used up its minute; 503
    /// when the count cannot be taken because the database is unreachable (500 for any other failure).
    pub async fn check(
        &self,
        counter: &impl RequestCounter,
        now: OffsetDateTime,
        route: &'static str,
        ip: Option<IpAddr>,
    ) -> Result<(), ApiError> {
        let (Some(limit), Some(ip)) = (self.per_minute, ip) else { return Ok(()) };
        let counted = counter.count_request(route, counted_as(ip), now, WINDOW).await?;
        if counted.hits <= limit {
            return Ok(());
        }
        // Another instance's clock may run a little ahead and have started the window "later"; the wait
        // advertised never exceeds a window.
        let left = (counted.ends_at - now).clamp(Duration::ZERO, WINDOW);
        Err(ApiError::rate_limited(left.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use actix_web::ResponseError as _;
    use users_domain::ports::{PortError, WindowCount};

    use super::*;

    /// Per (route, address): when the window started and how many it saw.
    type Windows = HashMap<(&'static str, IpAddr), (OffsetDateTime, u32)>;

    /// Counts in memory, for the limiter's own logic; the shared counts are the Postgres adapter's, tested there.
    #[derive(Default)]
    struct Counts {
        windows: Mutex<Windows>,
        down: bool,
    }

    impl RequestCounter for Counts {
        async fn count_request(
            &self,
            route: &'static str,
            client: IpAddr,
            now: OffsetDateTime,
            window: Duration,
        ) -> Result<WindowCount, PortError> {
            if self.down {
                return Err(PortError::Unavailable(anyhow::anyhow!("switched off")));
            }
            let mut windows = self.windows.lock().unwrap();
            let (started, hits) = windows.entry((route, client)).or_insert((now, 0));
            if now - *started >= window {
                *started = now;
                *hits = 0;
            }
            *hits += 1;
            Ok(WindowCount { hits: *hits, ends_at: *started + window })
        }
    }

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::seconds(1_800_000_000 + seconds)
    }

    #[tokio::test]
    async fn each_route_and_address_gets_its_own_budget_and_the_refusal_says_how_long_to_wait() {
        let counts = Counts::default();
        let limiter = RateLimiter::new(true, 2);
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        assert!(limiter.check(&counts, at(0), "login", a).await.is_ok());
        assert!(limiter.check(&counts, at(10), "login", a).await.is_ok());
        let refused = limiter.check(&counts, at(15), "login", a).await.unwrap_err();
        assert_eq!(refused.code(), "rate_limited");
        let response = refused.error_response();
        assert_eq!(response.status().as_u16(), 429);
        assert_eq!(response.headers().get("retry-after").unwrap(), "45");
        assert!(limiter.check(&counts, at(15), "register", a).await.is_ok());
        assert!(limiter.check(&counts, at(15), "login", b).await.is_ok());
        assert!(limiter.check(&counts, at(60), "login", a).await.is_ok(), "a new window starts after a minute");
    }

    #[tokio::test]
    async fn an_ipv6_client_cannot_escape_the_limit_by_moving_within_its_slash_64() {
        let counts = Counts::default();
        let limiter = RateLimiter::new(true, 2);
        let ip = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        // One host of 2001:db8:1:2::/64 picks a fresh address, in any textual form, for every request.
        assert!(limiter.check(&counts, at(0), "login", ip("2001:db8:1:2::1")).await.is_ok());
        assert!(limiter.check(&counts, at(1), "login", ip("2001:0db8:0001:0002:ffff:0:0:9")).await.is_ok());
        let refused = limiter.check(&counts, at(2), "login", ip("2001:db8:1:2:dead:beef:1:1")).await.unwrap_err();
        assert_eq!(refused.code(), "rate_limited");
        // Another /64 has its own budget.
        assert!(limiter.check(&counts, at(2), "login", ip("2001:db8:1:3::1")).await.is_ok());
        // An IPv4 address counts the same whether it comes plain or mapped into IPv6.
        assert!(limiter.check(&counts, at(0), "login", ip("192.0.2.7")).await.is_ok());
        assert!(limiter.check(&counts, at(1), "login", ip("::ffff:192.0.2.7")).await.is_ok());
        assert!(limiter.check(&counts, at(2), "login", ip("::ffff:c000:207")).await.is_err());
        assert!(limiter.check(&counts, at(2), "login", ip("192.0.2.8")).await.is_ok(), "IPv4 is not grouped");
        let stored: Vec<IpAddr> = counts.windows.lock().unwrap().keys().map(|(_, ip)| *ip).collect();
        assert!(stored.contains(&"2001:db8:1:2::".parse().unwrap()), "{stored:?}");
        assert_eq!(stored.len(), 4, "{stored:?}");
    }

    #[tokio::test]
    async fn off_means_off_and_nothing_is_counted() {
        let counts = Counts { down: true, ..Counts::default() };
        let limiter = RateLimiter::new(false, 1);
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        for _ in 0..100 {
            assert!(limiter.check(&counts, at(0), "login", a).await.is_ok());
        }
    }

    #[tokio::test]
    async fn an_unreachable_database_answers_503() {
        let counts = Counts { down: true, ..Counts::default() };
        let limiter = RateLimiter::new(true, 5);
        let refused = limiter.check(&counts, at(0), "login", Some(IpAddr::from([10, 0, 0, 1]))).await.unwrap_err();
        assert_eq!(refused.status_code().as_u16(), 503);
    }
}
