//! The holes closed by the hardening issue, tried over HTTP against the real binary, each on a fresh database:
//! stored values that must read back, `current_password` guesses counted on the per-account backoff, concurrent
//! correct logins and the growth of `Retry-After`, pre-hijacking, reset links that outlive a password change, and
//! the contract gaps of the admin routes and the password policy. Every test checks the answer and that nothing
//! else changed (rows, sessions, passwords, queued mail).

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
use users_e2e::{
    BinaryApp, STRONG_PASSWORD, WRONG_PASSWORD, assert_problem, json_body, login_json, str_of, unique_email,
};

const NEW_PASSWORD: &str = "amber-lantern-quiet-31";
const ADMIN_EMAIL: &str = "root@example.com";

// ---------------------------------------------------------------------------------------------------------------
// Helpers

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()
}

/// The real binary with mail going to files, plus `extra` settings.
async fn app_with(extra: &[(&str, &str)]) -> BinaryApp {
    BinaryApp::start_with(&owned(extra), |_| {}).await
}

/// The real binary delivering mail over SMTP to the shared MailDev, plus `extra` settings.
async fn smtp_app_with(maildev: &MailDev, extra: &[(&str, &str)]) -> BinaryApp {
    let mut env = maildev.app_env();
    env.extend(owned(extra));
    BinaryApp::start_with(&env, |_| {}).await
}

