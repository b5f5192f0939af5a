//! Black-box attacks on accounts and sessions (credentials, enumeration, tokens, access control and input), against the app started in-process on a fresh database. Every test tries the attack,
//! checks the answer, and checks that nothing changed: rows, sessions, tokens and queued mail.
//!
//! Forged access tokens are assembled by hand with josekit, some of them signed with the deployment's real key
//! (read from the `signing_keys` table) so that only the claim checks stand between them and acceptance.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failed step should fail the test loudly"
)]

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use josekit::jws::{ES256, HS256, JwsSigner};
use reqwest::header::HeaderValue;
use serde_json::{Value, json};
use users_e2e::maildev::{MailDev, link};
use users_e2e::{
    PUBLIC_BASE_URL, STRONG_PASSWORD, TestApp, assert_problem, json_body, login_json, str_of, unique_email,
};

// ---------------------------------------------------------------------------------------------------------------
// Helpers

fn unix_now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

async fn register(app: &TestApp, email: &str) -> reqwest::Response {
    app.client
        .post(app.url("/register"))
        .json(&json!({"email": email, "password": STRONG_PASSWORD}))
        .send()
        .await
        .unwrap()
}

/// Registers over HTTP, marks the account verified in the database, logs in and returns the token response.
async fn verified_user(app: &TestApp, email: &str) -> Value {
    assert_eq!(register(app, email).await.status(), 202);
    app.db
        .execute(&format!(
            "UPDATE users SET email_verified = true, role = 'AUTHENTICATED' WHERE lower(email) = lower('{email}')"
        ))
        .await;
    let login = login_json(&app.client, &app.address, email, STRONG_PASSWORD).await;
    assert_eq!(login.status(), 200, "{email} should log in");
    json_body(login).await
}

async fn get_me(app: &TestApp, access_token: &str) -> reqwest::Response {
    app.client.get(app.url("/me")).bearer_auth(access_token).send().await.unwrap()
}

async fn get_me_raw(app: &TestApp, authorization: HeaderValue) -> reqwest::Response {
    app.client.get(app.url("/me")).header("authorization", authorization).send().await.unwrap()
}

async fn refresh(app: &TestApp, refresh_token: &str) -> reqwest::Response {
    app.client.post(app.url("/token/refresh")).json(&json!({"refresh_token": refresh_token})).send().await.unwrap()
}

/// 401 `invalid_token` with a `WWW-Authenticate: Bearer` challenge.
async fn assert_invalid_token(response: reqwest::Response, what: &str) {
    let challenge = response.headers().get("www-authenticate").cloned();
    assert_problem(response, 401, "invalid_token", what).await;
    let challenge = challenge.unwrap_or_else(|| panic!("{what}: no WWW-Authenticate header"));
    assert!(challenge.to_str().unwrap().starts_with("Bearer"), "{what}: {challenge:?}");
}

fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// One part (0 header, 1 payload) of a compact JWS, decoded.
fn decode_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// A compact JWS assembled by hand, so that any header and payload can be signed.
fn signed_by(signer: &dyn JwsSigner, header: &Value, payload: &Value) -> String {
    let message = format!("{}.{}", b64_json(header), b64_json(payload));
    let signature = signer.sign(message.as_bytes()).unwrap();
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A copy of `value` with one member set, or removed when `new` is `None`.
fn with(value: &Value, name: &str, new: Option<Value>) -> Value {
    let mut value = value.clone();
    let object = value.as_object_mut().unwrap();
    match new {
        Some(new) => object.insert(name.to_owned(), new),
        None => object.remove(name),
    };
    value
}

/// The deployment's own signing key, as the app stored it in the database: sealed without a data key, which is a
/// format byte followed by the PEM.
async fn real_key_pem(app: &TestApp) -> Vec<u8> {
    let query = "SELECT convert_from(substring(private_key FROM 2), 'UTF8') AS value FROM signing_keys";
    app.db.text(query).await.into_bytes()
}

async fn real_signer(app: &TestApp) -> josekit::jws::alg::ecdsa::EcdsaJwsSigner {
    ES256.signer_from_pem(real_key_pem(app).await).unwrap()
}

async fn user_count(app: &TestApp) -> i64 {
    app.db.count("SELECT count(*) AS n FROM users").await
}

async fn outbox_count(app: &TestApp) -> i64 {
    app.db.count("SELECT count(*) AS n FROM mail_outbox").await
}

async fn revoked_sessions(app: &TestApp) -> i64 {
    app.db.count("SELECT count(*) AS n FROM sessions WHERE revoked_at IS NOT NULL").await
}

/// A test app whose mail goes over SMTP to the shared MailDev.
async fn smtp_app() -> TestApp {
    let env = MailDev::shared().app_env();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
    TestApp::spawn_with(&pairs).await
}

/// The link of a mail that starts with `PUBLIC_BASE_URL` + `path`, pointed at the test app instead.
fn local_link(app: &TestApp, mail: &Value, path: &str) -> String {
    link(mail, &format!("{PUBLIC_BASE_URL}{path}")).replacen(PUBLIC_BASE_URL, &app.address, 1)
}

/// The one mail with this subject among `mails`.
fn mail_with_subject<'a>(mails: &'a [Value], subject: &str) -> &'a Value {
    let matching: Vec<&Value> = mails.iter().filter(|m| m["subject"] == subject).collect();
    assert_eq!(matching.len(), 1, "expected one mail {subject:?}, got {}", matching.len());
    matching[0]
}

/// `(user_id, token)` of a `/verify-email/{user_id}/{token}` link.
fn verify_link_parts(verify_link: &str) -> (String, String) {
    let rest = verify_link.split("/verify-email/").nth(1).unwrap();
    let (user_id, token) = rest.split_once('/').unwrap();
    (user_id.to_owned(), token.to_owned())
}

