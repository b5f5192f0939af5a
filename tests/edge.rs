//! What the service believes about what stands in front of it, through HTTP against the app: the client address
//! behind trusted proxies (and only behind them), CORS for browser apps on other origins, and mail links on
//! `APP_BASE_URL`.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers: failing loudly is the point")]

use std::time::{Duration, Instant};

use serde_json::json;
use users_e2e::{STRONG_PASSWORD, TestApp, json_body, str_of, unique_email};

const APP_ORIGIN: &str = "https://app.example.com";

async fn register(app: &TestApp, forwarded_for: Option<&str>) -> u16 {
    let mut request = app
        .client
        .post(app.url("/register"))
        .json(&json!({"email": unique_email("edge"), "password": STRONG_PASSWORD}));
    if let Some(value) = forwarded_for {
        request = request.header("x-forwarded-for", value);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_do_not_dodge_the_per_ip_limit() {
    let app = TestApp::spawn_with(&[("RATE_LIMITS", "on"), ("RATE_LIMIT_PER_MINUTE", "2")]).await;
    assert_eq!(register(&app, Some("198.51.100.1")).await, 202);
    assert_eq!(register(&app, Some("198.51.100.2")).await, 202);
    assert_eq!(register(&app, Some("198.51.100.3")).await, 429, "a forged X-Forwarded-For changes nothing");
}

#[tokio::test]
async fn behind_a_trusted_proxy_clients_are_told_apart_by_their_forwarded_address() {
    let app = TestApp::spawn_with(&[
        ("RATE_LIMITS", "on"),
        ("RATE_LIMIT_PER_MINUTE", "2"),
        ("TRUSTED_PROXIES", "127.0.0.0/8, ::1/128"),
    ])
    .await;
    assert_eq!(register(&app, Some("198.51.100.1")).await, 202);
    assert_eq!(register(&app, Some("198.51.100.1")).await, 202);
    assert_eq!(register(&app, Some("198.51.100.1")).await, 429, "the first client used up its limit");
    // A second client behind the same proxy has a bucket of its own, whatever it forged to the left.
    assert_eq!(register(&app, Some("198.51.100.1, 198.51.100.2")).await, 202);
    // The proxy's own address (no header) is a client like any other.
    assert_eq!(register(&app, None).await, 202);
}

#[tokio::test]
async fn a_session_records_the_forwarded_address_only_from_a_trusted_proxy() {
    for (trusted, expected) in [("127.0.0.0/8", "203.0.113.77"), ("10.0.0.0/8", "127.0.0.1")] {
        let app = TestApp::spawn_with(&[
            ("TRUSTED_PROXIES", trusted),
            ("BOOTSTRAP_ADMIN_EMAIL", "edge-root@example.com"),
            ("BOOTSTRAP_ADMIN_PASSWORD", STRONG_PASSWORD),
        ])
        .await;
        let login = app
            .client
            .post(app.url("/login"))
            .header("x-forwarded-for", "1.2.3.4, 203.0.113.77")
            .json(&json!({"email": "edge-root@example.com", "password": STRONG_PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 200);
        let token = str_of(&json_body(login).await, "access_token").to_owned();
        let sessions =
            json_body(app.client.get(app.url("/me/sessions")).bearer_auth(&token).send().await.unwrap()).await;
        assert_eq!(sessions["items"][0]["ip"], expected, "with TRUSTED_PROXIES={trusted}");
    }
}

#[tokio::test]
async fn cors_answers_allowed_origins_only() {
    let app = TestApp::spawn_with(&[("CORS_ALLOWED_ORIGINS", APP_ORIGIN)]).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/login"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight(APP_ORIGIN).await.unwrap();
    assert_eq!(allowed.status(), 204);
    assert_eq!(allowed.headers()["access-control-allow-origin"], APP_ORIGIN);
    assert!(allowed.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert!(allowed.headers()["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    assert!(allowed.headers().get("access-control-allow-credentials").is_none(), "no credentials");

    let denied = preflight("https://evil.example.com").await.unwrap();
    assert!(denied.headers().get("access-control-allow-origin").is_none());
    assert_ne!(denied.status(), 204);

    // Actual requests from the allowed origin can be read, errors included; others get no CORS headers.
    let me = app.client.get(app.url("/me")).header("origin", APP_ORIGIN).send().await.unwrap();
    assert_eq!(me.status(), 401);
    assert_eq!(me.headers()["access-control-allow-origin"], APP_ORIGIN);
    assert!(me.headers()["vary"].to_str().unwrap().contains("Origin"));
    let other = app.client.get(app.url("/healthz")).header("origin", "https://evil.example.com").send().await.unwrap();
    assert_eq!(other.status(), 200, "a request from another origin is still served");
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn without_allowed_origins_there_are_no_cors_headers() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/login"))
        .header("origin", APP_ORIGIN)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn mailed_links_start_with_app_base_url() {
    let app = TestApp::spawn_with(&[("APP_BASE_URL", "https://app.example.com/account")]).await;
    assert_eq!(register(&app, None).await, 202);
    let mail_dir = app.data_dir.path().join("mail");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mail = loop {
        let found = std::fs::read_dir(&mail_dir)
            .ok()
            .and_then(|mut entries| entries.next())
            .and_then(Result::ok)
            .and_then(|entry| std::fs::read_to_string(entry.path()).ok());
        if let Some(mail) = found {
            // Undo quoted-printable soft line breaks, which may split a long link.
            break mail.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
        }
        assert!(Instant::now() < deadline, "no mail written under {}", mail_dir.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(mail.contains("https://app.example.com/account/verify-email/"), "{mail}");
    assert!(!mail.contains("http://app.test/verify-email/"), "PUBLIC_BASE_URL is not used for links");
}

#[tokio::test]
async fn a_person_posting_the_reset_form_with_a_dead_link_gets_a_page_not_json() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/password/reset"))
        .form(&[("token", "not-a-live-token"), ("new_password", STRONG_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let body = response.text().await.unwrap();
    assert!(body.contains("Password not changed"), "{body}");
}

/// How long a refused connection may stay open: well under the 5 s keep-alive, so the test sees the server close it
/// because of the refusal, not because it idled.
const REFUSAL_CLOSES_WITHIN: Duration = Duration::from_secs(3);

/// Sends `request` on its own connection and checks it was refused by the HTTP layer itself: one 400 and nothing
/// else, with no `X-Request-Id` (every answer of the service's own handlers and middleware carries one, so none
/// means no handler ran), and the connection closed.
async fn refused_before_any_handler(app: &TestApp, case: &str, request: &str) {
    let answer = users_e2e::raw::exchange(&app.address, request.as_bytes(), REFUSAL_CLOSES_WITHIN).await;
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(users_e2e::raw::statuses(&answer), [400], "{case}: {text:?}");
    assert!(!text.to_ascii_lowercase().contains("x-request-id"), "{case}: the request reached the service: {text:?}");
}

/// The rows a request of the service could have written: accounts, queued mail, login attempts and audit events.
async fn written_rows(app: &TestApp) -> [i64; 4] {
    [
        app.db.count("SELECT count(*) AS n FROM users").await,
        app.db.count("SELECT count(*) AS n FROM mail_outbox").await,
        app.db.count("SELECT count(*) AS n FROM login_attempts").await,
        app.db.count("SELECT count(*) AS n FROM audit_events").await,
    ]
}

/// A request with two framings, smuggling a second one: a front proxy that trusts `Content-Length` forwards it whole,
/// while a server that trusts `Transfer-Encoding` would end the first request at the empty chunk and take the rest
/// (here a sign-up) as a request of its own. The service refuses every such request in the HTTP layer, with 400,
/// before any handler runs, closes the connection, and never runs what was smuggled.
#[tokio::test]
async fn a_request_framed_two_ways_is_refused_and_what_it_smuggles_never_runs() {
    let app = TestApp::spawn().await;
    let host = app.address.trim_start_matches("http://");
    let smuggled_email = unique_email("smuggled");
    let smuggled_body = json!({"email": smuggled_email, "password": STRONG_PASSWORD}).to_string();
    let smuggled = format!(
        "POST /register HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        smuggled_body.len(),
        smuggled_body
    );
    let body = format!("0\r\n\r\n{smuggled}");
    let length = format!("Content-Length: {}\r\n", body.len());
    let before = written_rows(&app).await;

    for (case, framing) in [
        ("Content-Length, then Transfer-Encoding", format!("{length}Transfer-Encoding: chunked\r\n")),
        ("Transfer-Encoding, then Content-Length", format!("Transfer-Encoding: chunked\r\n{length}")),
        ("chunked not the final coding", "Transfer-Encoding: chunked, identity\r\n".to_owned()),
        ("a signed Content-Length", format!("Content-Length: +{}\r\n", body.len())),
    ] {
        let request =
            format!("POST /login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{framing}\r\n{body}");
        refused_before_any_handler(&app, case, &request).await;
    }

    assert_eq!(written_rows(&app).await, before, "a refused request, or what it smuggled, wrote something");
    // The same sign-up, sent on its own, is taken: the refusals above were about the framing, not the request.
    let alone = users_e2e::raw::exchange(
        &app.address,
        smuggled.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(users_e2e::raw::statuses(&alone), [202], "answer: {:?}", String::from_utf8_lossy(&alone));
    assert_eq!(written_rows(&app).await[0], before[0] + 1);
}

/// An HTTP/1.1 request must name exactly one host: with none, or with two that may disagree, a proxy and the service
/// could each route or log it by a different one. Both are refused in the HTTP layer with 400, and the connection
/// is closed.
#[tokio::test]
async fn a_request_with_no_host_or_two_hosts_is_refused() {
    let app = TestApp::spawn().await;
    let host = app.address.trim_start_matches("http://");
    refused_before_any_handler(&app, "no Host", "GET /healthz HTTP/1.1\r\n\r\n").await;
    let two = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nHost: other.example\r\n\r\n");
    refused_before_any_handler(&app, "two Host fields", &two).await;
    // The same request with one Host is served: the refusals were about the Host fields.
    let fine = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let answer = users_e2e::raw::exchange(&app.address, fine.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(users_e2e::raw::statuses(&answer), [200], "{:?}", String::from_utf8_lossy(&answer));
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(text.contains("x-request-id"), "the service's own answers carry an id, which the checks above rely on");
}

/// Two `Content-Length` fields, equal or not, leave the body's length to whoever reads which: refused in the HTTP
/// layer on a route that would otherwise answer 200.
#[tokio::test]
async fn a_request_with_two_content_lengths_is_refused() {
    let app = TestApp::spawn().await;
    let host = app.address.trim_start_matches("http://");
    for (case, lengths) in [("different", ("0", "5")), ("equal", ("0", "0"))] {
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nContent-Length: {}\r\n\r\n",
            lengths.0, lengths.1
        );
        refused_before_any_handler(&app, case, &request).await;
    }
}