/// The bootstrap-administrator settings.
const WITH_ADMIN: [(&str, &str); 2] =
    [("BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL), ("BOOTSTRAP_ADMIN_PASSWORD", STRONG_PASSWORD)];

async fn register(app: &BinaryApp, body: &Value) -> reqwest::Response {
    app.client.post(app.url("/register")).json(body).send().await.unwrap()
}

async fn register_plain(app: &BinaryApp, email: &str, password: &str) -> reqwest::Response {
    register(app, &json!({"email": email, "password": password})).await
}

async fn post_email(app: &BinaryApp, path: &str, email: &str) -> reqwest::Response {
    app.client.post(app.url(path)).json(&json!({ "email": email })).send().await.unwrap()
}

async fn login(app: &BinaryApp, email: &str, password: &str) -> reqwest::Response {
    login_json(&app.client, &app.address, email, password).await
}

async fn get_me(app: &BinaryApp, access_token: &str) -> reqwest::Response {
    app.client.get(app.url("/me")).bearer_auth(access_token).send().await.unwrap()
}

/// Marks an account verified in the database, as following its link would.
async fn mark_verified(app: &BinaryApp, email: &str) {
    app.db
        .execute(&format!(
            "UPDATE users SET email_verified = true, role = 'AUTHENTICATED' WHERE lower(email) = lower('{email}')"
        ))
        .await;
}

/// Registers over HTTP, marks the account verified in the database, logs in and returns the access token.
async fn verified_user(app: &BinaryApp, email: &str) -> String {
    assert_eq!(register_plain(app, email, STRONG_PASSWORD).await.status(), 202, "register {email}");
    mark_verified(app, email).await;
    access_token_of(app, email).await
}

async fn access_token_of(app: &BinaryApp, email: &str) -> String {
    let response = login(app, email, STRONG_PASSWORD).await;
    let status = response.status();
    let body = json_body(response).await;
    assert_eq!(status, 200, "login of {email}: {body}");
    str_of(&body, "access_token").to_owned()
}

async fn id_of(app: &BinaryApp, access_token: &str) -> String {
    let me = get_me(app, access_token).await;
    assert_eq!(me.status(), 200);
    str_of(&json_body(me).await, "id").to_owned()
}

/// Checks a 422 `validation_failed` naming `field` among its errors.
async fn assert_invalid_field(response: reqwest::Response, field: &str, what: &str) {
    let problem = assert_problem(response, 422, "validation_failed", what).await;
    let fields: Vec<&str> =
        problem["errors"].as_array().unwrap().iter().filter_map(|error| error["field"].as_str()).collect();
    assert!(fields.contains(&field), "{what}: expected an error on {field}, got {problem}");
}

/// Checks a 429 `rate_limited` and returns its `Retry-After` in seconds.
async fn assert_rate_limited(response: reqwest::Response, what: &str) -> u64 {
    let retry_after = response.headers().get("retry-after").map(|value| value.to_str().unwrap().to_owned());
    assert_problem(response, 429, "rate_limited", what).await;
    let retry_after = retry_after.unwrap_or_else(|| panic!("{what}: no Retry-After header"));
    retry_after.parse().unwrap_or_else(|_| panic!("{what}: Retry-After {retry_after:?} is not a number of seconds"))
}

fn assert_not_server_error(response: &reqwest::Response, what: &str) {
    assert!(!response.status().is_server_error(), "{what}: {}", response.status());
}

async fn count(app: &BinaryApp, sql: &str) -> i64 {
    app.db.count(sql).await
}

async fn users_with_email(app: &BinaryApp, email: &str) -> i64 {
    count(app, &format!("SELECT count(*) AS n FROM users WHERE lower(email) = lower('{email}')")).await
}

async fn mail_queued_to(app: &BinaryApp, email: &str) -> i64 {
    count(app, &format!("SELECT count(*) AS n FROM mail_outbox WHERE lower(to_address) = lower('{email}')")).await
}

/// Copies every user's password hash aside, so that a test can later check that none changed.
async fn snapshot_password_hashes(app: &BinaryApp) {
    app.db.execute("CREATE TABLE test_password_snapshot AS SELECT id, password_hash FROM users").await;
}

async fn changed_password_hashes(app: &BinaryApp) -> i64 {
    count(
        app,
        "SELECT count(*) AS n FROM users u JOIN test_password_snapshot s ON s.id = u.id \
         WHERE s.password_hash <> u.password_hash",
    )
    .await
}

/// The link in a mail that starts with the app's address and `path`.
fn app_link(app: &BinaryApp, mail: &Value, path: &str) -> String {
    link(mail, &format!("{}{path}", app.address))
}

fn reset_token(reset_link: &str) -> String {
    reset_link.split("token=").nth(1).unwrap().to_owned()
}

async fn reset_password(app: &BinaryApp, token: &str, new_password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/password/reset"))
        .json(&json!({"token": token, "new_password": new_password}))
        .send()
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Every limit applies to the value as stored, and whatever is stored reads back

#[tokio::test]
async fn values_that_grow_past_their_limit_when_normalised_are_refused_and_the_address_stays_usable() {
    let app = app_with(&[]).await;
    let braces = |n: usize| format!("https://github.com/{}", "{".repeat(n));
    let linkedin_braces = format!("https://www.linkedin.com/in/{}", "{".repeat(2000));
    // U+FDFA is one character that NFKC expands to 18; U+FB03 (the "ffi" ligature) is one letter that becomes 3.
    let fdfa = |n: usize| "\u{FDFA}".repeat(n);
    let cases: Vec<(&str, Value)> = vec![
        // 2000 `{` are 2019 characters as typed, 6019 once percent-encoded.
        ("github_profile_url", json!(braces(2000))),
        // 19 + 3 x 677 = 2050 characters stored: just over the limit.
        ("github_profile_url", json!(braces(677))),
        ("linkedin_profile_url", json!(linkedin_braces)),
        ("first_name", json!(fdfa(10))),
        ("last_name", json!(fdfa(6))),
        ("bio", json!(fdfa(28))),
        ("nickname", json!("\u{FB03}".repeat(11))),
    ];
    for (field, value) in &cases {
        let email = unique_email("grows");
        let mut body = json!({"email": email, "password": STRONG_PASSWORD});
        body[*field] = value.clone();
        assert_invalid_field(register(&app, &body).await, field, &format!("register with a long stored {field}")).await;
        assert_eq!(users_with_email(&app, &email).await, 0, "{field}: nothing was stored");
        assert_eq!(mail_queued_to(&app, &email).await, 0, "{field}: no mail was queued");

        // The address is as good as new: every public route for it answers as for any unverified account.
        assert_eq!(register_plain(&app, &email, STRONG_PASSWORD).await.status(), 202, "{field}: register again");
        let unverified = login(&app, &email, STRONG_PASSWORD).await;
        assert_problem(unverified, 403, "email_not_verified", &format!("{field}: login")).await;
        assert_eq!(post_email(&app, "/password/forgot", &email).await.status(), 202, "{field}: forgot");
        assert_eq!(post_email(&app, "/verify-email/resend", &email).await.status(), 202, "{field}: resend");
        assert_eq!(register_plain(&app, &email, STRONG_PASSWORD).await.status(), 202, "{field}: register twice");
    }
    assert_eq!(count(&app, "SELECT count(*) AS n FROM users").await, i64::try_from(cases.len()).unwrap());

    // Values near the limits may be accepted or refused, but whatever is accepted reads back.
    for (field, value) in [
        ("github_profile_url", json!(braces(600))),
        ("first_name", json!(fdfa(5))),
        ("bio", json!(fdfa(27))),
        ("nickname", json!("\u{FB03}".repeat(10))),
    ] {
        let email = unique_email("near");
        let mut body = json!({"email": email, "password": STRONG_PASSWORD});
        body[field] = value;
        let response = register(&app, &body).await;
        let status = response.status().as_u16();
        assert!(status == 202 || status == 422, "{field} near its limit: {status}");
        let stored = users_with_email(&app, &email).await;
        assert_eq!(stored, i64::from(status == 202), "{field}: a row exactly when accepted");
        mark_verified(&app, &email).await;
        let access = login(&app, &email, STRONG_PASSWORD).await;
        if status == 202 {
            assert_eq!(access.status(), 200, "{field}: the accepted row reads back at login");
            let token = str_of(&json_body(access).await, "access_token").to_owned();
            assert_eq!(get_me(&app, &token).await.status(), 200, "{field}: and at GET /me");
        } else {
            assert_problem(access, 401, "invalid_credentials", &format!("{field}: refused, so no account")).await;
        }
    }
}

#[tokio::test]
async fn a_stored_row_that_no_longer_parses_takes_down_neither_the_list_nor_any_request_for_its_address() {
    let app = app_with(&WITH_ADMIN).await;
    let admin = access_token_of(&app, ADMIN_EMAIL).await;
    let good = unique_email("good");
    let good_token = verified_user(&app, &good).await;
    // One account whose optional profile fields hold values the domain refuses but the columns accept.
    let odd = unique_email("odd-profile");
    let odd_id = id_of(&app, &verified_user(&app, &odd).await).await;
    // One whose nickname, which every user has, is such a value.
    let broken = unique_email("bad-nickname");
    verified_user(&app, &broken).await;
    app.db
        .execute(&format!(
            "UPDATE users SET github_profile_url = 'not a url', linkedin_profile_url = 'javascript:alert(1)', \
             first_name = E'Ada\\u202Enimda' WHERE lower(email) = lower('{odd}')"
        ))
        .await;
    app.db
        .execute(&format!("UPDATE users SET nickname = 'not a nickname!' WHERE lower(email) = lower('{broken}')"))
        .await;
    let corrupt = "SELECT count(*) AS n FROM users WHERE (github_profile_url = 'not a url' \
                   AND first_name = E'Ada\\u202Enimda') OR nickname = 'not a nickname!'";
    assert_eq!(count(&app, corrupt).await, 2, "both rows hold values the domain refuses");

    // The admin list answers, with every readable user; the unreadable optional fields read back as absent.
    let list = app.client.get(app.url("/users?limit=100")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(list.status(), 200, "GET /users with unreadable rows in it");
    let list = json_body(list).await;
    let items = list["items"].as_array().unwrap();
    let emails: Vec<&str> = items.iter().filter_map(|user| user["email"].as_str()).collect();
    for expected in [ADMIN_EMAIL, good.as_str(), odd.as_str()] {
        assert!(emails.contains(&expected), "{expected} missing from {emails:?}");
    }
    let listed_odd = items.iter().find(|user| user["email"] == odd.as_str()).unwrap();
    for field in ["github_profile_url", "linkedin_profile_url", "first_name"] {
        assert_eq!(listed_odd[field], Value::Null, "{field} of the odd row in the list: {listed_odd}");
    }
    let one = app.client.get(app.url(&format!("/users/{odd_id}"))).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(one.status(), 200, "GET /users/{{id}} of the odd row");
    assert_eq!(json_body(one).await["github_profile_url"], Value::Null);

    // Other users are untouched by either row.
    assert_eq!(get_me(&app, &good_token).await.status(), 200);

    // The owner of the odd row still logs in and reads their profile.
    let odd_token = access_token_of(&app, &odd).await;
    let me = json_body(get_me(&app, &odd_token).await).await;
    assert_eq!(me["email"], odd.as_str());
    assert_eq!(me["github_profile_url"], Value::Null);

    // Every public route for either address answers without a server error.
    for email in [&odd, &broken] {
        let what = |route: &str| format!("{route} for {email}");
        let registered = register_plain(&app, email, STRONG_PASSWORD).await;
        assert_eq!(registered.status(), 202, "{}", what("register"));
        assert_eq!(post_email(&app, "/password/forgot", email).await.status(), 202, "{}", what("forgot"));
        assert_eq!(post_email(&app, "/verify-email/resend", email).await.status(), 202, "{}", what("resend"));
        let logged_in = login(&app, email, STRONG_PASSWORD).await;
        assert_not_server_error(&logged_in, &what("login"));
        let wrong = login(&app, email, WRONG_PASSWORD).await;
        assert_not_server_error(&wrong, &what("login with a wrong password"));
    }
    assert_eq!(count(&app, "SELECT count(*) AS n FROM users").await, 4, "no row was added or removed");
}

// ---------------------------------------------------------------------------------------------------------------
// 2. `current_password` guesses count on the per-account backoff

/// Three failures block the account for half a minute: long enough that no step of a test outlives the block.
const THREE_STRIKES: [(&str, &str); 3] =
    [("LOGIN_BACKOFF_AFTER", "3"), ("LOGIN_BACKOFF_BASE", "30s"), ("LOGIN_BACKOFF_MAX", "1m")];

#[derive(Clone, Copy, Debug)]
enum Guarded {
    ChangePassword,
    ChangeEmail,
    DeleteAccount,
}

impl Guarded {
    async fn send(self, app: &BinaryApp, access: &str, current_password: &str, new_email: &str) -> reqwest::Response {
        let request = match self {
            Self::ChangePassword => app
                .client
                .post(app.url("/me/password"))
                .json(&json!({"current_password": current_password, "new_password": NEW_PASSWORD})),
            Self::ChangeEmail => app
                .client
                .patch(app.url("/me"))
                .json(&json!({"email": new_email, "current_password": current_password, "bio": "changed"})),
            Self::DeleteAccount => {
                app.client.delete(app.url("/me")).json(&json!({"current_password": current_password}))
            }
        };
        request.bearer_auth(access).send().await.unwrap()
    }
}

/// Three wrong `current_password`s are 403, then the account is blocked: the same route answers 429 even for the
/// right password, and so does a login with the right password. Nothing the guarded route would do was done.
async fn current_password_guesses_block_the_account(route: Guarded) {
    let app = app_with(&THREE_STRIKES).await;
    let email = unique_email("guarded");
    let new_email = unique_email("new-address");
    let access = verified_user(&app, &email).await;
    snapshot_password_hashes(&app).await;
    let outbox = count(&app, "SELECT count(*) AS n FROM mail_outbox").await;

    for attempt in 1..=3 {
        let guess = format!("{WRONG_PASSWORD}-{attempt}");
        let response = route.send(&app, &access, &guess, &new_email).await;
        assert_problem(response, 403, "invalid_current_password", &format!("{route:?}: wrong guess {attempt}")).await;
    }
    let fourth = route.send(&app, &access, WRONG_PASSWORD, &new_email).await;
    let retry_after = assert_rate_limited(fourth, &format!("{route:?}: a fourth wrong guess")).await;
    assert!((1..=60).contains(&retry_after), "{route:?}: Retry-After {retry_after}");
    let right = route.send(&app, &access, STRONG_PASSWORD, &new_email).await;
    assert_rate_limited(right, &format!("{route:?}: the right password while blocked")).await;
    assert_rate_limited(login(&app, &email, STRONG_PASSWORD).await, &format!("{route:?}: login, same counter")).await;

    // Nothing changed: the account, its password, its email, its profile, its sessions, the outbox.
    assert_eq!(users_with_email(&app, &email).await, 1, "{route:?}: the account still exists");
    assert_eq!(changed_password_hashes(&app).await, 0, "{route:?}: the password is unchanged");
    let untouched = format!(
        "SELECT count(*) AS n FROM users WHERE lower(email) = lower('{email}') AND pending_email IS NULL \
         AND bio IS NULL"
    );
    assert_eq!(count(&app, &untouched).await, 1, "{route:?}: no email change pending, bio unchanged");
    assert_eq!(count(&app, "SELECT count(*) AS n FROM sessions WHERE revoked_at IS NOT NULL").await, 0);
    assert_eq!(count(&app, "SELECT count(*) AS n FROM mail_outbox").await, outbox, "{route:?}: no mail queued");
    assert_eq!(get_me(&app, &access).await.status(), 200, "{route:?}: the session still works");
}

#[tokio::test]
async fn wrong_current_passwords_at_password_change_count_on_the_login_backoff() {
    current_password_guesses_block_the_account(Guarded::ChangePassword).await;
}

#[tokio::test]
async fn wrong_current_passwords_at_email_change_count_on_the_login_backoff() {
    current_password_guesses_block_the_account(Guarded::ChangeEmail).await;
}

#[tokio::test]
async fn wrong_current_passwords_at_account_deletion_count_on_the_login_backoff() {
    current_password_guesses_block_the_account(Guarded::DeleteAccount).await;
}

#[tokio::test]
async fn forty_parallel_current_password_guesses_with_one_token_get_only_a_few_checked() {
    let app = app_with(&THREE_STRIKES).await;
    let email = unique_email("parallel-guesses");
    let access = verified_user(&app, &email).await;
    snapshot_password_hashes(&app).await;
    let guesses: Vec<String> = (0..40).map(|i| format!("wrong-guess-number-{i:02}-xyz")).collect();
    let responses = join_all(guesses.iter().map(|guess| {
        app.client
            .post(app.url("/me/password"))
            .bearer_auth(&access)
            .json(&json!({"current_password": guess, "new_password": NEW_PASSWORD}))
            .send()
    }))
    .await;
    let statuses: Vec<u16> = responses.into_iter().map(|response| response.unwrap().status().as_u16()).collect();
    assert!(statuses.iter().all(|status| *status == 403 || *status == 429), "{statuses:?}");
    let checked = statuses.iter().filter(|status| **status == 403).count();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let allowed = 3 + 2 * cores;
    assert!(checked <= allowed, "{checked} of 40 parallel guesses were checked (at most {allowed}): {statuses:?}");
    assert_rate_limited(login(&app, &email, STRONG_PASSWORD).await, "login after the burst").await;
    assert_eq!(changed_password_hashes(&app).await, 0, "the password is unchanged");
    assert_eq!(get_me(&app, &access).await.status(), 200, "the session still works");
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Only a wrong password is a failure, and Retry-After shows the growth

#[tokio::test]
async fn thirty_two_concurrent_logins_with_the_right_password_all_succeed() {
    // A low threshold makes in-flight attempts that were wrongly counted as failures show up at once.
    let app = app_with(&[("RATE_LIMITS", "off"), ("LOGIN_BACKOFF_AFTER", "2"), ("LOGIN_BACKOFF_BASE", "1m")]).await;
    let email = unique_email("concurrent");
    verified_user(&app, &email).await;
    let sessions_before = count(&app, "SELECT count(*) AS n FROM sessions").await;
    let responses = join_all((0..32).map(|_| login(&app, &email, STRONG_PASSWORD))).await;
    let statuses: Vec<u16> = responses.iter().map(|response| response.status().as_u16()).collect();
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(count(&app, "SELECT count(*) AS n FROM sessions").await, sessions_before + 32);
    // No failure was left behind either: two wrong passwords are still answered as such.
    for attempt in 1..=2 {
        assert_eq!(login(&app, &email, WRONG_PASSWORD).await.status(), 401, "wrong password {attempt}");
    }
}

#[tokio::test]
async fn retry_after_starts_at_the_base_and_doubles_up_to_the_maximum() {
    let app =
        app_with(&[("LOGIN_BACKOFF_AFTER", "2"), ("LOGIN_BACKOFF_BASE", "1s"), ("LOGIN_BACKOFF_MAX", "2s")]).await;
    let email = unique_email("growth");
    verified_user(&app, &email).await;
    for attempt in 1..=2 {
        let response = login(&app, &email, WRONG_PASSWORD).await;
        assert_problem(response, 401, "invalid_credentials", &format!("wrong password {attempt}")).await;
    }
    let first = assert_rate_limited(login(&app, &email, WRONG_PASSWORD).await, "the first block").await;
    assert_eq!(first, 1, "the first 429 advertises LOGIN_BACKOFF_BASE");

    // Wait for the block to end: the first attempt that is not 429 is checked, and it is one more failure.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = login(&app, &email, WRONG_PASSWORD).await;
        if response.status() != 429 {
            assert_problem(response, 401, "invalid_credentials", "the first attempt after the block").await;
            break;
        }
        assert!(Instant::now() < deadline, "the 1 s block did not end within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = assert_rate_limited(login(&app, &email, WRONG_PASSWORD).await, "the second block").await;
    assert_eq!(second, 2, "the next block doubles to LOGIN_BACKOFF_MAX");
    assert_eq!(count(&app, "SELECT count(*) AS n FROM sessions WHERE revoked_at IS NULL").await, 1);
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Taking an account back kills the attacker's verification link

#[tokio::test]
async fn the_attackers_verification_link_dies_when_the_mailbox_owner_registers() {
    let maildev = MailDev::shared();
    let app = smtp_app_with(&maildev, &[]).await;
    let address = unique_email("prehijack");
    let attacker_password = "attacker-chose-this-97";
    assert_eq!(register_plain(&app, &address, attacker_password).await.status(), 202);
    let attacker_link = app_link(&app, &maildev.wait_for(&address, 1).await[0], "/verify-email/");

    // The owner registers the same address with their own password: the same answer, and a mail of their own.
    assert_eq!(register_plain(&app, &address, STRONG_PASSWORD).await.status(), 202);
    let mails = maildev.wait_for(&address, 2).await;
    let owners_mail = mails.iter().find(|mail| !mail["text"].as_str().unwrap().contains(&attacker_link)).unwrap();

    let stale = app.client.get(&attacker_link).send().await.unwrap();
    assert_problem(stale, 400, "invalid_or_expired_token", "the attacker's link after the owner registered").await;
    let verified =
        format!("SELECT count(*) AS n FROM users WHERE lower(email) = lower('{address}') AND email_verified");
    assert_eq!(count(&app, &verified).await, 0, "the account is not verified");
    let attacker_login = login(&app, &address, attacker_password).await;
    assert!([401, 403].contains(&attacker_login.status().as_u16()), "login with A: {}", attacker_login.status());
    assert_eq!(count(&app, "SELECT count(*) AS n FROM sessions").await, 0, "the attacker got no session");

    // The attacker asks for a fresh verification link, which reaches the owner, who follows it: the account is
    // confirmed, but the attacker's password died with the takeover, so it still does not open it.
    assert_eq!(post_email(&app, "/verify-email/resend", &address).await.status(), 202);
    let resent = maildev.wait_for(&address, 3).await;
    let resent = resent
        .iter()
        .find(|mail| {
            let text = mail["text"].as_str().unwrap();
            text.contains("/verify-email/") && !text.contains(&attacker_link)
        })
        .expect("a fresh verification mail");
    let fresh_link = app_link(&app, resent, "/verify-email/");
    assert_eq!(app.client.get(&fresh_link).send().await.unwrap().status(), 200);
    let after_resend = login(&app, &address, attacker_password).await;
    assert_problem(after_resend, 401, "invalid_credentials", "A after the owner followed a resent link").await;

    // The owner follows their own, newest link: it lets them set their password, or confirms the one they chose.
    let text = owners_mail["text"].as_str().unwrap();
    if text.contains("/password/reset?token=") {
        let token = reset_token(&app_link(&app, owners_mail, "/password/reset?token="));
        assert_eq!(reset_password(&app, &token, STRONG_PASSWORD).await.status(), 204);
    } else {
        let own_link = app_link(&app, owners_mail, "/verify-email/");
        assert_eq!(app.client.get(&own_link).send().await.unwrap().status(), 200);
    }
    assert_problem(login(&app, &address, attacker_password).await, 401, "invalid_credentials", "A").await;
    let token = access_token_of(&app, &address).await;
    let me = json_body(get_me(&app, &token).await).await;
    assert_eq!(me["email_verified"], true);
    assert_eq!(me["role"], "AUTHENTICATED");
    assert_eq!(users_with_email(&app, &address).await, 1);
}

// ---------------------------------------------------------------------------------------------------------------
// 5. A password change kills reset links

#[tokio::test]
async fn a_password_change_kills_the_reset_links_sent_before_it() {
    let maildev = MailDev::shared();
    let app = smtp_app_with(&maildev, &[]).await;
    let email = unique_email("change-kills-reset");
    let access = verified_user(&app, &email).await;
    assert_eq!(post_email(&app, "/password/forgot", &email).await.status(), 202);
    let reset_mail = maildev.wait_for_subject(&email, "Reset your password").await;
    let token = reset_token(&app_link(&app, &reset_mail, "/password/reset?token="));

    let changed = app
        .client
        .post(app.url("/me/password"))
        .bearer_auth(&access)
        .json(&json!({"current_password": STRONG_PASSWORD, "new_password": NEW_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 204);

    let third_password = "copper-meadow-silent-58";
    let stale = reset_password(&app, &token, third_password).await;
    assert_problem(stale, 400, "invalid_or_expired_token", "the reset link after a password change").await;
    assert_eq!(login(&app, &email, NEW_PASSWORD).await.status(), 200, "the changed password still works");
    assert_problem(login(&app, &email, third_password).await, 401, "invalid_credentials", "the link's password").await;
    assert_problem(login(&app, &email, STRONG_PASSWORD).await, 401, "invalid_credentials", "the old password").await;
}

// ---------------------------------------------------------------------------------------------------------------
// 6. Contract gaps

async fn create_user(app: &BinaryApp, admin: &str, email: &str, role: &str) -> String {
    let response = app
        .client
        .post(app.url("/users"))
        .bearer_auth(admin)
        .json(&json!({"email": email, "password": STRONG_PASSWORD, "role": role, "email_verified": true}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = json_body(response).await;
    assert_eq!(status, 201, "create {email} as {role}: {body}");
    str_of(&body, "id").to_owned()
}

#[tokio::test]
async fn an_admin_changes_a_users_email_at_once_and_the_new_address_must_confirm_it() {
    let maildev = MailDev::shared();
    let app = smtp_app_with(&maildev, &WITH_ADMIN).await;
    let admin = access_token_of(&app, ADMIN_EMAIL).await;
    let old = unique_email("admin-old");
    let taken = unique_email("admin-taken");
    let id = create_user(&app, &admin, &old, "AUTHENTICATED").await;
    create_user(&app, &admin, &taken, "AUTHENTICATED").await;
    let user_url = app.url(&format!("/users/{id}"));

    // A taken address, in any case, is 409 and changes nothing.
    let outbox = count(&app, "SELECT count(*) AS n FROM mail_outbox").await;
    for address in [taken.clone(), taken.to_uppercase()] {
        let response = app.client.patch(&user_url).bearer_auth(&admin).json(&json!({"email": address})).send();
        assert_problem(response.await.unwrap(), 409, "email_taken", &format!("PATCH to {address}")).await;
    }
    let put = app.client.put(&user_url).bearer_auth(&admin).json(&json!({"email": taken})).send();
    assert_problem(put.await.unwrap(), 409, "email_taken", "PUT to a taken address").await;
    assert_eq!(users_with_email(&app, &old).await, 1);
    assert_eq!(count(&app, "SELECT count(*) AS n FROM mail_outbox").await, outbox, "no mail for a refused change");

    // A free address takes effect at once, unverified; the new address gets a link, the old one a notice.
    let new = unique_email("admin-new");
    let old_mails = mail_queued_to(&app, &old).await;
    let changed = app.client.patch(&user_url).bearer_auth(&admin).json(&json!({"email": new})).send().await.unwrap();
    assert_eq!(changed.status(), 200);
    let user = json_body(changed).await;
    assert_eq!(user["email"], new.as_str());
    assert_eq!(user["email_verified"], false);
    assert_eq!(user["pending_email"], Value::Null);
    assert_eq!(users_with_email(&app, &old).await, 0);
    assert_problem(login(&app, &old, STRONG_PASSWORD).await, 401, "invalid_credentials", "the old address").await;
    assert_problem(login(&app, &new, STRONG_PASSWORD).await, 403, "email_not_verified", "the new address").await;
    let notices = maildev.wait_for(&old, usize::try_from(old_mails).unwrap() + 1).await;
    assert!(
        notices.iter().all(|mail| !mail["text"].as_str().unwrap().contains("/verify-email/")),
        "the old address gets no link"
    );
    let confirmation = maildev.wait_for(&new, 1).await;
    let verify = app_link(&app, &confirmation[0], "/verify-email/");
    assert_eq!(app.client.get(&verify).send().await.unwrap().status(), 200);
    assert_eq!(login(&app, &new, STRONG_PASSWORD).await.status(), 200, "confirmed, the new address logs in");

    // With `email_verified: true` in the same request (PUT as well), the address counts as verified: no link.
    let newer = unique_email("admin-newer");
    let verified = app
        .client
        .put(&user_url)
        .bearer_auth(&admin)
        .json(&json!({"email": newer, "email_verified": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), 200);
    let user = json_body(verified).await;
    assert_eq!(user["email"], newer.as_str());
    assert_eq!(user["email_verified"], true);
    let links = format!(
        "SELECT count(*) AS n FROM mail_outbox WHERE lower(to_address) = lower('{newer}') \
         AND text_body LIKE '%/verify-email/%'"
    );
    assert_eq!(count(&app, &links).await, 0, "a verified address gets no verification link");
    assert_eq!(login(&app, &newer, STRONG_PASSWORD).await.status(), 200);
    assert_eq!(count(&app, "SELECT count(*) AS n FROM users").await, 3, "no user was added or removed");
}

#[tokio::test]
async fn an_admin_may_delete_themself_while_another_unlocked_admin_remains() {
    let app = app_with(&WITH_ADMIN).await;
    let root = access_token_of(&app, ADMIN_EMAIL).await;
    let root_id = id_of(&app, &root).await;
    let second_id = create_user(&app, &root, "second@example.com", "ADMIN").await;
    let locked_id = create_user(&app, &root, "locked@example.com", "ADMIN").await;
    let second = access_token_of(&app, "second@example.com").await;
    let lock = app
        .client
        .patch(app.url(&format!("/users/{locked_id}")))
        .bearer_auth(&root)
        .json(&json!({"is_locked": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(lock.status(), 200);

    let leave = app.client.delete(app.url(&format!("/users/{second_id}"))).bearer_auth(&second).send().await.unwrap();
    assert_eq!(leave.status(), 204, "an ADMIN deletes themself while root remains");
    assert_eq!(users_with_email(&app, "second@example.com").await, 0);
    assert_eq!(get_me(&app, &second).await.status(), 401, "their sessions went with them");

    // Root is now the last unlocked ADMIN; the locked one does not count.
    let last = app.client.delete(app.url(&format!("/users/{root_id}"))).bearer_auth(&root).send().await.unwrap();
    assert_problem(last, 409, "last_admin", "the last unlocked ADMIN deleting themself").await;
    assert_eq!(get_me(&app, &root).await.status(), 200);
    assert_eq!(count(&app, "SELECT count(*) AS n FROM users WHERE role = 'ADMIN' AND NOT is_locked").await, 1);
    assert_eq!(count(&app, "SELECT count(*) AS n FROM users").await, 2, "root and the locked ADMIN");
}

#[tokio::test]
async fn a_password_built_from_the_emails_local_part_is_refused() {
    let app = app_with(&[]).await;
    // Made-up words, so that only the email can make these passwords guessable.
    let email = "zorblax.quendrith@example.com";
    for password in ["zorblaxquendrith12345678", "zorblax.quendrith12345678", "quendrith12345678"] {
        let response = register_plain(&app, email, password).await;
        assert_invalid_field(response, "password", &format!("{password} for {email}")).await;
    }
    assert_eq!(count(&app, "SELECT count(*) AS n FROM users").await, 0);
    assert_eq!(count(&app, "SELECT count(*) AS n FROM mail_outbox").await, 0);
    // The same password is fine for somebody else: the refusal comes from the context, not the password alone.
    let other = unique_email("someone-else");
    assert_eq!(register_plain(&app, &other, "zorblaxquendrith12345678").await.status(), 202);
    assert_eq!(users_with_email(&app, &other).await, 1);
}
