//! The HTTP conventions of the contract, checked against the app started in-process on a fresh database: problem+json
//! for every error, body rules, bearer-token handling and the operations endpoints.

use serde_json::{Value, json};
use users_e2e::{TestApp, json_body};

async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body = json_body(response).await;
    assert_eq!(body["status"], status);
    assert_eq!(body["code"], code, "{body}");
    assert!(body["title"].is_string() && body["type"].is_string());
    body
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = TestApp::spawn().await;
    assert_problem(app.client.get(app.url("/nope")).send().await.unwrap(), 404, "not_found").await;
    assert_problem(app.client.get(app.url("/users/")).send().await.unwrap(), 404, "not_found").await;
    let wrong_method = app.client.delete(app.url("/login")).send().await.unwrap();
    assert_eq!(wrong_method.headers()["allow"], "POST");
    assert_problem(wrong_method, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn login_bodies_that_do_not_parse_are_400_and_wrong_types_are_415() {
    let app = TestApp::spawn().await;
    let post = |body: &'static str, content_type: &'static str| {
        app.client.post(app.url("/login")).header("content-type", content_type).body(body).send()
    };
    for body in [
        "{",
        "[]",
        r#"{"email": 5, "password": "x"}"#,
        r#"{"email": "a@example.com", "password": "x", "role": "ADMIN"}"#,
        r#"{"email": "a@example.com", "email": "b@example.com", "password": "x"}"#,
    ] {
        assert_problem(post(body, "application/json").await.unwrap(), 400, "malformed_body").await;
    }
    let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    let response =
        app.client.post(app.url("/login")).header("content-type", "application/json").body(deep).send().await.unwrap();
    assert_problem(response, 400, "malformed_body").await;
    assert_problem(
        post("username=a&password=b&is_admin=1", "application/x-www-form-urlencoded").await.unwrap(),
        400,
        "malformed_body",
    )
    .await;
    assert_problem(post("email=a", "text/plain").await.unwrap(), 415, "unsupported_media_type").await;
    let huge = json!({"email": "a@example.com", "password": "x".repeat(20_000)}).to_string();
    let response =
        app.client.post(app.url("/login")).header("content-type", "application/json").body(huge).send().await.unwrap();
    assert_problem(response, 413, "payload_too_large").await;
}

#[tokio::test]
async fn protected_routes_need_a_valid_bearer_token() {
    let app = TestApp::spawn().await;
    let missing = app.client.get(app.url("/me")).send().await.unwrap();
    assert_eq!(missing.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
    assert_problem(missing, 401, "invalid_token").await;
    for token in ["garbage", "a.b.c", "", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."] {
        let response =
            app.client.get(app.url("/me")).header("authorization", format!("Bearer {token}")).send().await.unwrap();
        assert_problem(response, 401, "invalid_token").await;
    }
    let basic = app.client.get(app.url("/me")).basic_auth("a", Some("b")).send().await.unwrap();
    assert_problem(basic, 401, "invalid_token").await;
    let query = app.client.get(app.url("/me?access_token=whatever")).send().await.unwrap();
    assert_problem(query, 401, "invalid_token").await;
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let app = TestApp::spawn().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.headers().contains_key("x-request-id"));
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), 200);

    let served = app.client.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(served.headers()["content-type"], "application/json");
    let openapi = json_body(served).await;
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3."));
    let posted = app.client.post(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(posted.headers()["allow"], "GET");
    assert_problem(posted, 405, "method_not_allowed").await;
    for path in ["/login", "/me", "/healthz", "/readyz", "/.well-known/jwks.json"] {
        assert!(openapi["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    // Metrics belong to the operators' listener, not to the public API it documents.
    assert!(openapi["paths"].get("/metrics").is_none(), "/metrics is not part of the public API");
    assert!(openapi["paths"]["/users/{id}"].get("put").is_some(), "PUT /users/{{id}} is documented");
    let docs = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().to_lowercase().contains("swagger"));
    // The UI is pointed at the document by its URL.
    let initializer = app.client.get(app.url("/docs/swagger-initializer.js")).send().await.unwrap();
    assert_eq!(initializer.status(), 200);
    let initializer = initializer.text().await.unwrap();
    assert!(initializer.contains("\"url\": \"/openapi.json\""), "{initializer}");
    let docs_no_slash = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs_no_slash.status(), 200, "/docs redirects to the UI");

    let jwks = json_body(app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap()).await;
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert!(key.get("d").is_none(), "the private key must never be published");

    assert_problem(app.client.get(app.url("/metrics")).send().await.unwrap(), 404, "not_found").await;
    let metrics_address = app.metrics_address.as_deref().unwrap();
    let metrics = app.client.get(format!("{metrics_address}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("http_requests_total"), "{metrics}");
}

#[tokio::test]
async fn a_client_request_id_is_echoed_only_when_plain() {
    let app = TestApp::spawn().await;
    let plain = app.client.get(app.url("/healthz")).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(plain.headers()["x-request-id"], "abc-123");
    let forged = app.client.get(app.url("/healthz")).header("x-request-id", "a b\"c").send().await.unwrap();
    assert_ne!(forged.headers()["x-request-id"], "a b\"c");
}

#[tokio::test]
async fn control_characters_in_a_login_email_are_an_ordinary_401() {
    let app = TestApp::spawn().await;
    for email in ["a\u{0}b@example.com", "\u{0}", "x\r\ny"] {
        let body = json!({"email": email, "password": "whatever-it-is"});
        let response = app.client.post(app.url("/login")).json(&body).send().await.unwrap();
        assert_problem(response, 401, "invalid_credentials").await;
    }
    let form = app.client.post(app.url("/login")).header("content-type", "application/x-www-form-urlencoded");
    assert_problem(form.body("username=a%00b&password=x").send().await.unwrap(), 401, "invalid_credentials").await;
}
