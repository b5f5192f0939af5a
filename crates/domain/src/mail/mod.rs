//! The mails the service sends, and the dispatcher that delivers them.
//!
//! Which mail goes out when is a business rule, so the mails are decided in the domain. What they say is data:
//! [`MailTexts`] holds every mail's subject, greeting, paragraphs and button label, and [`MailLinks`] where its link
//! points, both with placeholders, so an embedder can replace them ([`MailTemplates::with_texts`],
//! [`MailTemplates::with_links`]) without touching the rules. Lifetimes in the texts come from the configuration,
//! so a mail never promises a lifetime its link does not have.
//!
//! Links are built from the configured base URL only (never from request headers); every value placed in HTML is
//! escaped, and subjects are single lines, so no user input can reach a mail header.

mod dispatcher;

use std::fmt::Write as _;

pub use dispatcher::{Dispatcher, DispatcherConfig, RoundReport};
use time::Duration;

use crate::config::ServiceConfig;
use crate::ports::OutgoingMail;
use crate::user::{EmailAddress, Nickname, UserId};

/// What one mail says. Any text may hold placeholders, replaced when the mail is rendered: `{nickname}` (the
/// recipient's nickname, where the mail knows it), `{lifetime}` (how long the mail's link works), `{new_email}`
/// (the address an email change goes to), `{count}` (how many recovery codes are left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailText {
    /// The subject line; line breaks are removed.
    pub subject: String,
    /// The first line.
    pub greeting: String,
    /// The paragraphs, each a plain-text line (HTML is escaped).
    pub paragraphs: Vec<String>,
    /// The label of the mail's link, for the mails that carry one.
    pub button: String,
}

impl MailText {
    fn new(subject: &str, greeting: &str, paragraphs: &[&str], button: &str) -> Self {
        Self {
            subject: subject.to_owned(),
            greeting: greeting.to_owned(),
            paragraphs: paragraphs.iter().map(|paragraph| (*paragraph).to_owned()).collect(),
            button: button.to_owned(),
        }
    }
}

/// Every mail the service sends, in English by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailTexts {
    /// Asks a new user to verify their address (link: verify).
    pub verify_email: MailText,
    /// Tells the owner of an address that someone tried to register it again (link: home).
    pub already_registered: MailText,
    /// Answers a registration for an address whose account was never confirmed (link: reset).
    pub finish_registration: MailText,
    /// A password reset link (link: reset).
    pub password_reset: MailText,
    /// Confirms a password change or reset (no link).
    pub password_changed: MailText,
    /// Asks the new address of an email change to confirm it (link: verify).
    pub confirm_new_email: MailText,
    /// Tells the old address that a change was requested (no link: the new address confirms).
    pub email_change_requested: MailText,
    /// Tells the old address that an administrator changed the account's email (no link).
    pub email_changed_by_admin: MailText,
    /// Congratulates a user on professional status (no link).
    pub professional_upgrade: MailText,
    /// Tells a user an administrator locked their account (no link).
    pub account_locked: MailText,
    /// Confirms that a second factor was turned on (no link).
    pub mfa_enabled: MailText,
    /// Tells a user their second factor was turned off (no link).
    pub mfa_disabled: MailText,
    /// Tells a user one of their recovery codes was used to log in; `{count}` is how many are left (no link).
    pub recovery_code_used: MailText,
    /// Tells a user an administrator turned their second factor off (no link).
    pub mfa_reset_by_admin: MailText,
    /// The line that ends every mail.
    pub signature: String,
}

