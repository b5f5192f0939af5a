//! Production defaults of the real binary: metrics on their own listener only, and secrets read from files
//! (`NAME_FILE`).

#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers: failing loudly is the point")]

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use users_e2e::{BinaryApp, free_port, json_body, run_until_exit};

/// Asserts a problem document with `status` and `code`.
async fn assert_problem(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: Value = json_body(response).await;
    assert_eq!(body["code"], code, "{body}");
}

#[tokio::test]
async fn metrics_are_served_on_the_metrics_listener_and_are_a_404_problem_on_the_public_one() {
    let app = BinaryApp::start(|_| {}).await;
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);

    assert_problem(app.client.get(app.url("/metrics")).send().await.unwrap(), 404, "not_found").await;
    let openapi = json_body(app.client.get(app.url("/openapi.json")).send().await.unwrap()).await;
    assert!(openapi["paths"].get("/metrics").is_none(), "/metrics is not part of the public API");

    let scrape = app.client.get(format!("{}/metrics", app.metrics_address)).send().await.unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(scrape.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = scrape.text().await.unwrap();
    assert!(text.contains("http_requests_total{"), "{text}");
    assert!(text.contains(r#"route="/healthz""#), "the public request is counted: {text}");
    // Latencies are fixed-bucket histograms, whose memory does not grow with traffic.
    assert!(text.contains("http_request_duration_seconds_bucket{"), "{text}");

    assert_problem(app.client.get(format!("{}/users", app.metrics_address)).send().await.unwrap(), 404, "not_found")
        .await;
}

#[tokio::test]
async fn the_binary_reads_database_url_from_database_url_file() {
    let secrets = tempfile::tempdir().unwrap();
    let path = secrets.path().join("database-url");
    let path_text = path.display().to_string();
    let app = BinaryApp::start_editing(
        |env| {
            let url = env.remove("DATABASE_URL").unwrap();
            // As a secret file usually ends: with one newline, which is not part of the value.
            std::fs::write(&path, format!("{url}\n")).unwrap();
            env.insert("DATABASE_URL_FILE".to_owned(), path_text.clone());
        },
        |_| {},
    )
    .await;
    assert!(!app.env.contains_key("DATABASE_URL"));
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
}

#[tokio::test]
async fn setting_a_secret_and_its_file_form_stops_start_up_naming_both() {
    let secrets = tempfile::tempdir().unwrap();
    let path = secrets.path().join("database-url");
    std::fs::write(&path, "postgres://postgres@127.0.0.1:5432/elsewhere\n").unwrap();
    let env = HashMap::from([
        ("DATABASE_URL".to_owned(), "postgres://postgres@127.0.0.1:5432/user_management".to_owned()),
        ("DATABASE_URL_FILE".to_owned(), path.display().to_string()),
        ("DATA_DIR".to_owned(), secrets.path().display().to_string()),
        ("BIND_ADDR".to_owned(), format!("127.0.0.1:{}", free_port())),
        ("METRICS_BIND_ADDR".to_owned(), String::new()),
    ]);
    let output = run_until_exit(&["serve"], &env, Duration::from_secs(30));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DATABASE_URL and DATABASE_URL_FILE are both set"), "{stderr}");
}
