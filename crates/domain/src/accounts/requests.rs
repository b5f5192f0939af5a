//! Forgotten passwords and verification resends: the request only queues it, the same work whatever the address;
//! the worker looks the address up later and mails what the account calls for, or nothing.

use time::Duration;

use crate::audit::{ClientInfo, EventType};
use crate::ports::{
    AccountRequestKind, AccountRequests as _, EmailTokenPurpose, PortError, Ports, UpdateError, UserStore as _,
    UserUpdate,
};
use crate::service::Service;
use crate::user::EmailAddress;

/// How long a worker holds a claimed request before another may take it over.
const ACCOUNT_REQUEST_LEASE: Duration = Duration::minutes(2);

impl<P: Ports> Service<P> {
    /// Asks for a fresh verification link for the address. The request only queues it, so neither the answer nor
    /// its timing tells whether an account exists; the worker sends the link when the address has an unverified
    /// account.
    ///
    /// # Errors
    /// [`PortError`] when a dependency fails.
    pub async fn resend_verification(&self, email: EmailAddress) -> Result<(), PortError> {
        self.ports.requests().queue_account_request(AccountRequestKind::Verification, email, self.now()).await
    }

    /// Asks for a password reset link for the address. Like [`Self::resend_verification`], the request only
    /// queues it; the worker mails the link when the address has an account.
    ///
    /// # Errors
    /// [`PortError`] when a dependency fails.
    pub async fn forgot_password(&self, email: EmailAddress) -> Result<(), PortError> {
        self.ports.requests().queue_account_request(AccountRequestKind::PasswordReset, email, self.now()).await
    }

    /// Handles up to `limit` queued requests: looks each address up, and issues the token and queues the mail the
    /// account calls for, or nothing. Returns how many were claimed. A request whose handling fails stays queued
    /// and is taken up again when its claim expires; the others go on.
    ///
    /// # Errors
    /// The first [`PortError`] met.
    pub async fn handle_account_requests(&self, limit: u32) -> Result<usize, PortError> {
        let requests = self.ports.requests();
        let claimed = requests.claim_account_requests(self.now(), limit, ACCOUNT_REQUEST_LEASE).await?;
        let mut first_error = None;
        for request in &claimed {
            let handled = match request.kind {
                AccountRequestKind::PasswordReset => {
                    self.mail_link(request.email.clone(), EmailTokenPurpose::PasswordReset).await
                }
                AccountRequestKind::Verification => {
                    self.mail_link(request.email.clone(), EmailTokenPurpose::Verify).await
                }
            };
            let finished = match handled {
                Ok(()) => requests.finish_account_request(request.id).await,
                Err(error) => Err(error),
            };
            if let Err(error) = finished {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(claimed.len()), Err)
    }

    /// Mails a fresh link of `purpose` when the address has an account that calls for one (any account for a
    /// reset, an unverified one for a verification); otherwise does nothing. The new link replaces the older one.
    async fn mail_link(&self, email: EmailAddress, purpose: EmailTokenPurpose) -> Result<(), PortError> {
        let Some(user) = self.ports.users().find_user_by_email(email).await? else { return Ok(()) };
        if purpose == EmailTokenPurpose::Verify && user.email_verified {
            return Ok(());
        }
        let now = self.now();
        let (secret, token) = self.email_token(user.id, purpose, None, now);
        let mail = if purpose == EmailTokenPurpose::Verify {
            self.mails.verify_email(&user.email, &user.nickname, user.id, secret.expose())
        } else {
            self.mails.password_reset(&user.email, secret.expose())
        };
        let mut update = UserUpdate::new(user.id, now);
        update.drop_tokens = vec![purpose];
        update.issue_token = Some(token);
        update.mails = vec![mail];
        if purpose == EmailTokenPurpose::PasswordReset {
            update.events =
                vec![self.event(EventType::PasswordResetRequested, &ClientInfo::default()).subject(user.id)];
        }
        match self.ports.users().update_user(update).await {
            Ok(_) | Err(UpdateError::NotFound) => Ok(()),
            Err(UpdateError::Port(error)) => Err(error),
            Err(other) => Err(PortError::Unknown(anyhow::Error::new(other))),
        }
    }
}