impl Default for MailTexts {
    fn default() -> Self {
        Self {
            verify_email: MailText::new(
                "Verify your email address",
                "Hello {nickname},",
                &[
                    "Welcome! Please confirm that this address is yours by following the link below. It works once, for {lifetime}.",
                    "If you did not register, ignore this mail and nothing will happen.",
                ],
                "Verify my email address",
            ),
            already_registered: MailText::new(
                "You already have an account",
                "Hello,",
                &[
                    "Someone tried to create an account with this address, but you already have one.",
                    "If it was you, log in with your password, or ask for a new one if you forgot it. If it was not you, you can ignore this mail: nothing was changed.",
                ],
                "Open the service",
            ),
            finish_registration: MailText::new(
                "Finish setting up your account",
                "Hello,",
                &[
                    "Someone tried to register this address again, but an account for it already exists and was never confirmed. If it is yours, choose your password with the link below: that confirms the address and replaces any password set before. The link works once, for {lifetime}.",
                    "If you did not ask for this, ignore this mail.",
                ],
                "Choose my password",
            ),
            password_reset: MailText::new(
                "Reset your password",
                "Hello,",
                &[
                    "Someone asked to reset the password of the account with this address. The link below works once, for {lifetime}, and logs out every device.",
                    "If it was not you, ignore this mail: your password stays as it is.",
                ],
                "Choose a new password",
            ),
            password_changed: MailText::new(
                "Your password was changed",
                "Hello,",
                &[
                    "The password of your account was just changed, and your other sessions were logged out.",
                    "If you did not do this, reset your password at once and contact an administrator.",
                ],
                "",
            ),
            confirm_new_email: MailText::new(
                "Confirm your new email address",
                "Hello,",
                &[
                    "Please confirm that this address should become the email of your account. The link works once, for {lifetime}; until then your old address keeps working.",
                ],
                "Confirm my new address",
            ),
            email_change_requested: MailText::new(
                "Your email address is being changed",
                "Hello,",
                &[
                    "A change of your account's email address to {new_email} was requested. It takes effect when the new address confirms it; until then this address keeps working.",
                    "If you did not ask for this, change your password at once.",
                ],
                "",
            ),
            email_changed_by_admin: MailText::new(
                "Your email address was changed",
                "Hello,",
                &[
                    "An administrator changed your account's email address to {new_email}. From now on you log in with that address, and mail about your account goes there.",
                    "If you did not expect this, contact an administrator.",
                ],
                "",
            ),
            professional_upgrade: MailText::new(
                "You now have professional status",
                "Hello {nickname},",
                &["Your account has been upgraded to professional status."],
                "",
            ),
            account_locked: MailText::new(
                "Your account has been locked",
                "Hello,",
                &[
                    "An administrator has locked your account. You cannot log in or use the service until it is unlocked; contact an administrator if you think this is a mistake.",
                ],
                "",
            ),
            mfa_enabled: MailText::new(
                "Two-step login is on",
                "Hello,",
                &[
                    "Logging in to your account now needs a code from your authenticator app after your password. Keep your recovery codes somewhere safe: each lets you in once if you lose the app.",
                    "If you did not do this, reset your password at once and contact an administrator.",
                ],
                "",
            ),
            mfa_disabled: MailText::new(
                "Two-step login is off",
                "Hello,",
                &[
                    "The second factor of your account was turned off: logging in needs only your password now.",
                    "If you did not do this, reset your password at once and contact an administrator.",
                ],
                "",
            ),
            recovery_code_used: MailText::new(
                "A recovery code was used to log in",
                "Hello,",
                &[
                    "Someone logged in to your account with one of your recovery codes. You have {count} left; you can make new ones from your account.",
                    "If it was not you, reset your password at once and contact an administrator.",
                ],
                "",
            ),
            mfa_reset_by_admin: MailText::new(
                "An administrator turned off your two-step login",
                "Hello,",
                &[
                    "An administrator turned off the second factor of your account: logging in needs only your password until you set it up again.",
                    "If you did not ask for this, contact an administrator.",
                ],
                "",
            ),
            signature: "user-management".to_owned(),
        }
    }
}

/// Where the links in mails point, as patterns: `{base}` is the configured base URL (without a trailing slash),
/// `{user_id}` and `{token}` the link's own values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailLinks {
    /// Verification and email-change links.
    pub verify: String,
    /// Password reset links.
    pub reset: String,
    /// The service's front page.
    pub home: String,
}

impl Default for MailLinks {
    fn default() -> Self {
        Self {
            verify: "{base}/verify-email/{user_id}/{token}".to_owned(),
            reset: "{base}/password/reset?token={token}".to_owned(),
            home: "{base}/docs".to_owned(),
        }
    }
}