async fn is_verified(app: &TestApp, email: &str) -> bool {
    app.db
        .count(&format!(
            "SELECT count(*) AS n FROM users WHERE lower(email) = lower('{email}') AND email_verified AND role = 'AUTHENTICATED'"
        ))
        .await
        == 1
}

// ---------------------------------------------------------------------------------------------------------------
// Access tokens at GET /me

#[tokio::test]
async fn a_hand_built_token_with_the_real_key_and_right_claims_is_accepted_so_the_forgeries_below_mean_something() {
    let app = TestApp::spawn().await;
    let tokens = verified_user(&app, &unique_email("baseline")).await;
    let access = str_of(&tokens, "access_token");
    let header = decode_part(access, 0);
    let payload = decode_part(access, 1);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(payload["iss"], PUBLIC_BASE_URL);
    let now = unix_now();
    let rebuilt = with(&with(&payload, "iat", Some(json!(now))), "exp", Some(json!(now + 600)));
    let forged = signed_by(&real_signer(&app).await, &header, &rebuilt);
    assert_eq!(get_me(&app, &forged).await.status(), 200, "the forging machinery itself must be right");
}

#[tokio::test]
async fn unsigned_key_confused_tampered_and_foreign_tokens_are_refused_with_401() {
    let app = TestApp::spawn().await;
    let victim = verified_user(&app, &unique_email("victim")).await;
    let attacker = verified_user(&app, &unique_email("attacker")).await;
    let attacker_access = str_of(&attacker, "access_token");
    let victim_claims = decode_part(str_of(&victim, "access_token"), 1);
    let header = decode_part(attacker_access, 0);
    let now = unix_now();
    // The victim's identity, fresh times: what every forgery below tries to get accepted.
    let payload = with(&with(&victim_claims, "iat", Some(json!(now))), "exp", Some(json!(now + 600)));

    // alg: none, with and without the trailing dot, in several spellings.
    for alg in ["none", "None", "NONE"] {
        let unsigned = format!("{}.{}", b64_json(&with(&header, "alg", Some(json!(alg)))), b64_json(&payload));
        assert_invalid_token(get_me(&app, &format!("{unsigned}.")).await, &format!("alg {alg} with empty signature"))
            .await;
        assert_invalid_token(get_me(&app, &unsigned).await, &format!("alg {alg} without signature")).await;
    }

    // HS256 keyed with the public key, in every form an attacker can get it.
    let jwks = json_body(app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap()).await;
    let jwk = &jwks["keys"][0];
    let real = ES256.key_pair_from_pem(real_key_pem(&app).await).unwrap();
    for (what, secret) in [
        ("public PEM", real.to_pem_public_key()),
        ("public DER", real.to_der_public_key()),
        ("JWK as served", serde_json::to_vec(jwk).unwrap()),
        ("JWKS as served", serde_json::to_vec(&jwks).unwrap()),
        ("JWK x coordinate", str_of(jwk, "x").as_bytes().to_vec()),
    ] {
        let signer = HS256.signer_from_bytes(secret).unwrap();
        let hs_header = with(&header, "alg", Some(json!("HS256")));
        assert_invalid_token(get_me(&app, &signed_by(&signer, &hs_header, &payload)).await, what).await;
    }

    // The attacker's own valid token with the payload swapped for the victim's, original signature kept.
    let parts: Vec<&str> = attacker_access.split('.').collect();
    let attacker_claims = decode_part(attacker_access, 1);
    let sub_swapped = with(&attacker_claims, "sub", victim_claims["sub"].clone().into());
    let tampered = format!("{}.{}.{}", parts[0], b64_json(&sub_swapped), parts[2]);
    assert_invalid_token(get_me(&app, &tampered).await, "sub swapped, original signature").await;
    let both_swapped = with(&sub_swapped, "sid", victim_claims["sid"].clone().into());
    let tampered = format!("{}.{}.{}", parts[0], b64_json(&both_swapped), parts[2]);
    assert_invalid_token(get_me(&app, &tampered).await, "sub and sid swapped, original signature").await;

    // A foreign ES256 key, with our kid, without a kid, and advertised through jwk/jku headers.
    let foreign = ES256.generate_key_pair().unwrap();
    let foreign_signer = ES256.signer_from_der(foreign.to_der_private_key()).unwrap();
    let foreign_jwk = Value::Object(foreign.to_jwk_public_key().into());
    for (what, forged_header) in [
        ("foreign key, our kid", header.clone()),
        ("foreign key, no kid", with(&header, "kid", None)),
        ("foreign key in a jwk header", with(&header, "jwk", Some(foreign_jwk))),
        ("foreign key behind a jku header", with(&header, "jku", Some(json!("https://attacker.example/jwks.json")))),
    ] {
        assert_invalid_token(get_me(&app, &signed_by(&foreign_signer, &forged_header, &payload)).await, what).await;
    }

    // The victim's and attacker's own tokens still work: nothing above disturbed a session.
    assert_eq!(get_me(&app, str_of(&victim, "access_token")).await.status(), 200);
    assert_eq!(get_me(&app, attacker_access).await.status(), 200);
    assert_eq!(revoked_sessions(&app).await, 0);
}

