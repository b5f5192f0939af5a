//! Turning the domain's [`OutgoingMail`] into an RFC 5322 message, shared by both backends.
//!
//! This is the one place where headers are written, so it is also where the defence against header injection
//! lives: a subject carrying CR or LF is refused here, whatever the domain promises.

use anyhow::anyhow;
use lettre::Message;
use lettre::message::{Mailbox, MultiPart};
use users_domain::ports::{OutgoingMail, PortError};
use uuid::Uuid;

/// Parses the configured sender, which may be a bare address or `Display Name <address>`.
pub(crate) fn parse_sender(from: &str) -> Result<Mailbox, anyhow::Error> {
    from.parse::<Mailbox>().map_err(|error| anyhow::Error::new(error).context(format!("invalid sender {from:?}")))
}

/// Builds the message for `mail`, sent by `from`, with a `multipart/alternative` body (text first, so that
/// clients prefer the HTML part), a `Date` of now and the Message-ID `<id@sender-domain>`.
///
/// The id is the caller's so that it can name the mail elsewhere (the file backend uses it in the file name).
pub(crate) fn compose(from: &Mailbox, mail: &OutgoingMail, id: Uuid) -> Result<Message, PortError> {
    // lettre would encode a line break rather than pass it through, but a header must never even look like it
    // could carry an injected line, so such a mail is refused before anything is formatted.
    if mail.subject.contains(['\r', '\n']) {
        return Err(PortError::Unknown(anyhow!("refused a mail whose subject contains a line break")));
    }
    let to =
        mail.to.as_str().parse().map_err(|error| {
            PortError::Unknown(anyhow::Error::new(error).context("recipient is not a valid address"))
        })?;
    Message::builder()
        .from(from.clone())
        .to(Mailbox::new(None, to))
        .subject(mail.subject.clone())
        .date_now()
        .message_id(Some(format!("<{id}@{}>", from.email.domain())))
        .multipart(MultiPart::alternative_plain_html(mail.text.clone(), mail.html.clone()))
        .map_err(|error| PortError::Unknown(anyhow::Error::new(error).context("building the mail")))
}

#[cfg(test)]
mod tests {
    use users_domain::user::EmailAddress;

    use super::*;

    fn mail(subject: &str) -> OutgoingMail {
        OutgoingMail {
            to: EmailAddress::parse("bob@example.test").unwrap(),
            subject: subject.to_owned(),
            text: "Hello Bob".to_owned(),
            html: "<p>Hello Bob</p>".to_owned(),
        }
    }

    fn sender() -> Mailbox {
        parse_sender("User Management <no-reply@example.test>").unwrap()
    }

    #[test]
    fn a_message_carries_every_required_header_and_both_parts() {
        let id = Uuid::new_v4();
        let message = compose(&sender(), &mail("Welcome"), id).unwrap();
        let formatted = String::from_utf8(message.formatted()).unwrap();
        let (headers, body) = formatted.split_once("\r\n\r\n").unwrap();

        assert!(headers.contains("From: \"User Management\" <no-reply@example.test>\r\n"), "{headers}");
        assert!(headers.contains("To: bob@example.test\r\n"), "{headers}");
        assert!(headers.contains("Subject: Welcome\r\n"), "{headers}");
        assert!(headers.contains("\r\nDate: "), "{headers}");
        assert!(headers.contains(&format!("Message-ID: <{id}@example.test>\r\n")), "{headers}");
        assert!(headers.contains("Content-Type: multipart/alternative;"), "{headers}");
        assert!(body.contains("Content-Type: text/plain; charset=utf-8"), "{body}");
        assert!(body.contains("Content-Type: text/html; charset=utf-8"), "{body}");
        assert!(body.contains("Hello Bob") && body.contains("<p>Hello Bob</p>"), "{body}");
    }

    #[test]
    fn the_envelope_goes_from_the_sender_to_the_recipient() {
        let message = compose(&sender(), &mail("Welcome"), Uuid::new_v4()).unwrap();

        let envelope = message.envelope();
        assert_eq!(envelope.from().map(ToString::to_string).as_deref(), Some("no-reply@example.test"));
        assert_eq!(envelope.to().iter().map(ToString::to_string).collect::<Vec<_>>(), ["bob@example.test"]);
    }

    #[test]
    fn a_subject_with_a_line_break_is_refused() {
        for subject in ["Hi\r\nBcc: eve@example.test", "Hi\nBcc: eve@example.test", "Hi\rthere", "\n"] {
            let refused = compose(&sender(), &mail(subject), Uuid::new_v4());
            assert!(matches!(refused, Err(PortError::Unknown(_))), "{subject:?} was accepted");
        }
    }

    #[test]
    fn a_non_ascii_subject_is_encoded_not_sent_raw() {
        let message = compose(&sender(), &mail("Vérifiez votre adresse"), Uuid::new_v4()).unwrap();
        let formatted = message.formatted();

        assert!(formatted.is_ascii(), "headers and bodies must be 7-bit after transfer encoding");
    }

    #[test]
    fn a_bare_sender_address_is_accepted_and_garbage_is_not() {
        assert_eq!(parse_sender("no-reply@example.test").unwrap().email.to_string(), "no-reply@example.test");
        assert!(parse_sender("not an address").is_err());
        assert!(parse_sender("").is_err());
    }
}