/// Renders the service's mails from [`MailTexts`] and [`MailLinks`], with the configured lifetimes.
///
/// ```
/// use users_domain::mail::MailTemplates;
/// use users_domain::{EmailAddress, ServiceConfig};
///
/// let config = ServiceConfig { reset_token_ttl: time::Duration::minutes(30), ..ServiceConfig::default() };
/// let mut texts = users_domain::mail::MailTexts::default();
/// texts.password_reset.subject = "Réinitialisez votre mot de passe".to_owned();
/// let mails = MailTemplates::new(&config).with_texts(texts);
/// let mail = mails.password_reset(&EmailAddress::parse("ada@example.com").unwrap(), "t0k3n");
/// assert_eq!(mail.subject, "Réinitialisez votre mot de passe");
/// assert!(mail.text.contains("for 30 minutes"));
/// assert!(mail.text.contains("http://localhost:8080/password/reset?token=t0k3n"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailTemplates {
    base_url: String,
    verify_lifetime: String,
    reset_lifetime: String,
    texts: MailTexts,
    links: MailLinks,
}

/// A lifetime in words: `24 hours`, `15 minutes`, `7 days`, `90 seconds`.
#[must_use]
pub fn lifetime_in_words(lifetime: Duration) -> String {
    let seconds = lifetime.whole_seconds();
    let (count, unit) = if seconds >= 2 * 86_400 && seconds % 86_400 == 0 {
        (seconds / 86_400, "day")
    } else if seconds >= 3600 && seconds % 3600 == 0 {
        (seconds / 3600, "hour")
    } else if seconds >= 60 && seconds % 60 == 0 {
        (seconds / 60, "minute")
    } else {
        (seconds, "second")
    };
    if count == 1 { format!("1 {unit}") } else { format!("{count} {unit}s") }
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

/// The values a mail's placeholders take.
#[derive(Default)]
struct Values<'a> {
    nickname: Option<&'a str>,
    lifetime: Option<&'a str>,
    new_email: Option<&'a str>,
    count: Option<&'a str>,
}

impl Values<'_> {
    fn fill(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (name, value) in [
            ("{nickname}", self.nickname),
            ("{lifetime}", self.lifetime),
            ("{new_email}", self.new_email),
            ("{count}", self.count),
        ] {
            if let Some(value) = value {
                out = out.replace(name, value);
            }
        }
        out
    }
}

impl MailTemplates {
    /// The default texts and links, with the base URL and lifetimes of `config`.
    #[must_use]
    pub fn new(config: &ServiceConfig) -> Self {
        Self {
            base_url: config.mail_base_url().trim_end_matches('/').to_owned(),
            verify_lifetime: lifetime_in_words(config.verify_token_ttl),
            reset_lifetime: lifetime_in_words(config.reset_token_ttl),
            texts: MailTexts::default(),
            links: MailLinks::default(),
        }
    }

    /// The same templates with other texts.
    #[must_use]
    pub fn with_texts(self, texts: MailTexts) -> Self {
        Self { texts, ..self }
    }

    /// The same templates with other links.
    #[must_use]
    pub fn with_links(self, links: MailLinks) -> Self {
        Self { links, ..self }
    }

    /// The texts in use.
    #[must_use]
    pub const fn texts(&self) -> &MailTexts {
        &self.texts
    }

    fn link(&self, pattern: &str, user_id: Option<UserId>, token: &str) -> String {
        let user_id = user_id.map(|id| id.to_string()).unwrap_or_default();
        pattern.replace("{base}", &self.base_url).replace("{user_id}", &user_id).replace("{token}", token)
    }

    /// The verification link of a registration or an email change.
    #[must_use]
    pub fn verify_link(&self, user_id: UserId, token: &str) -> String {
        self.link(&self.links.verify, Some(user_id), token)
    }

    /// The password reset link.
    #[must_use]
    pub fn reset_link(&self, token: &str) -> String {
        self.link(&self.links.reset, None, token)
    }

    fn render(&self, to: &EmailAddress, text: &MailText, values: &Values<'_>, link: Option<String>) -> OutgoingMail {
        let greeting = values.fill(&text.greeting);
        let mut plain = format!("{greeting}\n\n");
        let mut html =
            format!("<!doctype html><html><body style=\"font-family:sans-serif\"><p>{}</p>", escape_html(&greeting));
        for paragraph in &text.paragraphs {
            let paragraph = values.fill(paragraph);
            let _ = write!(plain, "{paragraph}\n\n");
            let _ = write!(html, "<p>{}</p>", escape_html(&paragraph));
        }
        if let Some(url) = link {
            let label = values.fill(&text.button);
            let _ = write!(plain, "{label}: {url}\n\n");
            let url = escape_html(&url);
            let _ = write!(html, "<p><a href=\"{url}\">{}</a></p><p>{url}</p>", escape_html(&label));
        }
        let _ = write!(plain, "-- \n{}\n", self.texts.signature);
        html.push_str("</body></html>");
        let subject = values.fill(&text.subject).replace(['\r', '\n'], " ");
        OutgoingMail { to: to.clone(), subject, text: plain, html }
    }

