//! The verification link opened in a browser, through the real binary with mail over SMTP to MailDev: an `Accept`
//! header that prefers HTML gets a small page (confirmed, or invalid with how to get a new link), JSON clients keep
//! the JSON answers, quality values decide, and nothing from the request reaches the page unescaped.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers: failing loudly is the point")]

use serde_json::json;
use users_e2e::maildev::{MailDev, link};
use users_e2e::{BinaryApp, STRONG_PASSWORD, assert_problem, json_body, unique_email};

/// What a browser sends when a person clicks a link.
const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// An `APP_BASE_URL` with a character that HTML needs escaped, to see that the page escapes it.
const APP_BASE_URL: &str = "https://app.example.com/a&b";

async fn app(maildev: &MailDev) -> BinaryApp {
    let mut extra = maildev.app_env();
    extra.push(("APP_BASE_URL".to_owned(), APP_BASE_URL.to_owned()));
    BinaryApp::start_with(&extra, |_| {}).await
}

/// Registers a new address and returns the path of its verification link (`/verify-email/{user_id}/{token}`).
async fn registered(app: &BinaryApp, maildev: &MailDev) -> String {
    let email = unique_email("page");
    let body = json!({"email": email, "password": STRONG_PASSWORD});
    let response = app.client.post(app.url("/register")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let mails = maildev.wait_for(&email, 1).await;
    let url = link(&mails[0], &format!("{APP_BASE_URL}/verify-email/"));
    url.strip_prefix(APP_BASE_URL).unwrap().to_owned()
}

async fn get(app: &BinaryApp, path: &str, accept: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    request.send().await.unwrap()
}

/// Checks an HTML page answer (status, type, headers, no script) and returns its body.
async fn assert_page(response: reqwest::Response, status: u16, heading: &str) -> String {
    assert_eq!(response.status(), status);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(headers["content-security-policy"].to_str().unwrap().starts_with("default-src 'none'"));
    assert_eq!(headers["vary"], "accept");
    let body = response.text().await.unwrap();
    assert!(body.starts_with("<!doctype html><html lang=\"en\">"), "{body}");
    assert!(body.contains(&format!("<title>{heading}</title>")), "{body}");
    assert!(body.contains(&format!("<h1>{heading}</h1>")), "{body}");
    assert!(!body.to_ascii_lowercase().contains("<script"), "no script: {body}");
    body
}

#[tokio::test]
async fn a_browser_gets_a_page_for_a_live_link_and_for_a_used_one() {
    let maildev = MailDev::shared();
    let app = app(&maildev).await;
    let path = registered(&app, &maildev).await;

    let body = assert_page(get(&app, &path, Some(BROWSER)).await, 200, "Your email address is confirmed").await;
    assert!(body.contains("Your email address is verified"), "{body}");
    assert!(body.contains("Sign in"), "a sign-in hint: {body}");
    assert!(body.contains("https://app.example.com/a&amp;b"), "the configured URL, escaped: {body}");
    assert!(!body.contains("a&b"), "nothing unescaped: {body}");

    let body = assert_page(get(&app, &path, Some(BROWSER)).await, 400, "This link is invalid or has expired").await;
    assert!(body.contains("To get a new link"), "how to get a new one: {body}");
}

#[tokio::test]
async fn json_clients_keep_the_json_answers() {
    let maildev = MailDev::shared();
    let app = app(&maildev).await;
    for accept in [None, Some("*/*"), Some("application/json")] {
        let path = registered(&app, &maildev).await;
        let response = get(&app, &path, accept).await;
        assert_eq!(response.status(), 200, "{accept:?}");
        assert_eq!(response.headers()["content-type"], "application/json", "{accept:?}");
        let body = json_body(response).await;
        assert_eq!(body, json!({"message": "Your email address is verified; you can log in now."}), "{accept:?}");
        let again = get(&app, &path, accept).await;
        assert_problem(again, 400, "invalid_or_expired_token", "a used link, as JSON").await;
    }
}

#[tokio::test]
async fn quality_values_decide_between_the_page_and_json() {
    let maildev = MailDev::shared();
    let app = app(&maildev).await;
    let path = registered(&app, &maildev).await;
    let prefers_html = "application/json;q=0.5, text/html;q=0.9";
    assert_page(get(&app, &path, Some(prefers_html)).await, 200, "Your email address is confirmed").await;

    for prefers_json in ["text/html;q=0.4, application/json", "text/html, application/json", "text/html;q=0, */*"] {
        let response = get(&app, &path, Some(prefers_json)).await;
        assert_problem(response, 400, "invalid_or_expired_token", prefers_json).await;
    }
}

#[tokio::test]
async fn a_hostile_link_is_answered_without_echoing_it() {
    let maildev = MailDev::shared();
    let app = app(&maildev).await;
    let user_id = uuid::Uuid::new_v4();
    for path in [
        format!("/verify-email/{user_id}/%3Cscript%3Ealert(1)%3C%2Fscript%3E"),
        "/verify-email/%22%3E%3Cb%3Ealert(1)%3C%3E/x".to_owned(),
        format!("/verify-email/{user_id}/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E"),
    ] {
        let body = assert_page(get(&app, &path, Some(BROWSER)).await, 400, "This link is invalid or has expired").await;
        assert!(!body.contains("alert(1)") && !body.contains("<img") && !body.contains("onerror"), "{path}: {body}");
    }
}
