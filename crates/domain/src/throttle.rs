//! The per-account backoff on password (and, later, second-factor) checks.
//!
//! Failures are counted in storage, so every instance sees the same count and block. Only a wrong password is a
//! failure: an attempt still being checked is not, so concurrent correct logins never meet a block they did not
//! earn. What keeps a burst of parallel guesses from all being checked before the first failures are recorded is
//! the [`AttemptGate`]: within one process, the checks of one account running at once plus the failures already
//! counted never exceed the threshold (`LOGIN_BACKOFF_AFTER`), and once past it one check runs at a time. Further
//! attempts wait for a running check to finish, then look at the count again: after a burst of wrong guesses they
//! find the block (429), after a right password they go ahead. With several instances each has its own gate, so a
//! burst spread over N instances can be checked at most N times the threshold before the block stops it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use time::{Duration, OffsetDateTime};
use tokio::sync::Notify;

use crate::ports::FailureCount;

/// The checks of one key running in this process, and how waiters learn that one ended.
#[derive(Debug, Default)]
struct KeyState {
    /// Checks running now.
    running: u32,
    /// Wakes one waiter when a check ends (or a waiter passes its wake-up on).
    ended: Arc<Notify>,
    /// Checks running or waiting; the entry is removed when this drops to zero.
    interested: u32,
    /// Failures this process recorded for the key while the entry existed (wrapping). A waiter that read the stored
    /// count before some of them committed adds those it has not seen, so the threshold holds without a race.
    recorded: u32,
}

/// Limits how many password checks of one key run at once in this process (see the module docs).
#[derive(Debug)]
pub(crate) struct AttemptGate {
    /// Failures (counted plus running) allowed before the block: `LOGIN_BACKOFF_AFTER`.
    threshold: u32,
    /// Every key with a check running or waiting.
    keys: Mutex<HashMap<String, KeyState>>,
}

impl AttemptGate {
    /// A gate for the given threshold (at least one).
    pub(crate) fn new(threshold: u32) -> Self {
        Self { threshold: threshold.max(1), keys: Mutex::new(HashMap::new()) }
    }

    /// How many checks may run at once with `failures` already counted.
    fn capacity(&self, failures: u32) -> u32 {
        self.threshold.checked_sub(failures).filter(|left| *left > 0).unwrap_or(1)
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, KeyState>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers interest in `key`; the returned value takes it back when dropped.
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Interest {
        self.keys().entry(key.to_owned()).or_default().interested += 1;
        Interest { gate: Arc::clone(self), key: key.to_owned(), running: false, seen: 0 }
    }

    /// How many keys have a check running or waiting (for tests).
    #[cfg(test)]
    pub(crate) fn busy_keys(&self) -> usize {
        self.keys().len()
    }
}

/// What an attempt at the gate does next.
#[derive(Debug)]
pub(crate) enum Turn {
    /// Run the check now.
    Start,
    /// Wait for a running check to end (or a waiter to leave), then read the count again.
    Wait(Arc<Notify>),
    /// The count just read is stale: read it again at once.
    ReadAgain,
}

/// One attempt's place at the gate: waiting, or running once [`Interest::try_start`] succeeded. Dropping it (also
/// when the request is abandoned) ends the check and wakes the next waiter.
#[derive(Debug)]
pub(crate) struct Interest {
    gate: Arc<AttemptGate>,
    key: String,
    running: bool,
    /// `KeyState::recorded` when the stored count was last read.
    seen: u32,
}

impl Interest {
    /// Notes what this process has recorded so far; call it right before reading the stored count.
    pub(crate) fn look(&mut self) {
        let mut keys = self.gate.keys();
        self.seen = keys.entry(self.key.clone()).or_default().recorded;
    }

    /// Notes a failure this check has just recorded (after it is stored).
    pub(crate) fn failed(&self) {
        let mut keys = self.gate.keys();
        let state = keys.entry(self.key.clone()).or_default();
        state.recorded = state.recorded.wrapping_add(1);
    }

