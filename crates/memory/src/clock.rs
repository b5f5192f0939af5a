//! A clock a test sets and moves by hand.

use std::sync::{Arc, Mutex, PoisonError};

use time::{Duration, OffsetDateTime};
use users_domain::ports::Clock;

/// A [`Clock`] that only moves when told; clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<OffsetDateTime>>,
}

impl ManualClock {
    /// A clock at `at`, truncated to whole microseconds (what Postgres keeps), so values read back compare equal.
    #[must_use]
    pub fn at(at: OffsetDateTime) -> Self {
        Self { now: Arc::new(Mutex::new(truncate(at))) }
    }

    /// A clock at the current time.
    #[must_use]
    pub fn starting_now() -> Self {
        Self::at(OffsetDateTime::now_utc())
    }

    /// Sets the time.
    pub fn set(&self, at: OffsetDateTime) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = truncate(at);
    }

    /// Moves the time on by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = truncate(*now + by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn truncate(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_nanosecond(at.nanosecond() / 1000 * 1000).unwrap_or(at)
}
