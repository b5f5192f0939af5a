//! The mails the service sends, rendered as plain text and HTML, and the dispatcher that delivers them.
//!
//! Which mail goes out when is a business rule, so the templates live in the domain. Links are built from
//! `PUBLIC_BASE_URL` only (never from request headers); every value placed in HTML is escaped, and subjects are
//! fixed strings, so no user input can reach a mail header.

mod dispatcher;

use std::fmt::Write as _;

pub use dispatcher::{Dispatcher, DispatcherConfig, RoundReport};

use crate::config::ServiceConfig;
use crate::ports::OutgoingMail;
use crate::user::{EmailAddress, Nickname, UserId};

/// Renders the service's mails with links under one base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailTemplates {
    base_url: String,
}

/// Escapes text for HTML element content and attribute values.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One mail's content before rendering: paragraphs of text and, optionally, a link with its button label.
struct Body<'a> {
    greeting: String,
    paragraphs: Vec<String>,
    link: Option<(&'a str, String)>,
}

impl Body<'_> {
    fn render(self, to: &EmailAddress, subject: &str) -> OutgoingMail {
        let mut text = format!("{}\n\n", self.greeting);
        let mut html = format!(
            "<!doctype html><html><body style=\"font-family:sans-serif\"><p>{}</p>",
            escape_html(&self.greeting)
        );
        for paragraph in &self.paragraphs {
            let _ = write!(text, "{paragraph}\n\n");
            let _ = write!(html, "<p>{}</p>", escape_html(paragraph));
        }
        if let Some((label, url)) = &self.link {
            let _ = write!(text, "{label}: {url}\n\n");
            let url = escape_html(url);
            let _ = write!(html, "<p><a href=\"{url}\">{}</a></p><p>{url}</p>", escape_html(label));
        }
        text.push_str("-- \nuser-management\n");
        html.push_str("</body></html>");
        OutgoingMail { to: to.clone(), subject: subject.to_owned(), text, html }
    }
}

impl MailTemplates {
    /// Templates whose links start with the configured `public_base_url`.
    #[must_use]
    pub fn new(config: &ServiceConfig) -> Self {
        Self { base_url: config.public_base_url.trim_end_matches('/').to_owned() }
    }

    /// The verification link of a registration or an email change.
    #[must_use]
    pub fn verify_link(&self, user_id: UserId, token: &str) -> String {
        format!("{}/verify-email/{user_id}/{token}", self.base_url)
    }

    /// The password reset link.
    #[must_use]
    pub fn reset_link(&self, token: &str) -> String {
        format!("{}/password/reset?token={token}", self.base_url)
    }

    /// Asks a new user to verify their address.
    #[must_use]
    pub fn verify_email(&self, to: &EmailAddress, nickname: &Nickname, user_id: UserId, token: &str) -> OutgoingMail {
        Body {
            greeting: format!("Hello {},", nickname.as_str()),
            paragraphs: vec![
                "Welcome! Please confirm that this address is yours by following the link below. It works once, \
                 for 24 hours."
                    .to_owned(),
                "If you did not register, ignore this mail and nothing will happen.".to_owned(),
            ],
            link: Some(("Verify my email address", self.verify_link(user_id, token))),
        }
        .render(to, "Verify your email address")
    }

    /// Tells the owner of an address that someone tried to register it again (instead of revealing to the
    /// requester that the account exists).
    #[must_use]
    pub fn already_registered(&self, to: &EmailAddress) -> OutgoingMail {
        Body {
            greeting: "Hello,".to_owned(),
            paragraphs: vec![
                "Someone tried to create an account with this address, but you already have one.".to_owned(),
                "If it was you, log in with your password, or ask for a new one if you forgot it. If it was not \
                 you, you can ignore this mail: nothing was changed."
                    .to_owned(),
            ],
            link: Some(("Open the service", format!("{}/docs", self.base_url))),
        }
        .render(to, "You already have an account")
    }

    /// Answers a registration for an address whose account was never confirmed: the owner of the mailbox may not be
    /// whoever created it, so the way in is to set a password through this link, which also confirms the address
    /// (and cuts out a password someone else chose).
    #[must_use]
    pub fn finish_registration(&self, to: &EmailAddress, token: &str) -> OutgoingMail {
        Body {
            greeting: "Hello,".to_owned(),
            paragraphs: vec![
                "Someone tried to register this address again, but an account for it already exists and was never \
                 confirmed. If it is yours, choose your password with the link below: that confirms the address and \
                 replaces any password set before. The link works once, for 15 minutes."
                    .to_owned(),
                "If you did not ask for this, ignore this mail.".to_owned(),
            ],
            link: Some(("Choose my password", self.reset_link(token))),
        }
        .render(to, "Finish setting up your account")
    }

    /// Sends a password reset link.
    #[must_use]
    pub fn password_reset(&self, to: &EmailAddress, token: &str) -> OutgoingMail {
        Body {
            greeting: "Hello,".to_owned(),
            paragraphs: vec![
                "Someone asked to reset the password of the account with this address. The link below works once, \
                 for 15 minutes, and logs out every device."
                    .to_owned(),
                "If it was not you, ignore this mail: your password stays as it is.".to_owned(),
            ],
            link: Some(("Choose a new password", self.reset_link(token))),
        }
        .render(to, "Reset your password")
    }