#[tokio::test]
async fn tokens_signed_with_the_real_key_but_wrong_claims_are_refused_with_401() {
    let app = TestApp::spawn().await;
    let email = unique_email("claims");
    let tokens = verified_user(&app, &email).await;
    let other = verified_user(&app, &unique_email("other")).await;
    // A second session of the same user, then revoked by logout.
    let revoked = json_body(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await).await;
    let logout = app.client.post(app.url("/logout")).json(&json!({"refresh_token": revoked["refresh_token"]})).send();
    assert_eq!(logout.await.unwrap().status(), 204);

    let access = str_of(&tokens, "access_token");
    let header = decode_part(access, 0);
    let now = unix_now();
    let payload = with(&with(&decode_part(access, 1), "iat", Some(json!(now))), "exp", Some(json!(now + 600)));
    let signer = real_signer(&app).await;
    let revoked_sid = decode_part(str_of(&revoked, "access_token"), 1)["sid"].clone();
    let others_sid = decode_part(str_of(&other, "access_token"), 1)["sid"].clone();
    let unknown_sid = json!("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");

    for (what, forged_header, forged_payload) in [
        ("missing exp", header.clone(), with(&payload, "exp", None)),
        ("exp as a string", header.clone(), with(&payload, "exp", Some(json!((now + 600).to_string())))),
        ("exp as a fraction", header.clone(), with(&payload, "exp", Some(json!(9_999_999_999.5_f64)))),
        ("astronomic exp", header.clone(), with(&payload, "exp", Some(json!(1e300_f64)))),
        ("exp past i64", header.clone(), with(&payload, "exp", Some(json!(u64::MAX)))),
        ("expired", header.clone(), with(&payload, "exp", Some(json!(now - 1)))),
        ("null exp", header.clone(), with(&payload, "exp", Some(Value::Null))),
        ("missing iat", header.clone(), with(&payload, "iat", None)),
        ("future nbf", header.clone(), with(&payload, "nbf", Some(json!(now + 3600)))),
        ("wrong iss", header.clone(), with(&payload, "iss", Some(json!("https://evil.example")))),
        ("missing iss", header.clone(), with(&payload, "iss", None)),
        ("wrong aud", header.clone(), with(&payload, "aud", Some(json!("another-service")))),
        ("aud list without ours", header.clone(), with(&payload, "aud", Some(json!(["a", "b"])))),
        ("missing aud", header.clone(), with(&payload, "aud", None)),
        ("typ JWT", with(&header, "typ", Some(json!("JWT"))), payload.clone()),
        ("missing typ", with(&header, "typ", None), payload.clone()),
        ("foreign kid", with(&header, "kid", Some(json!("someone-else"))), payload.clone()),
        ("missing sid", header.clone(), with(&payload, "sid", None)),
        ("sid not a uuid", header.clone(), with(&payload, "sid", Some(json!("session")))),
        ("sid of a revoked session", header.clone(), with(&payload, "sid", Some(revoked_sid))),
        ("sid of another user's session", header.clone(), with(&payload, "sid", Some(others_sid))),
        ("sid of no session", header.clone(), with(&payload, "sid", Some(unknown_sid))),
        ("missing sub", header.clone(), with(&payload, "sub", None)),
        ("sub not a uuid", header.clone(), with(&payload, "sub", Some(json!("admin")))),
        ("missing jti", header.clone(), with(&payload, "jti", None)),
    ] {
        assert_invalid_token(get_me(&app, &signed_by(&signer, &forged_header, &forged_payload)).await, what).await;
    }
    assert_eq!(get_me(&app, access).await.status(), 200, "the real token still works");
    assert_eq!(revoked_sessions(&app).await, 1, "only the logged-out session is revoked");
}

#[tokio::test]
async fn refresh_tokens_are_no_bearer_tokens_and_access_tokens_refresh_nothing() {
    let app = TestApp::spawn().await;
    let tokens = verified_user(&app, &unique_email("swap")).await;
    let access = str_of(&tokens, "access_token");
    let refresh_token = str_of(&tokens, "refresh_token");

    assert_invalid_token(get_me(&app, refresh_token).await, "the refresh token as a bearer token").await;
    let refreshed_with_access = refresh(&app, access).await;
    assert_problem(refreshed_with_access, 401, "invalid_token", "an access token at /token/refresh").await;

    // Nothing was consumed or revoked: the real refresh token still rotates once.
    assert_eq!(revoked_sessions(&app).await, 0);
    assert_eq!(app.db.count("SELECT count(*) AS n FROM refresh_tokens WHERE used_at IS NOT NULL").await, 0);
    assert_eq!(refresh(&app, refresh_token).await.status(), 200);
}

#[tokio::test]
async fn garbage_and_oversized_tokens_are_refused_with_401_never_500() {
    let app = TestApp::spawn().await;
    let tokens = verified_user(&app, &unique_email("garbage")).await;
    let access = str_of(&tokens, "access_token");
    let parts: Vec<&str> = access.split('.').collect();
    let header = decode_part(access, 0);
    // A correctly signed token of about 100 KiB: only the size check stands in its way. (Headers are kept under
    // actix's 128 KiB request-head buffer, past which the HTTP codec itself may answer 431; see below.)
    let padded = with(&decode_part(access, 1), "pad", Some(json!("x".repeat(75 * 1024))));
    let big_signed = signed_by(&real_signer(&app).await, &header, &padded);
    assert!((100 * 1024..120 * 1024).contains(&big_signed.len()), "{}", big_signed.len());

    for (what, token) in [
        ("garbage", "garbage".to_owned()),
        ("three empty parts", "..".to_owned()),
        ("a.b.c", "a.b.c".to_owned()),
        ("header and payload only", format!("{}.{}", parts[0], parts[1])),
        ("a fourth part", format!("{access}.{}", parts[2])),
        ("zero signature", format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode([0_u8; 64]))),
        ("padded base64", format!("{access}=")),
        ("header not JSON", format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("{"), parts[1], parts[2])),
        ("payload not an object", format!("{}.{}.{}", parts[0], b64_json(&json!([1, 2])), parts[2])),
        ("100 KiB of garbage", "a".repeat(100 * 1024)),
        ("a correctly signed 100 KiB token", big_signed),
    ] {
        let response = get_me_raw(&app, HeaderValue::from_str(&format!("Bearer {token}")).unwrap()).await;
        assert_invalid_token(response, what).await;
    }
    for (what, raw) in [
        ("non-ASCII bytes", b"Bearer \xe9\xff\xfe".to_vec()),
        ("scheme only", b"Bearer".to_vec()),
        ("token in the wrong scheme", format!("Token {access}").into_bytes()),
        ("two tokens", format!("Bearer {access} {access}").into_bytes()),
    ] {
        let response = get_me_raw(&app, HeaderValue::from_bytes(&raw).unwrap()).await;
        assert_invalid_token(response, what).await;
    }
    // Past the codec's buffer the answer may come from actix itself (431) instead of the app (401); either way a
    // client error, never a 5xx, and the server goes on serving.
    let huge = get_me_raw(&app, HeaderValue::from_str(&format!("Bearer {}", "a".repeat(200 * 1024))).unwrap()).await;
    assert!([401, 431].contains(&huge.status().as_u16()), "a 200 KiB token: {}", huge.status());
    assert_eq!(get_me(&app, access).await.status(), 200);
}

