//! End to end through the real binary, with mail delivered over SMTP to MailDev: registration, verification,
//! login, refresh rotation with reuse detection, logout-all, password reset, email change, and mail that survives
//! an SMTP outage.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers: failing loudly is the point")]

use serde_json::{Value, json};
use users_e2e::maildev::{MailDev, PrivateMailDev, link};
use users_e2e::{BinaryApp, STRONG_PASSWORD, json_body, login_json, str_of, unique_email};

async fn smtp_app(maildev: &MailDev) -> BinaryApp {
    BinaryApp::start_with(&maildev.app_env(), |_| {}).await
}

async fn register(app: &BinaryApp, email: &str, password: &str) -> reqwest::Response {
    app.client.post(app.url("/register")).json(&json!({"email": email, "password": password})).send().await.unwrap()
}

async fn get_me(app: &BinaryApp, access_token: &str) -> reqwest::Response {
    app.client.get(app.url("/me")).bearer_auth(access_token).send().await.unwrap()
}

async fn refresh(app: &BinaryApp, refresh_token: &str) -> reqwest::Response {
    app.client.post(app.url("/token/refresh")).json(&json!({"refresh_token": refresh_token})).send().await.unwrap()
}

#[tokio::test]
async fn register_verify_login_refresh_detect_reuse_and_log_out_everywhere() {
    let maildev = MailDev::shared();
    let app = smtp_app(&maildev).await;
    let email = unique_email("flow");

    let registered = register(&app, &email, STRONG_PASSWORD).await;
    assert_eq!(registered.status(), 202);
    let unverified = login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await;
    assert_eq!(unverified.status(), 403);
    assert_eq!(json_body(unverified).await["code"], "email_not_verified");

    let mails = maildev.wait_for(&email, 1).await;
    assert_eq!(mails[0]["subject"], "Verify your email address");
    let verify = link(&mails[0], &format!("{}/verify-email/", app.address));
    let verified = app.client.get(&verify).send().await.unwrap();
    assert_eq!(verified.status(), 200);
    let again = app.client.get(&verify).send().await.unwrap();
    assert_eq!(again.status(), 400, "a verification link works once");
    assert_eq!(json_body(again).await["code"], "invalid_or_expired_token");

    let login = login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await;
    assert_eq!(login.status(), 200);
    let first = json_body(login).await;
    let me = json_body(get_me(&app, str_of(&first, "access_token")).await).await;
    assert_eq!(me["role"], "AUTHENTICATED");
    assert_eq!(me["email_verified"], true);

    // Rotation: the new pair works, the old refresh token is spent.
    let rotated = refresh(&app, str_of(&first, "refresh_token")).await;
    assert_eq!(rotated.status(), 200);
    assert_eq!(rotated.headers()["cache-control"], "no-store");
    let second = json_body(rotated).await;
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_eq!(get_me(&app, str_of(&second, "access_token")).await.status(), 200);

    // Reuse of the spent token revokes the whole family: the newest tokens stop working too.
    let reused = refresh(&app, str_of(&first, "refresh_token")).await;
    assert_eq!(reused.status(), 401);
    assert_eq!(refresh(&app, str_of(&second, "refresh_token")).await.status(), 401);
    assert_eq!(get_me(&app, str_of(&second, "access_token")).await.status(), 401);

    // Two sessions, then logout-all ends both at once.
    let a = json_body(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await).await;
    let b = json_body(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await).await;
    let sessions = json_body(
        app.client.get(app.url("/me/sessions")).bearer_auth(str_of(&a, "access_token")).send().await.unwrap(),
    )
    .await;
    assert_eq!(sessions["items"].as_array().unwrap().len(), 2);
    let logout_all =
        app.client.post(app.url("/logout/all")).bearer_auth(str_of(&a, "access_token")).send().await.unwrap();
    assert_eq!(logout_all.status(), 204);
    for tokens in [&a, &b] {
        assert_eq!(get_me(&app, str_of(tokens, "access_token")).await.status(), 401);
        assert_eq!(refresh(&app, str_of(tokens, "refresh_token")).await.status(), 401);
    }
}

