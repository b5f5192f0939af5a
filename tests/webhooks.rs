//! Webhook delivery end to end, on the real binary and a receiver of the test's own: every delivery is signed the
//! Standard Webhooks way and carries the event as `GET /audit` shows it, only the configured types go out, no
//! secret is in any delivery, a receiver that fails or is down for a while still gets every event exactly once per
//! `webhook-id` once it accepts, two instances never deliver an event twice, and a delivery that keeps failing is
//! given up after `WEBHOOK_MAX_ATTEMPTS`.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used, reason = "test helpers: failing loudly is the point")]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sha2::Sha256;
use users_e2e::webhook_receiver::{Received, Receiver};
use users_e2e::{BinaryApp, STRONG_PASSWORD, json_body, login_json, unique_email};

/// `whsec_` and 24 bytes in base64.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ADMIN: &str = "root@hooks.example";

fn env(receiver: &Receiver, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("WEBHOOK_URLS".to_owned(), receiver.url.clone()),
        ("WEBHOOK_SECRET".to_owned(), SECRET.to_owned()),
        ("BOOTSTRAP_ADMIN_EMAIL".to_owned(), ADMIN.to_owned()),
        ("BOOTSTRAP_ADMIN_PASSWORD".to_owned(), STRONG_PASSWORD.to_owned()),
    ];
    env.extend(extra.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())));
    env
}

