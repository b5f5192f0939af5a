//! The second factor under attack, end to end on the real binary: `mfa_enabled` set through the profile and
//! administration routes, the code of `DELETE /me/mfa` guessed with the right password alongside, the data key at
//! rest and at start-up, and the OpenAPI document of the new routes.
//!
//! The test whose first doc line says WEAKNESS fails until the service is fixed; the others hold the defences.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers: failing loudly is the point")]

use std::collections::{BTreeSet, HashMap};

use serde_json::{Value, json};
use users_e2e::totp::{base32_decode, step_with_time_left, totp};
use users_e2e::{BinaryApp, STRONG_PASSWORD, assert_problem, json_body, login_json, run_cli, str_of, unique_email};

const ADMIN: &str = "mfa-attack-root@example.com";

struct World {
    app: BinaryApp,
}

impl World {
    async fn start(extra: &[(&str, &str)]) -> Self {
        let mut env = vec![
            ("BOOTSTRAP_ADMIN_EMAIL".to_owned(), ADMIN.to_owned()),
            ("BOOTSTRAP_ADMIN_PASSWORD".to_owned(), STRONG_PASSWORD.to_owned()),
        ];
        env.extend(extra.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())));
        Self { app: BinaryApp::start_with(&env, |_| {}).await }
    }

    async fn send(&self, method: reqwest::Method, path: &str, token: Option<&str>, body: &Value) -> reqwest::Response {
        let mut request = self.app.client.request(method, self.app.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    async fn token(&self, email: &str) -> String {
        let response = login_json(&self.app.client, &self.app.address, email, STRONG_PASSWORD).await;
        assert_eq!(response.status(), 200, "login of {email}");
        str_of(&json_body(response).await, "access_token").to_owned()
    }

    async fn me(&self, token: &str) -> Value {
        json_body(self.app.client.get(self.app.url("/me")).bearer_auth(token).send().await.unwrap()).await
    }

    /// A verified user created by the administrator, logged in, with TOTP on: id, access token, raw secret and
    /// the step whose code confirmed it.
    async fn enrolled(&self, email: &str) -> (String, String, Vec<u8>, u64) {
        let admin = self.token(ADMIN).await;
        let body = json!({"email": email, "password": STRONG_PASSWORD, "email_verified": true});
        let created = self.send(reqwest::Method::POST, "/users", Some(&admin), &body).await;
        assert_eq!(created.status(), 201);
        let id = str_of(&json_body(created).await, "id").to_owned();
        let token = self.token(email).await;
        let setup = json!({"current_password": STRONG_PASSWORD});
        let setup = self.send(reqwest::Method::POST, "/me/mfa/totp/setup", Some(&token), &setup).await;
        assert_eq!(setup.status(), 200);
        let secret = base32_decode(str_of(&json_body(setup).await, "secret"));
        let step = step_with_time_left(15).await;
        let confirm = json!({"code": totp(&secret, step, 6)});
        let confirm = self.send(reqwest::Method::POST, "/me/mfa/totp/confirm", Some(&token), &confirm).await;
        assert_eq!(confirm.status(), 200);
        (id, token, secret, step)
    }
}

/// WEAKNESS: `DELETE /me/mfa` checks the current password first, and a right one clears the account's backoff, so
/// wrong codes never add up to a block: whoever holds a session and the password may guess the code for as long
/// as they like, and turn the second factor off for good.
#[tokio::test]
async fn turning_it_off_blocks_after_the_backoffs_wrong_codes_even_with_the_right_password() {
    let world = World::start(&[("LOGIN_BACKOFF_AFTER", "3"), ("LOGIN_BACKOFF_BASE", "60s")]).await;
    let email = unique_email("mfa-attack-off");
    let (_, token, _, _) = world.enrolled(&email).await;
    let mut statuses = Vec::new();
    for guess in 0..5 {
        let body = json!({"current_password": STRONG_PASSWORD, "code": format!("{:06}", 999_990 + guess)});
        statuses.push(world.send(reqwest::Method::DELETE, "/me/mfa", Some(&token), &body).await.status().as_u16());
    }
    assert_eq!(statuses, [403, 403, 403, 429, 429], "three wrong codes must block, whatever the password");
    assert_eq!(world.me(&token).await["mfa_enabled"], true);
}

#[tokio::test]
async fn mfa_enabled_cannot_be_set_through_the_profile_or_administration_routes() {
    let world = World::start(&[]).await;
    let email = unique_email("mfa-attack-mass");
    let (id, token, secret, step) = world.enrolled(&email).await;
    let admin = world.token(ADMIN).await;

    let off = json!({"mfa_enabled": false});
    let refused = world.send(reqwest::Method::PATCH, "/me", Some(&token), &off).await;
    assert_problem(refused, 400, "malformed_body", "PATCH /me with mfa_enabled").await;
    let with_password = json!({"mfa_enabled": false, "current_password": STRONG_PASSWORD});
    let refused = world.send(reqwest::Method::PATCH, "/me", Some(&token), &with_password).await;
    assert_problem(refused, 400, "malformed_body", "PATCH /me with mfa_enabled and the password").await;
    for method in [reqwest::Method::PATCH, reqwest::Method::PUT] {
        let refused = world.send(method.clone(), &format!("/users/{id}"), Some(&admin), &off).await;
        assert_problem(refused, 400, "malformed_body", &format!("{method} /users/{{id}} with mfa_enabled")).await;
    }
    let create = json!({"email": unique_email("mfa-attack-born"), "password": STRONG_PASSWORD,
        "email_verified": true, "mfa_enabled": true});
    let refused = world.send(reqwest::Method::POST, "/users", Some(&admin), &create).await;
    assert_problem(refused, 400, "malformed_body", "POST /users with mfa_enabled").await;

    assert_eq!(world.me(&token).await["mfa_enabled"], true, "nothing changed");
    let login = login_json(&world.app.client, &world.app.address, &email, STRONG_PASSWORD).await;
    let problem = assert_problem(login, 401, "mfa_required", "the password alone").await;
    assert!(problem.get("access_token").is_none() && problem.get("refresh_token").is_none());
    // The mfa_token is no refresh token.
    let mfa_token = str_of(&problem, "mfa_token").to_owned();
    let refresh = json!({"refresh_token": mfa_token});
    let refused = world.send(reqwest::Method::POST, "/token/refresh", None, &refresh).await;
    assert_eq!(refused.status(), 401);
    let second = json!({"mfa_token": mfa_token, "code": totp(&secret, step + 1, 6)});
    assert_eq!(world.send(reqwest::Method::POST, "/login/mfa", None, &second).await.status(), 200);
}

#[tokio::test]
async fn with_a_data_key_the_stored_secret_is_sealed_and_a_bad_key_file_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("data.key");
    std::fs::write(&key, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
    let world = World::start(&[("DATA_ENCRYPTION_KEY_FILE", key.to_str().unwrap())]).await;
    let email = unique_email("mfa-attack-sealed");
    let (id, _, secret, _) = world.enrolled(&email).await;
    // Format byte 1, a 12-byte nonce, the 20-byte secret encrypted and a 16-byte tag; never the raw secret.
    let sealed = world
        .app
        .db
        .count(&format!(
            "SELECT count(*) AS n FROM totp_secrets WHERE user_id = '{id}' AND get_byte(secret, 0) = 1 \
             AND octet_length(secret) = 49 AND position('\\x{}'::bytea IN secret) = 0",
            secret.iter().map(|byte| format!("{byte:02x}")).collect::<String>()
        ))
        .await;
    assert_eq!(sealed, 1, "the TOTP secret is stored encrypted");

    let short = dir.path().join("short.key");
    std::fs::write(&short, "AAECAwQFBgcICQoLDA0ODw==").unwrap();
    for path in [dir.path().join("missing.key"), short] {
        let env = HashMap::from([("DATA_ENCRYPTION_KEY_FILE".to_owned(), path.display().to_string())]);
        let output = run_cli(&["serve"], &env, "");
        assert!(!output.status.success(), "{} must stop start-up", path.display());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("DATA_ENCRYPTION_KEY_FILE"), "{stderr}");
        assert!(!stderr.contains("AAECAwQFBgcICQoLDA0ODw"), "the key never shows: {stderr}");
    }
}

