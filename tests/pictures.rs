//! Profile pictures end to end, against Garage (S3) and the local file system: every accepted format, metadata
//! and payloads stripped, hostile uploads refused with nothing stored, replace/history/restore/delete, caching,
//! permissions, and a storage outage that loses nothing and leaves no orphan.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used, reason = "test helpers: failing loudly is the point")]

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbImage};
use serde_json::{Value, json};
use users_e2e::garage::{PrivateGarage, S3Settings};
use users_e2e::{STRONG_PASSWORD, TestApp, json_body, login_json};

const ADMIN: &str = "root@example.com";

/// Where the app under test keeps pictures.
#[derive(Clone, Copy, Debug)]
enum Backend {
    S3,
    Fs,
}

struct Harness {
    app: TestApp,
    admin: String,
    backend: Backend,
    s3: Option<S3Settings>,
}

impl Harness {
    async fn start(backend: Backend) -> Self {
        Self::start_with(backend, None).await
    }

    async fn start_with(backend: Backend, s3: Option<S3Settings>) -> Self {
        let s3 = match backend {
            Backend::S3 => Some(s3.unwrap_or_else(S3Settings::shared)),
            Backend::Fs => None,
        };
        let mut env: Vec<(String, String)> = vec![
            ("BOOTSTRAP_ADMIN_EMAIL".to_owned(), ADMIN.to_owned()),
            ("BOOTSTRAP_ADMIN_PASSWORD".to_owned(), STRONG_PASSWORD.to_owned()),
        ];
        if let Some(s3) = &s3 {
            env.extend(s3.app_env());
        }
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let app = TestApp::spawn_with(&pairs).await;
        let admin = token(&app, ADMIN).await;
        Self { app, admin, backend, s3 }
    }

    /// A new verified user and their access token.
    async fn user(&self, email: &str) -> (String, String) {
        let body = json!({"email": email, "password": STRONG_PASSWORD, "email_verified": true});
        let response = self.app.client.post(self.app.url("/users")).bearer_auth(&self.admin).json(&body).send().await;
        let response = response.unwrap();
        assert_eq!(response.status(), 201);
        let id = json_body(response).await["id"].as_str().unwrap().to_owned();
        (id, token(&self.app, email).await)
    }

