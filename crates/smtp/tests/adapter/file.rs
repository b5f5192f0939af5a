//! [`FileMailer`](users_smtp::FileMailer): whole, parseable `.eml` files and nothing else in the directory.

use std::path::{Path, PathBuf};

use mail_parser::{MessageParser, MimeHeaders as _};
use users_domain::ports::{Mailer as _, PortError};
use users_smtp::FileMailer;
use uuid::Uuid;

use crate::support::{FROM, mail, unique_address};

/// The names of everything in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// A mailer writing into a `mail` directory that does not exist yet, inside a fresh temporary directory.
fn mailer_in(parent: &tempfile::TempDir) -> (FileMailer, PathBuf) {
    let dir = parent.path().join("data").join("mail");
    (FileMailer::new(dir.clone(), FROM.to_owned()).unwrap(), dir)
}

#[tokio::test]
async fn a_mail_becomes_one_whole_eml_file_with_both_parts() {
    let parent = tempfile::tempdir().unwrap();
    let (mailer, dir) = mailer_in(&parent);
    let to = unique_address();
    let sent = mail(&to, "Vérifiez votre adresse ✉");

    mailer.send(sent.clone()).await.unwrap();

    let names = entries(&dir);
    assert_eq!(names.len(), 1, "exactly the mail and no temporary file: {names:?}");
    let (timestamp, rest) = names[0].split_once('-').unwrap();
    assert_eq!(timestamp.len(), "20260102T030405.000006Z".len(), "{timestamp}");
    assert!(timestamp.ends_with('Z') && !timestamp.contains(':'), "{timestamp}");
    let id = Uuid::parse_str(rest.strip_suffix(".eml").unwrap()).unwrap();

    let raw = std::fs::read(dir.join(&names[0])).unwrap();
    let parsed = MessageParser::default().parse(&raw).unwrap();
    assert_eq!(parsed.subject(), Some(sent.subject.as_str()));
    assert_eq!(
        parsed.from().and_then(|from| from.first()).and_then(|from| from.address()),
        Some("no-reply@example.test")
    );
    assert_eq!(parsed.to().and_then(|to| to.first()).and_then(|to| to.address()), Some(to.as_str()));
    assert!(parsed.date().is_some(), "no Date header");
    assert_eq!(parsed.message_id(), Some(format!("{id}@example.test").as_str()));

    let root = parsed.root_part().content_type().unwrap();
    assert_eq!((root.ctype(), root.subtype()), ("multipart", Some("alternative")));
    let parts: Vec<_> = parsed.parts[1..]
        .iter()
        .map(|part| {
            let content_type = part.content_type().unwrap();
            (format!("{}/{}", content_type.ctype(), content_type.subtype().unwrap()), part.text_contents().unwrap())
        })
        .collect();
    // MIME text travels with CRLF line ends, so the plain part comes back with `\r\n` where the domain wrote `\n`.
    let sent_text = sent.text.replace('\n', "\r\n");
    assert_eq!(parts, [("text/plain".to_owned(), sent_text.as_str()), ("text/html".to_owned(), sent.html.as_str())]);
}

#[tokio::test]
async fn concurrent_mails_each_get_a_file_of_their_own() {
    let parent = tempfile::tempdir().unwrap();
    let (mailer, dir) = mailer_in(&parent);
    let to = unique_address();

    let sends: Vec<_> = (0..8)
        .map(|n| {
            let mailer = mailer.clone();
            let mail = mail(&to, &format!("Mail {n}"));
            tokio::spawn(async move { mailer.send(mail).await })
        })
        .collect();
    for send in sends {
        send.await.unwrap().unwrap();
    }

    let names = entries(&dir);
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names.iter().all(|name| name.ends_with(".eml") && !name.starts_with('.')), "{names:?}");
}

#[tokio::test]
async fn a_subject_with_a_line_break_is_refused_and_nothing_is_written() {
    let parent = tempfile::tempdir().unwrap();
    let (mailer, dir) = mailer_in(&parent);
    let to = unique_address();

    for subject in ["Hello\r\nBcc: eve@example.test", "Hello\nBcc: eve@example.test", "Hello\rWorld"] {
        let refused = mailer.send(mail(&to, subject)).await;
        assert!(matches!(refused, Err(PortError::Unknown(_))), "{subject:?}: {refused:?}");
    }

    assert_eq!(entries(&dir), Vec::<String>::new());
}

#[tokio::test]
async fn a_vanished_directory_is_unavailable_and_leaves_nothing_behind() {
    let parent = tempfile::tempdir().unwrap();
    let (mailer, dir) = mailer_in(&parent);
    mailer.ping().await.unwrap();
    std::fs::remove_dir(&dir).unwrap();

    let result = mailer.send(mail(&unique_address(), "Hello")).await;

    assert!(matches!(result, Err(PortError::Unavailable(_))), "{result:?}");
    assert!(matches!(mailer.ping().await, Err(PortError::Unavailable(_))));
    assert!(!dir.exists());
}
