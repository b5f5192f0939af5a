//! [`SmtpMailer`]: delivery through an SMTP server with lettre's async transport.
//!
//! The transport is built once from an [`SmtpConfig`] and opens one connection per mail. lettre's errors are
//! sorted here into the domain's two kinds: `Unavailable` for what a later retry may fix (no connection, a
//! timeout, a 4xx reply) and `Unknown` for a refusal (a 5xx reply).
//!
//! Why no connection pool: lettre 0.11's async transport applies its timeout to connecting only, so a server
//! that accepts and then stalls would hold a send forever (lettre issue #1027). Every exchange therefore runs
//! under a deadline here, and a send cut off by it drops its connection. A pooled connection cut off that way
//! would go back to the pool in an unknown protocol state, possibly in the middle of `DATA`, where the next
//! mail's commands would end up inside the previous mail's body. A fresh connection per mail costs one handshake,
//! which the outbox's rate of mail can afford.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor};
use users_domain::ports::{Mailer, OutgoingMail, PortError};
use uuid::Uuid;

use crate::message::{compose, parse_sender};

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTlsMode {
    /// Plain text throughout: only for a mail catcher on the local machine or a trusted network.
    None,
    /// Plain connect, then a mandatory `STARTTLS` upgrade (usually port 587); the certificate is verified.
    StartTls,
    /// TLS from the first byte, "implicit TLS" (usually port 465); the certificate is verified.
    Tls,
}

/// Why a TLS mode name was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown SMTP TLS mode {0:?}: expected `none`, `starttls` or `tls`")]
pub struct ParseSmtpTlsModeError(String);

impl FromStr for SmtpTlsMode {
    type Err = ParseSmtpTlsModeError;

    /// Parses `none`, `starttls` or `tls`, ignoring case, as written in configuration.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "starttls" => Ok(Self::StartTls),
            "tls" => Ok(Self::Tls),
            _ => Err(ParseSmtpTlsModeError(raw.to_owned())),
        }
    }
}

/// Where and how to deliver mail over SMTP.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// The server's host name (checked against its certificate in the TLS modes) or IP address.
    pub host: String,
    /// The server's port.
    pub port: u16,
    /// The user to authenticate as; set together with `password`, or neither.
    pub username: Option<String>,
    /// The password; never printed by `Debug`.
    pub password: Option<String>,
    /// How the connection is secured.
    pub tls: SmtpTlsMode,
    /// The sender of every mail: a bare address or `Display Name <address>`.
    pub from: String,
    /// The longest one delivery (or [`SmtpMailer::ping`]) may take, from connecting to the server's last reply
    /// ([`SmtpConfig::DEFAULT_TIMEOUT`] unless configured).
    pub timeout: Duration,
}

impl SmtpConfig {
    /// The timeout to use when none is configured: long enough for a slow relay, short enough that the outbox
    /// worker does not sit on a dead server.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// The server when none is configured: a mail catcher on this machine.
    pub const DEFAULT_HOST: &'static str = "127.0.0.1";

    /// The port when none is configured (a mail catcher's).
    pub const DEFAULT_PORT: u16 = 1025;

    /// The transport security when none is configured: none, which suits only a local catcher.
    pub const DEFAULT_TLS: SmtpTlsMode = SmtpTlsMode::None;
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written by hand so that the password never reaches a log through a debug-printed configuration.
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("from", &self.from)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why an [`SmtpMailer`] could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum SmtpSetupError {
    /// `from` is not a mailbox.
    #[error("SMTP sender is not a valid mailbox")]
    InvalidFrom(#[source] anyhow::Error),
    /// Only one of username and password is set.
    #[error("SMTP username and password must be set together")]
    IncompleteCredentials,
    /// The TLS connector could not be set up for the host.
    #[error("cannot set up TLS for SMTP host {host:?}")]
    Tls {
        /// The configured host.
        host: String,
        /// What went wrong.
        #[source]
        source: anyhow::Error,
    },
}

/// A [`Mailer`] that delivers through an SMTP server, one connection per mail, each delivery bounded by the
/// configured timeout. Cloning is cheap.
#[derive(Clone)]
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    host: String,
    port: u16,
    tls: SmtpTlsMode,
    timeout: Duration,
}

impl SmtpMailer {
    /// Builds the transport. Nothing is sent yet: the first connection is made by the first mail (or by
    /// [`SmtpMailer::ping`]), so the service starts even while the SMTP server is down.
    ///
    /// # Errors
    /// [`SmtpSetupError`] for an invalid sender, half-set credentials or a TLS setup failure.
    pub fn new(config: SmtpConfig) -> Result<Self, SmtpSetupError> {
        let from = parse_sender(&config.from).map_err(SmtpSetupError::InvalidFrom)?;
        let credentials = match (config.username, config.password) {
            (Some(username), Some(password)) => Some(Credentials::new(username, password)),
            (None, None) => None,
            _ => return Err(SmtpSetupError::IncompleteCredentials),
        };
        let tls_error = |error| SmtpSetupError::Tls { host: config.host.clone(), source: anyhow::Error::new(error) };
        let builder = match config.tls {
            SmtpTlsMode::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host),
            SmtpTlsMode::StartTls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host).map_err(tls_error)?
            }
            SmtpTlsMode::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host).map_err(tls_error)?,
        };
        // The relay constructors default the port to 587 or 465; the configured port wins.
        let builder = builder.port(config.port).timeout(Some(config.timeout));
        let builder = match credentials {
            Some(credentials) => builder.credentials(credentials),
            None => builder,
        };
        Ok(Self {
            transport: builder.build(),
            from,
            host: config.host,
            port: config.port,
            tls: config.tls,
            timeout: config.timeout,
        })
    }

    /// Checks that the server answers: connects (with TLS and login as configured), sends `NOOP` and quits.
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when the server cannot be reached or does not answer within the timeout,
    /// [`PortError::Unknown`] when it refuses us (for example a failed login).
    pub async fn ping(&self) -> Result<(), PortError> {
        match self.within_timeout(self.transport.test_connection()).await? {
            Ok(true) => Ok(()),
            Ok(false) => Err(PortError::Unavailable(anyhow::anyhow!("the SMTP server did not answer NOOP"))),
            Err(error) => Err(classify(error)),
        }
    }

    /// Runs one exchange with the server under the configured deadline; see the module documentation for why
    /// lettre's own timeout is not enough.
    async fn within_timeout<T>(&self, exchange: impl Future<Output = T>) -> Result<T, PortError> {
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| {
            PortError::Unavailable(anyhow::anyhow!(
                "the SMTP server at {}:{} did not finish answering within {:?}",
                self.host,
                self.port,
                self.timeout
            ))
        })
    }
}