// ---------------------------------------------------------------------------------------------------------------
// Refresh tokens and locks

#[tokio::test]
async fn two_concurrent_refreshes_with_one_token_yield_exactly_one_success() {
    let app = TestApp::spawn().await;
    let email = unique_email("race");
    let bystander = verified_user(&app, &email).await;
    for round in 0..5 {
        let tokens = json_body(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await).await;
        let token = str_of(&tokens, "refresh_token");
        let (first, second) = tokio::join!(refresh(&app, token), refresh(&app, token));
        let statuses = [first.status().as_u16(), second.status().as_u16()];
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "round {round}: {statuses:?}");
        let loser = if statuses[0] == 200 { second } else { first };
        assert_problem(loser, 401, "invalid_token", "the losing refresh").await;
        // One token never mints two successors.
        let sid = str_of(&decode_part(str_of(&tokens, "access_token"), 1), "sid").to_owned();
        let family =
            app.db.count(&format!("SELECT count(*) AS n FROM refresh_tokens WHERE session_id = '{sid}'")).await;
        assert_eq!(family, 2, "round {round}: the presented token and exactly one successor");
    }
    // Whatever the race did to its own family, the user's other session is untouched.
    assert_eq!(get_me(&app, str_of(&bystander, "access_token")).await.status(), 200);
    assert_eq!(refresh(&app, str_of(&bystander, "refresh_token")).await.status(), 200);
}

#[tokio::test]
async fn a_user_cannot_see_or_revoke_another_users_session() {
    let app = TestApp::spawn().await;
    let victim = verified_user(&app, &unique_email("victim")).await;
    let attacker = verified_user(&app, &unique_email("attacker")).await;
    let victim_sid = str_of(&decode_part(str_of(&victim, "access_token"), 1), "sid").to_owned();
    let attacker_access = str_of(&attacker, "access_token");

    let listed =
        json_body(app.client.get(app.url("/me/sessions")).bearer_auth(attacker_access).send().await.unwrap()).await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{listed}");
    assert!(items.iter().all(|s| s["id"] != victim_sid.as_str()));
    let revoke = app
        .client
        .delete(app.url(&format!("/me/sessions/{victim_sid}")))
        .bearer_auth(attacker_access)
        .send()
        .await
        .unwrap();
    assert_problem(revoke, 404, "not_found", "deleting another user's session").await;
    assert_eq!(revoked_sessions(&app).await, 0);
    assert_eq!(get_me(&app, str_of(&victim, "access_token")).await.status(), 200);
}

#[tokio::test]
async fn a_locked_user_is_refused_everywhere_but_keeps_the_session_for_when_unlocked() {
    let app = TestApp::spawn().await;
    let email = unique_email("locked");
    let tokens = verified_user(&app, &email).await;
    let access = str_of(&tokens, "access_token");
    let refresh_token = str_of(&tokens, "refresh_token");
    app.db.execute(&format!("UPDATE users SET is_locked = true WHERE lower(email) = lower('{email}')")).await;

    assert_problem(get_me(&app, access).await, 403, "account_locked", "GET /me while locked").await;
    let sessions = app.client.get(app.url("/me/sessions")).bearer_auth(access).send().await.unwrap();
    assert_problem(sessions, 403, "account_locked", "GET /me/sessions while locked").await;
    let patch = app.client.patch(app.url("/me")).bearer_auth(access).json(&json!({"bio": "hi"})).send().await.unwrap();
    assert_problem(patch, 403, "account_locked", "PATCH /me while locked").await;
    assert_problem(refresh(&app, refresh_token).await, 403, "account_locked", "refresh while locked").await;
    assert_problem(
        login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await,
        403,
        "account_locked",
        "login while locked",
    )
    .await;

    // Nothing was consumed, revoked or changed.
    assert_eq!(app.db.count("SELECT count(*) AS n FROM refresh_tokens WHERE used_at IS NOT NULL").await, 0);
    assert_eq!(revoked_sessions(&app).await, 0);
    assert_eq!(app.db.count("SELECT count(*) AS n FROM users WHERE bio IS NOT NULL").await, 0);

    app.db.execute(&format!("UPDATE users SET is_locked = false WHERE lower(email) = lower('{email}')")).await;
    assert_eq!(get_me(&app, access).await.status(), 200, "an unlock restores the old access token");
    assert_eq!(refresh(&app, refresh_token).await.status(), 200, "an unlock restores the same refresh token");
}