    /// Confirms a password change or reset.
    #[must_use]
    pub fn password_changed(&self, to: &EmailAddress) -> OutgoingMail {
        Body {
            greeting: "Hello,".to_owned(),
            paragraphs: vec![
                "The password of your account was just changed, and your other sessions were logged out.".to_owned(),
                "If you did not do this, reset your password at once and contact an administrator.".to_owned(),
            ],
            link: None,
        }
        .render(to, "Your password was changed")
    }

    /// Asks the new address of an email change to confirm it.
    #[must_use]
    pub fn confirm_new_email(&self, to: &EmailAddress, user_id: UserId, token: &str) -> OutgoingMail {
        Body {
            greeting: "Hello,".to_owned(),
            paragraphs: vec![
                "Please confirm that this address should become the email of your account. The link works once, \
                 for 24 hours; until then your old address keeps working."
                    .to_owned(),
            ],
            link: Some(("Confirm my new address", self.verify_link(user_id, token))),
        }
        .render(to, "Confirm your new email address")
    }

    /// Tells the old address that a change to another address was requested (no link: the new address confirms).
    #[must_use]
    pub fn email_change_requested(&self, to: &EmailAddress, new_email: &EmailAddress) -> OutgoingMail {
        Body {
            greeting: "Hello,".to_owned(),
            paragraphs: vec![
                format!(
                    "A change of your account's email address to {new_email} was requested. It takes effect when \
                     the new address confirms it; until then this address keeps working."
                ),
                "If you did not ask for this, change your password at once.".to_owned(),
            ],
            link: None,
        }
        .render(to, "Your email address is being changed")
    }

    /// Tells the old address that an administrator changed the account's email (no link).
    #[must_use]
    pub fn email_changed_by_admin(&self, to: &EmailAddress, new_email: &EmailAddress) -> OutgoingMail {
        Body {
            greeting: "Hello,".to_owned(),
            paragraphs: vec![
                format!(
                    "An administrator changed your account's email address to {new_email}. From now on you log in                      with that address, and mail about your account goes there."
                ),
                "If you did not expect this, contact an administrator.".to_owned(),
            ],
            link: None,
        }
        .render(to, "Your email address was changed")
    }

    /// Congratulates a user on professional status.
    #[must_use]
    pub fn professional_upgrade(&self, to: &EmailAddress, nickname: &Nickname) -> OutgoingMail {
        Body {
            greeting: format!("Hello {},", nickname.as_str()),
            paragraphs: vec!["Your account has been upgraded to professional status.".to_owned()],
            link: None,
        }
        .render(to, "You now have professional status")
    }

    /// Tells a user an administrator locked their account.
    #[must_use]
    pub fn account_locked(&self, to: &EmailAddress) -> OutgoingMail {
        Body {
            greeting: "Hello,".to_owned(),
            paragraphs: vec![
                "An administrator has locked your account. You cannot log in or use the service until it is \
                 unlocked; contact an administrator if you think this is a mistake."
                    .to_owned(),
            ],
            link: None,
        }
        .render(to, "Your account has been locked")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn templates() -> MailTemplates {
        MailTemplates::new(&ServiceConfig { public_base_url: "https://users.example.com/".to_owned(), ..ServiceConfig::default() })
    }

    fn ada() -> EmailAddress {
        EmailAddress::parse("ada@example.com").unwrap()
    }

    #[test]
    fn links_use_the_public_base_url_only() {
        let id = UserId::generate();
        let mail = templates().verify_email(&ada(), &Nickname::parse("ada").unwrap(), id, "tok");
        let link = format!("https://users.example.com/verify-email/{id}/tok");
        assert!(mail.text.contains(&link));
        assert!(mail.html.contains(&format!("href=\"{link}\"")));
        let reset = templates().password_reset(&ada(), "abc");
        assert!(reset.text.contains("https://users.example.com/password/reset?token=abc"));
    }

    #[test]
    fn user_supplied_values_are_escaped_in_html_and_subjects_are_single_lines() {
        let evil = EmailAddress::parse("a+<b>@example.com");
        assert!(evil.is_err(), "the address parser already refuses markup");
        let new_email = EmailAddress::parse("o'brien@example.com").unwrap();
        let mail = templates().email_change_requested(&ada(), &new_email);
        assert!(mail.html.contains("o&#39;brien@example.com"));
        assert!(!mail.html.contains("o'brien"));
        let all = [
            templates().verify_email(&ada(), &Nickname::parse("ada").unwrap(), UserId::generate(), "t"),
            templates().already_registered(&ada()),
            templates().password_reset(&ada(), "t"),
            templates().password_changed(&ada()),
            templates().confirm_new_email(&ada(), UserId::generate(), "t"),
            templates().email_change_requested(&ada(), &new_email),
            templates().professional_upgrade(&ada(), &Nickname::parse("ada").unwrap()),
            templates().account_locked(&ada()),
            templates().finish_registration(&ada(), "t"),
        ];
        for mail in all {
            assert!(!mail.subject.contains(['\r', '\n']));
            assert!(!mail.text.is_empty() && mail.html.starts_with("<!doctype html>"));
        }
    }

    #[test]
    fn the_notice_to_the_old_address_carries_no_link() {
        let mail = templates().email_change_requested(&ada(), &EmailAddress::parse("new@example.com").unwrap());
        assert!(!mail.text.contains("http"));
        assert!(!mail.html.contains("href"));
    }
}