impl fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer for SmtpMailer {
    async fn send(&self, mail: OutgoingMail) -> Result<(), PortError> {
        let id = Uuid::new_v4();
        let message = compose(&self.from, &mail, id)?;
        self.within_timeout(self.transport.send(message)).await?.map_err(classify)?;
        // Neither the recipient nor the body is logged: the body carries single-use tokens.
        tracing::debug!(message_id = %id, "mail accepted by the SMTP server");
        Ok(())
    }
}

/// Sorts a lettre error into the port's two kinds.
///
/// Only a permanent (5xx) reply and a client-side failure (such as no authentication mechanism in common) are
/// refusals that a retry cannot fix. Everything else is worth retrying: a transient (4xx) reply, a refused or
/// timed-out connection, a broken TLS handshake (an expired certificate gets renewed) and a reply that cannot
/// be parsed (a server restarting, or not yet speaking SMTP on that port). The outbox gives up after N attempts,
/// so a fault that never heals still ends in the dead-letter state rather than retrying forever.
fn classify(error: lettre::transport::smtp::Error) -> PortError {
    if error.is_permanent() || error.is_client() {
        PortError::Unknown(anyhow::Error::new(error).context("the SMTP server refused the mail"))
    } else {
        PortError::Unavailable(anyhow::Error::new(error).context("the SMTP server cannot take mail now"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SmtpConfig {
        SmtpConfig {
            host: "127.0.0.1".to_owned(),
            port: 2525,
            username: Some("mailer".to_owned()),
            password: Some("hunter2-secret".to_owned()),
            tls: SmtpTlsMode::StartTls,
            from: "no-reply@example.test".to_owned(),
            timeout: SmtpConfig::DEFAULT_TIMEOUT,
        }
    }

    #[test]
    fn tls_modes_parse_from_their_configuration_names() {
        assert_eq!("none".parse(), Ok(SmtpTlsMode::None));
        assert_eq!("STARTTLS".parse(), Ok(SmtpTlsMode::StartTls));
        assert_eq!(" tls ".parse(), Ok(SmtpTlsMode::Tls));
        assert!("ssl".parse::<SmtpTlsMode>().is_err());
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let printed = format!("{:?}", config());

        assert!(!printed.contains("hunter2-secret"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
    }

    #[test]
    fn the_default_timeout_is_ten_seconds() {
        assert_eq!(SmtpConfig::DEFAULT_TIMEOUT, Duration::from_secs(10));
    }

    #[test]
    fn half_set_credentials_are_refused() {
        let config = SmtpConfig { password: None, ..config() };

        assert!(matches!(SmtpMailer::new(config), Err(SmtpSetupError::IncompleteCredentials)));
    }

    #[test]
    fn an_invalid_sender_is_refused() {
        let config = SmtpConfig { from: "nobody".to_owned(), ..config() };

        assert!(matches!(SmtpMailer::new(config), Err(SmtpSetupError::InvalidFrom(_))));
    }

    #[test]
    fn every_tls_mode_builds_without_connecting() {
        for tls in [SmtpTlsMode::None, SmtpTlsMode::StartTls, SmtpTlsMode::Tls] {
            let mailer = SmtpMailer::new(SmtpConfig { tls, ..config() }).unwrap();
            let printed = format!("{mailer:?}");
            assert!(!printed.contains("hunter2-secret"), "{printed}");
        }
    }
}
