//! Picture uploads against the real binary: who may upload is decided from the path before any of the body is
//! read, and at most `PICTURE_MAX_CONCURRENT` uploads are read and processed at once, the next ones refused with
//! 503 and `Retry-After` without their body. Neither refusal changes anything.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used, reason = "test helpers: failing loudly is the point")]

use std::io::Cursor;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use image::{DynamicImage, ImageFormat, RgbImage};
use serde_json::json;
use users_e2e::raw::{RawRequest, RawResponse, multipart_file};
use users_e2e::{BinaryApp, STRONG_PASSWORD, json_body, login_json, unique_email};

/// What an upload announces: 5 MiB, the default `PICTURE_MAX_BYTES`, of which the tests send only a little.
const ANNOUNCED: usize = 5 * 1024 * 1024;

/// How long an answer that needs no body may take, generously: the server must not wait for the body at all.
const PROMPTLY: Duration = Duration::from_secs(10);

struct Harness {
    app: BinaryApp,
    admin_id: String,
    admin: String,
}

impl Harness {
    async fn start(extra: &[(&str, &str)]) -> Self {
        let admin_email = unique_email("root");
        let mut env = vec![
            ("BOOTSTRAP_ADMIN_EMAIL".to_owned(), admin_email.clone()),
            ("BOOTSTRAP_ADMIN_PASSWORD".to_owned(), STRONG_PASSWORD.to_owned()),
        ];
        env.extend(extra.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())));
        let app = BinaryApp::start_with(&env, |_| {}).await;
        let admin = token(&app, &admin_email).await;
        let me = app.client.get(app.url("/me")).bearer_auth(&admin).send().await.unwrap();
        let admin_id = json_body(me).await["id"].as_str().unwrap().to_owned();
        Self { app, admin_id, admin }
    }

    /// A new verified user with `role`: their id and access token.
    async fn user(&self, role: &str) -> (String, String) {
        let email = unique_email(&role.to_ascii_lowercase());
        let body = json!({"email": email, "password": STRONG_PASSWORD, "role": role, "email_verified": true});
        let response =
            self.app.client.post(self.app.url("/users")).bearer_auth(&self.admin).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 201, "creating a {role}");
        let id = json_body(response).await["id"].as_str().unwrap().to_owned();
        (id, token(&self.app, &email).await)
    }

    /// Starts an upload by hand: the head announcing `length` bytes, then `sent` of the body.
    async fn start_upload(&self, token: Option<&str>, target: &str, length: usize, sent: &[u8]) -> RawRequest {
        let bearer = token.map(|token| format!("Bearer {token}"));
        let mut headers = vec![("Content-Type", "multipart/form-data; boundary=XBOUNDARY")];
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer.as_str()));
        }
        let path = format!("/users/{target}/profile-picture");
        let mut request = RawRequest::start(&self.app.address, "POST", &path, &headers, Some(length)).await;
        request.send(sent).await;
        request
    }

    /// An upload announcing 5 MiB of which only the multipart preamble and a few bytes are ever sent; the answer
    /// must come anyway.
    async fn announced_upload(&self, token: Option<&str>, target: &str) -> RawResponse {
        let (body, _) = multipart_file(&png());
        self.start_upload(token, target, ANNOUNCED, &body[..200]).await.response(PROMPTLY).await
    }

    /// A complete upload with an ordinary client.
    async fn upload(&self, token: &str, target: &str, bytes: Vec<u8>) -> reqwest::Response {
        let part = reqwest::multipart::Part::bytes(bytes).file_name("picture.png").mime_str("image/png").unwrap();
        self.app
            .client
            .post(self.app.url(&format!("/users/{target}/profile-picture")))
            .bearer_auth(token)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .unwrap()
    }

    async fn picture_rows(&self, user_id: &str) -> i64 {
        self.app.db.count(&format!("SELECT count(*) AS n FROM pictures WHERE user_id = '{user_id}'")).await
    }

    /// Every stored picture file of a user (`STORAGE_BACKEND=fs`).
    fn objects(&self, user_id: &str) -> Vec<PathBuf> {
        let root = PathBuf::from(&self.app.env["DATA_DIR"]).join("pictures").join("profile_pictures").join(user_id);
        let mut files = Vec::new();
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        files
    }

    /// Asserts that a user has no picture at all: no row, no stored object.
    async fn assert_no_picture(&self, user_id: &str) {
        assert_eq!(self.picture_rows(user_id).await, 0, "picture rows of {user_id}");
        assert_eq!(self.objects(user_id), Vec::<PathBuf>::new(), "stored objects of {user_id}");
    }
}

