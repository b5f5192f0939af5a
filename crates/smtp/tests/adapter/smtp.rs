//! [`SmtpMailer`](users_smtp::SmtpMailer): delivery to MailDev, header-injection refusal, and how failures are
//! classified.

use std::time::{Duration, Instant};

use users_domain::ports::{Mailer as _, PortError};
use users_smtp::{SmtpConfig, SmtpMailer};

use crate::support::{closed_port, forward, mail, maildev, scripted_smtp_server, smtp_config, unique_address};

#[tokio::test]
async fn a_mail_arrives_at_maildev_with_its_subject_and_both_bodies() {
    let maildev = maildev();
    let to = unique_address();
    let sent = mail(&to, "Vérifiez votre adresse ✉");

    maildev.mailer().send(sent.clone()).await.unwrap();

    let mails = maildev.wait_for_mails(&to, 1).await;
    assert_eq!(mails.len(), 1, "{mails:#?}");
    let received = &mails[0];
    assert_eq!(received["subject"], sent.subject.as_str());
    assert_eq!(received["text"].as_str().unwrap().trim_end(), sent.text.trim_end());
    assert_eq!(received["html"].as_str().unwrap().trim_end(), sent.html);
    assert_eq!(received["from"][0]["address"], "no-reply@example.test");
    assert_eq!(received["from"][0]["name"], "User Management");
    assert_eq!(received["to"][0]["address"], to.as_str());
    let message_id = received["messageId"].as_str().unwrap();
    assert!(message_id.ends_with("@example.test"), "{message_id}");
}

#[tokio::test]
async fn concurrent_sends_through_one_mailer_all_arrive() {
    let maildev = maildev();
    let mailer = maildev.mailer();
    let to = unique_address();

    let sends: Vec<_> = (0..5)
        .map(|n| {
            let mailer = mailer.clone();
            let mail = mail(&to, &format!("Mail {n}"));
            tokio::spawn(async move { mailer.send(mail).await })
        })
        .collect();
    for send in sends {
        send.await.unwrap().unwrap();
    }

    let mut subjects: Vec<String> = maildev
        .wait_for_mails(&to, 5)
        .await
        .iter()
        .map(|received| received["subject"].as_str().unwrap().to_owned())
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["Mail 0", "Mail 1", "Mail 2", "Mail 3", "Mail 4"]);
}

#[tokio::test]
async fn a_subject_with_a_line_break_is_refused_and_nothing_is_sent() {
    let maildev = maildev();
    let mailer = maildev.mailer();
    let to = unique_address();
    let smuggled = unique_address();

    for subject in [format!("Hello\r\nBcc: {smuggled}"), format!("Hello\nBcc: {smuggled}"), "Hello\rWorld".to_owned()] {
        let refused = mailer.send(mail(&to, &subject)).await;
        assert!(matches!(refused, Err(PortError::Unknown(_))), "{subject:?}: {refused:?}");
    }

    // Instead of sleeping and hoping, send one good mail after the refused ones: once it has arrived, anything
    // the refused sends had put on the wire would have arrived before it.
    mailer.send(mail(&to, "After the refusals")).await.unwrap();
    let mails = maildev.wait_for_mails(&to, 1).await;
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert_eq!(mails[0]["subject"], "After the refusals");
    assert!(maildev.mails_to(&smuggled).await.is_empty());
}

#[tokio::test]
async fn a_server_that_is_not_listening_is_unavailable_within_the_timeout() {
    let timeout = Duration::from_secs(2);
    let mailer = SmtpMailer::new(smtp_config("127.0.0.1", closed_port(), timeout)).unwrap();

    let started = Instant::now();
    let result = tokio::time::timeout(timeout * 2, mailer.send(mail(&unique_address(), "Hello"))).await;

    let result = result.expect("send outlived twice its timeout");
    assert!(matches!(result, Err(PortError::Unavailable(_))), "{result:?}");
    assert!(started.elapsed() <= timeout, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_server_that_never_greets_is_unavailable_after_the_timeout() {
    // The kernel completes the TCP handshake for the listener's backlog, but nobody ever answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let timeout = Duration::from_millis(500);
    let mailer = SmtpMailer::new(smtp_config("127.0.0.1", port, timeout)).unwrap();

    let result = tokio::time::timeout(Duration::from_secs(5), mailer.send(mail(&unique_address(), "Hello"))).await;

    let result = result.expect("send ignored its timeout");
    assert!(matches!(result, Err(PortError::Unavailable(_))), "{result:?}");
    drop(silent);
}

#[tokio::test]
async fn a_transient_4xx_reply_is_unavailable() {
    let port = scripted_smtp_server("451 4.3.0 Try again later").await;
    let mailer = SmtpMailer::new(smtp_config("127.0.0.1", port, SmtpConfig::DEFAULT_TIMEOUT)).unwrap();

    let result = mailer.send(mail(&unique_address(), "Hello")).await;

    assert!(matches!(result, Err(PortError::Unavailable(_))), "{result:?}");
}

#[tokio::test]
async fn a_permanent_5xx_reply_is_a_refusal() {
    let port = scripted_smtp_server("550 5.1.1 No such user").await;
    let mailer = SmtpMailer::new(smtp_config("127.0.0.1", port, SmtpConfig::DEFAULT_TIMEOUT)).unwrap();

    let result = mailer.send(mail(&unique_address(), "Hello")).await;

    assert!(matches!(result, Err(PortError::Unknown(_))), "{result:?}");
}

#[tokio::test]
async fn ping_answers_for_maildev_and_fails_for_a_closed_port() {
    maildev().mailer().ping().await.unwrap();

    let closed = SmtpMailer::new(smtp_config("127.0.0.1", closed_port(), Duration::from_secs(2))).unwrap();
    assert!(matches!(closed.ping().await, Err(PortError::Unavailable(_))));
}

#[tokio::test]
async fn the_same_mailer_delivers_once_the_server_is_back() {
    // The service keeps one mailer for its whole life, so a failure must not stick to it: nothing listens on the
    // port at first, then a forwarder to MailDev appears there and the next send goes through.
    let maildev = maildev();
    let port = closed_port();
    let mailer = SmtpMailer::new(smtp_config("127.0.0.1", port, Duration::from_secs(2))).unwrap();
    let to = unique_address();
    assert!(matches!(mailer.send(mail(&to, "Lost")).await, Err(PortError::Unavailable(_))));

    forward(port, format!("{}:{}", maildev.smtp_host, maildev.smtp_port)).await;
    mailer.send(mail(&to, "Delivered")).await.unwrap();

    let mails = maildev.wait_for_mails(&to, 1).await;
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert_eq!(mails[0]["subject"], "Delivered");
}