async fn register(client: &reqwest::Client, base: &str, email: &str) {
    let response = client
        .post(format!("{base}/register"))
        .json(&json!({"email": email, "password": STRONG_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

/// Waits until every delivery in the database is in `status`, and returns how many there are.
async fn wait_all(app: &BinaryApp, status: &str, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let total = app.db.count("SELECT count(*) AS n FROM webhook_deliveries").await;
        let done =
            app.db.count(&format!("SELECT count(*) AS n FROM webhook_deliveries WHERE status = '{status}'")).await;
        if total == expected && done == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{done} of {total} deliveries {status}, {expected} expected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks a delivery's signature with the secret, as a receiver would, and its timestamp's freshness.
fn verify(request: &Received) {
    let id = &request.headers["webhook-id"];
    let timestamp = &request.headers["webhook-timestamp"];
    let key = STANDARD.decode(SECRET.trim_start_matches("whsec_")).unwrap();
    let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&request.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let signatures: Vec<&str> = request.headers["webhook-signature"].split(' ').collect();
    assert!(signatures.contains(&expected.as_str()), "a signature that does not verify: {:?}", request.headers);
    let sent: i64 = timestamp.parse().unwrap();
    let now =
        i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).unwrap();
    assert!((now - sent).abs() < 300, "a stale timestamp: {sent} at {now}");
    assert_eq!(request.headers["content-type"], "application/json");
}

fn body(request: &Received) -> Value {
    serde_json::from_slice(&request.body).unwrap()
}

#[tokio::test]
async fn deliveries_are_signed_carry_the_event_only_of_the_configured_types_and_no_secret() {
    let mut receiver = Receiver::new(0);
    receiver.start().await;
    let app =
        BinaryApp::start_with(&env(&receiver, &[("WEBHOOK_EVENTS", "user.registered,login.failed")]), |_| {}).await;
    let email = unique_email("hooked");
    register(&app.client, &app.address, &email).await;
    let wrong = login_json(&app.client, &app.address, &email, "a-wrong-password-123").await;
    assert_eq!(wrong.status(), 401);
    let admin = login_json(&app.client, &app.address, ADMIN, STRONG_PASSWORD).await;
    let admin = json_body(admin).await["access_token"].as_str().unwrap().to_owned();
    // One registration and one failure; the admin's login.succeeded is not a configured type.
    wait_all(&app, "delivered", 2).await;

    let requests = receiver.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let trail = app.client.get(app.url("/audit?limit=100")).bearer_auth(&admin).send().await.unwrap();
    let trail = json_body(trail).await;
    let events: HashMap<&str, &Value> =
        trail["items"].as_array().unwrap().iter().map(|event| (event["id"].as_str().unwrap(), event)).collect();
    let mut kinds = HashSet::new();
    for request in &requests {
        verify(request);
        let body = body(request);
        let id = request.headers["webhook-id"].as_str();
        assert_eq!(&body["data"], events[id], "the delivery carries the event as the trail shows it");
        assert_eq!(body["type"], body["data"]["type"]);
        assert_eq!(body["timestamp"], body["data"]["at"]);
        kinds.insert(body["type"].as_str().unwrap().to_owned());
        let text = String::from_utf8_lossy(&request.body);
        for secret in [STRONG_PASSWORD, "a-wrong-password-123", SECRET, &admin] {
            assert!(!text.contains(secret), "a secret in a delivery");
        }
    }
    assert_eq!(kinds, HashSet::from(["user.registered".to_owned(), "login.failed".to_owned()]));
}

#[tokio::test]
async fn a_receiver_that_fails_then_goes_down_and_returns_gets_every_event_once() {
    // 500 for the first four requests, then down for a while, then back.
    let mut receiver = Receiver::new(4);
    receiver.start().await;
    let app = BinaryApp::start_with(&env(&receiver, &[("WEBHOOK_EVENTS", "user.registered")]), |_| {}).await;
    for i in 0..3 {
        register(&app.client, &app.address, &unique_email(&format!("failing{i}"))).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.requests().iter().filter(|request| request.status == 500).count() < 4 {
        assert!(Instant::now() < deadline, "the receiver did not see its failures");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receiver.stop().await;
    for i in 0..2 {
        register(&app.client, &app.address, &unique_email(&format!("while-down{i}"))).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.db.count("SELECT count(*) AS n FROM webhook_deliveries WHERE attempts >= 1").await < 5 {
        assert!(Instant::now() < deadline, "the deliveries were not attempted while the receiver was down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    receiver.start().await;
    wait_all(&app, "delivered", 5).await;
    let accepted = receiver.accepted_by_id();
    assert_eq!(accepted.len(), 5, "every event accepted");
    assert!(accepted.values().all(|requests| requests.len() == 1), "no event delivered again after a 2xx");
    assert_eq!(receiver.requests().iter().filter(|request| request.status == 500).count(), 4);
    receiver.requests().iter().for_each(verify);
}

#[tokio::test]
async fn a_receiver_that_was_down_gets_every_event_after_it_returns() {
    let mut receiver = Receiver::new(0);
    let app = BinaryApp::start_with(&env(&receiver, &[("WEBHOOK_EVENTS", "user.registered")]), |_| {}).await;
    for i in 0..3 {
        register(&app.client, &app.address, &unique_email(&format!("down{i}"))).await;
    }
    // Each delivery was tried and refused while nothing listened.
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.db.count("SELECT count(*) AS n FROM webhook_deliveries WHERE attempts >= 1 AND status = 'pending'").await
        < 3
    {
        assert!(Instant::now() < deadline, "the deliveries were not attempted while the receiver was down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(receiver.requests().is_empty());
    receiver.start().await;
    wait_all(&app, "delivered", 3).await;
    let accepted = receiver.accepted_by_id();
    assert_eq!(accepted.len(), 3);
    assert!(accepted.values().all(|requests| requests.len() == 1));
    let stored = app.db.text("SELECT coalesce(string_agg(last_error, ' '), '') AS value FROM webhook_deliveries").await;
    assert!(!stored.contains("whsec_") && !stored.contains(SECRET), "no secret in a recorded error");
}

#[tokio::test]
async fn two_instances_deliver_each_event_once() {
    let mut receiver = Receiver::new(0);
    receiver.start().await;
    let app = BinaryApp::start_with(&env(&receiver, &[("WEBHOOK_EVENTS", "user.registered")]), |_| {}).await;
    let peer = app.start_peer(&[]).await;
    for i in 0..20 {
        let base = if i % 2 == 0 { &app.address } else { &peer.address };
        register(&app.client, base, &unique_email(&format!("pair{i}"))).await;
    }
    wait_all(&app, "delivered", 20).await;
    let accepted = receiver.accepted_by_id();
    assert_eq!(accepted.len(), 20);
    let twice: Vec<&String> = accepted.iter().filter(|(_, requests)| requests.len() > 1).map(|(id, _)| id).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert_eq!(receiver.requests().len(), 20, "no delivery attempted twice");
}

#[tokio::test]
async fn a_delivery_that_keeps_failing_is_given_up_after_the_last_attempt() {
    let mut receiver = Receiver::new(usize::MAX);
    receiver.start().await;
    let app = BinaryApp::start_with(
        &env(&receiver, &[("WEBHOOK_EVENTS", "user.registered"), ("WEBHOOK_MAX_ATTEMPTS", "2")]),
        |_| {},
    )
    .await;
    register(&app.client, &app.address, &unique_email("doomed")).await;
    wait_all(&app, "dead", 1).await;
    assert_eq!(app.db.count("SELECT count(*) AS n FROM webhook_deliveries WHERE attempts = 2").await, 1);
    assert_eq!(app.db.text("SELECT last_error AS value FROM webhook_deliveries").await, "HTTP 500");
    assert_eq!(receiver.requests().len(), 2);
    let metrics =
        app.client.get(format!("{}/metrics", app.metrics_address)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("webhook_deliveries_total{outcome=\"dead\"} 1"), "{metrics}");
    assert!(metrics.contains("webhook_deliveries_total{outcome=\"failed\"} 1"), "{metrics}");
}
