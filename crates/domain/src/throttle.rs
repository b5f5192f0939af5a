//! The per-account backoff on password (and, later, second-factor) checks.
//!
//! Failures are counted in storage, so every instance sees the same count and block. Only a wrong password is a
//! failure: an attempt still being checked is not, so concurrent correct logins never meet a block they did not
//! earn. What keeps a burst of parallel guesses from all being checked before the first failure is recorded is the
//! [`AttemptGate`]: within one process, at most `LOGIN_BACKOFF_AFTER` checks of one account run at once, and each
//! looks at the block only when its turn comes. A burst can therefore overshoot the threshold by fewer than
//! `LOGIN_BACKOFF_AFTER` checks per instance before the block stops it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use time::{Duration, OffsetDateTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::accounts::FailureCount;
use crate::ports::{Clock, PasswordHasher, PortError, TokenCodec, UserRepository};
use crate::service::Service;
use crate::user::PasswordHash;

/// Limits how many password checks of one key run at once in this process.
#[derive(Debug)]
pub(crate) struct AttemptGate {
    /// Checks of one key allowed at once.
    permits: usize,
    /// The semaphore of every key with a check running or waiting; removed when the last one leaves.
    keys: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl AttemptGate {
    /// A gate letting `permits` checks of one key run at once (at least one).
    pub(crate) fn new(permits: u32) -> Self {
        let permits = usize::try_from(permits.max(1)).unwrap_or(1).min(Semaphore::MAX_PERMITS);
        Self { permits, keys: Mutex::new(HashMap::new()) }
    }

    /// Waits for a turn to check a password of `key`; the turn ends when the returned value is dropped.
    pub(crate) async fn enter(self: &Arc<Self>, key: &str) -> Turn {
        let semaphore = {
            let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(keys.entry(key.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(self.permits))))
        };
        // The semaphore is never closed, so acquiring only fails if that invariant breaks; then the check simply
        // runs without a permit rather than failing the request.
        let permit = Arc::clone(&semaphore).acquire_owned().await.ok();
        Turn { gate: Arc::clone(self), key: key.to_owned(), semaphore: Some(semaphore), permit }
    }

    /// How many keys have a check running or waiting (for tests).
    #[cfg(test)]
    pub(crate) fn busy_keys(&self) -> usize {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// A running check's place in the [`AttemptGate`].
#[derive(Debug)]
pub(crate) struct Turn {
    gate: Arc<AttemptGate>,
    key: String,
    semaphore: Option<Arc<Semaphore>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.permit.take());
        let Some(semaphore) = self.semaphore.take() else { return };
        let mut keys = self.gate.keys.lock().unwrap_or_else(PoisonError::into_inner);
        // Clones are only taken under this lock, so two references (the map's and ours) mean nobody else is
        // running or waiting for this key.
        if Arc::strong_count(&semaphore) == 2 {
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

impl<R, H, T, C> Service<R, H, T, C>
where
    R: UserRepository,
    H: PasswordHasher,
    T: TokenCodec,
    C: Clock,
{
    /// Checks `candidate` (NFKC) against `hash` (`None`: no such account, checked against a dummy) on the
    /// per-account backoff of `key`: refused while the key is blocked, a wrong password counted as a failure, a
    /// right one clearing the count.
    pub(crate) async fn check_password_throttled(
        &self,
        key: String,
        candidate: String,
        hash: Option<PasswordHash>,
    ) -> Result<Checked, PortError> {
        let _turn = self.attempts.enter(&key).await;
        let count = self.repo.login_failures(key.clone()).await?;
        if let Some(retry_after) = blocked_for(count.as_ref(), self.clock.now()) {
            return Ok(Checked::Blocked { retry_after });
        }
        if self.hasher.verify(candidate, hash).await? {
            if count.is_some() {
                self.repo.clear_login_failures(key).await?;
            }
            Ok(Checked::Matches)
        } else {
            self.repo.record_login_failure(key, self.clock.now(), self.config.login_backoff).await?;
            Ok(Checked::Wrong)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gate_lets_only_its_permits_through_for_one_key_and_forgets_idle_keys() {
        let gate = Arc::new(AttemptGate::new(2));
        let first = gate.enter("a@example.com").await;
        let second = gate.enter("a@example.com").await;
        // Another key is not held up by the first one's turns.
        let other = gate.enter("b@example.com").await;
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), gate.enter("a@example.com")).await;
        assert!(third.is_err(), "a third concurrent check of one key must wait");
        drop(first);
        let third = gate.enter("a@example.com").await;
        assert_eq!(gate.busy_keys(), 2);
        drop((second, third, other));
        assert_eq!(gate.busy_keys(), 0);
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