    /// Asks a new user to verify their address.
    #[must_use]
    pub fn verify_email(&self, to: &EmailAddress, nickname: &Nickname, user_id: UserId, token: &str) -> OutgoingMail {
        let values =
            Values { nickname: Some(nickname.as_str()), lifetime: Some(&self.verify_lifetime), ..Values::default() };
        self.render(to, &self.texts.verify_email, &values, Some(self.verify_link(user_id, token)))
    }

    /// Tells the owner of an address that someone tried to register it again (instead of revealing to the
    /// requester that the account exists).
    #[must_use]
    pub fn already_registered(&self, to: &EmailAddress) -> OutgoingMail {
        let home = self.link(&self.links.home, None, "");
        self.render(to, &self.texts.already_registered, &Values::default(), Some(home))
    }

    /// Answers a registration for an address whose account was never confirmed: the owner of the mailbox may not be
    /// whoever created it, so the way in is to set a password through this link, which also confirms the address
    /// (and cuts out a password someone else chose).
    #[must_use]
    pub fn finish_registration(&self, to: &EmailAddress, token: &str) -> OutgoingMail {
        let values = Values { lifetime: Some(&self.reset_lifetime), ..Values::default() };
        self.render(to, &self.texts.finish_registration, &values, Some(self.reset_link(token)))
    }

    /// Sends a password reset link.
    #[must_use]
    pub fn password_reset(&self, to: &EmailAddress, token: &str) -> OutgoingMail {
        let values = Values { lifetime: Some(&self.reset_lifetime), ..Values::default() };
        self.render(to, &self.texts.password_reset, &values, Some(self.reset_link(token)))
    }

    /// Confirms a password change or reset.
    #[must_use]
    pub fn password_changed(&self, to: &EmailAddress) -> OutgoingMail {
        self.render(to, &self.texts.password_changed, &Values::default(), None)
    }

    /// Asks the new address of an email change to confirm it.
    #[must_use]
    pub fn confirm_new_email(&self, to: &EmailAddress, user_id: UserId, token: &str) -> OutgoingMail {
        let values =
            Values { lifetime: Some(&self.verify_lifetime), new_email: Some(to.as_str()), ..Values::default() };
        self.render(to, &self.texts.confirm_new_email, &values, Some(self.verify_link(user_id, token)))
    }

    /// Tells the old address that a change to another address was requested (no link: the new address confirms).
    #[must_use]
    pub fn email_change_requested(&self, to: &EmailAddress, new_email: &EmailAddress) -> OutgoingMail {
        let values = Values { new_email: Some(new_email.as_str()), ..Values::default() };
        self.render(to, &self.texts.email_change_requested, &values, None)
    }

    /// Tells the old address that an administrator changed the account's email (no link).
    #[must_use]
    pub fn email_changed_by_admin(&self, to: &EmailAddress, new_email: &EmailAddress) -> OutgoingMail {
        let values = Values { new_email: Some(new_email.as_str()), ..Values::default() };
        self.render(to, &self.texts.email_changed_by_admin, &values, None)
    }

    /// Congratulates a user on professional status.
    #[must_use]
    pub fn professional_upgrade(&self, to: &EmailAddress, nickname: &Nickname) -> OutgoingMail {
        let values = Values { nickname: Some(nickname.as_str()), ..Values::default() };
        self.render(to, &self.texts.professional_upgrade, &values, None)
    }

    /// Tells a user an administrator locked their account.
    #[must_use]
    pub fn account_locked(&self, to: &EmailAddress) -> OutgoingMail {
        self.render(to, &self.texts.account_locked, &Values::default(), None)
    }

    /// Confirms that a second factor was turned on.
    #[must_use]
    pub fn mfa_enabled(&self, to: &EmailAddress) -> OutgoingMail {
        self.render(to, &self.texts.mfa_enabled, &Values::default(), None)
    }

