//! The audit trail end to end, on the real binary with Postgres and MailDev: every action of the contract is
//! performed over HTTP and found in `GET /audit` with the right actor, subject and details; no password, token,
//! link, TOTP secret or code handled on the way appears anywhere in the trail; `GET /me/activity` shows the
//! caller's own events; bad filters are refused; the counters reach the metrics listener.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used, reason = "test helpers: failing loudly is the point")]

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbImage};
use serde_json::{Value, json};
use users_e2e::maildev::{MailDev, link};
use users_e2e::totp::{base32_decode, step_with_time_left, totp};
use users_e2e::webhook_receiver::Receiver;
use users_e2e::{BinaryApp, STRONG_PASSWORD, assert_problem, json_body, login_json, str_of, unique_email};

const ADMIN: &str = "root@audit.example";
const SECOND_PASSWORD: &str = "amber-lantern-quartz-42";
const THIRD_PASSWORD: &str = "copper-meadow-falcon-58";

struct Trail {
    app: BinaryApp,
    /// Every event is delivered here too.
    receiver: Receiver,
    maildev: MailDev,
    admin: String,
    /// Every secret the test handled, none of which may appear in the trail.
    secrets: Vec<String>,
}

impl Trail {
    async fn start() -> Self {
        let maildev = MailDev::shared();
        let mut receiver = Receiver::new(0);
        receiver.start().await;
        let mut env = maildev.app_env();
        env.extend([
            ("WEBHOOK_URLS".to_owned(), receiver.url.clone()),
            ("WEBHOOK_SECRET".to_owned(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()),
            ("BOOTSTRAP_ADMIN_EMAIL".to_owned(), ADMIN.to_owned()),
            ("BOOTSTRAP_ADMIN_PASSWORD".to_owned(), STRONG_PASSWORD.to_owned()),
            ("LOGIN_BACKOFF_AFTER".to_owned(), "2".to_owned()),
            ("LOGIN_BACKOFF_BASE".to_owned(), "60s".to_owned()),
        ]);
        let app = BinaryApp::start_with(&env, |_| {}).await;
        let mut trail =
            Self { app, receiver, maildev, admin: String::new(), secrets: vec![STRONG_PASSWORD.to_owned()] };
        trail.admin = trail.login(ADMIN, STRONG_PASSWORD).await["access_token"].as_str().unwrap().to_owned();
        trail.keep(&trail.admin.clone());
        trail
    }

    fn keep(&mut self, secret: &str) {
        self.secrets.push(secret.to_owned());
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self.app.client.request(method, self.app.url(path)).header("user-agent", "audit-e2e/1.0");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> reqwest::Response {
        self.send(reqwest::Method::POST, path, token, Some(body)).await
    }

    async fn login(&mut self, email: &str, password: &str) -> Value {
        let response = login_json(&self.app.client, &self.app.address, email, password).await;
        assert_eq!(response.status(), 200, "login of {email}");
        let body = json_body(response).await;
        self.keep(str_of(&body, "access_token"));
        self.keep(str_of(&body, "refresh_token"));
        body
    }

    async fn me(&self, token: &str) -> Value {
        json_body(self.send(reqwest::Method::GET, "/me", Some(token), None).await).await
    }

    /// The token of the link starting with `prefix` in the last mail to `to` with `subject`.
    async fn link_token(&mut self, to: &str, subject: &str, prefix: &str) -> String {
        let mail = self.maildev.wait_for_subject(to, subject).await;
        let link = link(&mail, prefix);
        let token = link.rsplit(['/', '=']).next().unwrap().to_owned();
        self.keep(&token);
        link
    }

    /// Every event of the trail, newest first, following `links.next`.
    async fn everything(&self) -> Vec<Value> {
        let mut url = self.app.url("/audit?limit=100");
        let mut events = Vec::new();
        loop {
            let response = self.app.client.get(&url).bearer_auth(&self.admin).send().await.unwrap();
            assert_eq!(response.status(), 200, "{url}");
            let page = json_body(response).await;
            events.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["links"]["next"].as_str() {
                Some(next) => url = next.to_owned(),
                None => return events,
            }
        }
    }
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|event| event["type"] == kind).collect()
}

/// The one event of `kind` whose subject is `subject`.
fn the<'a>(events: &'a [Value], kind: &str, subject: &str) -> &'a Value {
    let found: Vec<&Value> = of_type(events, kind).into_iter().filter(|event| event["subject_id"] == subject).collect();
    assert_eq!(found.len(), 1, "one {kind} event about {subject} expected, found {found:#?}");
    found[0]
}