    /// Starts the check if the key has room for it with `failures` counted.
    pub(crate) fn try_start(&mut self, failures: u32) -> Turn {
        let mut keys = self.gate.keys();
        let state = keys.entry(self.key.clone()).or_default();
        // Failures recorded here after the count was read may be missing from it: count them too (counting one
        // twice only makes the gate stricter). If they reach the threshold, the stored count may hold a block the
        // read missed: read it again rather than start.
        let unseen = state.recorded.wrapping_sub(self.seen);
        let failures = failures.saturating_add(unseen);
        if unseen > 0 && failures >= self.gate.threshold {
            return Turn::ReadAgain;
        }
        let capacity = self.gate.capacity(failures);
        if state.running < capacity {
            state.running += 1;
            self.running = true;
            // More room left: let the next waiter look too.
            if state.running < capacity {
                state.ended.notify_one();
            }
            Turn::Start
        } else {
            Turn::Wait(Arc::clone(&state.ended))
        }
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        let mut keys = self.gate.keys();
        let Some(state) = keys.get_mut(&self.key) else { return };
        if self.running {
            state.running = state.running.saturating_sub(1);
        }
        state.interested = state.interested.saturating_sub(1);
        // A check ended, or a waiter left (maybe holding a wake-up meant for someone else): pass it on.
        state.ended.notify_one();
        if state.interested == 0 {
            keys.remove(&self.key);
        }
    }
}

/// The outcome of a throttled password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checked {
    /// The password is right; earlier failures are forgotten.
    Matches,
    /// The password is wrong (or there is no account); the failure is counted.
    Wrong,
    /// The key is blocked; no password was checked.
    Blocked {
        /// How long until the block ends.
        retry_after: Duration,
    },
}

/// Whether a stored failure count blocks attempts at `now`, and for how long.
pub(crate) fn blocked_for(count: Option<&FailureCount>, now: OffsetDateTime) -> Option<Duration> {
    let until = count?.blocked_until?;
    (until > now).then(|| until - now)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Turn {
        fn is_start(&self) -> bool {
            matches!(self, Self::Start)
        }

        fn is_wait(&self) -> bool {
            matches!(self, Self::Wait(_))
        }
    }

    #[test]
    fn a_key_runs_as_many_checks_as_failures_are_left_before_the_threshold_then_one_at_a_time() {
        let gate = Arc::new(AttemptGate::new(3));
        let mut first = gate.join("a@example.com");
        let mut second = gate.join("a@example.com");
        let mut third = gate.join("a@example.com");
        // One failure counted: two checks may run.
        assert!(first.try_start(1).is_start());
        assert!(second.try_start(1).is_start());
        assert!(third.try_start(1).is_wait(), "a third check must wait");
        // Another key is not held up by the first one's checks.
        let mut other = gate.join("b@example.com");
        assert!(other.try_start(0).is_start());
        drop(first);
        assert!(third.try_start(1).is_start(), "a slot freed by a finished check is taken");
        drop((second, third, other));
        assert_eq!(gate.busy_keys(), 0, "idle keys are forgotten");
        // Past the threshold (the block has ended), one check at a time.
        let mut late = gate.join("a@example.com");
        let mut later = gate.join("a@example.com");
        assert!(late.try_start(7).is_start());
        assert!(later.try_start(7).is_wait());
    }

    #[test]
    fn failures_recorded_after_a_waiter_read_the_count_still_narrow_its_room() {
        let gate = Arc::new(AttemptGate::new(2));
        let mut waiter = gate.join("a@example.com");
        // The waiter read a stored count of 0, then two checks of this process recorded failures.
        waiter.look();
        let other = gate.join("a@example.com");
        other.failed();
        other.failed();
        drop(other);
        // The stale count says 0, but this process recorded 2 since: the threshold may be reached, so read again.
        assert!(matches!(waiter.try_start(0), Turn::ReadAgain));
        waiter.look();
        assert!(waiter.try_start(2).is_start(), "with a fresh count past the threshold, one check at a time");
        let mut second = gate.join("a@example.com");
        second.look();
        let third = gate.join("a@example.com");
        third.failed();
        assert!(second.try_start(0).is_wait(), "one failure unseen plus one running leave no room under 2");
    }

    #[tokio::test]
    async fn a_waiter_is_woken_when_a_running_check_ends() {
        let gate = Arc::new(AttemptGate::new(1));
        let mut running = gate.join("a@example.com");
        assert!(running.try_start(0).is_start());
        let mut waiting = gate.join("a@example.com");
        let Turn::Wait(ended) = waiting.try_start(0) else { panic!("the second check must wait") };
        drop(running);
        ended.notified().await;
        assert!(waiting.try_start(0).is_start());
    }

    #[test]
    fn only_a_block_in_the_future_blocks() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(1);
        assert_eq!(blocked_for(None, now), None);
        let unblocked = FailureCount { failures: 3, blocked_until: None };
        assert_eq!(blocked_for(Some(&unblocked), now), None);
        let over = FailureCount { failures: 5, blocked_until: Some(now - Duration::seconds(1)) };
        assert_eq!(blocked_for(Some(&over), now), None);
        let blocked = FailureCount { failures: 5, blocked_until: Some(now + Duration::seconds(2)) };
        assert_eq!(blocked_for(Some(&blocked), now), Some(Duration::seconds(2)));
    }
}
