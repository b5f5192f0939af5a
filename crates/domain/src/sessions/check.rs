//! The throttled checks of secrets (passwords and second-factor codes) shared by login and every route that asks
//! for one: all of them count on the same per-account backoff.

use std::future::Future;

use crate::audit::{AuditEvent, EventType};
use crate::ports::{AuditTrail as _, Clock as _, LoginThrottle as _, PasswordHasher as _, PortError, Ports};
use crate::service::Service;
use crate::throttle::{Checked, Turn, blocked_for};
use crate::user::PasswordHash;

/// The outcome of a throttled check that yields a value when it passes.
#[derive(Debug)]
pub(crate) enum Throttled<T> {
    /// The secret was right.
    Passed(T),
    /// The secret was wrong; the failure is counted.
    Wrong,
    /// The key is blocked; nothing was checked.
    Blocked {
        /// How long until the block ends.
        retry_after: time::Duration,
    },
}

impl<P: Ports> Service<P> {
    /// Checks `candidate` (NFKC) against `hash` (`None`: no such account, checked against a dummy) on the
    /// per-account backoff of `key`: refused while the key is blocked, a wrong password counted as a failure, a
    /// right one clearing the count unless `clear` is false (a login that still needs its second factor). `failed`
    /// is the event a failure records (see [`Self::check_throttled`]).
    pub(crate) async fn check_password_throttled(
        &self,
        key: String,
        candidate: String,
        hash: Option<PasswordHash>,
        clear: bool,
        failed: AuditEvent,
    ) -> Result<Checked, PortError> {
        let check = async { Ok(self.ports.hasher().verify(candidate, hash).await?.then_some(())) };
        Ok(match self.check_throttled(key, clear, check, failed).await? {
            Throttled::Passed(()) => Checked::Matches,
            Throttled::Wrong => Checked::Wrong,
            Throttled::Blocked { retry_after } => Checked::Blocked { retry_after },
        })
    }

    /// Runs `check` on the per-account backoff of `key` (see [`crate::throttle`]): not at all while the key is
    /// blocked; `None` from it counts a failure; `Some` passes, clearing the count when `clear` is set.
    ///
    /// `failed` is the `login.failed` event of this attempt (who, what was checked): it is written with the counted
    /// failure, and as `login.throttled` when the key is blocked.
    pub(crate) async fn check_throttled<T>(
        &self,
        key: String,
        clear: bool,
        check: impl Future<Output = Result<Option<T>, PortError>>,
        failed: AuditEvent,
    ) -> Result<Throttled<T>, PortError> {
        let throttle = self.ports.throttle();
        let mut interest = self.attempts.join(&key);
        let count = loop {
            interest.look();
            let count = throttle.login_failures(key.clone()).await?;
            if let Some(retry_after) = blocked_for(count.as_ref(), self.ports.clock().now()) {
                let throttled = AuditEvent { kind: EventType::LoginThrottled, ..failed }
                    .detail("retry_after", retry_after.whole_seconds().max(1));
                self.ports.audit().record_events(vec![throttled]).await?;
                return Ok(Throttled::Blocked { retry_after });
            }
            match interest.try_start(count.map_or(0, |count| count.failures)) {
                Turn::Start => break count,
                // A running check ends (or a waiter leaves) before the count can change: look again then.
                Turn::Wait(ended) => ended.notified().await,
                Turn::ReadAgain => {}
            }
        };
        if let Some(value) = check.await? {
            if clear && count.is_some() {
                throttle.clear_login_failures(key).await?;
            }
            Ok(Throttled::Passed(value))
        } else {
            let events = vec![AuditEvent { kind: EventType::LoginFailed, ..failed }];
            throttle.record_login_failure(key, self.ports.clock().now(), self.config.login_backoff, events).await?;
            interest.failed();
            Ok(Throttled::Wrong)
        }
    }
}