#[tokio::test]
async fn logout_and_session_revocation_end_one_session_only() {
    let maildev = MailDev::shared();
    let app = smtp_app(&maildev).await;
    let email = unique_email("sessions");
    register(&app, &email, STRONG_PASSWORD).await;
    let mails = maildev.wait_for(&email, 1).await;
    app.client.get(link(&mails[0], &format!("{}/verify-email/", app.address))).send().await.unwrap();

    let a = json_body(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await).await;
    let b = json_body(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await).await;
    let c = json_body(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await).await;
    let logout = app.client.post(app.url("/logout")).json(&json!({"refresh_token": b["refresh_token"]})).send().await;
    assert_eq!(logout.unwrap().status(), 204);
    assert_eq!(get_me(&app, str_of(&b, "access_token")).await.status(), 401);
    assert_eq!(get_me(&app, str_of(&a, "access_token")).await.status(), 200);

    let sessions = json_body(
        app.client.get(app.url("/me/sessions")).bearer_auth(str_of(&a, "access_token")).send().await.unwrap(),
    )
    .await;
    let items = sessions["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items.iter().filter(|s| s["current"] == true).count(), 1);
    let other = items.iter().find(|s| s["current"] == false).unwrap();
    let revoke = app
        .client
        .delete(app.url(&format!("/me/sessions/{}", str_of(other, "id"))))
        .bearer_auth(str_of(&a, "access_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 204);
    assert_eq!(get_me(&app, str_of(&c, "access_token")).await.status(), 401);
    assert_eq!(get_me(&app, str_of(&a, "access_token")).await.status(), 200);
    let unknown = app
        .client
        .delete(app.url("/me/sessions/00000000-0000-0000-0000-000000000000"))
        .bearer_auth(str_of(&a, "access_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn forgot_then_reset_changes_the_password_and_ends_every_session() {
    let maildev = MailDev::shared();
    let app = smtp_app(&maildev).await;
    let email = unique_email("reset");
    register(&app, &email, STRONG_PASSWORD).await;
    let mails = maildev.wait_for(&email, 1).await;
    app.client.get(link(&mails[0], &format!("{}/verify-email/", app.address))).send().await.unwrap();
    let session = json_body(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await).await;

    let forgot = app.client.post(app.url("/password/forgot")).json(&json!({"email": email})).send().await.unwrap();
    assert_eq!(forgot.status(), 202);
    let mails = maildev.wait_for(&email, 2).await;
    let reset_mail = mails.iter().find(|m| m["subject"] == "Reset your password").unwrap();
    let reset_link = link(reset_mail, &format!("{}/password/reset?token=", app.address));
    let page = app.client.get(&reset_link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    assert!(page.text().await.unwrap().contains("<form method=\"post\" action=\"/password/reset\">"));
    let token = reset_link.split("token=").nth(1).unwrap();

    let weak = app
        .client
        .post(app.url("/password/reset"))
        .json(&json!({"token": token, "new_password": "short"}))
        .send()
        .await
        .unwrap();
    assert_eq!(weak.status(), 422);
    let new_password = "amber-lantern-quiet-31";
    let reset = app
        .client
        .post(app.url("/password/reset"))
        .json(&json!({"token": token, "new_password": new_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 204);
    let replay = app
        .client
        .post(app.url("/password/reset"))
        .json(&json!({"token": token, "new_password": "another-quiet-lantern-77"}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400, "a reset link works once");

    assert_eq!(get_me(&app, str_of(&session, "access_token")).await.status(), 401, "reset ends every session");
    assert_eq!(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await.status(), 401);
    assert_eq!(login_json(&app.client, &app.address, &email, new_password).await.status(), 200);
    let notice = maildev.wait_for(&email, 3).await;
    assert!(notice.iter().any(|m| m["subject"] == "Your password was changed"));
}

#[tokio::test]
async fn an_email_change_takes_effect_only_when_the_new_address_confirms() {
    let maildev = MailDev::shared();
    let app = smtp_app(&maildev).await;
    let old = unique_email("old");
    let new = unique_email("new");
    register(&app, &old, STRONG_PASSWORD).await;
    let mails = maildev.wait_for(&old, 1).await;
    app.client.get(link(&mails[0], &format!("{}/verify-email/", app.address))).send().await.unwrap();
    let tokens = json_body(login_json(&app.client, &app.address, &old, STRONG_PASSWORD).await).await;
    let access = str_of(&tokens, "access_token").to_owned();

    let without_password =
        app.client.patch(app.url("/me")).bearer_auth(&access).json(&json!({"email": new})).send().await.unwrap();
    assert_eq!(without_password.status(), 422);
    let wrong_password = app
        .client
        .patch(app.url("/me"))
        .bearer_auth(&access)
        .json(&json!({"email": new, "current_password": "not-my-password-at-all"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_password.status(), 403);
    assert_eq!(json_body(wrong_password).await["code"], "invalid_current_password");

    let requested = app
        .client
        .patch(app.url("/me"))
        .bearer_auth(&access)
        .json(&json!({"email": new, "current_password": STRONG_PASSWORD, "bio": "Counts things."}))
        .send()
        .await
        .unwrap();
    assert_eq!(requested.status(), 200);
    let me = json_body(requested).await;
    assert_eq!(me["email"], old.as_str());
    assert_eq!(me["pending_email"], new.as_str());
    assert_eq!(me["bio"], "Counts things.");
    // The old address still logs in and is told, without the link.
    assert_eq!(login_json(&app.client, &app.address, &old, STRONG_PASSWORD).await.status(), 200);
    let notices = maildev.wait_for(&old, 2).await;
    let notice = notices.iter().find(|m| m["subject"] == "Your email address is being changed").unwrap();
    assert!(!notice["text"].as_str().unwrap().contains("/verify-email/"));

    let confirmation = maildev.wait_for(&new, 1).await;
    let confirm = app.client.get(link(&confirmation[0], &format!("{}/verify-email/", app.address))).send().await;
    assert_eq!(confirm.unwrap().status(), 200);
    assert_eq!(login_json(&app.client, &app.address, &old, STRONG_PASSWORD).await.status(), 401);
    let by_new = login_json(&app.client, &app.address, &new, STRONG_PASSWORD).await;
    assert_eq!(by_new.status(), 200);
    let me = json_body(get_me(&app, str_of(&json_body(by_new).await, "access_token")).await).await;
    assert_eq!(me["email"], new.as_str());
    assert_eq!(me["pending_email"], Value::Null);
    assert_eq!(me["email_verified"], true);
    // Sessions are kept across an email change.
    assert_eq!(get_me(&app, &access).await.status(), 200);
}

#[tokio::test]
async fn mail_queued_while_smtp_is_down_is_delivered_once_when_it_returns() {
    let mut private = PrivateMailDev::start().await;
    let app = BinaryApp::start_with(&private.maildev.app_env(), |_| {}).await;
    private.stop();
    let emails: Vec<String> = (0..3).map(|i| unique_email(&format!("outage{i}"))).collect();
    for email in &emails {
        let response = register(&app, email, STRONG_PASSWORD).await;
        assert_eq!(response.status(), 202, "registration must not depend on SMTP");
    }
    assert_eq!(
        app.db.count("SELECT count(*) AS n FROM mail_outbox WHERE status = 'pending'").await,
        3,
        "the three mails wait in the outbox"
    );
    private.resume().await;
    for email in &emails {
        let mails = private.maildev.wait_for(email, 1).await;
        assert_eq!(mails[0]["subject"], "Verify your email address");
    }
    // Delivered exactly once: the outbox has marked each sent, and no second copy arrives.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while app.db.count("SELECT count(*) AS n FROM mail_outbox WHERE status = 'sent'").await < 3 {
        assert!(std::time::Instant::now() < deadline, "the outbox did not mark the mails sent");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for email in &emails {
        assert_eq!(private.maildev.mails_to(email).await.len(), 1, "{email} got a duplicate");
    }
}

#[tokio::test]
async fn an_account_someone_else_registered_first_is_taken_back_by_its_mailbox_owner() {
    // Account pre-hijacking: an attacker registers the victim's address with their own password before the victim.
    let maildev = MailDev::shared();
    let app = smtp_app(&maildev).await;
    let victim = unique_email("victim");
    let attacker_password = "attacker-chose-this-97";
    assert_eq!(register(&app, &victim, attacker_password).await.status(), 202);
    maildev.wait_for(&victim, 1).await;

    // The victim registers later: same answer, and a mail that lets the mailbox owner choose the password.
    assert_eq!(register(&app, &victim, STRONG_PASSWORD).await.status(), 202);
    let mails = maildev.wait_for(&victim, 2).await;
    let finish = mails.iter().find(|m| m["subject"] == "Finish setting up your account").expect("the finish mail");
    let reset_link = link(finish, &format!("{}/password/reset?token=", app.address));
    let token = reset_link.split("token=").nth(1).unwrap();
    let reset = app
        .client
        .post(app.url("/password/reset"))
        .json(&json!({"token": token, "new_password": STRONG_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 204);

    // Choosing the password through the mailbox confirmed the address and cut out the attacker's password.
    assert_eq!(login_json(&app.client, &app.address, &victim, attacker_password).await.status(), 401);
    let login = login_json(&app.client, &app.address, &victim, STRONG_PASSWORD).await;
    assert_eq!(login.status(), 200);
    let me = json_body(get_me(&app, str_of(&json_body(login).await, "access_token")).await).await;
    assert_eq!(me["email_verified"], true);
    assert_eq!(me["role"], "AUTHENTICATED");
}
