//! The `/users` routes against the real binary decide on the caller's role before anything else: a role that may
//! not use them gets 403 `forbidden` whatever the path id, query and body (malformed, unknown fields, wrong type,
//! oversized, a bad id), and no token is 401. An ADMIN sending the same requests gets the 400, 404, 413, 415 and
//! 422 answers, which shows each request really is bad.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used, reason = "test helpers: failing loudly is the point")]

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use users_e2e::raw::RawRequest;
use users_e2e::{BinaryApp, STRONG_PASSWORD, json_body, login_json, unique_email};

/// One request to a `/users` route, and what an ADMIN gets for it (`None`: not sent as ADMIN, it would succeed
/// and change something).
struct Case {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    admin_gets: Option<u16>,
}

fn case(method: Method, path: &str, content_type: Option<&'static str>, body: &str, admin_gets: Option<u16>) -> Case {
    Case { method, path: path.to_owned(), content_type, body: body.as_bytes().to_vec(), admin_gets }
}

const JSON: Option<&str> = Some("application/json");

/// Every `/users` route with bad or good bodies, ids and queries; `target` is an existing plain user.
fn cases(target: &str) -> Vec<Case> {
    let unknown = uuid::Uuid::new_v4();
    let one = format!("/users/{target}");
    let missing = format!("/users/{unknown}");
    let valid_create = json!({"email": unique_email("new"), "password": STRONG_PASSWORD}).to_string();
    let mut cases = vec![
        case(Method::GET, "/users", None, "", Some(200)),
        case(Method::GET, "/users?limit=0&colour=red", None, "", Some(400)),
        case(Method::POST, "/users", JSON, "{\"email\": ", Some(400)),
        case(Method::POST, "/users", JSON, &valid_create.replace('}', ",\"colour\":\"red\"}"), Some(400)),
        case(Method::POST, "/users", Some("text/plain"), &valid_create, Some(415)),
        case(Method::POST, "/users", None, "", Some(415)),
        case(Method::POST, "/users", JSON, "{\"email\": \"nope\", \"password\": \"short\"}", Some(422)),
        case(Method::POST, "/users", JSON, &valid_create, None),
        case(Method::GET, &one, None, "", Some(200)),
        case(Method::GET, "/users/not-a-uuid", None, "", Some(404)),
        case(Method::GET, &missing, None, "", Some(404)),
        case(Method::DELETE, "/users/not-a-uuid", None, "", Some(404)),
        case(Method::DELETE, &missing, None, "", Some(404)),
        case(Method::DELETE, &one, JSON, "{\"anything\": true}", None),
    ];
    for method in [Method::PATCH, Method::PUT] {
        cases.extend([
            case(method.clone(), &one, JSON, "[1, 2", Some(400)),
            case(method.clone(), &one, JSON, "{\"shoe_size\": 44}", Some(400)),
            case(method.clone(), &one, Some("text/plain"), "{\"bio\": \"hi\"}", Some(415)),
            case(method.clone(), &one, JSON, "{\"bio\": \"hi\"}", None),
            case(method.clone(), "/users/not-a-uuid", JSON, "{", Some(404)),
            case(method.clone(), &missing, JSON, "{\"bio\": \"hi\"}", Some(404)),
        ]);
    }
    cases
}

async fn send(app: &BinaryApp, token: Option<&str>, case: &Case) -> reqwest::Response {
    let mut request = app.client.request(case.method.clone(), app.url(&case.path)).body(case.body.clone());
    if let Some(content_type) = case.content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn token(app: &BinaryApp, email: &str) -> String {
    let response = login_json(&app.client, &app.address, email, STRONG_PASSWORD).await;
    assert_eq!(response.status(), 200, "login of {email}");
    json_body(response).await["access_token"].as_str().unwrap().to_owned()
}

/// A verified user with `role`, created by the admin: their id and access token.
async fn user(app: &BinaryApp, admin: &str, role: &str) -> (String, String) {
    let email = unique_email(&role.to_ascii_lowercase());
    let body = json!({"email": email, "password": STRONG_PASSWORD, "role": role, "email_verified": true});
    let response = app.client.post(app.url("/users")).bearer_auth(admin).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201, "creating a {role}");
    let id = json_body(response).await["id"].as_str().unwrap().to_owned();
    (id, token(app, &email).await)
}

async fn users_in_db(app: &BinaryApp) -> i64 {
    app.db.count("SELECT count(*) AS n FROM users").await
}