/// The statuses an operation documents.
fn documented(openapi: &Value, path: &str, method: &str) -> BTreeSet<String> {
    let responses = openapi["paths"][path][method]["responses"].as_object();
    responses.unwrap_or_else(|| panic!("{method} {path} is not documented")).keys().cloned().collect()
}

#[tokio::test]
async fn the_openapi_document_lists_every_answer_of_the_second_factor_routes() {
    let world = World::start(&[]).await;
    let openapi = json_body(world.app.client.get(world.app.url("/openapi.json")).send().await.unwrap()).await;
    let set = |statuses: &[&str]| statuses.iter().map(|status| (*status).to_owned()).collect::<BTreeSet<_>>();
    let body = ["400", "408", "413", "415"];
    let owner = [&body[..], &["401", "403", "409", "429", "503"]].concat();
    assert_eq!(
        documented(&openapi, "/login/mfa", "post"),
        set(&[&body[..], &["200", "401", "403", "429", "503"]].concat())
    );
    assert_eq!(documented(&openapi, "/me/mfa/totp/setup", "post"), set(&[&owner[..], &["200"]].concat()));
    assert_eq!(documented(&openapi, "/me/mfa/totp/confirm", "post"), set(&[&owner[..], &["200"]].concat()));
    assert_eq!(documented(&openapi, "/me/mfa/recovery-codes", "post"), set(&[&owner[..], &["200"]].concat()));
    assert_eq!(documented(&openapi, "/me/mfa", "delete"), set(&[&owner[..], &["204"]].concat()));
    assert_eq!(documented(&openapi, "/users/{id}/mfa", "delete"), set(&["204", "401", "403", "404", "409", "503"]));
    for schema in ["MfaLoginRequest", "MfaCodeRequest", "TotpConfirmRequest", "TotpSetupRequest"] {
        let schema = &openapi["components"]["schemas"][schema];
        assert_eq!(schema["additionalProperties"], false, "{schema}");
    }

    // Every answer actually given to bad input is among them, as problem+json, and changes nothing.
    let login = |body: &str| {
        world
            .app
            .client
            .post(world.app.url("/login/mfa"))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    assert_problem(login("{").await.unwrap(), 400, "malformed_body", "broken JSON").await;
    assert_problem(login(r#"{"mfa_token":"x"}"#).await.unwrap(), 400, "malformed_body", "no code").await;
    assert_problem(login(r#"{"mfa_token":"x","code":1}"#).await.unwrap(), 400, "malformed_body", "a number").await;
    let huge = json!({"mfa_token": "x".repeat(20_000), "code": "123456"}).to_string();
    assert_problem(login(&huge).await.unwrap(), 413, "payload_too_large", "a huge token").await;
    let unicode = json!({"mfa_token": "x", "code": "１２３４５６"}).to_string();
    assert_problem(login(&unicode).await.unwrap(), 401, "invalid_token", "an unknown token").await;
}