#[tokio::test]
async fn refresh_tokens_stop_at_the_idle_and_the_absolute_expiry() {
    let app = TestApp::spawn().await;
    let email = unique_email("expiry");
    let idle = verified_user(&app, &email).await;
    let expired = json_body(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await).await;
    let fresh = json_body(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await).await;
    let sid_of = |tokens: &Value| str_of(&decode_part(str_of(tokens, "access_token"), 1), "sid").to_owned();
    // Unused for longer than REFRESH_TOKEN_IDLE_TTL (7 days), and past the absolute REFRESH_TOKEN_TTL.
    app.db
        .execute(&format!(
            "UPDATE sessions SET last_used_at = now() - interval '8 days', created_at = now() - interval '8 days' \
             WHERE id = '{}'",
            sid_of(&idle)
        ))
        .await;
    app.db
        .execute(&format!(
            "UPDATE sessions SET expires_at = now() - interval '1 second', created_at = now() - interval '31 days' \
             WHERE id = '{}'",
            sid_of(&expired)
        ))
        .await;

    assert_problem(refresh(&app, str_of(&idle, "refresh_token")).await, 401, "invalid_token", "idle session").await;
    assert_problem(refresh(&app, str_of(&expired, "refresh_token")).await, 401, "invalid_token", "expired session")
        .await;
    assert_invalid_token(get_me(&app, str_of(&expired, "access_token")).await, "access token of an expired session")
        .await;
    assert_eq!(app.db.count("SELECT count(*) AS n FROM refresh_tokens WHERE used_at IS NOT NULL").await, 0);
    assert_eq!(app.db.count("SELECT count(*) AS n FROM refresh_tokens").await, 3, "no successor was minted");
    assert_eq!(refresh(&app, str_of(&fresh, "refresh_token")).await.status(), 200, "the fresh session still refreshes");
}

#[tokio::test]
async fn a_password_reset_does_not_unlock_a_locked_account() {
    let maildev = MailDev::shared();
    let app = smtp_app().await;
    let email = unique_email("locked-reset");
    let tokens = verified_user(&app, &email).await;
    app.db.execute(&format!("UPDATE users SET is_locked = true WHERE lower(email) = lower('{email}')")).await;
    let forgot = app.client.post(app.url("/password/forgot")).json(&json!({ "email": email })).send().await.unwrap();
    assert_eq!(forgot.status(), 202);
    // The registration mail first, then the reset link.
    let mails = maildev.wait_for(&email, 2).await;
    let reset_link = local_link(&app, mail_with_subject(&mails, "Reset your password"), "/password/reset?token=");
    let token = reset_link.split("token=").nth(1).unwrap();
    let new_password = "amber-lantern-quiet-31";
    let reset = app
        .client
        .post(app.url("/password/reset"))
        .json(&json!({"token": token, "new_password": new_password}))
        .send()
        .await
        .unwrap();
    assert!(reset.status() == 204 || reset.status() == 403, "reset of a locked account: {}", reset.status());
    assert_problem(
        login_json(&app.client, &app.address, &email, new_password).await,
        403,
        "account_locked",
        "login after the reset",
    )
    .await;
    assert_problem(refresh(&app, str_of(&tokens, "refresh_token")).await, 403, "account_locked", "old refresh").await;
    assert_eq!(app.db.count("SELECT count(*) AS n FROM users WHERE is_locked").await, 1, "still locked");
}

// ---------------------------------------------------------------------------------------------------------------
// Enumeration

/// Status, content type and body text of a response, for comparing two answers byte for byte.
async fn shape(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    (status, content_type.unwrap_or_default(), response.text().await.unwrap())
}

#[tokio::test]
async fn register_forgot_and_resend_answer_the_same_for_existing_and_unknown_emails() {
    let app = TestApp::spawn().await;
    let verified = unique_email("known");
    verified_user(&app, &verified).await;
    let unverified = unique_email("pending");
    assert_eq!(register(&app, &unverified).await.status(), 202);

    let existing = shape(register(&app, &verified).await).await;
    let existing_other_case = shape(register(&app, &verified.to_uppercase()).await).await;
    let new = shape(register(&app, &unique_email("fresh")).await).await;
    assert_eq!(existing.0, 202);
    assert_eq!(existing, new, "register: existing vs new email");
    assert_eq!(existing_other_case, new, "register: existing email in other case vs new");
    assert_eq!(user_count(&app).await, 3, "the existing address got no second account");

    for path in ["/password/forgot", "/verify-email/resend"] {
        let post = |email: String| app.client.post(app.url(path)).json(&json!({ "email": email })).send();
        let known = shape(post(verified.clone()).await.unwrap()).await;
        let pending = shape(post(unverified.clone()).await.unwrap()).await;
        let unknown = shape(post(unique_email("nobody")).await.unwrap()).await;
        assert_eq!(known.0, 202, "{path}");
        assert_eq!(known, unknown, "{path}: verified vs unknown email");
        assert_eq!(pending, unknown, "{path}: unverified vs unknown email");
    }
}

#[tokio::test]
async fn register_with_a_taken_nickname_answers_the_same_for_existing_and_unknown_emails() {
    // Nicknames are public, so an attacker can always name a taken one (their own). If the answer then depends on
    // whether the email has an account, register becomes an account oracle.
    let app = TestApp::spawn().await;
    let attacker = unique_email("attacker");
    let register_with_nickname = |email: String, nickname: &'static str| {
        app.client
            .post(app.url("/register"))
            .json(&json!({"email": email, "password": STRONG_PASSWORD, "nickname": nickname}))
            .send()
    };
    assert_eq!(register_with_nickname(attacker, "taken_nick").await.unwrap().status(), 202);
    let victim = unique_email("victim");
    verified_user(&app, &victim).await;
    let users = user_count(&app).await;

    let existing = shape(register_with_nickname(victim.clone(), "taken_nick").await.unwrap()).await;
    let unknown = shape(register_with_nickname(unique_email("nobody"), "taken_nick").await.unwrap()).await;
    assert_eq!(existing, unknown, "register with a taken nickname: existing vs unknown email");
    assert_eq!(user_count(&app).await, users, "no account was created");
}