/// Starts a request by hand that announces `announced` bytes of JSON and sends `sent` of them.
async fn announce(
    app: &BinaryApp,
    token: Option<&str>,
    method: &str,
    path: &str,
    announced: usize,
    sent: &[u8],
) -> RawRequest {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer.as_str()));
    }
    let mut request = RawRequest::start(&app.address, method, path, &headers, Some(announced)).await;
    request.send(sent).await;
    request
}

#[tokio::test]
async fn roles_that_may_not_use_users_routes_get_403_whatever_the_id_query_and_body() {
    let admin_email = unique_email("root");
    let env = [
        ("BOOTSTRAP_ADMIN_EMAIL".to_owned(), admin_email.clone()),
        ("BOOTSTRAP_ADMIN_PASSWORD".to_owned(), STRONG_PASSWORD.to_owned()),
    ];
    let app = BinaryApp::start_with(&env, |_| {}).await;
    let admin = token(&app, &admin_email).await;
    let (target, _) = user(&app, &admin, "AUTHENTICATED").await;
    let (_, plain) = user(&app, &admin, "AUTHENTICATED").await;
    let (_, anonymous) = user(&app, &admin, "ANONYMOUS").await;
    let before = users_in_db(&app).await;

    for (who, token) in [("AUTHENTICATED", plain.as_str()), ("ANONYMOUS", anonymous.as_str())] {
        for case in cases(&target) {
            let response = send(&app, Some(token), &case).await;
            let what = format!("{who}: {} {} {:?}", case.method, case.path, String::from_utf8_lossy(&case.body));
            assert_eq!(response.status(), 403, "{what}");
            assert_eq!(json_body(response).await["code"], "forbidden", "{what}");
        }
    }
    for case in cases(&target) {
        let response = send(&app, None, &case).await;
        let what = format!("no token: {} {}", case.method, case.path);
        assert_eq!(response.status(), 401, "{what}");
        assert!(response.headers().get("www-authenticate").is_some(), "{what}");
        assert_eq!(json_body(response).await["code"], "invalid_token", "{what}");
    }
    // The same requests from an ADMIN get the answers their ids, queries and bodies deserve.
    for case in cases(&target) {
        if let Some(expected) = case.admin_gets {
            let response = send(&app, Some(&admin), &case).await;
            assert_eq!(response.status(), expected, "ADMIN: {} {}", case.method, case.path);
        }
    }
    assert_eq!(users_in_db(&app).await, before, "nothing was created or deleted");
    let still = app.client.get(app.url(&format!("/users/{target}"))).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(json_body(still).await["bio"], serde_json::Value::Null, "the target is unchanged");
}

#[tokio::test]
async fn an_oversized_body_from_a_role_that_may_not_use_users_routes_gets_403_without_being_read() {
    let admin_email = unique_email("root");
    let env = [
        ("BOOTSTRAP_ADMIN_EMAIL".to_owned(), admin_email.clone()),
        ("BOOTSTRAP_ADMIN_PASSWORD".to_owned(), STRONG_PASSWORD.to_owned()),
    ];
    let app = BinaryApp::start_with(&env, |_| {}).await;
    let admin = token(&app, &admin_email).await;
    let (target, plain) = user(&app, &admin, "AUTHENTICATED").await;
    let (_, anonymous) = user(&app, &admin, "ANONYMOUS").await;
    let one = format!("/users/{target}");
    let routes = [("POST", "/users"), ("PATCH", one.as_str()), ("PUT", one.as_str())];
    // 1 MiB announced, a few bytes sent: only an answer decided without the body can arrive.
    let announced = 1024 * 1024;
    let start = br#"{"bio": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"#;
    for (method, path) in routes {
        for (who, token, status, code) in [
            ("AUTHENTICATED", Some(plain.as_str()), 403, "forbidden"),
            ("ANONYMOUS", Some(anonymous.as_str()), 403, "forbidden"),
            ("no token", None, 401, "invalid_token"),
        ] {
            let request = announce(&app, token, method, path, announced, start).await;
            let response = request.response(Duration::from_secs(10)).await;
            assert_eq!(response.status, status, "{who}: {method} {path}: {response:?}");
            assert_eq!(response.json()["code"], code, "{who}: {method} {path}");
        }
        // An ADMIN's oversized body is read up to the limit and refused with 413.
        let body = vec![b' '; 20 * 1024];
        let request = announce(&app, Some(&admin), method, path, body.len(), &body).await;
        let response = request.response(Duration::from_secs(10)).await;
        assert_eq!(response.status, 413, "ADMIN: {method} {path}: {response:?}");
    }
}
