//! Limits an attacker runs into (brute force and credential stuffing): the per-email login backoff,
//! the per-client-IP limits on login, register, forgot and resend, and login timing that does not tell unknown
//! emails from wrong passwords. Against the app started in-process on a fresh database.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failed step should fail the test loudly"
)]

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};
use users_e2e::maildev::{MailDev, link};
use users_e2e::{PUBLIC_BASE_URL, STRONG_PASSWORD, TestApp, WRONG_PASSWORD, login_json, unique_email};

async fn register(app: &TestApp, email: &str) -> reqwest::Response {
    app.client
        .post(app.url("/register"))
        .json(&json!({"email": email, "password": STRONG_PASSWORD}))
        .send()
        .await
        .unwrap()
}

/// Registers over HTTP and marks the account verified in the database, without logging in.
async fn verified_account(app: &TestApp, email: &str) {
    assert_eq!(register(app, email).await.status(), 202);
    app.db
        .execute(&format!(
            "UPDATE users SET email_verified = true, role = 'AUTHENTICATED' WHERE lower(email) = lower('{email}')"
        ))
        .await;
}

async fn login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    login_json(&app.client, &app.address, email, password).await
}

/// Checks a 429 `rate_limited` with a sensible `Retry-After`, returns the body text.
async fn assert_rate_limited(response: reqwest::Response, max_retry_after: u64, what: &str) -> String {
    assert_eq!(response.status(), 429, "{what}");
    let retry_after = response
        .headers()
        .get("retry-after")
        .unwrap_or_else(|| panic!("{what}: no Retry-After header"))
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap_or_else(|_| panic!("{what}: Retry-After is not a number of seconds"));
    assert!((1..=max_retry_after).contains(&retry_after), "{what}: Retry-After {retry_after}");
    assert_eq!(response.headers()["content-type"], "application/problem+json", "{what}");
    let body = response.text().await.unwrap();
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["code"], "rate_limited", "{what}: {problem}");
    body
}