fn png(shade: u8) -> Vec<u8> {
    let image = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([u8::try_from(x).unwrap(), u8::try_from(y).unwrap(), shade])
    }));
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, ImageFormat::Png).unwrap();
    bytes.into_inner()
}

async fn upload(trail: &Trail, token: &str, user_id: &str, shade: u8) -> Value {
    let part = reqwest::multipart::Part::bytes(png(shade)).file_name("me.png").mime_str("image/png").unwrap();
    let response = trail
        .app
        .client
        .post(trail.app.url(&format!("/users/{user_id}/profile-picture")))
        .bearer_auth(token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "upload");
    json_body(response).await
}

#[tokio::test]
async fn every_action_is_in_the_trail_with_its_actor_subject_and_details_and_no_secret() {
    let mut trail = Trail::start().await;
    let admin_id = str_of(&trail.me(&trail.admin.clone()).await, "id").to_owned();
    let email = unique_email("audited");

    // Registration and verification.
    let registered = trail.post("/register", None, json!({"email": email, "password": STRONG_PASSWORD})).await;
    assert_eq!(registered.status(), 202);
    let verify =
        trail.link_token(&email, "Verify your email address", &format!("{}/verify-email/", trail.app.address)).await;
    assert_eq!(trail.app.client.get(&verify).send().await.unwrap().status(), 200);

    // Logins: a wrong password, an unknown address, a success.
    let wrong = login_json(&trail.app.client, &trail.app.address, &email, "not-the-password-1").await;
    assert_eq!(wrong.status(), 401);
    let nobody = login_json(&trail.app.client, &trail.app.address, "Someone.Else@Nowhere.example", "whatever-1").await;
    assert_eq!(nobody.status(), 401);
    let first = trail.login(&email, STRONG_PASSWORD).await;
    let user_id = str_of(&trail.me(str_of(&first, "access_token")).await, "id").to_owned();

    // A refresh token presented twice: the second time is a reuse.
    let refreshed = trail.post("/token/refresh", None, json!({"refresh_token": first["refresh_token"]})).await;
    assert_eq!(refreshed.status(), 200);
    trail.keep(str_of(&json_body(refreshed).await, "refresh_token"));
    let reused = trail.post("/token/refresh", None, json!({"refresh_token": first["refresh_token"]})).await;
    assert_eq!(reused.status(), 401);

    // A logout.
    let second = trail.login(&email, STRONG_PASSWORD).await;
    let logout = trail.post("/logout", None, json!({"refresh_token": second["refresh_token"]})).await;
    assert_eq!(logout.status(), 204);

    // The owner's profile, password, forgotten password and address.
    let third = trail.login(&email, STRONG_PASSWORD).await;
    let token = str_of(&third, "access_token").to_owned();
    let patched =
        trail.send(reqwest::Method::PATCH, "/me", Some(&token), Some(json!({"first_name": "Ada", "bio": "Hi"}))).await;
    assert_eq!(patched.status(), 200);
    let changed = trail
        .post(
            "/me/password",
            Some(&token),
            json!({"current_password": STRONG_PASSWORD, "new_password": SECOND_PASSWORD}),
        )
        .await;
    assert_eq!(changed.status(), 204);
    trail.keep(SECOND_PASSWORD);
    assert_eq!(trail.post("/password/forgot", None, json!({"email": email})).await.status(), 202);
    let reset = trail.link_token(&email, "Reset your password", "token=").await;
    let reset_token = reset.rsplit('=').next().unwrap().to_owned();
    let done = trail.post("/password/reset", None, json!({"token": reset_token, "new_password": THIRD_PASSWORD})).await;
    assert_eq!(done.status(), 204);
    trail.keep(THIRD_PASSWORD);
    let fourth = trail.login(&email, THIRD_PASSWORD).await;
    let token = str_of(&fourth, "access_token").to_owned();
    let new_email = unique_email("moved");
    let moved = trail
        .send(
            reqwest::Method::PATCH,
            "/me",
            Some(&token),
            Some(json!({"email": new_email, "current_password": THIRD_PASSWORD})),
        )
        .await;
    assert_eq!(moved.status(), 200);
    let confirm = trail
        .link_token(&new_email, "Confirm your new email address", &format!("{}/verify-email/", trail.app.address))
        .await;
    assert_eq!(trail.app.client.get(&confirm).send().await.unwrap().status(), 200);

    // A second factor: on, a recovery code at login, off.
    let setup = trail.post("/me/mfa/totp/setup", Some(&token), json!({"current_password": THIRD_PASSWORD})).await;
    assert_eq!(setup.status(), 200);
    let base32 = str_of(&json_body(setup).await, "secret").to_owned();
    trail.keep(&base32);
    let secret = base32_decode(&base32);
    let step = step_with_time_left(10).await;
    let code = totp(&secret, step, 6);
    trail.keep(&code);
    let confirmed = trail.post("/me/mfa/totp/confirm", Some(&token), json!({"code": code})).await;
    assert_eq!(confirmed.status(), 200);
    let codes: Vec<String> = json_body(confirmed).await["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|code| code.as_str().unwrap().to_owned())
        .collect();
    for code in &codes {
        trail.keep(code);
    }
    let step_one = login_json(&trail.app.client, &trail.app.address, &new_email, THIRD_PASSWORD).await;
    assert_eq!(step_one.status(), 401);
    let mfa_token = str_of(&json_body(step_one).await, "mfa_token").to_owned();
    trail.keep(&mfa_token);
    let step_two = trail.post("/login/mfa", None, json!({"mfa_token": mfa_token, "code": codes[0]})).await;
    assert_eq!(step_two.status(), 200);
    let step_two = json_body(step_two).await;
    trail.keep(str_of(&step_two, "access_token"));
    trail.keep(str_of(&step_two, "refresh_token"));
    let off_code = totp(&secret, step_with_time_left(10).await + 1, 6);
    trail.keep(&off_code);
    let off = trail
        .send(
            reqwest::Method::DELETE,
            "/me/mfa",
            Some(&token),
            Some(json!({"current_password": THIRD_PASSWORD, "code": off_code})),
        )
        .await;
    assert_eq!(off.status(), 204, "{:?}", json_body(off).await);

    // Pictures: two uploads, a restore of the first, a deletion.
    let first_picture = upload(&trail, &token, &user_id, 10).await;
    upload(&trail, &token, &user_id, 200).await;
    let history = trail
        .send(reqwest::Method::GET, &format!("/users/{user_id}/profile-picture/history"), Some(&token), None)
        .await;
    let history = json_body(history).await;
    let version = history["items"][0]["id"].as_str().expect("an archived version").to_owned();
    let restored = trail
        .post(&format!("/users/{user_id}/profile-picture/history/{version}/restore"), Some(&token), json!({}))
        .await;
    assert_eq!(restored.status(), 200, "restore {first_picture}");
    let deleted =
        trail.send(reqwest::Method::DELETE, &format!("/users/{user_id}/profile-picture"), Some(&token), None).await;
    assert_eq!(deleted.status(), 204);

    // Staff: create, promote, lock, unlock, delete; throttled logins of the new user.
    let admin = trail.admin.clone();
    let staffed = unique_email("staffed");
    let created = trail
        .post(
            "/users",
            Some(&admin),
            json!({"email": staffed, "password": STRONG_PASSWORD, "role": "AUTHENTICATED", "email_verified": true}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let staffed_id = str_of(&json_body(created).await, "id").to_owned();
    let path = format!("/users/{staffed_id}");
    for change in [json!({"role": "MANAGER"}), json!({"is_locked": true}), json!({"is_locked": false})] {
        let response = trail.send(reqwest::Method::PATCH, &path, Some(&admin), Some(change)).await;
        assert_eq!(response.status(), 200);
    }
    for attempt in 0..3 {
        let response = login_json(&trail.app.client, &trail.app.address, &staffed, "guessing-wrong-123").await;
        assert_eq!(response.status(), if attempt < 2 { 401 } else { 429 }, "attempt {attempt}");
    }
    assert_eq!(trail.send(reqwest::Method::DELETE, &path, Some(&admin), None).await.status(), 204);

    // The trail.
    let events = trail.everything().await;
    let registered = the(&events, "user.registered", &user_id);
    assert_eq!(registered["actor_id"], user_id.as_str());
    assert_eq!(registered["user_agent"], "audit-e2e/1.0");
    assert_eq!(registered["ip"], "127.0.0.1");
    let verified = the(&events, "user.email_verified", &user_id);
    assert_eq!(verified["details"]["role"], json!({"from": "ANONYMOUS", "to": "AUTHENTICATED"}));
    let failed: Vec<&Value> = of_type(&events, "login.failed");
    assert!(
        failed.iter().any(|event| event["subject_id"] == user_id.as_str() && event["details"]["factor"] == "password")
    );
    let unknown = failed.iter().find(|event| event["subject_id"].is_null()).expect("the unknown address's failure");
    assert_eq!(unknown["details"], json!({"factor": "password", "email_domain": "nowhere.example"}));
    let logins = of_type(&events, "login.succeeded");
    // Four logins with a password, one through the second step.
    assert_eq!(logins.iter().filter(|event| event["subject_id"] == user_id.as_str()).count(), 5);
    assert_eq!(logins.iter().filter(|event| event["details"]["second_factor"] == true).count(), 1);
    assert!(logins.iter().all(|event| !event["session_id"].is_null()));
    let reuse = the(&events, "session.reuse_detected", &user_id);
    assert!(!reuse["session_id"].is_null());
    assert_eq!(the(&events, "session.revoked", &user_id)["details"]["reason"], "logout");
    let updates: Vec<&Value> =
        of_type(&events, "user.updated").into_iter().filter(|event| event["subject_id"] == user_id.as_str()).collect();
    assert!(updates.iter().any(
        |event| event["actor_id"] == user_id.as_str() && event["details"]["fields"] == json!(["first_name", "bio"])
    ));
    assert!(updates.iter().any(|event| event["details"]["fields"] == json!(["pending_email"])));
    assert_eq!(the(&events, "password.changed", &user_id)["actor_id"], user_id.as_str());
    assert!(!of_type(&events, "password.reset_requested").is_empty());
    the(&events, "password.reset_requested", &user_id);
    the(&events, "password.reset", &user_id);
    the(&events, "user.email_changed", &user_id);
    the(&events, "mfa.enabled", &user_id);
    the(&events, "mfa.recovery_code_used", &user_id);
    assert_eq!(the(&events, "mfa.disabled", &user_id)["actor_id"], user_id.as_str());
    let uploads: Vec<&Value> = of_type(&events, "picture.uploaded");
    assert_eq!(uploads.len(), 2);
    assert_eq!(the(&events, "picture.restored", &user_id)["details"]["picture_id"], version.as_str());
    the(&events, "picture.deleted", &user_id);
    let created = the(&events, "user.created", &staffed_id);
    assert_eq!(created["actor_id"], admin_id.as_str());
    assert_eq!(created["details"]["role"], "AUTHENTICATED");
    let promoted = the(&events, "user.updated", &staffed_id);
    assert_eq!(promoted["actor_id"], admin_id.as_str());
    assert_eq!(promoted["details"]["role"], json!({"from": "AUTHENTICATED", "to": "MANAGER"}));
    assert_eq!(the(&events, "user.locked", &staffed_id)["actor_id"], admin_id.as_str());
    the(&events, "user.unlocked", &staffed_id);
    let throttled = the(&events, "login.throttled", &staffed_id);
    assert!(throttled["details"]["retry_after"].as_i64().unwrap() > 0);
    assert_eq!(the(&events, "user.deleted", &staffed_id)["actor_id"], admin_id.as_str());

    // Every type of the contract was seen.
    for kind in [
        "user.registered",
        "user.email_verified",
        "user.email_changed",
        "user.created",
        "user.updated",
        "user.locked",
        "user.unlocked",
        "user.deleted",
        "login.succeeded",
        "login.failed",
        "login.throttled",
        "session.revoked",
        "session.reuse_detected",
        "password.changed",
        "password.reset_requested",
        "password.reset",
        "mfa.enabled",
        "mfa.disabled",
        "mfa.recovery_code_used",
        "picture.uploaded",
        "picture.deleted",
        "picture.restored",
    ] {
        assert!(!of_type(&events, kind).is_empty(), "no {kind} event");
    }

    // No secret anywhere in the trail, as the API shows it and as stored.
    let text = serde_json::to_string(&events).unwrap();
    let stored = trail
        .app
        .db
        .text("SELECT coalesce(string_agg(row_to_json(audit_events)::text, ' '), '') AS value FROM audit_events")
        .await;
    for secret in &trail.secrets {
        assert!(!text.contains(secret.as_str()), "a secret reached the trail");
        assert!(!stored.contains(secret.as_str()), "a secret reached the stored trail");
    }
    assert!(!text.to_lowercase().contains("someone.else"), "an unknown address is recorded by its domain only");

    // Every event was delivered to the webhook receiver too, and no delivery holds a secret either.
    let total = trail.app.db.count("SELECT count(*) AS n FROM audit_events").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while trail.app.db.count("SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'delivered'").await < total {
        assert!(std::time::Instant::now() < deadline, "not every event was delivered");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let deliveries = trail.receiver.requests();
    assert_eq!(i64::try_from(trail.receiver.accepted_by_id().len()).unwrap(), total);
    for delivery in &deliveries {
        let body = String::from_utf8_lossy(&delivery.body);
        for secret in &trail.secrets {
            assert!(!body.contains(secret.as_str()), "a secret reached a webhook delivery");
        }
    }

    // The user's own activity holds their events only, newest first.
    let mine = trail.send(reqwest::Method::GET, "/me/activity?limit=100", Some(&token), None).await;
    assert_eq!(mine.status(), 200);
    let mine = json_body(mine).await;
    let items = mine["items"].as_array().unwrap();
    assert!(items.len() >= 20, "{} events", items.len());
    assert!(items.iter().all(|event| event["subject_id"] == user_id.as_str()));
    // Newest first: the same events, in the same order, as the whole trail filtered on the user.
    let ids: Vec<&Value> = items.iter().map(|event| &event["id"]).collect();
    let expected: Vec<&Value> =
        events.iter().filter(|event| event["subject_id"] == user_id.as_str()).map(|event| &event["id"]).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn the_trail_is_for_admins_its_filters_work_and_bad_values_are_refused() {
    let mut trail = Trail::start().await;
    let admin_id = str_of(&trail.me(&trail.admin.clone()).await, "id").to_owned();
    let admin = trail.admin.clone();
    let member = unique_email("member");
    let created = trail
        .post("/users", Some(&admin), json!({"email": member, "password": STRONG_PASSWORD, "email_verified": true}))
        .await;
    let member_id = str_of(&json_body(created).await, "id").to_owned();
    let member_token = str_of(&trail.login(&member, STRONG_PASSWORD).await, "access_token").to_owned();
    let manager = unique_email("manager");
    let created = trail
        .post(
            "/users",
            Some(&admin),
            json!({"email": manager, "password": STRONG_PASSWORD, "role": "MANAGER", "email_verified": true}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let manager_token = str_of(&trail.login(&manager, STRONG_PASSWORD).await, "access_token").to_owned();

    for token in [&member_token, &manager_token] {
        let refused = trail.send(reqwest::Method::GET, "/audit", Some(token), None).await;
        assert_problem(refused, 403, "forbidden", "the trail for a non-admin").await;
        // Even with a malformed query: the role is refused first.
        let refused = trail.send(reqwest::Method::GET, "/audit?limit=abc", Some(token), None).await;
        assert_problem(refused, 403, "forbidden", "the trail for a non-admin, bad query").await;
    }
    let anonymous = trail.app.client.get(trail.app.url("/audit")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    let get = |query: String| {
        let (client, url, admin) = (trail.app.client.clone(), trail.app.url(&format!("/audit?{query}")), admin.clone());
        async move { client.get(url).bearer_auth(admin).send().await.unwrap() }
    };
    let by_actor = json_body(get(format!("actor_id={admin_id}&type=user.created")).await).await;
    let subjects: Vec<&str> =
        by_actor["items"].as_array().unwrap().iter().map(|e| e["subject_id"].as_str().unwrap()).collect();
    assert_eq!(subjects.len(), 2, "{by_actor}");
    assert!(subjects.contains(&member_id.as_str()));
    let by_subject = json_body(get(format!("subject_id={member_id}")).await).await;
    let kinds: Vec<&str> =
        by_subject["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["login.succeeded", "user.created"]);
    let none = json_body(get("since=2999-01-01T00:00:00Z".to_owned()).await).await;
    assert_eq!(none["items"], json!([]));
    assert!(none["next_cursor"].is_null());
    let paged = json_body(get("limit=1".to_owned()).await).await;
    assert_eq!(paged["items"].as_array().unwrap().len(), 1);
    let next = paged["links"]["next"].as_str().expect("a next page");
    assert!(next.contains("limit=1") && next.contains("cursor="), "{next}");

    for bad in [
        "limit=0",
        "limit=101",
        "limit=x",
        "type=user.nope",
        "type=",
        "actor_id=42",
        "subject_id=x",
        "since=yesterday",
        "until=2026-13-01T00:00:00Z",
        "cursor=forged",
        "limit=1&limit=2",
        "colour=red",
    ] {
        assert_problem(get(bad.to_owned()).await, 400, "invalid_parameter", bad).await;
    }
    // The activity route takes no subject or actor: one's own is the only subject.
    let refused = trail
        .send(reqwest::Method::GET, &format!("/me/activity?subject_id={admin_id}"), Some(&member_token), None)
        .await;
    assert_problem(refused, 400, "invalid_parameter", "a subject on one's own activity").await;

    // The counters reach the metrics listener (and only it).
    let metrics = trail.app.client.get(format!("{}/metrics", trail.app.metrics_address)).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    // The bootstrap administrator's creation is the first.
    assert!(metrics.contains("audit_events_total{type=\"user.created\"} 3"), "{metrics}");
    assert!(metrics.contains("audit_events_total{type=\"login.succeeded\"}"), "{metrics}");
}

#[tokio::test]
async fn a_huge_user_agent_is_cut_and_never_makes_a_change_fail() {
    let mut trail = Trail::start().await;
    let email = unique_email("long-agent");
    let agent = "x".repeat(6_000);
    let registered = trail
        .app
        .client
        .post(trail.app.url("/register"))
        .header("user-agent", &agent)
        .json(&json!({"email": email, "password": STRONG_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 202);
    let login = trail
        .app
        .client
        .post(trail.app.url("/login"))
        .header("user-agent", &agent)
        .json(&json!({"email": ADMIN, "password": STRONG_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    trail.keep(str_of(&json_body(login).await, "access_token"));
    let events = trail.everything().await;
    let registered = of_type(&events, "user.registered").into_iter().find(|event| event["user_agent"].is_string());
    let registered = registered.expect("the registration is in the trail");
    assert_eq!(registered["user_agent"].as_str().unwrap().len(), 256);
}