async fn token(app: &BinaryApp, email: &str) -> String {
    let response = login_json(&app.client, &app.address, email, STRONG_PASSWORD).await;
    assert_eq!(response.status(), 200, "login of {email}");
    json_body(response).await["access_token"].as_str().unwrap().to_owned()
}

/// A small valid PNG.
fn png() -> Vec<u8> {
    let image = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8, y as u8, 90])));
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, ImageFormat::Png).unwrap();
    bytes.into_inner()
}

fn assert_problem(response: &RawResponse, status: u16, code: &str, what: &str) {
    assert_eq!(response.status, status, "{what}: {response:?}");
    assert_eq!(response.json()["code"], code, "{what}");
}

#[tokio::test]
async fn an_upload_for_a_user_the_caller_may_not_touch_is_refused_before_the_body_arrives() {
    let harness = Harness::start(&[]).await;
    let (plain_id, plain) = harness.user("AUTHENTICATED").await;
    let (other_id, _) = harness.user("AUTHENTICATED").await;
    let (manager_id, manager) = harness.user("MANAGER").await;
    let unknown = uuid::Uuid::new_v4().to_string();

    // Each request announces 5 MiB and sends a few hundred bytes: an answer at all proves the body was not awaited.
    let refused = [
        (Some(plain.as_str()), other_id.as_str(), 404, "not_found", "a plain user uploading for another"),
        (Some(plain.as_str()), manager_id.as_str(), 404, "not_found", "a plain user uploading for a manager"),
        (Some(manager.as_str()), harness.admin_id.as_str(), 404, "not_found", "a manager uploading for an admin"),
        (Some(plain.as_str()), unknown.as_str(), 404, "not_found", "an unknown id"),
        (Some(plain.as_str()), "not-a-uuid", 404, "not_found", "an id that is not a UUID"),
        (None, other_id.as_str(), 401, "invalid_token", "no token"),
        (Some("not.a.token"), other_id.as_str(), 401, "invalid_token", "a forged token"),
    ];
    for (token, target, status, code, what) in refused {
        let response = harness.announced_upload(token, target).await;
        assert_problem(&response, status, code, what);
    }

    // The target rule also comes before the checks of the head: a wrong content type for someone else's id is the
    // same 404, not a 415 that would tell a visible user from an invisible one.
    let path = format!("/users/{other_id}/profile-picture");
    let bearer = format!("Bearer {plain}");
    let headers = [("Authorization", bearer.as_str()), ("Content-Type", "text/plain")];
    let response = RawRequest::start(&harness.app.address, "POST", &path, &headers, Some(ANNOUNCED))
        .await
        .response(PROMPTLY)
        .await;
    assert_problem(&response, 404, "not_found", "a wrong content type for another user's id");

    for user_id in [&other_id, &manager_id, &harness.admin_id, &plain_id] {
        harness.assert_no_picture(user_id).await;
    }
    // The same caller's own upload works, so the refusals above were about the target.
    assert_eq!(harness.upload(&plain, &plain_id, png()).await.status(), 200);
    assert_eq!(harness.picture_rows(&plain_id).await, 1);
}

