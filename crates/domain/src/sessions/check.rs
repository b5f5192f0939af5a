//! The throttled password check shared by login and every route that asks for the current password.

use crate::ports::{Clock as _, LoginThrottle as _, PasswordHasher as _, PortError, Ports};
use crate::service::Service;
use crate::throttle::{Checked, Turn, blocked_for};
use crate::user::PasswordHash;

impl<P: Ports> Service<P> {
    /// Checks `candidate` (NFKC) against `hash` (`None`: no such account, checked against a dummy) on the
    /// per-account backoff of `key`: refused while the key is blocked, a wrong password counted as a failure, a
    /// right one clearing the count.
    pub(crate) async fn check_password_throttled(
        &self,
        key: String,
        candidate: String,
        hash: Option<PasswordHash>,
    ) -> Result<Checked, PortError> {
        let throttle = self.ports.throttle();
        let mut interest = self.attempts.join(&key);
        let count = loop {
            interest.look();
            let count = throttle.login_failures(key.clone()).await?;
            if let Some(retry_after) = blocked_for(count.as_ref(), self.ports.clock().now()) {
                return Ok(Checked::Blocked { retry_after });
            }
            match interest.try_start(count.map_or(0, |count| count.failures)) {
                Turn::Start => break count,
                // A running check ends (or a waiter leaves) before the count can change: look again then.
                Turn::Wait(ended) => ended.notified().await,
                Turn::ReadAgain => {}
            }
        };
        if self.ports.hasher().verify(candidate, hash).await? {
            if count.is_some() {
                throttle.clear_login_failures(key).await?;
            }
            Ok(Checked::Matches)
        } else {
            throttle.record_login_failure(key, self.ports.clock().now(), self.config.login_backoff).await?;
            interest.failed();
            Ok(Checked::Wrong)
        }
    }
}