#[tokio::test]
async fn login_answers_one_body_for_unknown_emails_and_wrong_passwords() {
    let app = TestApp::spawn().await;
    let email = unique_email("login");
    verified_user(&app, &email).await;
    let wrong_password = shape(login_json(&app.client, &app.address, &email, "not-the-password-at-all").await).await;
    let unknown = shape(login_json(&app.client, &app.address, &unique_email("ghost"), STRONG_PASSWORD).await).await;
    let malformed = shape(login_json(&app.client, &app.address, "not-an-email", STRONG_PASSWORD).await).await;
    assert_eq!(wrong_password.0, 401);
    assert!(wrong_password.2.contains("invalid_credentials"), "{}", wrong_password.2);
    assert_eq!(wrong_password, unknown, "wrong password vs unknown email");
    assert_eq!(wrong_password, malformed, "wrong password vs malformed email");
    assert_eq!(app.db.count("SELECT count(*) AS n FROM sessions").await, 1, "only the setup login made a session");
}

// ---------------------------------------------------------------------------------------------------------------
// Verification and reset links

#[tokio::test]
async fn a_verification_token_only_verifies_the_account_it_was_issued_to() {
    let maildev = MailDev::shared();
    let app = smtp_app().await;
    let alice = unique_email("alice");
    let bob = unique_email("bob");
    register(&app, &alice).await;
    register(&app, &bob).await;
    let alice_link = local_link(&app, &maildev.wait_for(&alice, 1).await[0], "/verify-email/");
    let bob_link = local_link(&app, &maildev.wait_for(&bob, 1).await[0], "/verify-email/");
    let (alice_id, _) = verify_link_parts(&alice_link);
    let (_, bob_token) = verify_link_parts(&bob_link);

    let swapped = app.client.get(app.url(&format!("/verify-email/{alice_id}/{bob_token}"))).send().await.unwrap();
    assert_problem(swapped, 400, "invalid_or_expired_token", "bob's token under alice's id").await;
    assert!(!is_verified(&app, &alice).await, "alice stays unverified");
    assert!(!is_verified(&app, &bob).await, "bob stays unverified");

    // Bob's token was not consumed by the attempt.
    assert_eq!(app.client.get(&bob_link).send().await.unwrap().status(), 200);
    assert!(is_verified(&app, &bob).await);
    assert!(!is_verified(&app, &alice).await);
}

#[tokio::test]
async fn malformed_unknown_and_oversized_verification_links_are_400() {
    let app = TestApp::spawn().await;
    let email = unique_email("links");
    register(&app, &email).await;
    let unknown_id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let token = "A".repeat(43);
    let long_token = "A".repeat(10 * 1024);
    for (what, path) in [
        ("a malformed uuid", format!("/verify-email/not-a-uuid/{token}")),
        ("a uuid with junk", format!("/verify-email/{unknown_id}x/{token}")),
        ("an unknown user and token", format!("/verify-email/{unknown_id}/{token}")),
        ("a 10 KiB token", format!("/verify-email/{unknown_id}/{long_token}")),
        ("a percent-encoded slash in the token", format!("/verify-email/{unknown_id}/a%2Fb")),
        ("a NUL in the token", format!("/verify-email/{unknown_id}/a%00b")),
    ] {
        let response = app.client.get(app.url(&path)).send().await.unwrap();
        assert_problem(response, 400, "invalid_or_expired_token", what).await;
    }
    assert!(!is_verified(&app, &email).await);
    assert_eq!(app.db.count("SELECT count(*) AS n FROM email_tokens WHERE used_at IS NOT NULL").await, 0);
}

