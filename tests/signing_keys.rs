//! Signing keys kept in the database, through the real binary: two instances on one database accept each other's
//! tokens, `keys rotate` moves both to a new key without a restart while earlier tokens keep working, `keys list`
//! shows the states, a key an earlier version left under `DATA_DIR` is imported, and with `JWT_PRIVATE_KEY_FILE`
//! the file's key is used and `keys rotate` refuses; with `DATA_ENCRYPTION_KEY_FILE` the stored keys are encrypted
//! and another data key stops start-up.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly")]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use josekit::jwk::KeyPair as _;
use josekit::jws::ES256;
use serde_json::Value;
use users_e2e::{BinaryApp, STRONG_PASSWORD, free_port, json_body, login_json, run_cli, run_until_exit};

const ADMIN: &str = "keys-admin@example.com";

fn create_admin(env: &HashMap<String, String>) {
    let output = run_cli(&["create-admin", "--email", ADMIN], env, &format!("{STRONG_PASSWORD}\n"));
    assert!(output.status.success(), "create-admin failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// Logs the admin in at `base` and returns the access token.
async fn access_token(client: &reqwest::Client, base: &str) -> String {
    let response = login_json(client, base, ADMIN, STRONG_PASSWORD).await;
    assert_eq!(response.status(), 200, "login at {base}");
    json_body(response).await["access_token"].as_str().unwrap().to_owned()
}

/// The `kid` of a JWT's header.
fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// The status of `GET /me` at `base` with `token`.
async fn me_status(client: &reqwest::Client, base: &str, token: &str) -> u16 {
    client.get(format!("{base}/me")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

/// The kids `GET /.well-known/jwks.json` at `base` lists, in order.
async fn jwks_kids(client: &reqwest::Client, base: &str) -> Vec<String> {
    let response = client.get(format!("{base}/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let jwks = json_body(response).await;
    jwks["keys"].as_array().unwrap().iter().map(|jwk| jwk["kid"].as_str().unwrap().to_owned()).collect()
}

/// Runs `user-management keys <command>` and returns its standard output, failing on a non-zero exit.
fn keys(command: &str, env: &HashMap<String, String>) -> String {
    let output = run_cli(&["keys", command], env, "");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "keys {command} failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// The state `keys list` prints for `kid`.
fn listed_state(listing: &str, kid: &str) -> String {
    let line = listing.lines().find(|line| line.starts_with(kid)).unwrap_or_else(|| panic!("{kid} not in {listing}"));
    line.split_whitespace().nth(1).unwrap().to_owned()
}

#[tokio::test]
async fn two_instances_share_the_keys_and_a_rotation_reaches_both_without_a_restart() {
    let app = BinaryApp::start(create_admin).await;
    let peer = app.start_peer(&[]).await;
    let instances = [app.address.as_str(), peer.address.as_str()];
    let client = &app.client;

    // A token issued by either instance is accepted by both, and both sign with the one stored key.
    let before = access_token(client, &app.address).await;
    let first_kid = kid_of(&before);
    let from_peer = access_token(client, &peer.address).await;
    assert_eq!(kid_of(&from_peer), first_kid, "both instances sign with the same key");
    for base in instances {
        assert_eq!(me_status(client, base, &before).await, 200, "{base} accepts the first instance's token");
        assert_eq!(me_status(client, base, &from_peer).await, 200, "{base} accepts the second instance's token");
        assert_eq!(jwks_kids(client, base).await, std::slice::from_ref(&first_kid));
    }
    assert_eq!(app.db.count("SELECT count(*) AS n FROM signing_keys").await, 1);
    assert_eq!(listed_state(&keys("list", &app.env), &first_kid), "current");

    let rotated = keys("rotate", &app.env);
    let new_kid = rotated
        .split_whitespace()
        .skip_while(|word| *word != "key")
        .nth(1)
        .unwrap_or_else(|| panic!("no kid in {rotated:?}"))
        .to_owned();
    assert_ne!(new_kid, first_kid);
    let listing = keys("list", &app.env);
    assert_eq!(listed_state(&listing, &new_kid), "pending", "{listing}");
    assert_eq!(listed_state(&listing, &first_kid), "current", "{listing}");

    // Within 30 s of the rotation (activation after 15 s, reloads every 10 s) both instances sign with the new key.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut signing = Vec::new();
    loop {
        signing.clear();
        for base in instances {
            signing.push(kid_of(&access_token(client, base).await));
        }
        if signing.iter().all(|kid| *kid == new_kid) {
            break;
        }
        assert!(Instant::now() < deadline, "40 s after the rotation the instances sign with {signing:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The token from before the rotation still works everywhere, and both keys are published.
    let after = access_token(client, &peer.address).await;
    for base in instances {
        assert_eq!(me_status(client, base, &before).await, 200, "{base} still accepts the earlier key's token");
        assert_eq!(me_status(client, base, &after).await, 200, "{base} accepts the new key's token");
        assert_eq!(jwks_kids(client, base).await, [first_kid.clone(), new_kid.clone()]);
    }
    let listing = keys("list", &app.env);
    assert_eq!(listed_state(&listing, &new_kid), "current", "{listing}");
    assert_eq!(listed_state(&listing, &first_kid), "verifying", "{listing}");
}

/// A P-256 key in PKCS#8 PEM, with the `x` coordinate of its public JWK.
fn p256_key() -> (Vec<u8>, String) {
    let key = ES256.generate_key_pair().unwrap();
    let x = key.to_jwk_public_key().parameter("x").unwrap().as_str().unwrap().to_owned();
    (key.to_pem_private_key(), x)
}

/// The `x` coordinates the JWKS at `base` publishes.
async fn published_x(client: &reqwest::Client, base: &str) -> Vec<String> {
    let jwks = json_body(client.get(format!("{base}/.well-known/jwks.json")).send().await.unwrap()).await;
    jwks["keys"].as_array().unwrap().iter().map(|jwk| jwk["x"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_key_an_earlier_version_generated_under_data_dir_is_imported_as_the_first_key() {
    let (pem, x) = p256_key();
    let app = BinaryApp::start(|env| {
        std::fs::write(std::path::Path::new(&env["DATA_DIR"]).join("jwt-es256.pem"), &pem).unwrap();
    })
    .await;
    assert_eq!(published_x(&app.client, &app.address).await, [x], "the DATA_DIR key is the one in use");
    assert_eq!(app.db.count("SELECT count(*) AS n FROM signing_keys").await, 1);
}

#[tokio::test]
async fn with_jwt_private_key_file_the_files_key_signs_and_keys_rotate_refuses() {
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("signing.pem");
    let (pem, x) = p256_key();
    std::fs::write(&key_file, pem).unwrap();
    let extra = [("JWT_PRIVATE_KEY_FILE".to_owned(), key_file.display().to_string())];
    let app = BinaryApp::start_with(&extra, |_| {}).await;
    assert_eq!(published_x(&app.client, &app.address).await, [x]);

    let output = run_cli(&["keys", "rotate"], &app.env, "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "keys rotate must fail with JWT_PRIVATE_KEY_FILE set");
    assert!(stderr.contains("JWT_PRIVATE_KEY_FILE"), "{stderr}");
    assert!(stderr.contains(&key_file.display().to_string()), "{stderr}");
    assert_eq!(app.db.count("SELECT count(*) AS n FROM signing_keys").await, 0, "nothing is stored");
    let listing = keys("list", &app.env);
    assert!(listing.contains("JWT_PRIVATE_KEY_FILE") && listing.contains("current"), "{listing}");
}

/// Writes a data key file (32 bytes of `byte`, base64) into `dir` and returns its path.
fn data_key_file(dir: &std::path::Path, byte: u8) -> String {
    let path = dir.join(format!("data-key-{byte}"));
    std::fs::write(&path, base64::engine::general_purpose::STANDARD.encode([byte; 32])).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn with_a_data_key_the_stored_keys_are_encrypted_and_another_data_key_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let extra = [("DATA_ENCRYPTION_KEY_FILE".to_owned(), data_key_file(dir.path(), 1))];
    let app = BinaryApp::start_with(&extra, create_admin).await;
    let token = access_token(&app.client, &app.address).await;
    assert_eq!(me_status(&app.client, &app.address, &token).await, 200);
    assert_eq!(app.db.count("SELECT count(*) AS n FROM signing_keys").await, 1);
    let readable = "SELECT count(*) AS n FROM signing_keys WHERE position('PRIVATE KEY'::bytea IN private_key) > 0";
    assert_eq!(app.db.count(readable).await, 0, "the private key is not stored readable");
    assert_eq!(listed_state(&keys("list", &app.env), &kid_of(&token)), "current", "listing needs no data key");

    let mut other = app.env.clone();
    other.insert("DATA_ENCRYPTION_KEY_FILE".to_owned(), data_key_file(dir.path(), 2));
    other.insert("BIND_ADDR".to_owned(), format!("127.0.0.1:{}", free_port()));
    other.insert("METRICS_BIND_ADDR".to_owned(), format!("127.0.0.1:{}", free_port()));
    let output = run_until_exit(&["serve"], &other, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "serve must not start with another data key");
    assert!(stderr.contains("DATA_ENCRYPTION_KEY_FILE") && stderr.contains(&kid_of(&token)), "{stderr}");
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}
