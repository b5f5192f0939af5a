//! The second factor end to end on the real binary, with mail over SMTP to MailDev: TOTP setup and confirmation,
//! the two-step login, replayed and wrong codes, the `mfa_token`'s five attempts, recovery codes, the backoff that
//! codes share with passwords, turning it off, and the administrator's reset.
//!
//! The codes are computed by a small RFC 6238 implementation of the tests' own (`support/totp.rs`: HMAC-SHA-1 from
//! the `hmac` and `sha1` crates), checked first against the RFC's test vectors, so the binary is held to the RFC
//! rather than to the library it uses.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers: failing loudly is the point")]

use serde_json::{Value, json};
use users_e2e::maildev::MailDev;
use users_e2e::totp::{base32_decode, step_with_time_left, totp};
use users_e2e::{BinaryApp, STRONG_PASSWORD, assert_problem, json_body, login_json, str_of, unique_email};

const ADMIN: &str = "mfa-root@example.com";

#[test]
fn the_test_implementation_gives_the_rfc_6238_vectors() {
    let seed = b"12345678901234567890";
    for (time, expected) in [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ] {
        assert_eq!(totp(seed, time / 30, 8), expected, "at {time}");
    }
    assert_eq!(base32_decode("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"), seed);
}

struct World {
    maildev: MailDev,
    app: BinaryApp,
}

