//! Per-client-IP rate limits on the routes attackers hammer: login, register, forgot-password and resend.
//!
//! A fixed one-minute window per (route, address), kept in memory: each instance limits on its own, which is what
//! a per-IP limit needs (the per-email login backoff, which must hold across instances, lives in Postgres).
//! `RATE_LIMITS=off` turns it off for load tests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;

const WINDOW: Duration = Duration::from_secs(60);

/// Entries kept before expired windows are swept, so the map cannot grow without bound under a spray of addresses.
const SWEEP_AT: usize = 10_000;

/// Requests counted per (route, client address): when the current window started, and how many it saw.
type Windows = HashMap<(&'static str, IpAddr), (Instant, u32)>;

/// The limiter shared by all workers.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: Option<u32>,
    windows: Mutex<Windows>,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` requests per route and address, or none at all when `enabled` is false.
    pub fn new(enabled: bool, per_minute: u32) -> Self {
        Self { per_minute: enabled.then_some(per_minute), windows: Mutex::new(HashMap::new()) }
    }

    /// Counts a request to `route` from `ip`.
    ///
    /// # Errors
    /// 429 `rate_limited` with `Retry-After` once the address used up its minute.
    pub fn check(&self, route: &'static str, ip: Option<IpAddr>) -> Result<(), ApiError> {
        let (Some(limit), Some(ip)) = (self.per_minute, ip) else { return Ok(()) };
        let now = Instant::now();
        // A poisoned lock only means another worker panicked mid-update; the counts are still usable.
        let mut windows = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if windows.len() >= SWEEP_AT {
            windows.retain(|_, (started, _)| now.duration_since(*started) < WINDOW);
        }
        let (started, count) = windows.entry((route, ip)).or_insert((now, 0));
        if now.duration_since(*started) >= WINDOW {
            *started = now;
            *count = 0;
        }
        if *count >= limit {
            return Err(ApiError::rate_limited(WINDOW.saturating_sub(now.duration_since(*started))));
        }
        *count += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_and_address_gets_its_own_budget() {
        let limiter = RateLimiter::new(true, 2);
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        assert!(limiter.check("login", a).is_ok());
        assert!(limiter.check("login", a).is_ok());
        let refused = limiter.check("login", a).unwrap_err();
        assert_eq!(refused.code(), "rate_limited");
        assert!(limiter.check("register", a).is_ok());
        assert!(limiter.check("login", b).is_ok());
    }

    #[test]
    fn off_means_off() {
        let limiter = RateLimiter::new(false, 1);
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        for _ in 0..100 {
            assert!(limiter.check("login", a).is_ok());
        }
    }
}
