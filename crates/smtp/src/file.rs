//! [`FileMailer`]: the embedded default backend, which writes each mail as an `.eml` file instead of sending it.
//!
//! It exists for local development, where no mail server runs: the developer opens the file in a mail client,
//! or, more often, copies the verification or reset link straight from the log. That is why it logs the links of
//! the text body, which the SMTP backend never does; the file backend is not for production use.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use lettre::message::Mailbox;
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;
use users_domain::ports::{Mailer, OutgoingMail, PortError};
use uuid::Uuid;

use crate::message::{compose, parse_sender};

/// The timestamp that starts each file name: UTC, sortable as text, and free of characters (`:`) that some file
/// systems refuse.
const FILE_TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second].[subsecond digits:6]Z");

/// A [`Mailer`] that writes every mail as a complete RFC 5322 message to `<dir>/<timestamp>-<uuid>.eml`.
///
/// Files appear whole: each is written under a hidden temporary name in the same directory and then renamed,
/// so a reader (a developer's file watcher, a test) never sees half a mail.
#[derive(Debug, Clone)]
pub struct FileMailer {
    dir: PathBuf,
    from: Mailbox,
}

impl FileMailer {
    /// Creates the mailer, creating `dir` (and its parents) when missing. `from` is the sender, a bare address
    /// or `Display Name <address>`.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] when `from` is not a mailbox, or the error of creating the directory.
    pub fn new(dir: PathBuf, from: String) -> io::Result<Self> {
        let from = parse_sender(&from).map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        fs::create_dir_all(&dir)?;
        Ok(Self { dir, from })
    }

    /// The directory the mails are written to.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks that the mail directory still exists, for a readiness check symmetrical with
    /// [`SmtpMailer::ping`](crate::SmtpMailer::ping).
    ///
    /// # Errors
    /// [`PortError::Unavailable`] when the directory is gone or is not a directory.
    pub async fn ping(&self) -> Result<(), PortError> {
        match tokio::fs::metadata(&self.dir).await {
            Ok(metadata) if metadata.is_dir() => Ok(()),
            Ok(_) => Err(PortError::Unavailable(anyhow::anyhow!("{} is not a directory", self.dir.display()))),
            Err(error) => Err(PortError::Unavailable(
                anyhow::Error::new(error).context(format!("mail directory {}", self.dir.display())),
            )),
        }
    }
}

impl Mailer for FileMailer {
    async fn send(&self, mail: OutgoingMail) -> Result<(), PortError> {
        let id = Uuid::new_v4();
        let bytes = compose(&self.from, &mail, id)?.formatted();
        let timestamp = OffsetDateTime::now_utc()
            .format(FILE_TIMESTAMP)
            .map_err(|error| PortError::Unknown(anyhow::Error::new(error).context("formatting the file name")))?;
        let path = self.dir.join(format!("{timestamp}-{id}.eml"));
        // A leading dot and a suffix other than `.eml` keep the unfinished file out of every `*.eml` listing.
        let temporary = self.dir.join(format!(".{id}.eml.tmp"));

        let target = path.clone();
        tokio::task::spawn_blocking(move || write_whole(&temporary, &target, &bytes))
            .await
            .map_err(|error| PortError::Unknown(anyhow::Error::new(error).context("the mail writer task failed")))?
            // A failed write (a full disk, a directory removed under us) may well succeed later, and the outbox
            // retries `Unavailable` with backoff before giving up, so the mail is not lost to a passing fault.
            .map_err(|error| {
                PortError::Unavailable(anyhow::Error::new(error).context(format!("writing {}", path.display())))
            })?;

        tracing::info!(
            to = %mail.to,
            subject = %mail.subject,
            path = %path.display(),
            links = ?links(&mail.text),
            "mail written to a file (MAIL_BACKEND=file)"
        );
        Ok(())
    }
}

/// Writes `bytes` to `temporary`, then renames it to `path`; on failure the temporary file is removed again.
///
/// The file is not synced to disk: this backend promises that readers see whole files, which the rename gives,
/// not that mail survives a power cut on a developer's machine.
fn write_whole(temporary: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let written = fs::File::create_new(temporary)
        .and_then(|mut file| file.write_all(bytes))
        .and_then(|()| fs::rename(temporary, path));
    if written.is_err() {
        // The write error is the one worth reporting; a temporary file that cannot be removed either is only
        // clutter in a development directory.
        let _ = fs::remove_file(temporary);
    }
    written
}

/// The `http://` and `https://` links in a text body, in order, without the punctuation that usually follows a
/// link in prose.
fn links(text: &str) -> Vec<&str> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"'))
        .filter_map(|word| word.find("http://").or_else(|| word.find("https://")).map(|start| &word[start..]))
        .map(|link| link.trim_end_matches(['.', ',', ';', ':', '!', '?', ')', ']', '}', '\'']))
        .filter(|link| !matches!(*link, "http://" | "https://"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_found_anywhere_in_the_text() {
        let text = "Welcome!\n\nConfirm your address: https://app.example.test/verify-email/42/abc.\n\
                    Or paste <http://localhost:8080/reset?token=x_y-z> (valid 1 h), see also\
                    (https://example.test/help).";

        assert_eq!(
            links(text),
            [
                "https://app.example.test/verify-email/42/abc",
                "http://localhost:8080/reset?token=x_y-z",
                "https://example.test/help"
            ]
        );
    }

    #[test]
    fn text_without_links_has_none() {
        assert!(links("No link here, only http and https: and an ftp://example.test file.").is_empty());
        assert!(links("").is_empty());
    }

    #[test]
    fn a_bad_sender_is_refused_before_the_directory_is_created() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("mail");

        let error = FileMailer::new(dir.clone(), "not an address".to_owned()).unwrap_err();

        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(!dir.exists());
    }

    #[test]
    fn the_file_timestamp_sorts_as_text_and_has_no_colon() {
        let early = time::macros::datetime!(2026-01-02 03:04:05.000_006 UTC).format(FILE_TIMESTAMP).unwrap();
        let late = time::macros::datetime!(2026-01-02 03:04:05.1 UTC).format(FILE_TIMESTAMP).unwrap();

        assert_eq!(early, "20260102T030405.000006Z");
        assert!(early < late);
    }
}