#[tokio::test]
async fn the_other_picture_routes_answer_404_for_another_users_id_and_401_before_the_query() {
    let harness = Harness::start(&[]).await;
    let (_, plain) = harness.user("AUTHENTICATED").await;
    let (other_id, other) = harness.user("AUTHENTICATED").await;
    assert_eq!(harness.upload(&other, &other_id, png()).await.status(), 200);
    let version = uuid::Uuid::new_v4();
    let client = &harness.app.client;
    let history = harness.app.url(&format!("/users/{other_id}/profile-picture/history"));
    for (method, url) in [
        (reqwest::Method::DELETE, harness.app.url(&format!("/users/{other_id}/profile-picture"))),
        (reqwest::Method::GET, history.clone()),
        (reqwest::Method::GET, format!("{history}/{version}")),
        (reqwest::Method::POST, format!("{history}/{version}/restore")),
    ] {
        let response = client.request(method.clone(), &url).bearer_auth(&plain).send().await.unwrap();
        assert_eq!(response.status(), 404, "{method} {url}");
        let response = client.request(method.clone(), &url).send().await.unwrap();
        assert_eq!(response.status(), 401, "{method} {url} without a token");
    }
    // A bad query on the archived-version route does not answer 400 before the token is checked, even when the
    // check takes a database round trip: here the token is well formed, but its session was revoked.
    let (_, revoked) = harness.user("AUTHENTICATED").await;
    let logout = client.post(harness.app.url("/logout/all")).bearer_auth(&revoked).send().await.unwrap();
    assert_eq!(logout.status(), 204);
    for token in [None, Some(&revoked)] {
        let mut request = client.get(format!("{history}/{version}?size=huge&extra=1"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let bad_query = request.send().await.unwrap();
        assert_eq!(bad_query.status(), 401, "token: {token:?}");
        assert_eq!(json_body(bad_query).await["code"], "invalid_token");
    }
    // The owner's picture is untouched.
    assert_eq!(harness.picture_rows(&other_id).await, 1);
}

#[tokio::test]
async fn beyond_picture_max_concurrent_an_upload_gets_503_at_once_and_the_slot_frees_when_the_first_ends() {
    let harness = Harness::start(&[("PICTURE_MAX_CONCURRENT", "1")]).await;
    let (slow_id, slow) = harness.user("AUTHENTICATED").await;
    let (second_id, second) = harness.user("AUTHENTICATED").await;
    let (body, _) = multipart_file(&png());
    let half = body.len() / 2;

    // The slow upload sends its head and half its body, and holds. A probe (a complete upload of something that is
    // not an image, which changes nothing either way) tells when it holds the one slot: the probe then gets 503.
    // Should the slow upload have asked in the instant a probe held the slot, it was refused itself: start again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut slow_upload, busy) = 'attempt: loop {
        let mut slow_upload = harness.start_upload(Some(&slow), &slow_id, body.len(), &body[..half]).await;
        loop {
            assert!(Instant::now() < deadline, "the slow upload never held the slot");
            let probe = harness.upload(&second, &second_id, b"not an image at all".to_vec()).await;
            match probe.status().as_u16() {
                503 => break 'attempt (slow_upload, probe),
                415 if slow_upload.answered_within(Duration::from_millis(50)).await => continue 'attempt,
                415 => {}
                status => panic!("the probe got {status}"),
            }
        }
    };
    assert!(busy.headers().get("retry-after").is_some(), "503 without Retry-After");
    assert_eq!(json_body(busy).await["code"], "service_unavailable");

    // A real second upload, announcing 5 MiB and sending a few bytes, is refused at once without its body.
    let (second_body, _) = multipart_file(&png());
    let refused = harness.start_upload(Some(&second), &second_id, ANNOUNCED, &second_body[..200]).await;
    let refused = refused.response(PROMPTLY).await;
    assert_problem(&refused, 503, "service_unavailable", "a second upload while the slot is taken");
    assert!(refused.header("retry-after").is_some_and(|seconds| seconds.parse::<u64>().is_ok()), "{refused:?}");
    harness.assert_no_picture(&second_id).await;
    assert!(!slow_upload.answered_within(Duration::from_millis(50)).await, "the slow upload was answered early");

    // The slow upload finishes and succeeds; then the slot is free again.
    slow_upload.send(&body[half..]).await;
    let finished = slow_upload.response(Duration::from_secs(30)).await;
    assert_eq!(finished.status, 200, "{finished:?}");
    assert!(finished.json()["profile_picture_url"].is_string());
    assert_eq!(harness.picture_rows(&slow_id).await, 1);
    harness.assert_no_picture(&second_id).await;
    assert_eq!(harness.upload(&second, &second_id, png()).await.status(), 200);
    assert_eq!(harness.picture_rows(&second_id).await, 1);
}