    async fn upload(&self, token: &str, user_id: &str, bytes: Vec<u8>, file_name: &str) -> reqwest::Response {
        let part =
            reqwest::multipart::Part::bytes(bytes).file_name(file_name.to_owned()).mime_str("image/png").unwrap();
        let form = reqwest::multipart::Form::new().part("file", part);
        self.app
            .client
            .post(self.app.url(&format!("/users/{user_id}/profile-picture")))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Announces an upload of `length` bytes but sends only the request head, then reads the answer: a limit
    /// enforced before the body is read answers without waiting for it. (Sending the body with a normal client
    /// races with the server closing the connection after its early answer.)
    async fn announce_upload(&self, token: &str, user_id: &str, length: usize) -> (u16, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let address = self.app.address.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let head = format!(
            "POST /users/{user_id}/profile-picture HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: multipart/form-data; boundary=XBOUNDARY\r\nContent-Length: {length}\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
        read.expect("the server answers without the body").unwrap();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
        (status, answer)
    }

    async fn picture(&self, user_id: &str, size: &str) -> reqwest::Response {
        self.app.client.get(self.app.url(&format!("/profiles/{user_id}/picture?size={size}"))).send().await.unwrap()
    }

    /// The user's object keys once `settled` holds for them: archive moves run in the background after the
    /// request that records them, so this waits for the condition (with a deadline, not a fixed sleep).
    async fn objects_once(&self, user_id: &str, what: &str, settled: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let objects = self.objects(user_id).await;
            if settled(&objects) {
                return objects;
            }
            assert!(std::time::Instant::now() < deadline, "within 20 s, expected {what}; objects: {objects:?}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Every stored object key of a user, whatever the backend.
    async fn objects(&self, user_id: &str) -> Vec<String> {
        let prefix = format!("profile_pictures/{user_id}/");
        match self.backend {
            Backend::S3 => self.s3.as_ref().unwrap().store().list(&prefix).await.unwrap(),
            Backend::Fs => {
                let root = self.app.data_dir.path().join("pictures");
                let mut keys = Vec::new();
                let mut stack = vec![root.join(&prefix)];
                while let Some(dir) = stack.pop() {
                    let Ok(entries) = std::fs::read_dir(&dir) else { continue };
                    for entry in entries.flatten() {
                        let path = entry.path();
                        if path.is_dir() {
                            stack.push(path);
                        } else if !entry.file_name().to_string_lossy().starts_with('.') {
                            keys.push(path.strip_prefix(&root).unwrap().display().to_string());
                        }
                    }
                }
                keys
            }
        }
    }

    async fn picture_rows(&self, user_id: &str) -> i64 {
        self.app.db.count(&format!("SELECT count(*) AS n FROM pictures WHERE user_id = '{user_id}'")).await
    }
}

async fn token(app: &TestApp, email: &str) -> String {
    let response = login_json(&app.client, &app.address, email, STRONG_PASSWORD).await;
    assert_eq!(response.status(), 200);
    json_body(response).await["access_token"].as_str().unwrap().to_owned()
}

fn photo(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    }))
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    match format {
        ImageFormat::WebP => DynamicImage::ImageRgba8(image.to_rgba8()).write_to(&mut bytes, format).unwrap(),
        _ => image.write_to(&mut bytes, format).unwrap(),
    }
    bytes.into_inner()
}

/// A JPEG with an EXIF segment carrying a GPS IFD, spliced right after the start-of-image marker.
fn jpeg_with_gps() -> Vec<u8> {
    let jpeg = encode(&photo(300, 200), ImageFormat::Jpeg);
    // Little-endian TIFF: IFD0 with one entry (GPSInfo pointer, tag 0x8825) -> GPS IFD with GPSLatitudeRef "N".
    let mut tiff = vec![b'I', b'I', 42, 0, 8, 0, 0, 0];
    tiff.extend_from_slice(&[1, 0]);
    tiff.extend_from_slice(&[0x25, 0x88, 4, 0, 1, 0, 0, 0, 26, 0, 0, 0]);
    tiff.extend_from_slice(&[0, 0, 0, 0]);
    tiff.extend_from_slice(&[1, 0]);
    tiff.extend_from_slice(&[1, 0, 2, 0, 2, 0, 0, 0, b'N', 0, 0, 0]);
    tiff.extend_from_slice(&[0, 0, 0, 0]);
    tiff.extend_from_slice(b"GPSMARKER-51.5N-0.12W");
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let length = u16::try_from(app1.len() + 2).unwrap();
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFF_u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
    let mut chunk = u32::try_from(data.len()).unwrap().to_be_bytes().to_vec();
    chunk.extend_from_slice(kind);
    chunk.extend_from_slice(data);
    let mut covered = kind.to_vec();
    covered.extend_from_slice(data);
    chunk.extend_from_slice(&crc32(&covered).to_be_bytes());
    chunk
}

/// A tiny PNG whose header claims 30000 x 30000 pixels: a pixel flood.
fn pixel_flood_png() -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = 30_000_u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&30_000_u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"IDAT", &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

async fn assert_problem(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status(), status);
    let body = json_body(response).await;
    assert_eq!(body["code"], code, "{body}");
}

async fn every_accepted_format_is_stored_in_three_sizes(backend: Backend) {
    let h = Harness::start(backend).await;
    let (id, token) = h.user("formats@example.com").await;
    for (format, name, served_type) in [
        (ImageFormat::Jpeg, "a.jpg", "image/jpeg"),
        (ImageFormat::Png, "a.png", "image/png"),
        (ImageFormat::Gif, "a.gif", "image/png"),
        (ImageFormat::WebP, "a.webp", "image/png"),
    ] {
        let response = h.upload(&token, &id, encode(&photo(1600, 900), format), name).await;
        assert_eq!(response.status(), 200, "{format:?}");
        let user = json_body(response).await;
        assert_eq!(user["profile_picture_url"], format!("http://app.test/profiles/{id}/picture"));
        for (size, edge) in [("original", 1024), ("medium", 256), ("thumb", 64)] {
            let served = h.picture(&id, size).await;
            assert_eq!(served.status(), 200);
            assert_eq!(served.headers()["content-type"], served_type, "{format:?} {size}");
            let decoded = image::load_from_memory(&served.bytes().await.unwrap()).unwrap();
            assert_eq!(decoded.width().max(decoded.height()), edge, "{format:?} {size}");
        }
    }
    assert_eq!(h.picture_rows(&id).await, 4);
}

