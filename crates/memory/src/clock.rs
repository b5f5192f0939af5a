//! A clock a test moves by hand.

use std::sync::{Arc, Mutex, PoisonError};

use time::{Duration, OffsetDateTime};
use users_domain::ports::Clock;

/// A [`Clock`] that a test moves by hand; clones share the time.
///
/// [`ManualClock::at`] makes a frozen clock, which only moves when told. [`ManualClock::starting_now`] makes one
/// that follows the system clock, shifted by whatever [`ManualClock::advance`] and [`ManualClock::set`] say, so
/// an embedding application's tokens and blocks do expire while a test can still jump ahead.
#[derive(Debug, Clone)]
pub struct ManualClock {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Always this time.
    Frozen(OffsetDateTime),
    /// The system time plus this shift.
    Following(Duration),
}

impl ManualClock {
    /// A frozen clock at `at`, truncated to whole microseconds (what Postgres keeps), so values read back compare
    /// equal.
    #[must_use]
    pub fn at(at: OffsetDateTime) -> Self {
        Self { state: Arc::new(Mutex::new(State::Frozen(truncate(at)))) }
    }

    /// A clock that follows the system time.
    #[must_use]
    pub fn starting_now() -> Self {
        Self { state: Arc::new(Mutex::new(State::Following(Duration::ZERO))) }
    }

    /// Sets the time (a following clock goes on from there).
    pub fn set(&self, at: OffsetDateTime) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        *state = match *state {
            State::Frozen(_) => State::Frozen(truncate(at)),
            State::Following(_) => State::Following(at - OffsetDateTime::now_utc()),
        };
    }

    /// Moves the time on by `by`.
    pub fn advance(&self, by: Duration) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        *state = match *state {
            State::Frozen(now) => State::Frozen(truncate(now + by)),
            State::Following(shift) => State::Following(shift + by),
        };
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        match *self.state.lock().unwrap_or_else(PoisonError::into_inner) {
            State::Frozen(now) => now,
            State::Following(shift) => truncate(OffsetDateTime::now_utc() + shift),
        }
    }
}

fn truncate(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_nanosecond(at.nanosecond() / 1000 * 1000).unwrap_or(at)
}