impl World {
    async fn start(extra: &[(&str, &str)]) -> Self {
        let maildev = MailDev::shared();
        let mut env = maildev.app_env();
        env.push(("BOOTSTRAP_ADMIN_EMAIL".to_owned(), ADMIN.to_owned()));
        env.push(("BOOTSTRAP_ADMIN_PASSWORD".to_owned(), STRONG_PASSWORD.to_owned()));
        env.extend(extra.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())));
        let app = BinaryApp::start_with(&env, |_| {}).await;
        Self { maildev, app }
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> reqwest::Response {
        let mut request = self.app.client.post(self.app.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    async fn delete(&self, path: &str, token: &str, body: Option<&Value>) -> reqwest::Response {
        let mut request = self.app.client.delete(self.app.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.unwrap()
    }

    async fn me(&self, token: &str) -> Value {
        json_body(self.app.client.get(self.app.url("/me")).bearer_auth(token).send().await.unwrap()).await
    }

    /// A full login without a second factor: the access token.
    async fn token(&self, email: &str) -> String {
        let response = login_json(&self.app.client, &self.app.address, email, STRONG_PASSWORD).await;
        assert_eq!(response.status(), 200, "login of {email}");
        str_of(&json_body(response).await, "access_token").to_owned()
    }

    /// A verified user created by the administrator; returns their id.
    async fn user(&self, email: &str) -> String {
        let admin = self.token(ADMIN).await;
        let body = json!({"email": email, "password": STRONG_PASSWORD, "email_verified": true});
        let response = self.post("/users", Some(&admin), &body).await;
        assert_eq!(response.status(), 201);
        str_of(&json_body(response).await, "id").to_owned()
    }

    /// The `mfa_token` of a right password.
    async fn mfa_token(&self, email: &str) -> String {
        let response = login_json(&self.app.client, &self.app.address, email, STRONG_PASSWORD).await;
        let problem = assert_problem(response, 401, "mfa_required", "password step").await;
        assert_eq!(problem["expires_in"], 300);
        assert!(problem.get("access_token").is_none());
        str_of(&problem, "mfa_token").to_owned()
    }

    async fn second_step(&self, mfa_token: &str, code: &str) -> reqwest::Response {
        self.post("/login/mfa", None, &json!({"mfa_token": mfa_token, "code": code})).await
    }

    /// Sets up and confirms TOTP for a logged-in user, with the code of step `step - 1`; returns the raw secret,
    /// the base32 secret and the recovery codes.
    async fn enroll(&self, email: &str, token: &str, step: u64) -> (Vec<u8>, String, Vec<String>) {
        let wrong =
            self.post("/me/mfa/totp/setup", Some(token), &json!({"current_password": "nope-nope-nope-42"})).await;
        assert_problem(wrong, 403, "invalid_current_password", "setup with a wrong password").await;
        let setup = self.post("/me/mfa/totp/setup", Some(token), &json!({"current_password": STRONG_PASSWORD})).await;
        assert_eq!(setup.status(), 200);
        assert_eq!(setup.headers()["cache-control"], "no-store");
        let setup = json_body(setup).await;
        let base32 = str_of(&setup, "secret").to_owned();
        let uri = str_of(&setup, "otpauth_uri");
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
        assert!(uri.contains(&format!("secret={base32}")), "{uri}");
        assert!(uri.contains(&email.replace('@', "%40")), "the URI names the account: {uri}");
        assert!(uri.contains("issuer="), "{uri}");
        let secret = base32_decode(&base32);
        assert_eq!(secret.len(), 20, "160-bit secrets");
        assert_eq!(self.me(token).await["mfa_enabled"], false, "not active until confirmed");

        let wrong = self.post("/me/mfa/totp/confirm", Some(token), &json!({"code": "000000"})).await;
        assert_problem(wrong, 403, "invalid_mfa_code", "confirm with a wrong code").await;
        let confirm =
            self.post("/me/mfa/totp/confirm", Some(token), &json!({"code": totp(&secret, step - 1, 6)})).await;
        assert_eq!(confirm.status(), 200);
        let codes: Vec<String> = json_body(confirm).await["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|code| code.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(codes.len(), 10);
        assert_eq!(self.me(token).await["mfa_enabled"], true);
        self.maildev.wait_for_subject(email, "Two-step login is on").await;
        (secret, base32, codes)
    }
}

#[tokio::test]
async fn totp_from_setup_to_login_with_replay_exhaustion_recovery_and_turning_it_off() {
    // The flow makes more wrong tries than the default backoff allows; the backoff has its own test below.
    let world = World::start(&[("LOGIN_BACKOFF_AFTER", "20")]).await;
    let email = unique_email("mfa-flow");
    world.user(&email).await;
    let token = world.token(&email).await;
    let step = step_with_time_left(20).await;
    let (secret, base32, codes) = world.enroll(&email, &token, step).await;
    let again = world.post("/me/mfa/totp/setup", Some(&token), &json!({"current_password": STRONG_PASSWORD})).await;
    assert_problem(again, 409, "mfa_already_enabled", "a second setup").await;

    // The password alone starts no session; a wrong password never reaches the second step.
    let wrong = login_json(&world.app.client, &world.app.address, &email, "not-the-password-at-all-1").await;
    assert_problem(wrong, 401, "invalid_credentials", "wrong password").await;
    let mfa_token = world.mfa_token(&email).await;
    let bad = world.second_step(&mfa_token, "000000").await;
    assert_problem(bad, 401, "invalid_mfa_code", "a wrong code").await;
    // The confirming step's code is spent: a replay, refused, and the token lives on.
    let replay = world.second_step(&mfa_token, &totp(&secret, step - 1, 6)).await;
    assert_problem(replay, 401, "invalid_mfa_code", "the confirming code again").await;
    let login = world.second_step(&mfa_token, &totp(&secret, step, 6)).await;
    assert_eq!(login.status(), 200);
    assert_eq!(login.headers()["cache-control"], "no-store");
    let pair = json_body(login).await;
    assert_eq!(world.me(str_of(&pair, "access_token")).await["email"], email.as_str());
    let used = world.second_step(&mfa_token, &totp(&secret, step + 1, 6)).await;
    assert_problem(used, 401, "invalid_token", "a used mfa_token").await;

    // The same code on a new login: a replay.
    let mfa_token = world.mfa_token(&email).await;
    let replay = world.second_step(&mfa_token, &totp(&secret, step, 6)).await;
    assert_problem(replay, 401, "invalid_mfa_code", "a replayed code").await;
    // Four more wrong codes use the token up: even the right one is refused after.
    for _ in 0..4 {
        let bad = world.second_step(&mfa_token, "123456").await;
        assert_eq!(bad.status(), 401);
    }
    let dead = world.second_step(&mfa_token, &totp(&secret, step + 1, 6)).await;
    assert_problem(dead, 401, "invalid_token", "a sixth code").await;

    // A recovery code logs in once, and the owner is told.
    let mfa_token = world.mfa_token(&email).await;
    let recovered = world.second_step(&mfa_token, &codes[0]).await;
    assert_eq!(recovered.status(), 200);
    let mail = world.maildev.wait_for_subject(&email, "A recovery code was used to log in").await;
    assert!(mail["text"].as_str().unwrap().contains("You have 9 left"), "{mail}");
    let mfa_token = world.mfa_token(&email).await;
    let reused = world.second_step(&mfa_token, &codes[0]).await;
    assert_problem(reused, 401, "invalid_mfa_code", "a used recovery code").await;

    // New recovery codes (password + a TOTP code) replace the old ones.
    let renew = json!({"current_password": STRONG_PASSWORD, "code": totp(&secret, step + 1, 6)});
    let renewed = world.post("/me/mfa/recovery-codes", Some(&token), &renew).await;
    assert_eq!(renewed.status(), 200);
    let fresh: Vec<String> = json_body(renewed).await["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|code| code.as_str().unwrap().to_owned())
        .collect();
    let old = world.second_step(&mfa_token, &codes[1]).await;
    assert_problem(old, 401, "invalid_mfa_code", "a replaced recovery code").await;

    // Turning it off needs the password and a code (a recovery code does); it mails a notice.
    let no_code = json!({"current_password": STRONG_PASSWORD, "code": "000000"});
    let refused = world.delete("/me/mfa", &token, Some(&no_code)).await;
    assert_problem(refused, 403, "invalid_mfa_code", "turning it off with a wrong code").await;
    let off = json!({"current_password": STRONG_PASSWORD, "code": fresh[0]});
    assert_eq!(world.delete("/me/mfa", &token, Some(&off)).await.status(), 204);
    world.maildev.wait_for_subject(&email, "Two-step login is off").await;
    assert_eq!(world.me(&token).await["mfa_enabled"], false);
    world.token(&email).await;
    let twice = world.delete("/me/mfa", &token, Some(&off)).await;
    assert_problem(twice, 409, "mfa_not_enabled", "turning it off twice").await;

    // No secret, code or token of the flow appears in any mail the user received.
    for mail in world.maildev.mails_to(&email).await {
        let text = format!("{mail}");
        for secret in [base32.as_str(), codes[0].as_str(), fresh[0].as_str()] {
            assert!(!text.contains(secret), "a mail shows a secret: {text}");
        }
    }
}

#[tokio::test]
async fn codes_count_on_the_same_backoff_as_passwords() {
    let world = World::start(&[("LOGIN_BACKOFF_AFTER", "3"), ("LOGIN_BACKOFF_BASE", "30s")]).await;
    let email = unique_email("mfa-backoff");
    world.user(&email).await;
    let token = world.token(&email).await;
    let step = step_with_time_left(20).await;
    let (secret, _, _) = world.enroll(&email, &token, step).await;
    // Two wrong codes on one token, one on the next: the right password in between clears nothing.
    let first = world.mfa_token(&email).await;
    for _ in 0..2 {
        assert_eq!(world.second_step(&first, "000000").await.status(), 401);
    }
    let second = world.mfa_token(&email).await;
    assert_eq!(world.second_step(&second, "000000").await.status(), 401);
    // Blocked now, for passwords and codes alike, even the right ones.
    let blocked = world.second_step(&second, &totp(&secret, step, 6)).await;
    let retry_after = blocked.headers().get("retry-after").cloned();
    assert_problem(blocked, 429, "rate_limited", "a right code while blocked").await;
    assert!(retry_after.is_some());
    let blocked = login_json(&world.app.client, &world.app.address, &email, STRONG_PASSWORD).await;
    assert_problem(blocked, 429, "rate_limited", "the right password while blocked").await;
    let blocked =
        world.delete("/me/mfa", &token, Some(&json!({"current_password": STRONG_PASSWORD, "code": "1"}))).await;
    assert_problem(blocked, 429, "rate_limited", "turning it off while blocked").await;
}

#[tokio::test]
async fn an_administrator_resets_a_users_second_factor_and_the_user_is_told() {
    let world = World::start(&[]).await;
    let email = unique_email("mfa-reset");
    let id = world.user(&email).await;
    let token = world.token(&email).await;
    let step = step_with_time_left(10).await;
    world.enroll(&email, &token, step).await;

    let forbidden = world.delete(&format!("/users/{id}/mfa"), &token, None).await;
    assert_problem(forbidden, 403, "forbidden", "a user resetting through the admin route").await;
    let admin = world.token(ADMIN).await;
    let admin_id = str_of(&world.me(&admin).await, "id").to_owned();
    let own = world.delete(&format!("/users/{admin_id}/mfa"), &admin, None).await;
    assert_problem(own, 403, "forbidden", "an administrator resetting their own").await;
    let unknown = world.delete(&format!("/users/{}/mfa", uuid::Uuid::new_v4()), &admin, None).await;
    assert_problem(unknown, 404, "not_found", "an unknown user").await;

    let reset = world.delete(&format!("/users/{id}/mfa"), &admin, None).await;
    assert_eq!(reset.status(), 204);
    world.maildev.wait_for_subject(&email, "An administrator turned off your two-step login").await;
    let user = json_body(
        world.app.client.get(world.app.url(&format!("/users/{id}"))).bearer_auth(&admin).send().await.unwrap(),
    )
    .await;
    assert_eq!(user["mfa_enabled"], false);
    world.token(&email).await;
    let again = world.delete(&format!("/users/{id}/mfa"), &admin, None).await;
    assert_problem(again, 409, "mfa_not_enabled", "a second reset").await;
}
