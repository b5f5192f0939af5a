//! Adapter tests: [`users_smtp::SmtpMailer`] against a real MailDev, and [`users_smtp::FileMailer`] on a real
//! directory.
//!
//! The SMTP tests need `UM_TEST_SMTP_HOST`, `UM_TEST_SMTP_PORT` and `UM_TEST_MAILDEV_URL`, which `cargo xtask test`
//! sets after starting MailDev; without them they fail and say so. Every test mails a recipient of its own and
//! reads back only that recipient's mail, so the tests run in parallel with each other and with other crates'
//! tests on the same MailDev, and nothing is ever deleted from it.

// The helpers in `support` are not `#[test]` functions, so clippy's test allowances do not reach them; in a test
// binary a panic with a clear message is the right way to report a broken environment or a failed expectation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: failing loudly is the point")]

mod file;
mod smtp;
mod support;