#[tokio::test]
async fn verify_and_reset_tokens_only_work_for_their_own_purpose() {
    let maildev = MailDev::shared();
    let app = smtp_app().await;
    let email = unique_email("purpose");
    register(&app, &email).await;
    let verify_link = local_link(&app, &maildev.wait_for(&email, 1).await[0], "/verify-email/");
    let forgot = app.client.post(app.url("/password/forgot")).json(&json!({ "email": email })).send().await.unwrap();
    assert_eq!(forgot.status(), 202);
    let mails = maildev.wait_for(&email, 2).await;
    let reset_link = local_link(&app, mail_with_subject(&mails, "Reset your password"), "/password/reset?token=");
    let reset_token = reset_link.split("token=").nth(1).unwrap().to_owned();
    let (user_id, verify_token) = verify_link_parts(&verify_link);

    // A reset token at the verification route.
    let wrong_route = app.client.get(app.url(&format!("/verify-email/{user_id}/{reset_token}"))).send().await.unwrap();
    assert_problem(wrong_route, 400, "invalid_or_expired_token", "a reset token at /verify-email").await;
    assert!(!is_verified(&app, &email).await);

    // A verification token at the reset route.
    let new_password = "amber-lantern-quiet-31";
    let wrong_route = app
        .client
        .post(app.url("/password/reset"))
        .json(&json!({"token": verify_token, "new_password": new_password}))
        .send()
        .await
        .unwrap();
    assert_problem(wrong_route, 400, "invalid_or_expired_token", "a verify token at /password/reset").await;
    // The password is unchanged: the old one is still right (403 unverified), the new one wrong (401).
    assert_eq!(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await.status(), 403);
    assert_eq!(login_json(&app.client, &app.address, &email, new_password).await.status(), 401);
    assert_eq!(app.db.count("SELECT count(*) AS n FROM email_tokens WHERE used_at IS NOT NULL").await, 0);

    // Neither token was spent by the misuse.
    assert_eq!(app.client.get(&verify_link).send().await.unwrap().status(), 200);
    let reset = app
        .client
        .post(app.url("/password/reset"))
        .json(&json!({"token": reset_token, "new_password": new_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 204);
    assert_eq!(login_json(&app.client, &app.address, &email, new_password).await.status(), 200);
}

#[tokio::test]
async fn the_newest_verification_link_wins_after_a_resend() {
    let maildev = MailDev::shared();
    let app = smtp_app().await;
    let email = unique_email("resend");
    register(&app, &email).await;
    let first = local_link(&app, &maildev.wait_for(&email, 1).await[0], "/verify-email/");
    let resend = app.client.post(app.url("/verify-email/resend")).json(&json!({ "email": email })).send().await;
    assert_eq!(resend.unwrap().status(), 202);
    let mails = maildev.wait_for(&email, 2).await;
    let second = local_link(&app, &mails[1], "/verify-email/");
    assert_ne!(first, second);

    let stale = app.client.get(&first).send().await.unwrap();
    assert_problem(stale, 400, "invalid_or_expired_token", "the first link after a resend").await;
    assert!(!is_verified(&app, &email).await);
    assert_eq!(app.client.get(&second).send().await.unwrap().status(), 200);
    assert!(is_verified(&app, &email).await);
}

#[tokio::test]
async fn the_newest_reset_link_wins_and_works_once() {
    let maildev = MailDev::shared();
    let app = smtp_app().await;
    let email = unique_email("reset-twice");
    register(&app, &email).await;
    maildev.wait_for(&email, 1).await;
    let forgot = || app.client.post(app.url("/password/forgot")).json(&json!({ "email": email })).send();
    assert_eq!(forgot().await.unwrap().status(), 202);
    maildev.wait_for(&email, 2).await;
    assert_eq!(forgot().await.unwrap().status(), 202);
    let mails = maildev.wait_for(&email, 3).await;
    let token_of = |mail: &Value| {
        let reset_link = local_link(&app, mail, "/password/reset?token=");
        reset_link.split("token=").nth(1).unwrap().to_owned()
    };
    let (first, second) = (token_of(&mails[1]), token_of(&mails[2]));
    assert_ne!(first, second);
    let reset = |token: String, password: &'static str| {
        app.client.post(app.url("/password/reset")).json(&json!({"token": token, "new_password": password})).send()
    };
    let stale = reset(first, "amber-lantern-quiet-31").await.unwrap();
    assert_problem(stale, 400, "invalid_or_expired_token", "the first reset link after a second forgot").await;
    assert_eq!(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await.status(), 403, "unchanged");
    assert_eq!(reset(second.clone(), "amber-lantern-quiet-31").await.unwrap().status(), 204);
    let replay = reset(second, "copper-meadow-silent-58").await.unwrap();
    assert_problem(replay, 400, "invalid_or_expired_token", "the second reset link used twice").await;
    assert_eq!(login_json(&app.client, &app.address, &email, "copper-meadow-silent-58").await.status(), 401);
}

// ---------------------------------------------------------------------------------------------------------------
// Mass assignment and input

#[tokio::test]
async fn register_refuses_privileged_fields_and_creates_nothing() {
    let app = TestApp::spawn().await;
    for (field, value) in [
        ("role", json!("ADMIN")),
        ("email_verified", json!(true)),
        ("is_locked", json!(false)),
        ("is_professional", json!(true)),
        ("id", json!("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")),
        ("password_hash", json!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA")),
    ] {
        let mut body = json!({"email": unique_email("mass"), "password": STRONG_PASSWORD});
        body[field] = value;
        let response = app.client.post(app.url("/register")).json(&body).send().await.unwrap();
        assert_problem(response, 400, "malformed_body", field).await;
    }
    assert_eq!(user_count(&app).await, 0);
    assert_eq!(outbox_count(&app).await, 0);
}

#[tokio::test]
async fn patch_me_refuses_privileged_fields_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let tokens = verified_user(&app, &unique_email("patch")).await;
    let access = str_of(&tokens, "access_token");
    let before = json_body(get_me(&app, access).await).await;
    for (field, value) in [
        ("role", json!("ADMIN")),
        ("is_locked", json!(false)),
        ("email_verified", json!(true)),
        ("is_professional", json!(true)),
        ("id", json!("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")),
        ("created_at", json!("2000-01-01T00:00:00Z")),
    ] {
        // Alongside a legitimate change, which must not happen either.
        let mut body = json!({"bio": "sneaky"});
        body[field] = value;
        let response = app.client.patch(app.url("/me")).bearer_auth(access).json(&body).send().await.unwrap();
        assert_problem(response, 400, "malformed_body", field).await;
    }
    let after = json_body(get_me(&app, access).await).await;
    assert_eq!(before, after, "nothing about the user changed");
    assert_eq!(after["role"], "AUTHENTICATED");
}

#[tokio::test]
async fn every_account_route_refuses_unknown_fields_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let email = unique_email("fields");
    let tokens = verified_user(&app, &email).await;
    let access = str_of(&tokens, "access_token");
    let refresh_token = str_of(&tokens, "refresh_token");
    let outbox = outbox_count(&app).await;
    for (method, path, body, authenticated) in [
        ("POST", "/token/refresh", json!({"refresh_token": refresh_token, "role": "ADMIN"}), false),
        ("POST", "/logout", json!({"refresh_token": refresh_token, "all": true}), false),
        ("POST", "/password/forgot", json!({"email": email, "redirect_to": "https://evil.example"}), false),
        ("POST", "/verify-email/resend", json!({"email": email, "email_verified": true}), false),
        (
            "POST",
            "/password/reset",
            json!({"token": "x", "new_password": "amber-lantern-quiet-31", "email": email}),
            false,
        ),
        (
            "POST",
            "/me/password",
            json!({"current_password": STRONG_PASSWORD, "new_password": "amber-lantern-quiet-31", "role": "ADMIN"}),
            true,
        ),
        ("DELETE", "/me", json!({"current_password": STRONG_PASSWORD, "hard": true}), true),
    ] {
        let mut request = app.client.request(method.parse().unwrap(), app.url(path)).json(&body);
        if authenticated {
            request = request.bearer_auth(access);
        }
        let response = request.send().await.unwrap();
        assert_problem(response, 400, "malformed_body", &format!("{method} {path}")).await;
    }
    // The account, its password, its session and its refresh token are as they were; no mail was queued.
    assert_eq!(user_count(&app).await, 1);
    assert_eq!(outbox_count(&app).await, outbox);
    assert_eq!(revoked_sessions(&app).await, 0);
    assert_eq!(get_me(&app, access).await.status(), 200);
    assert_eq!(login_json(&app.client, &app.address, &email, STRONG_PASSWORD).await.status(), 200);
    assert_eq!(refresh(&app, refresh_token).await.status(), 200);
}

