//! MailDev, the SMTP catcher of the tests: reading mail back over its REST API, and, for fault tests, a private
//! MailDev instance that a test may stop and start again without disturbing other tests.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests with `cargo xtask test`"))
}

/// The shared MailDev started by `cargo xtask test`.
pub struct MailDev {
    /// Its web API, `http://127.0.0.1:<port>`.
    pub web: String,
    /// Its SMTP host.
    pub smtp_host: String,
    /// Its SMTP port.
    pub smtp_port: u16,
}

impl MailDev {
    /// The MailDev of this test run.
    pub fn shared() -> Self {
        Self {
            web: env("UM_TEST_MAILDEV_URL"),
            smtp_host: env("UM_TEST_SMTP_HOST"),
            smtp_port: env("UM_TEST_SMTP_PORT").parse().expect("UM_TEST_SMTP_PORT is a port"),
        }
    }

    /// The app settings that deliver mail here.
    pub fn app_env(&self) -> Vec<(String, String)> {
        vec![
            ("MAIL_BACKEND".to_owned(), "smtp".to_owned()),
            ("SMTP_HOST".to_owned(), self.smtp_host.clone()),
            ("SMTP_PORT".to_owned(), self.smtp_port.to_string()),
            ("SMTP_TLS".to_owned(), "none".to_owned()),
        ]
    }

    /// Every mail received for `to`, oldest first.
    pub async fn mails_to(&self, to: &str) -> Vec<Value> {
        let url = format!("{}/email", self.web);
        let response = reqwest::Client::new().get(url).query(&[("to.address", to)]).send().await;
        match response {
            Ok(response) => response.json::<Vec<Value>>().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Waits until `count` mails for `to` have arrived (a deadline, not a fixed sleep) and returns them.
    pub async fn wait_for(&self, to: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mails = self.mails_to(to).await;
            if mails.len() >= count {
                return mails;
            }
            assert!(Instant::now() < deadline, "expected {count} mail(s) for {to} within 30 s, got {}", mails.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a mail for `to` with this subject has arrived (a deadline, not a fixed sleep) and returns the
    /// newest such mail.
    pub async fn wait_for_subject(&self, to: &str, subject: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(mail) = self.mails_to(to).await.into_iter().rev().find(|mail| mail["subject"] == subject) {
                return mail;
            }
            assert!(Instant::now() < deadline, "no mail {subject:?} for {to} within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The first link in a mail's text that starts with `prefix`.
pub fn link(mail: &Value, prefix: &str) -> String {
    let text = mail["text"].as_str().expect("the mail has a text part");
    let start = text.find(prefix).unwrap_or_else(|| panic!("no link starting with {prefix} in {text:?}"));
    text[start..].split_whitespace().next().unwrap_or_default().to_owned()
}

/// A MailDev of the test's own, on free ports, so the test can take it down and bring it back.
pub struct PrivateMailDev {
    /// The same API as the shared one.
    pub maildev: MailDev,
    binary: PathBuf,
    child: Option<Child>,
    web_port: u16,
}

impl PrivateMailDev {
    /// Starts one and waits until it answers.
    pub async fn start() -> Self {
        let smtp_port = crate::free_port();
        let web_port = crate::free_port();
        let mut this = Self {
            maildev: MailDev {
                web: format!("http://127.0.0.1:{web_port}"),
                smtp_host: "127.0.0.1".to_owned(),
                smtp_port,
            },
            binary: PathBuf::from(env("UM_TEST_MAILDEV_BIN")),
            child: None,
            web_port,
        };
        this.resume().await;
        this
    }

    /// Stops it; its SMTP port refuses connections until [`Self::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.maildev.smtp_port)).is_ok() {
            assert!(Instant::now() < deadline, "MailDev did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again on the same ports and waits until it answers.
    pub async fn resume(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--ip", "127.0.0.1", "--web-ip", "127.0.0.1", "-s"])
            .arg(self.maildev.smtp_port.to_string())
            .arg("-w")
            .arg(self.web_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("MailDev should start (UM_TEST_MAILDEV_BIN)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let health = format!("{}/healthz", self.maildev.web);
        loop {
            let up = reqwest::get(&health).await.is_ok_and(|r| r.status().is_success());
            if up && TcpStream::connect(("127.0.0.1", self.maildev.smtp_port)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "MailDev did not come up within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PrivateMailDev {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A gate in front of an SMTP server, to hold a mail in flight: it accepts every connection at once and passes
/// none through to the server until [`Self::open`]. Closed when dropped.
pub struct SmtpGate {
    /// The port to give the app as `SMTP_PORT` (on 127.0.0.1).
    pub port: u16,
    arrived: tokio::sync::watch::Receiver<usize>,
    open: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpGate {
    /// A closed gate in front of `maildev`'s SMTP port.
    pub async fn start(maildev: &MailDev) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = format!("{}:{}", maildev.smtp_host, maildev.smtp_port);
        let (arrived_tx, arrived) = tokio::sync::watch::channel(0_usize);
        let (open, open_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                arrived_tx.send_modify(|count| *count += 1);
                let (mut open_rx, upstream) = (open_rx.clone(), upstream.clone());
                tokio::spawn(async move {
                    if open_rx.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    // A MailDev that refuses shows as the mail not arriving, which the test reports.
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { port, arrived, open, task }
    }

    /// The app settings that deliver mail through this gate.
    pub fn app_env(&self) -> Vec<(String, String)> {
        vec![
            ("MAIL_BACKEND".to_owned(), "smtp".to_owned()),
            ("SMTP_HOST".to_owned(), "127.0.0.1".to_owned()),
            ("SMTP_PORT".to_owned(), self.port.to_string()),
            ("SMTP_TLS".to_owned(), "none".to_owned()),
        ]
    }

    /// Waits until a client is held at the gate (30 s at most).
    pub async fn wait_for_client(&self) {
        let mut arrived = self.arrived.clone();
        tokio::time::timeout(Duration::from_secs(30), arrived.wait_for(|count| *count > 0))
            .await
            .expect("no SMTP client reached the gate within 30 s")
            .unwrap();
    }

    /// Lets every held and later connection through to the server.
    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for SmtpGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}
