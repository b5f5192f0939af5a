//! The login backoff's storage: consecutive failures per key (a canonical email, or the hash of an input that is
//! not one), shared by every instance, and the block they earned.

use std::future::Future;

use time::{Duration, OffsetDateTime};

use super::PortError;
use crate::audit::AuditEvent;

/// Exponential backoff after repeated login failures for one email (`LOGIN_BACKOFF_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Failures allowed before the first block.
    pub after: u32,
    /// The first block's length; each further failure doubles it.
    pub base: Duration,
    /// The longest block.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self { after: 5, base: Duration::seconds(1), max: Duration::minutes(15) }
    }
}

impl BackoffPolicy {
    /// How long to block after `failures` consecutive failures; `None` while under the threshold.
    #[must_use]
    pub fn block_for(&self, failures: u32) -> Option<Duration> {
        let over = failures.checked_sub(self.after)?;
        // 2^over, saturating long before it could overflow: 2^20 seconds is already far beyond any sane maximum.
        let factor = 1_i32.checked_shl(over.min(20)).unwrap_or(i32::MAX);
        Some(self.base.saturating_mul(factor).min(self.max))
    }
}

/// The stored failures of one backoff key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureCount {
    /// Consecutive failures since the last success.
    pub failures: u32,
    /// The end of the block these failures earned, if any (possibly already past).
    pub blocked_until: Option<OffsetDateTime>,
}

/// Failure counts of the per-account login backoff.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait LoginThrottle: Send + Sync + 'static {
    /// The failure count of this key and its block, if any failure is recorded; whether the block still holds is
    /// the domain's call.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn login_failures(&self, key: String) -> impl Future<Output = Result<Option<FailureCount>, PortError>> + Send;

    /// Counts one failure for this key, atomically with any concurrent count, and when the new count is past the
    /// policy's threshold blocks the key until `now + policy.block_for(count)` (never shortening a block already in
    /// place). The policy is the domain's; the adapter applies it to the count it stored. `events` are written in
    /// the same transaction. Returns the end of the block, if any.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn record_login_failure(
        &self,
        key: String,
        now: OffsetDateTime,
        policy: BackoffPolicy,
        events: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<Option<OffsetDateTime>, PortError>> + Send;

    /// Forgets the failures of a key.
    ///
    /// # Errors
    /// [`PortError`] when storage fails.
    fn clear_login_failures(&self, key: String) -> impl Future<Output = Result<(), PortError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_after_the_threshold_doubles_and_caps() {
        let policy = BackoffPolicy::default();
        assert_eq!(policy.block_for(4), None);
        assert_eq!(policy.block_for(5), Some(Duration::seconds(1)));
        assert_eq!(policy.block_for(6), Some(Duration::seconds(2)));
        assert_eq!(policy.block_for(8), Some(Duration::seconds(8)));
        assert_eq!(policy.block_for(15), Some(Duration::minutes(15)));
        assert_eq!(policy.block_for(u32::MAX), Some(Duration::minutes(15)));
    }
}