#[tokio::test]
async fn patch_me_refuses_invisible_characters_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let tokens = verified_user(&app, &unique_email("invisible")).await;
    let access = str_of(&tokens, "access_token");
    let before = json_body(get_me(&app, access).await).await;
    for (what, body) in [
        ("zero-width space in the nickname", json!({"nickname": "ada\u{200B}lovelace"})),
        ("bidi override in the nickname", json!({"nickname": "ada\u{202E}nimda"})),
        ("bidi override in the first name", json!({"first_name": "Ada\u{202E}nimda"})),
        ("zero-width joiner in the last name", json!({"last_name": "Love\u{200D}lace"})),
        ("a control character in the bio", json!({"bio": "hello\u{0007}"})),
    ] {
        let response = app.client.patch(app.url("/me")).bearer_auth(access).json(&body).send().await.unwrap();
        assert_problem(response, 422, "validation_failed", what).await;
    }
    assert_eq!(json_body(get_me(&app, access).await).await, before, "nothing about the user changed");
}

#[tokio::test]
async fn the_reset_page_escapes_the_token_it_reflects() {
    let app = TestApp::spawn().await;
    let payload = "\"><script>alert(1)</script><input value=\"";
    let page = app.client.get(app.url("/password/reset")).query(&[("token", payload)]).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script"), "the token was reflected unescaped: {html}");
    assert!(html.contains("&lt;script&gt;"), "{html}");
}

#[tokio::test]
async fn register_refuses_line_breaks_in_emails_and_invisible_characters_in_nicknames() {
    let app = TestApp::spawn().await;
    for (what, email, nickname) in [
        ("CR LF header injection in the email", "victim@example.com\r\nBcc: all@example.com", None),
        ("LF inside the email", "vic\ntim@example.com", None),
        ("CR inside the email", "victim@exa\rmple.com", None),
        ("zero-width space in the nickname", "zw@example.com", Some("ada\u{200B}lovelace")),
        ("zero-width joiner in the nickname", "zwj@example.com", Some("ada\u{200D}")),
        ("bidi override in the nickname", "bidi@example.com", Some("ada\u{202E}nimda")),
        ("CR LF in the nickname", "crlf@example.com", Some("ada\r\nlovelace")),
    ] {
        let mut body = json!({"email": email, "password": STRONG_PASSWORD});
        if let Some(nickname) = nickname {
            body["nickname"] = json!(nickname);
        }
        let response = app.client.post(app.url("/register")).json(&body).send().await.unwrap();
        let problem = assert_problem(response, 422, "validation_failed", what).await;
        assert!(problem["errors"].as_array().is_some_and(|e| !e.is_empty()), "{what}: {problem}");
    }
    assert_eq!(user_count(&app).await, 0);
    assert_eq!(outbox_count(&app).await, 0);

    // Surrounding whitespace is trimmed (emails are normalised), so no CR/LF is ever stored.
    let trimmed = app
        .client
        .post(app.url("/register"))
        .json(&json!({"email": "trailing@example.com\r\n", "password": STRONG_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(trimmed.status(), 202);
    assert_eq!(app.db.count("SELECT count(*) AS n FROM users WHERE email = 'trailing@example.com'").await, 1);
    let with_breaks = "SELECT count(*) AS n FROM mail_outbox WHERE to_address ~ '[\\r\\n]' OR subject ~ '[\\r\\n]'";
    assert_eq!(app.db.count(with_breaks).await, 0);
}

#[tokio::test]
async fn passwords_are_never_truncated() {
    let app = TestApp::spawn().await;
    // 117 characters; every prefix tried below is itself a strong password, so only truncation could accept it.
    let password = "violet-kettle-orbit-97-amber-lantern-quiet-31-copper-meadow-silent-58-\
                    harbor-thistle-nimbus-04-saffron-glacier-rune-7";
    assert_eq!(password.chars().count(), 117);
    let email = unique_email("long");
    let registered =
        app.client.post(app.url("/register")).json(&json!({"email": email, "password": password})).send().await;
    assert_eq!(registered.unwrap().status(), 202);
    app.db.execute(&format!("UPDATE users SET email_verified = true WHERE lower(email) = lower('{email}')")).await;
    for prefix in [64, 72, 100, 116] {
        let response = login_json(&app.client, &app.address, &email, &password[..prefix]).await;
        assert_problem(response, 401, "invalid_credentials", &format!("the first {prefix} characters")).await;
    }
    assert_eq!(login_json(&app.client, &app.address, &email, password).await.status(), 200);

    let too_long = "x7-".repeat(43);
    assert_eq!(too_long.chars().count(), 129);
    let refused = app
        .client
        .post(app.url("/register"))
        .json(&json!({"email": unique_email("too-long"), "password": too_long}))
        .send()
        .await
        .unwrap();
    assert_problem(refused, 422, "validation_failed", "a 129-character password").await;
    assert_eq!(user_count(&app).await, 1);
}
