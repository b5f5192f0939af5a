//! A hostile client's attempts on the per-IP limits behind a trusted proxy, through HTTP against the app: moving
//! within an IPv6 /64, writing one IPv4 address in its IPv6 forms, and crowding the forwarding header. The limits
//! are counted in the shared database, so what holds here holds for every instance on it.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers: failing loudly is the point")]

use serde_json::json;
use users_e2e::{STRONG_PASSWORD, TestApp, json_body, str_of, unique_email};

/// An app behind a proxy on the loopback, allowing two registrations a minute per client.
async fn behind_proxy() -> TestApp {
    TestApp::spawn_with(&[
        ("RATE_LIMITS", "on"),
        ("RATE_LIMIT_PER_MINUTE", "2"),
        ("TRUSTED_PROXIES", "127.0.0.0/8, ::1/128"),
    ])
    .await
}

async fn register(app: &TestApp, forwarded_for: &str) -> reqwest::Response {
    app.client
        .post(app.url("/register"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"email": unique_email("attack"), "password": STRONG_PASSWORD}))
        .send()
        .await
        .unwrap()
}

async fn status(app: &TestApp, forwarded_for: &str) -> u16 {
    register(app, forwarded_for).await.status().as_u16()
}

#[tokio::test]
async fn an_ipv6_client_gets_no_fresh_budget_from_each_address_of_its_slash_64() {
    let app = behind_proxy().await;
    assert_eq!(status(&app, "2001:db8:1:2::1").await, 202);
    assert_eq!(status(&app, "2001:db8:1:2:aaaa::2").await, 202);
    let refused = register(&app, "[2001:db8:1:2:ffff:ffff:ffff:3]:443").await;
    assert_eq!(refused.status().as_u16(), 429, "a third address of the same /64");
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "the rest of a one-minute window: {retry_after}");
    assert_eq!(str_of(&json_body(refused).await, "code"), "rate_limited");
    // Another /64 is another client.
    assert_eq!(status(&app, "2001:db8:1:3::1").await, 202);
}

#[tokio::test]
async fn an_ipv4_address_in_its_ipv6_forms_shares_one_budget() {
    let app = behind_proxy().await;
    assert_eq!(status(&app, "192.0.2.9").await, 202);
    assert_eq!(status(&app, "::ffff:192.0.2.9").await, 202);
    assert_eq!(status(&app, "[::ffff:c000:209]:8080").await, 429, "the same address written as hex and with a port");
}

#[tokio::test]
async fn forged_entries_left_of_the_proxy_never_pick_the_client_however_many() {
    let app = behind_proxy().await;
    // Each request forges a different crowd of addresses to the left of the one the proxy appended; the last one
    // carries about 100 KB of them, still under what the server reads of a request head.
    for (attempt, entries, expected) in [(1_u32, 500_u32, 202_u16), (2, 500, 202), (3, 7_500, 429)] {
        let forged: Vec<String> =
            (0..entries).map(|entry| format!("203.0.113.{}", (attempt * 7 + entry) % 250)).collect();
        let header = format!("{}, 198.51.100.50", forged.join(", "));
        assert_eq!(status(&app, &header).await, expected, "attempt {attempt}");
    }
    // A head larger than the server reads is refused whole (or the connection closed on it), never a server error.
    let huge = vec!["203.0.113.1"; 20_000].join(", ");
    let sent = app.client.post(app.url("/register")).header("x-forwarded-for", huge).send().await;
    if let Ok(answer) = sent {
        assert!(answer.status().is_client_error(), "{}", answer.status());
    }
    // The client behind the crowds is still limited, and another is not.
    assert_eq!(status(&app, "198.51.100.50").await, 429);
    assert_eq!(status(&app, "198.51.100.51").await, 202);
}
