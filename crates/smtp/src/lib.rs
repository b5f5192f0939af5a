//! The mail adapters of user-management: two implementations of the domain's [`Mailer`](users_domain::ports::Mailer)
//! port.
//!
//! - [`SmtpMailer`] (`MAIL_BACKEND=smtp`) delivers through an SMTP server with lettre, with STARTTLS, implicit
//!   TLS or (for local mail catchers) no TLS, each delivery bounded by a timeout.
//! - [`FileMailer`] (`MAIL_BACKEND=file`, the embedded default) writes each mail as an `.eml` file under
//!   `DATA_DIR/mail` and logs the links it contains, so that local development needs no mail server.
//!
//! Both build the message with the same code (lettre's builder), so a file holds byte for byte the kind of
//! message the SMTP backend would have sent. lettre's types never leave this crate: failures become
//! [`PortError`](users_domain::ports::PortError)s, `Unavailable` when a retry later may succeed and `Unknown`
//! when the message was refused.

mod file;
mod message;
mod smtp;

pub use file::FileMailer;
pub use smtp::{ParseSmtpTlsModeError, SmtpConfig, SmtpMailer, SmtpSetupError, SmtpTlsMode};
