//! End to end through the real binary: an admin created with the CLI logs in (form and JSON) and reads their own
//! profile; bad configuration stops start-up with one line naming the variable.

use serde_json::Value;
use users_e2e::{BinaryApp, STRONG_PASSWORD, json_body, login_json, run_cli};

const ADMIN: &str = "root@example.com";

fn create_admin(env: &std::collections::HashMap<String, String>, email: &str, password: &str) -> std::process::Output {
    run_cli(&["create-admin", "--email", email], env, &format!("{password}\n"))
}

#[tokio::test]
async fn an_admin_created_with_the_cli_logs_in_with_form_and_json_and_reads_their_profile() {
    let app = BinaryApp::start(|env| {
        let output = create_admin(env, ADMIN, STRONG_PASSWORD);
        assert!(output.status.success(), "create-admin failed: {}", String::from_utf8_lossy(&output.stderr));
        assert!(String::from_utf8_lossy(&output.stdout).contains(ADMIN));
    })
    .await;

    // The OAuth2 password flow, as Swagger UI's Authorize button sends it.
    let form = app
        .client
        .post(app.url("/login"))
        .form(&[("grant_type", "password"), ("username", ADMIN), ("password", STRONG_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    assert_eq!(form.headers()["cache-control"], "no-store");
    let form_tokens = json_body(form).await;
    assert_eq!(form_tokens["token_type"], "bearer");
    assert_eq!(form_tokens["expires_in"], 900);
    assert!(form_tokens["refresh_token"].as_str().is_some_and(|t| t.len() >= 43));

    let json = login_json(&app.client, &app.address, "ROOT@example.com", STRONG_PASSWORD).await;
    assert_eq!(json.status(), 200, "email lookup is case-insensitive");
    let json_tokens = json_body(json).await;
    assert_ne!(json_tokens["access_token"], form_tokens["access_token"]);

    for tokens in [&form_tokens, &json_tokens] {
        let me =
            app.client.get(app.url("/me")).bearer_auth(tokens["access_token"].as_str().unwrap()).send().await.unwrap();
        assert_eq!(me.status(), 200);
        let me = json_body(me).await;
        assert_eq!(me["email"], ADMIN);
        assert_eq!(me["role"], "ADMIN");
        assert_eq!(me["email_verified"], true);
        assert_eq!(me["is_locked"], false);
        assert!(me["last_login_at"].is_string());
        let nickname = me["nickname"].as_str().unwrap();
        assert_eq!(nickname.split('_').count(), 3, "generated nickname {nickname}");
        for secret in ["password_hash", "password", "failed_login_count", "refresh_token"] {
            assert!(me.get(secret).is_none(), "{secret} must never be shown");
        }
    }
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_email_get_the_same_401_body() {
    let app = BinaryApp::start(|env| {
        assert!(create_admin(env, ADMIN, STRONG_PASSWORD).status.success());
    })
    .await;
    let wrong_password = login_json(&app.client, &app.address, ADMIN, "not-the-password-at-all").await;
    let unknown_email = login_json(&app.client, &app.address, "nobody@example.com", STRONG_PASSWORD).await;
    assert_eq!(wrong_password.status(), 401);
    assert_eq!(unknown_email.status(), 401);
    assert_eq!(wrong_password.headers()["content-type"], "application/problem+json");
    let (a, b): (Value, Value) = (json_body(wrong_password).await, json_body(unknown_email).await);
    assert_eq!(a, b);
    assert_eq!(a["code"], "invalid_credentials");
}

#[tokio::test]
async fn create_admin_refuses_a_weak_password_and_creates_nothing() {
    let app = BinaryApp::start(|env| {
        let output = create_admin(env, ADMIN, "password");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("at least 15 characters"), "{stderr}");
        let empty = run_cli(&["create-admin", "--email", ADMIN], env, "");
        assert!(!empty.status.success());
        assert!(String::from_utf8_lossy(&empty.stderr).contains("standard input"));
    })
    .await;
    let response = login_json(&app.client, &app.address, ADMIN, "password").await;
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn create_admin_makes_an_existing_user_an_admin_with_the_new_password() {
    let replaced = "amber-lantern-quiet-31";
    let app = BinaryApp::start(|env| {
        assert!(create_admin(env, ADMIN, STRONG_PASSWORD).status.success());
        assert!(create_admin(env, ADMIN, replaced).status.success());
    })
    .await;
    assert_eq!(login_json(&app.client, &app.address, ADMIN, STRONG_PASSWORD).await.status(), 401);
    assert_eq!(login_json(&app.client, &app.address, ADMIN, replaced).await.status(), 200);
}

#[test]
fn bad_configuration_stops_start_up_with_one_line_naming_the_variable() {
    let cases = [
        ("DATABASE_URL", "nonsense"),
        ("BIND_ADDR", "x"),
        ("ACCESS_TOKEN_TTL", "soon"),
        ("STORAGE_BACKEND", "floppy"),
        ("LOG_FORMAT", "xml"),
    ];
    for (variable, value) in cases {
        let env = std::collections::HashMap::from([(variable.to_owned(), value.to_owned())]);
        let output = run_cli(&["serve"], &env, "");
        assert!(!output.status.success(), "{variable}={value} must stop start-up");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{variable}: expected one line, got {stderr:?}");
        assert!(lines[0].contains(variable), "{variable}: {stderr:?}");
    }
}
