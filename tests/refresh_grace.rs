//! The refresh-token reuse grace through the real binary: with `REFRESH_REUSE_GRACE` set, a client whose refresh
//! answer got lost retries with its old token and stays logged in, the child it never saw stops working, and a
//! reuse after the child was used still ends the session; an invalid value stops start-up.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers: failing loudly is the point")]

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use users_e2e::{BinaryApp, STRONG_PASSWORD, assert_problem, free_port, json_body, login_json, run_until_exit, str_of};

const ADMIN: &str = "grace-root@example.com";

/// The binary with a bootstrap admin to log in as, and the grace set to `grace`.
async fn app_with_grace(grace: &str) -> BinaryApp {
    let extra = [
        ("REFRESH_REUSE_GRACE".to_owned(), grace.to_owned()),
        ("BOOTSTRAP_ADMIN_EMAIL".to_owned(), ADMIN.to_owned()),
        ("BOOTSTRAP_ADMIN_PASSWORD".to_owned(), STRONG_PASSWORD.to_owned()),
    ];
    BinaryApp::start_with(&extra, |_| {}).await
}

async fn login(app: &BinaryApp) -> Value {
    let response = login_json(&app.client, &app.address, ADMIN, STRONG_PASSWORD).await;
    assert_eq!(response.status(), 200, "the bootstrap admin should log in");
    json_body(response).await
}

async fn refresh(app: &BinaryApp, pair: &Value) -> reqwest::Response {
    let body = json!({"refresh_token": str_of(pair, "refresh_token")});
    app.client.post(app.url("/token/refresh")).json(&body).send().await.unwrap()
}

async fn refreshed(app: &BinaryApp, pair: &Value) -> Value {
    let response = refresh(app, pair).await;
    assert_eq!(response.status(), 200, "the refresh should succeed");
    json_body(response).await
}

async fn me_status(app: &BinaryApp, pair: &Value) -> u16 {
    let request = app.client.get(app.url("/me")).bearer_auth(str_of(pair, "access_token"));
    request.send().await.unwrap().status().as_u16()
}

/// The session's unused refresh tokens, counted only while the session is unrevoked: the children that work.
async fn live_children(app: &BinaryApp) -> i64 {
    app.db
        .count(
            "SELECT count(*) AS n FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id \
             WHERE t.used_at IS NULL AND s.revoked_at IS NULL",
        )
        .await
}

#[tokio::test]
async fn a_retry_within_the_grace_keeps_the_client_logged_in_and_kills_the_lost_child() {
    let app = app_with_grace("60s").await;
    let first = login(&app).await;
    let lost = refreshed(&app, &first).await;
    let retried = refreshed(&app, &first).await;
    assert_ne!(retried["refresh_token"], lost["refresh_token"]);
    assert_eq!(me_status(&app, &retried).await, 200);
    assert_eq!(app.db.count("SELECT count(*) AS n FROM sessions").await, 1, "the same session, no new one");
    assert_eq!(live_children(&app).await, 1);

    // The child whose answer was lost is dead: presenting it is a reuse, and the whole session ends.
    assert_problem(refresh(&app, &lost).await, 401, "invalid_token", "the replaced child").await;
    assert_problem(refresh(&app, &retried).await, 401, "invalid_token", "the retry's token after the reuse").await;
    assert_eq!(me_status(&app, &retried).await, 401);
    assert_eq!(live_children(&app).await, 0);
}

#[tokio::test]
async fn once_the_child_was_used_the_old_token_revokes_the_session_even_within_the_grace() {
    let app = app_with_grace("60s").await;
    let first = login(&app).await;
    let child = refreshed(&app, &first).await;
    let grandchild = refreshed(&app, &child).await;
    assert_problem(refresh(&app, &first).await, 401, "invalid_token", "the parent of a used child").await;
    assert_problem(refresh(&app, &grandchild).await, 401, "invalid_token", "the family after the reuse").await;
    assert_eq!(me_status(&app, &grandchild).await, 401);
}

#[tokio::test]
async fn without_a_grace_a_retry_ends_the_session() {
    let app = app_with_grace("0s").await;
    let first = login(&app).await;
    let child = refreshed(&app, &first).await;
    assert_problem(refresh(&app, &first).await, 401, "invalid_token", "a reuse without a grace").await;
    assert_problem(refresh(&app, &child).await, 401, "invalid_token", "the child after the reuse").await;
}

#[tokio::test]
async fn concurrent_retries_leave_exactly_one_live_child() {
    let app = app_with_grace("60s").await;
    for round in 0..5 {
        let first = login(&app).await;
        refreshed(&app, &first).await;
        let (a, b) = tokio::join!(refresh(&app, &first), refresh(&app, &first));
        let statuses = [a.status().as_u16(), b.status().as_u16()];
        assert!(statuses.iter().all(|status| [200, 401].contains(status)), "round {round}: {statuses:?}");
        assert_eq!(live_children(&app).await, 1, "round {round}: {statuses:?}");
        // Only this round's session stays for the next count.
        app.db.execute("UPDATE sessions SET revoked_at = now() WHERE revoked_at IS NULL").await;
    }
}

#[tokio::test]
async fn concurrent_first_exchanges_within_the_grace_leave_exactly_one_live_child() {
    let app = app_with_grace("60s").await;
    for round in 0..5 {
        let first = login(&app).await;
        let (a, b) = tokio::join!(refresh(&app, &first), refresh(&app, &first));
        let statuses = [a.status().as_u16(), b.status().as_u16()];
        assert!(statuses.contains(&200), "round {round}: a retry is never logged out: {statuses:?}");
        assert_eq!(live_children(&app).await, 1, "round {round}: {statuses:?}");
        app.db.execute("UPDATE sessions SET revoked_at = now() WHERE revoked_at IS NULL").await;
    }
}

#[tokio::test]
async fn an_invalid_grace_stops_start_up_naming_the_variable() {
    for bad in ["soon", "10m"] {
        let data_dir = tempfile::tempdir().unwrap();
        let env = HashMap::from([
            ("DATABASE_URL".to_owned(), "postgres://postgres@127.0.0.1:5432/user_management".to_owned()),
            ("DATA_DIR".to_owned(), data_dir.path().display().to_string()),
            ("BIND_ADDR".to_owned(), format!("127.0.0.1:{}", free_port())),
            ("METRICS_BIND_ADDR".to_owned(), String::new()),
            ("REFRESH_REUSE_GRACE".to_owned(), bad.to_owned()),
        ]);
        let output = run_until_exit(&["serve"], &env, Duration::from_secs(30));
        assert!(!output.status.success(), "{bad:?} should stop start-up");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("REFRESH_REUSE_GRACE"), "{bad:?}: {stderr}");
    }
}