async fn metadata_and_appended_payloads_never_come_out(backend: Backend) {
    let h = Harness::start(backend).await;
    let (id, token) = h.user("exif@example.com").await;
    let upload = jpeg_with_gps();
    assert!(contains(&upload, b"Exif") && contains(&upload, b"GPSMARKER"));
    assert_eq!(h.upload(&token, &id, upload, "gps.jpg").await.status(), 200);
    for size in ["original", "medium", "thumb"] {
        let bytes = h.picture(&id, size).await.bytes().await.unwrap();
        assert!(!contains(&bytes, b"Exif") && !contains(&bytes, b"GPSMARKER"), "{size} still carries EXIF");
    }
    let mut polyglot = encode(&photo(200, 200), ImageFormat::Jpeg);
    polyglot.extend_from_slice(b"<script>alert(document.cookie)</script>");
    assert_eq!(h.upload(&token, &id, polyglot, "x.jpg").await.status(), 200);
    for size in ["original", "medium", "thumb"] {
        let bytes = h.picture(&id, size).await.bytes().await.unwrap();
        assert!(!contains(&bytes, b"<script"), "{size} still carries the payload");
    }
}

async fn hostile_uploads_are_refused_and_nothing_is_stored(backend: Backend) {
    let h = Harness::start(backend).await;
    let (id, token) = h.user("hostile@example.com").await;
    let svg = br#"<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>"#.to_vec();
    assert_problem(h.upload(&token, &id, svg, "a.svg").await, 415, "unsupported_media_type").await;
    let html = b"<!doctype html><html><script>alert(1)</script></html>".to_vec();
    assert_problem(h.upload(&token, &id, html, "innocent.png").await, 415, "unsupported_media_type").await;
    let mut truncated = encode(&photo(400, 300), ImageFormat::Jpeg);
    truncated.truncate(truncated.len() / 2);
    assert_problem(h.upload(&token, &id, truncated, "t.jpg").await, 422, "invalid_image").await;
    assert_problem(h.upload(&token, &id, pixel_flood_png(), "flood.png").await, 422, "invalid_image").await;
    let (status, answer) = h.announce_upload(&token, &id, 6 * 1024 * 1024).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert_eq!(h.picture_rows(&id).await, 0);
    assert!(h.objects(&id).await.is_empty());
    let me = json_body(h.app.client.get(h.app.url("/me")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(me["profile_picture_url"], Value::Null);
}

async fn replace_history_restore_and_delete(backend: Backend) {
    let h = Harness::start(backend).await;
    let (id, token) = h.user("history@example.com").await;
    let first = encode(&photo(500, 500), ImageFormat::Png);
    let second = encode(&photo(700, 300), ImageFormat::Jpeg);
    assert_eq!(h.upload(&token, &id, first, "1.png").await.status(), 200);
    let first_etag = h.picture(&id, "medium").await.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(h.upload(&token, &id, second, "2.jpg").await.status(), 200);
    assert_eq!(h.picture(&id, "original").await.headers()["content-type"], "image/jpeg");

    let history_url = h.app.url(&format!("/users/{id}/profile-picture/history"));
    let history = json_body(h.app.client.get(&history_url).bearer_auth(&token).send().await.unwrap()).await;
    let items = history["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only archived pictures");
    assert_eq!(items[0]["content_type"], "image/png");
    assert_eq!(items[0]["width"], 500);
    let first_id = items[0]["id"].as_str().unwrap().to_owned();
    // The first picture's three objects move to the archive after the answer; the second's three stay active.
    let archived = |keys: &[String]| keys.iter().filter(|key| key.contains("/archive/")).count();
    let objects =
        h.objects_once(&id, "three archived objects of six", |keys| keys.len() == 6 && archived(keys) == 3).await;
    assert!(objects.iter().all(|key| !key.contains(&first_id) || key.contains("/archive/")), "{objects:?}");
    // Served from the archive once there, as it was from where it was before.
    let version = h
        .app
        .client
        .get(h.app.url(&format!("/users/{id}/profile-picture/history/{first_id}?size=thumb")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(version.status(), 200);

    let restore = h
        .app
        .client
        .post(h.app.url(&format!("/users/{id}/profile-picture/history/{first_id}/restore")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(restore.status(), 200);
    assert_eq!(h.picture(&id, "medium").await.headers()["etag"].to_str().unwrap(), first_etag);
    let history = json_body(h.app.client.get(&history_url).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(history["items"].as_array().unwrap().len(), 1);
    assert_eq!(history["items"][0]["content_type"], "image/jpeg");

    let delete = h.app.client.delete(h.app.url(&format!("/users/{id}/profile-picture"))).bearer_auth(&token).send();
    assert_eq!(delete.await.unwrap().status(), 204);
    assert_eq!(h.picture(&id, "thumb").await.status(), 404);
    let me = json_body(h.app.client.get(h.app.url("/me")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(me["profile_picture_url"], Value::Null);
    let history = json_body(h.app.client.get(&history_url).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(history["items"].as_array().unwrap().len(), 2, "newest first, both archived");
    let all_archived = |keys: &[String]| keys.len() == 6 && keys.iter().all(|key| key.contains("/archive/"));
    h.objects_once(&id, "the six objects of both pictures in the archive", all_archived).await;

    // Deleting the user removes every object.
    let remove = h.app.client.delete(h.app.url(&format!("/users/{id}"))).bearer_auth(&h.admin).send().await;
    assert_eq!(remove.unwrap().status(), 204);
    assert!(h.objects(&id).await.is_empty());
}

async fn caching_headers_and_conditional_requests(backend: Backend) {
    let h = Harness::start(backend).await;
    let (id, token) = h.user("cache@example.com").await;
    assert_eq!(h.picture(&id, "original").await.status(), 404);
    assert_eq!(h.upload(&token, &id, encode(&photo(300, 300), ImageFormat::Png), "c.png").await.status(), 200);
    let served = h.picture(&id, "thumb").await;
    assert_eq!(served.headers()["x-content-type-options"], "nosniff");
    assert_eq!(served.headers()["content-disposition"], "inline; filename=\"picture.png\"");
    assert!(served.headers()["cache-control"].to_str().unwrap().contains("max-age"));
    let etag = served.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.len() == 66, "a strong SHA-256 ETag: {etag}");
    let again = h
        .app
        .client
        .get(h.app.url(&format!("/profiles/{id}/picture?size=thumb")))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());
    let bad_size = h.app.client.get(h.app.url(&format!("/profiles/{id}/picture?size=huge"))).send().await.unwrap();
    assert_eq!(bad_size.status(), 400);
}

async fn another_users_pictures_are_out_of_reach(backend: Backend) {
    let h = Harness::start(backend).await;
    let (alice, alice_token) = h.user("alice@example.com").await;
    let (bob, _) = h.user("bob@example.com").await;
    let response = h.upload(&alice_token, &bob, encode(&photo(100, 100), ImageFormat::Png), "x.png").await;
    assert_problem(response, 404, "not_found").await;
    assert_eq!(h.picture_rows(&bob).await, 0);
    let history =
        h.app.client.get(h.app.url(&format!("/users/{bob}/profile-picture/history"))).bearer_auth(&alice_token);
    assert_eq!(history.send().await.unwrap().status(), 404);
    // An admin may manage anyone's picture.
    let by_admin = h.upload(&h.admin, &alice, encode(&photo(100, 100), ImageFormat::Png), "x.png").await;
    assert_eq!(by_admin.status(), 200);
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_s3 {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::S3).await; })*
        }
        mod on_fs {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Fs).await; })*
        }
    };
}

on_both_backends!(
    every_accepted_format_is_stored_in_three_sizes,
    metadata_and_appended_payloads_never_come_out,
    hostile_uploads_are_refused_and_nothing_is_stored,
    replace_history_restore_and_delete,
    caching_headers_and_conditional_requests,
    another_users_pictures_are_out_of_reach,
);

#[tokio::test]
async fn an_upload_while_storage_is_down_is_503_and_changes_nothing_then_works_and_leaves_no_orphan() {
    let mut garage = PrivateGarage::start().await;
    let h = Harness::start_with(Backend::S3, Some(garage.settings.clone())).await;
    let (id, token) = h.user("outage@example.com").await;
    garage.stop();
    let response = h.upload(&token, &id, encode(&photo(400, 400), ImageFormat::Jpeg), "o.jpg").await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(h.picture_rows(&id).await, 0);
    let ready = h.app.client.get(h.app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readiness reports the storage");
    garage.resume().await;
    let response = h.upload(&token, &id, encode(&photo(400, 400), ImageFormat::Jpeg), "o.jpg").await;
    assert_eq!(response.status(), 200);
    assert_eq!(h.picture_rows(&id).await, 1);
    let mut objects = h.objects(&id).await;
    objects.sort();
    let active = json_body(h.app.client.get(h.app.url("/me")).bearer_auth(&token).send().await.unwrap()).await;
    assert!(active["profile_picture_url"].is_string());
    assert_eq!(objects.len(), 3, "exactly the three sizes of the one stored picture: {objects:?}");
}