    /// Tells a user their second factor was turned off.
    #[must_use]
    pub fn mfa_disabled(&self, to: &EmailAddress) -> OutgoingMail {
        self.render(to, &self.texts.mfa_disabled, &Values::default(), None)
    }

    /// Tells a user one of their recovery codes was used, and how many are left.
    #[must_use]
    pub fn recovery_code_used(&self, to: &EmailAddress, left: u32) -> OutgoingMail {
        let count = left.to_string();
        let values = Values { count: Some(&count), ..Values::default() };
        self.render(to, &self.texts.recovery_code_used, &values, None)
    }

    /// Tells a user an administrator turned their second factor off.
    #[must_use]
    pub fn mfa_reset_by_admin(&self, to: &EmailAddress) -> OutgoingMail {
        self.render(to, &self.texts.mfa_reset_by_admin, &Values::default(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn templates() -> MailTemplates {
        MailTemplates::new(&ServiceConfig {
            public_base_url: "https://users.example.com/".to_owned(),
            ..ServiceConfig::default()
        })
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
    fn an_app_base_url_takes_over_the_links() {
        let templates = MailTemplates::new(&ServiceConfig {
            public_base_url: "https://api.example.com".to_owned(),
            app_base_url: Some("https://app.example.com/account/".to_owned()),
            ..ServiceConfig::default()
        });
        let reset = templates.password_reset(&ada(), "abc");
        assert!(reset.text.contains("https://app.example.com/account/password/reset?token=abc"), "{}", reset.text);
        assert!(!reset.text.contains("api.example.com"));
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
    fn mails_state_the_configured_lifetimes_of_their_links() {
        let config = ServiceConfig {
            verify_token_ttl: Duration::hours(48),
            reset_token_ttl: Duration::minutes(30),
            ..ServiceConfig::default()
        };
        let templates = MailTemplates::new(&config);
        let verify = templates.verify_email(&ada(), &Nickname::parse("ada").unwrap(), UserId::generate(), "t");
        assert!(verify.text.contains("for 2 days"), "{}", verify.text);
        assert!(templates.confirm_new_email(&ada(), UserId::generate(), "t").text.contains("for 2 days"));
        assert!(templates.password_reset(&ada(), "t").text.contains("for 30 minutes"));
        assert!(templates.finish_registration(&ada(), "t").text.contains("for 30 minutes"));
        let defaults = MailTemplates::new(&ServiceConfig::default());
        assert!(defaults.password_reset(&ada(), "t").text.contains("for 15 minutes"));
        assert!(
            defaults
                .verify_email(&ada(), &Nickname::parse("ada").unwrap(), UserId::generate(), "t")
                .text
                .contains("for 24 hours")
        );
    }

    #[test]
    fn lifetimes_read_in_the_largest_whole_unit() {
        assert_eq!(lifetime_in_words(Duration::hours(24)), "24 hours");
        assert_eq!(lifetime_in_words(Duration::days(7)), "7 days");
        assert_eq!(lifetime_in_words(Duration::minutes(1)), "1 minute");
        assert_eq!(lifetime_in_words(Duration::seconds(90)), "90 seconds");
        assert_eq!(lifetime_in_words(Duration::hours(1)), "1 hour");
    }

    #[test]
    fn replaced_texts_and_links_are_used_and_still_escaped() {
        let mut texts = MailTexts::default();
        texts.account_locked.paragraphs = vec!["<b>Gesperrt</b>".to_owned()];
        let links = MailLinks { reset: "https://app.example.com/reset#{token}".to_owned(), ..MailLinks::default() };
        let templates = templates().with_texts(texts).with_links(links);
        let locked = templates.account_locked(&ada());
        assert!(locked.text.contains("<b>Gesperrt</b>"));
        assert!(locked.html.contains("&lt;b&gt;Gesperrt&lt;/b&gt;"));
        assert!(templates.password_reset(&ada(), "abc").text.contains("https://app.example.com/reset#abc"));
    }

    #[test]
    fn the_notice_to_the_old_address_carries_no_link() {
        let mail = templates().email_change_requested(&ada(), &EmailAddress::parse("new@example.com").unwrap());
        assert!(!mail.text.contains("http"));
        assert!(!mail.html.contains("href"));
    }
}