async fn sessions(app: &TestApp) -> i64 {
    app.db.count("SELECT count(*) AS n FROM sessions").await
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

// ---------------------------------------------------------------------------------------------------------------
// Timing

#[tokio::test]
async fn login_takes_comparable_time_for_unknown_emails_and_wrong_passwords() {
    let app = TestApp::spawn_with(&[("LOGIN_BACKOFF_AFTER", "1000")]).await;
    let email = unique_email("timing");
    verified_account(&app, &email).await;
    let timed = async |email: &str| {
        let started = Instant::now();
        let response = login(&app, email, WRONG_PASSWORD).await;
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 401, "backoff must not interfere");
        elapsed
    };
    // Warm up connections, pools and caches on both paths.
    for _ in 0..3 {
        timed(&email).await;
        timed(&unique_email("warmup")).await;
    }
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    // Interleaved, so drift in machine load hits both sides alike.
    for _ in 0..15 {
        known.push(timed(&email).await);
        unknown.push(timed(&unique_email("ghost")).await);
    }
    let (known, unknown) = (median(known), median(unknown));
    let ratio = unknown.as_secs_f64() / known.as_secs_f64();
    assert!(
        (0.5..=2.0).contains(&ratio),
        "median login time: unknown email {unknown:?}, wrong password {known:?} (ratio {ratio:.2})"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Per-email backoff

#[tokio::test]
async fn five_failures_block_an_existing_email_even_for_the_right_password() {
    let app = TestApp::spawn_with(&[("LOGIN_BACKOFF_BASE", "1m")]).await;
    let email = unique_email("backoff");
    let bystander = unique_email("bystander");
    verified_account(&app, &email).await;
    verified_account(&app, &bystander).await;
    for attempt in 1..=5 {
        assert_eq!(login(&app, &email, WRONG_PASSWORD).await.status(), 401, "attempt {attempt}");
    }
    assert_rate_limited(login(&app, &email, STRONG_PASSWORD).await, 60, "6th attempt, right password").await;
    // Case and surrounding blanks do not make a new key.
    let shouted = format!("  {}  ", email.to_uppercase());
    assert_rate_limited(login(&app, &shouted, STRONG_PASSWORD).await, 60, "the same email in capitals").await;
    // The form login is the same door.
    let form = app
        .client
        .post(app.url("/login"))
        .form(&[("username", email.as_str()), ("password", STRONG_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_rate_limited(form, 60, "form login").await;
    assert_eq!(sessions(&app).await, 0, "no session was started while blocked");
    // Other accounts are not affected.
    assert_eq!(login(&app, &bystander, STRONG_PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn five_failures_block_an_unknown_email_with_the_same_answer_as_an_existing_one() {
    let app = TestApp::spawn_with(&[("LOGIN_BACKOFF_BASE", "1m")]).await;
    let known = unique_email("known");
    verified_account(&app, &known).await;
    let unknown = unique_email("unknown");
    for attempt in 1..=5 {
        assert_eq!(login(&app, &unknown, WRONG_PASSWORD).await.status(), 401, "unknown, attempt {attempt}");
        assert_eq!(login(&app, &known, WRONG_PASSWORD).await.status(), 401, "known, attempt {attempt}");
    }
    let unknown_body = assert_rate_limited(login(&app, &unknown, WRONG_PASSWORD).await, 60, "unknown email").await;
    let known_body = assert_rate_limited(login(&app, &known, STRONG_PASSWORD).await, 60, "known email").await;
    assert_eq!(unknown_body, known_body, "the block does not tell accounts apart");
    assert_eq!(app.db.count("SELECT count(*) AS n FROM users").await, 1, "no row for the unknown email");
}

#[tokio::test]
async fn a_parallel_burst_of_wrong_passwords_gets_no_more_than_five_guesses() {
    // The block must hold against an attacker who sends the guesses at once rather than one after the other: the
    // backoff is the only per-email defence once the per-IP limit is spread over many addresses.
    let app = TestApp::spawn_with(&[("LOGIN_BACKOFF_BASE", "1m")]).await;
    let email = unique_email("burst");
    verified_account(&app, &email).await;
    let guesses: Vec<String> = (0..20).map(|i| format!("wrong-guess-number-{i:02}-xyz")).collect();
    let responses = join_all(guesses.iter().map(|guess| login(&app, &email, guess))).await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert!(statuses.iter().all(|s| *s == 401 || *s == 429), "{statuses:?}");
    let evaluated = statuses.iter().filter(|s| **s == 401).count();
    assert!(evaluated <= 5, "{evaluated} of 20 parallel guesses were checked against the password: {statuses:?}");
}

#[tokio::test]
async fn a_password_reset_clears_the_login_backoff() {
    let maildev = MailDev::shared();
    let env = maildev.app_env();
    let mut settings: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    settings.push(("LOGIN_BACKOFF_BASE", "1m"));
    let app = TestApp::spawn_with(&settings).await;
    let email = unique_email("reset-backoff");
    verified_account(&app, &email).await;
    for _ in 0..5 {
        assert_eq!(login(&app, &email, WRONG_PASSWORD).await.status(), 401);
    }
    assert_rate_limited(login(&app, &email, STRONG_PASSWORD).await, 60, "blocked").await;

    let forgot = app.client.post(app.url("/password/forgot")).json(&json!({ "email": email })).send().await.unwrap();
    assert_eq!(forgot.status(), 202);
    let mails = maildev.wait_for(&email, 2).await;
    let reset_mail = mails.iter().find(|m| m["subject"] == "Reset your password").expect("a reset mail");
    let reset_link = link(reset_mail, &format!("{PUBLIC_BASE_URL}/password/reset?token="));
    let token = reset_link.split("token=").nth(1).unwrap();
    let new_password = "amber-lantern-quiet-31";
    let reset = app
        .client
        .post(app.url("/password/reset"))
        .json(&json!({"token": token, "new_password": new_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 204);
    let after = login(&app, &email, new_password).await;
    assert_eq!(after.status(), 200, "the reset cleared the block: {}", after.text().await.unwrap());
}

// ---------------------------------------------------------------------------------------------------------------
// Per-client-IP limits

async fn limited_app() -> TestApp {
    TestApp::spawn_with(&[("RATE_LIMITS", "on"), ("RATE_LIMIT_PER_MINUTE", "3")]).await
}

#[tokio::test]
async fn the_fourth_registration_from_one_address_within_a_minute_is_429() {
    let app = limited_app().await;
    for attempt in 1..=3 {
        assert_eq!(register(&app, &unique_email("burst")).await.status(), 202, "attempt {attempt}");
    }
    assert_rate_limited(register(&app, &unique_email("burst")).await, 60, "4th register").await;
    // The limit is on the peer address; headers any client can write do not make a new one.
    for forwarded in ["203.0.113.7", "198.51.100.1, 10.0.0.1"] {
        let spoofed = app
            .client
            .post(app.url("/register"))
            .header("x-forwarded-for", forwarded)
            .header("x-real-ip", forwarded)
            .header("forwarded", format!("for={}", forwarded.split(',').next().unwrap()))
            .json(&json!({"email": unique_email("burst"), "password": STRONG_PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_rate_limited(spoofed, 60, &format!("4th register claiming to come from {forwarded}")).await;
    }
    assert_eq!(app.db.count("SELECT count(*) AS n FROM users").await, 3, "the refused registration stored nothing");
    assert_eq!(app.db.count("SELECT count(*) AS n FROM mail_outbox").await, 3, "and queued no mail");
}

#[tokio::test]
async fn the_fourth_forgot_and_resend_from_one_address_within_a_minute_are_429() {
    for path in ["/password/forgot", "/verify-email/resend"] {
        let app = limited_app().await;
        let email = unique_email("limited");
        assert_eq!(register(&app, &email).await.status(), 202);
        let outbox = app.db.count("SELECT count(*) AS n FROM mail_outbox").await;
        let post = || app.client.post(app.url(path)).json(&json!({ "email": email })).send();
        for attempt in 1..=3 {
            assert_eq!(post().await.unwrap().status(), 202, "{path}, attempt {attempt}");
        }
        // The requests are handled by the background worker, which queues a mail for each; a request repeated
        // while the same one still waits adds nothing, so three quick ones give one to three mails.
        let pending = app.db.count_eventually("SELECT count(*) AS n FROM account_requests", 0).await;
        assert_eq!(pending, 0, "{path}: the worker handled every request");
        let after_three = app.db.count("SELECT count(*) AS n FROM mail_outbox").await;
        assert!((outbox + 1..=outbox + 3).contains(&after_three), "{path}: {after_three} mails after {outbox}");
        assert_rate_limited(post().await.unwrap(), 60, &format!("4th {path}")).await;
        let pending = app.db.count("SELECT count(*) AS n FROM account_requests").await;
        assert_eq!(pending, 0, "{path}: the refused request was not queued");
        assert_eq!(app.db.count("SELECT count(*) AS n FROM mail_outbox").await, after_three, "{path}: no more mail");
    }
}

#[tokio::test]
async fn the_fourth_login_from_one_address_within_a_minute_is_429() {
    let app = limited_app().await;
    let email = unique_email("login-burst");
    verified_account(&app, &email).await;
    for attempt in 1..=3 {
        assert_eq!(login(&app, &email, WRONG_PASSWORD).await.status(), 401, "attempt {attempt}");
    }
    assert_rate_limited(login(&app, &email, STRONG_PASSWORD).await, 60, "4th login").await;
    assert_eq!(sessions(&app).await, 0, "the refused login started no session");
}

#[tokio::test]
async fn with_rate_limits_off_registration_is_never_429() {
    let app = TestApp::spawn_with(&[("RATE_LIMITS", "off"), ("RATE_LIMIT_PER_MINUTE", "3")]).await;
    for attempt in 1..=25 {
        assert_eq!(register(&app, &unique_email("unlimited")).await.status(), 202, "attempt {attempt}");
    }
    assert_eq!(app.db.count("SELECT count(*) AS n FROM users").await, 25);
}
