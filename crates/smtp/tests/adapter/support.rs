//! Shared helpers: the MailDev under test, unique recipients, mailers pointed at it, reading mail back, and a
//! scripted SMTP peer for the replies MailDev never gives.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use users_domain::ports::OutgoingMail;
use users_domain::user::EmailAddress;
use users_smtp::{SmtpConfig, SmtpMailer, SmtpTlsMode};
use uuid::Uuid;

/// The sender every test mailer uses.
pub const FROM: &str = "User Management <no-reply@example.test>";

/// How long a mail may take to show up in MailDev before the test fails.
const ARRIVAL_DEADLINE: Duration = Duration::from_secs(10);

/// The MailDev started by `cargo xtask test`: its SMTP side and its web API.
pub struct MailDev {
    /// The SMTP host.
    pub smtp_host: String,
    /// The SMTP port.
    pub smtp_port: u16,
    /// The base URL of the web API, without a trailing slash.
    pub web_url: String,
}

/// The MailDev named by the `UM_TEST_*` variables; fails the test, naming `cargo xtask test`, when one is missing.
pub fn maildev() -> MailDev {
    let smtp_port = required_var("UM_TEST_SMTP_PORT");
    MailDev {
        smtp_host: required_var("UM_TEST_SMTP_HOST"),
        smtp_port: smtp_port.parse().unwrap_or_else(|_| panic!("UM_TEST_SMTP_PORT={smtp_port:?} is not a port")),
        web_url: required_var("UM_TEST_MAILDEV_URL").trim_end_matches('/').to_owned(),
    }
}

fn required_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!("{name} is not set: run the tests with `cargo xtask test`, which starts MailDev and sets it"),
    }
}

/// A recipient no other test uses.
pub fn unique_address() -> EmailAddress {
    EmailAddress::parse(&format!("{}@example.test", Uuid::new_v4().simple())).unwrap()
}

/// A mail to `to` with the given subject and bodies that exercise encoding: non-ASCII text and a link.
pub fn mail(to: &EmailAddress, subject: &str) -> OutgoingMail {
    OutgoingMail {
        to: to.clone(),
        subject: subject.to_owned(),
        text: "Bonjour Zoë,\n\nconfirm your address: https://app.example.test/verify-email/42/tok3n\n".to_owned(),
        html: "<p>Bonjour Zoë,</p><p><a href=\"https://app.example.test/verify-email/42/tok3n\">Confirm</a></p>"
            .to_owned(),
    }
}

/// An SMTP configuration for `host:port` without TLS or credentials.
pub fn smtp_config(host: &str, port: u16, timeout: Duration) -> SmtpConfig {
    SmtpConfig {
        host: host.to_owned(),
        port,
        username: None,
        password: None,
        tls: SmtpTlsMode::None,
        from: FROM.to_owned(),
        timeout,
    }
}

impl MailDev {
    /// A mailer delivering to this MailDev.
    pub fn mailer(&self) -> SmtpMailer {
        SmtpMailer::new(smtp_config(&self.smtp_host, self.smtp_port, SmtpConfig::DEFAULT_TIMEOUT)).unwrap()
    }

    /// The mails MailDev holds for `to`, as its JSON objects.
    pub async fn mails_to(&self, to: &EmailAddress) -> Vec<Value> {
        let url = format!("{}/email?to.address={}", self.web_url, to.as_str());
        let response = reqwest::get(&url).await.unwrap_or_else(|error| panic!("GET {url}: {error}"));
        assert!(response.status().is_success(), "GET {url}: {}", response.status());
        match response.json::<Value>().await.unwrap() {
            Value::Array(mails) => mails,
            other => panic!("GET {url} answered {other}, not a list"),
        }
    }

    /// Waits until MailDev holds at least `count` mails for `to` and returns them; fails the test after a
    /// deadline.
    pub async fn wait_for_mails(&self, to: &EmailAddress, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + ARRIVAL_DEADLINE;
        loop {
            let mails = self.mails_to(to).await;
            if mails.len() >= count {
                return mails;
            }
            assert!(Instant::now() < deadline, "{count} mail(s) to {to} did not arrive within {ARRIVAL_DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A port on which nothing listens: bound once to get a free port, then released.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Starts a minimal SMTP peer on a free loopback port that accepts everything except `RCPT TO`, which it
/// answers with `rcpt_reply` (a full reply line such as `550 5.1.1 no such user`). MailDev accepts every
/// recipient, so this is how a test sees lettre's real handling of a 4xx or 5xx reply over a real socket.
pub async fn scripted_smtp_server(rcpt_reply: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 scripted.test ESMTP\r\n").await?;
                while let Some(line) = lines.next_line().await? {
                    let command = line.to_ascii_uppercase();
                    let reply = if command.starts_with("EHLO") {
                        "250-scripted.test\r\n250 8BITMIME\r\n".to_owned()
                    } else if command.starts_with("RCPT") {
                        format!("{rcpt_reply}\r\n")
                    } else if command.starts_with("QUIT") {
                        write.write_all(b"221 bye\r\n").await?;
                        break;
                    } else {
                        "250 OK\r\n".to_owned()
                    };
                    write.write_all(reply.as_bytes()).await?;
                }
                Ok::<_, std::io::Error>(())
            });
        }
    });
    port
}

/// Starts forwarding every connection to `127.0.0.1:port` on to `target`. Like every helper server here, it
/// runs on the test's own runtime and so stops with the test.
pub async fn forward(port: u16, target: String) {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(target).await?;
                tokio::io::copy_bidirectional(&mut client, &mut server).await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
}
