//! TLS between the real binary and Postgres: the `sslmode` and `sslrootcert` of `DATABASE_URL`, against the local
//! Postgres (which `cargo xtask test` expects to offer TLS, as Debian's cluster does with its certificate for
//! `localhost`) and against a stand-in server that answers the TLS request with "no". And one thing a connection
//! can lose on its way: the start-up option the user listing's sessions need, which a stand-in pooler drops.
//!
//! Which connections are encrypted is read from `pg_stat_ssl`, so a test that expects TLS fails if the binary
//! quietly connected in clear.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used, reason = "test helpers: failing loudly is the point")]

use std::collections::HashMap;
use std::process::Output;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use users_e2e::{BinaryApp, free_port, run_until_exit};
use users_testkit::TestDatabase;

/// A CA certificate that signed nothing the local Postgres presents (its key was thrown away).
const UNRELATED_CA: &str = "-----BEGIN CERTIFICATE-----
MIIB0jCCAXmgAwIBAgIUMcRVnL8MJFtbkiY5pp95EUPd1d8wCgYIKoZIzj0EAwIw
NjE0MDIGA1UEAwwrdXNlci1tYW5hZ2VtZW50IHRlc3QgQ0EgdGhhdCBzaWduZWQg
bm90aGluZzAgFw0yNjEyMDQxMTEyNTZaGA8yMTI2MTExMDExMTI1NlowNjE0MDIG
A1UEAwwrdXNlci1tYW5hZ2VtZW50IHRlc3QgQ0EgdGhhdCBzaWduZWQgbm90aGlu
ZzBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABIo2sqX3clVMmLWegcRZctH4Giql
nIRdeN8LPXPSpLBrR/I8ACWhXcLnYt4b7LgxQxL1fUf7rk+mtiq2B8Y5SCGjYzBh
MB0GA1UdDgQWBBTY5Yzs7rqhds/7HzX2iyy8DjGFDTAfBgNVHSMEGDAWgBTY5Yzs
7rqhds/7HzX2iyy8DjGFDTAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIC
BDAKBggqhkjOPQQDAgNHADBEAiARiaXHFjtWXMFIvxXA5RU6aQ3eaL/UywTBdW5k
zigUrwIgTRhi/lKlLao4Fq7ZXfz4vJNv20GZFTGeHY8+5ZPQZk0=
-----END CERTIFICATE-----
";

/// The `application_name` the binary connects with in these tests, to tell its connections from the test's own.
const APPLICATION_NAME: &str = "um-tls-test";

/// `url` with query parameters added.
fn with_params(url: &str, params: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{params}")
}

/// `url` (on `127.0.0.1`, as `cargo xtask test` sets it) addressed to `localhost` instead, the name the local
/// Postgres' certificate holds.
fn via_localhost(url: &str) -> String {
    assert!(url.contains("@127.0.0.1:"), "the test database should be on 127.0.0.1 (`cargo xtask test`): {url}");
    url.replacen("@127.0.0.1:", "@localhost:", 1)
}

/// The certificate the local Postgres presents, read by the server itself (`ssl_cert_file`) and written to a file
/// the binary can name in `sslrootcert`. Fails, naming `cargo xtask test`, when the server does not offer TLS.
async fn server_certificate(db: &TestDatabase, dir: &tempfile::TempDir) -> String {
    let ssl_on = db.count("SELECT CASE WHEN current_setting('ssl') = 'on' THEN 1 ELSE 0 END::bigint AS n").await;
    assert_eq!(ssl_on, 1, "the local Postgres does not offer TLS (ssl = off); `cargo xtask test` turns it on");
    let output = std::process::Command::new("psql")
        .args(["-XAt", "-d", &db.url(), "-c", "SELECT pg_read_file(current_setting('ssl_cert_file'))"])
        .output()
        .expect("psql, Postgres' client, should run (it comes with the server)");
    assert!(output.status.success(), "reading ssl_cert_file: {}", String::from_utf8_lossy(&output.stderr));
    let path = dir.path().join("server.pem");
    std::fs::write(&path, &output.stdout).unwrap();
    path.display().to_string()
}

/// How many of the binary's connections to its database are encrypted, and how many are not.
async fn connections_by_tls(db: &TestDatabase) -> (i64, i64) {
    let query = |ssl: bool| {
        format!(
            "SELECT count(*) AS n FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE datname = '{}' AND application_name = '{APPLICATION_NAME}' AND ssl = {ssl}",
            db.name()
        )
    };
    (db.count(&query(true)).await, db.count(&query(false)).await)
}

/// Starts the binary with `DATABASE_URL` edited by `edit`, checks `/readyz` answers 200 (which takes a pooled
/// connection), and returns the app.
async fn ready_with(edit: impl FnOnce(&str) -> String) -> BinaryApp {
    let app = BinaryApp::start_editing(
        |env| {
            let url = with_params(&env["DATABASE_URL"], &format!("application_name={APPLICATION_NAME}"));
            env.insert("DATABASE_URL".to_owned(), edit(&url));
        },
        |_| {},
    )
    .await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    app
}

/// Runs `serve` with `DATABASE_URL` set to `url`, expecting start-up to fail.
fn serve_failing(url: &str) -> Output {
    let data_dir = tempfile::tempdir().unwrap();
    let env = HashMap::from([
        ("DATABASE_URL".to_owned(), url.to_owned()),
        ("DATA_DIR".to_owned(), data_dir.path().display().to_string()),
        ("BIND_ADDR".to_owned(), format!("127.0.0.1:{}", free_port())),
        ("METRICS_BIND_ADDR".to_owned(), String::new()),
        ("LOG_FORMAT".to_owned(), "json".to_owned()),
    ]);
    let output = run_until_exit(&["serve"], &env, Duration::from_secs(30));
    assert!(!output.status.success(), "start-up should fail with DATABASE_URL={url}");
    output
}

/// The standard error of a failed start-up, checked to name `DATABASE_URL`.
fn stderr_naming_database_url(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(stderr.contains("DATABASE_URL"), "the error should name DATABASE_URL: {stderr}");
    stderr
}

#[tokio::test]
async fn sslmode_require_against_the_local_postgres_serves_over_tls() {
    let app = ready_with(|url| with_params(url, "sslmode=require")).await;
    let (encrypted, clear) = connections_by_tls(&app.db).await;
    assert!(encrypted >= 1, "the pool holds an encrypted connection after /readyz");
    assert_eq!(clear, 0, "no connection in clear with sslmode=require");
}

#[tokio::test]
async fn the_default_prefer_uses_tls_when_offered_and_disable_never_does() {
    let preferred = ready_with(str::to_owned).await;
    let (encrypted, clear) = connections_by_tls(&preferred.db).await;
    assert!(encrypted >= 1 && clear == 0, "prefer: {encrypted} encrypted, {clear} in clear");

    let disabled = ready_with(|url| with_params(url, "sslmode=disable")).await;
    let (encrypted, clear) = connections_by_tls(&disabled.db).await;
    assert!(encrypted == 0 && clear >= 1, "disable: {encrypted} encrypted, {clear} in clear");
}

#[tokio::test]
async fn verify_full_accepts_the_servers_certificate_for_its_own_name_and_verify_ca_for_any_name() {
    let probe = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let root = server_certificate(&probe, &dir).await;

    let full =
        ready_with(|url| with_params(&via_localhost(url), &format!("sslmode=verify-full&sslrootcert={root}"))).await;
    assert!(connections_by_tls(&full.db).await.0 >= 1);

    // 127.0.0.1 is not a name the certificate holds: verify-ca checks only the chain, so it connects...
    let chain_only = ready_with(|url| with_params(url, &format!("sslmode=verify-ca&sslrootcert={root}"))).await;
    assert!(connections_by_tls(&chain_only.db).await.0 >= 1);

    // ...and verify-full refuses it.
    let url = with_params(&probe.url(), &format!("sslmode=verify-full&sslrootcert={root}"));
    let stderr = stderr_naming_database_url(&serve_failing(&url));
    assert!(stderr.contains("certificate"), "{stderr}");
}

#[tokio::test]
async fn verify_full_with_an_unrelated_root_certificate_stops_start_up_naming_database_url() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let wrong_root = dir.path().join("unrelated-ca.pem");
    std::fs::write(&wrong_root, UNRELATED_CA).unwrap();
    let url =
        with_params(&via_localhost(&db.url()), &format!("sslmode=verify-full&sslrootcert={}", wrong_root.display()));
    let stderr = stderr_naming_database_url(&serve_failing(&url));
    assert!(stderr.contains("certificate"), "the reason is the certificate: {stderr}");
}

#[tokio::test]
async fn a_missing_root_certificate_file_stops_start_up_naming_database_url_and_the_file() {
    let db = TestDatabase::create().await;
    let url = with_params(&db.url(), "sslmode=verify-ca&sslrootcert=/nonexistent/um-root.pem");
    let stderr = stderr_naming_database_url(&serve_failing(&url));
    assert!(stderr.contains("sslrootcert /nonexistent/um-root.pem:"), "the file is named as such: {stderr}");
}

#[tokio::test]
async fn sslmode_require_against_a_server_without_tls_stops_start_up_naming_database_url() {
    // A stand-in for a Postgres without TLS: it reads the 8-byte SSLRequest and answers 'N', as such a server
    // does, then hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (saw_ssl_request, mut ssl_requests) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0_u8; 8];
            if socket.read_exact(&mut request).await.is_ok() {
                // Length 8, then the SSLRequest code 80877103.
                let _ = saw_ssl_request.send(request == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
                let _ = socket.write_all(b"N").await;
            }
        }
    });
    let url = format!("postgres://postgres@127.0.0.1:{port}/user_management?sslmode=require");
    let output = tokio::task::spawn_blocking(move || serve_failing(&url)).await.unwrap();
    let stderr = stderr_naming_database_url(&output);
    assert!(stderr.contains("does not support TLS"), "the reason is the missing TLS: {stderr}");
    assert_eq!(ssl_requests.try_recv(), Ok(true), "the binary asked for TLS first");
}

/// A stand-in for a connection pooler that drops start-up options: it reads each client's start-up message, leaves
/// out its `options` parameter, and relays the connection to `upstream` (`host:port`). Every `options` value it
/// dropped is reported on the returned channel, so a test can tell the option was asked for. Clients must not ask
/// for TLS (`sslmode=disable`): it reads the start-up message in clear.
async fn pooler_dropping_options(upstream: String) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (dropped, reports) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let (upstream, dropped) = (upstream.clone(), dropped.clone());
            tokio::spawn(async move {
                let mut length = [0_u8; 4];
                if client.read_exact(&mut length).await.is_err() {
                    return;
                }
                let mut body = vec![0_u8; usize::try_from(u32::from_be_bytes(length)).unwrap() - 4];
                client.read_exact(&mut body).await.unwrap();
                // The protocol version, then name and value pairs of NUL-terminated strings, then one more NUL.
                let (version, parameters) = body.split_at(4);
                let fields: Vec<&[u8]> = parameters.split(|byte| *byte == 0).collect();
                let mut kept = version.to_vec();
                for pair in fields.chunks(2) {
                    match pair {
                        [name, value] if *name == b"options" => {
                            let _ = dropped.send(String::from_utf8_lossy(value).into_owned());
                        }
                        [name, value] if !name.is_empty() => {
                            for field in [name, value] {
                                kept.extend_from_slice(field);
                                kept.push(0);
                            }
                        }
                        _ => {}
                    }
                }
                kept.push(0);
                let mut server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                server.write_all(&u32::try_from(kept.len() + 4).unwrap().to_be_bytes()).await.unwrap();
                server.write_all(&kept).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (port, reports)
}

#[tokio::test]
async fn behind_a_pooler_that_drops_start_up_options_start_up_stops_naming_the_setting() {
    let db = TestDatabase::create().await;
    let url = with_params(&db.url(), "sslmode=disable");
    let upstream = url.split('@').nth(1).and_then(|rest| rest.split('/').next()).unwrap().to_owned();
    let (port, mut dropped) = pooler_dropping_options(upstream.clone()).await;
    let through_pooler = url.replacen(&format!("@{upstream}/"), &format!("@127.0.0.1:{port}/"), 1);
    assert_ne!(through_pooler, url, "the URL should now point at the stand-in pooler");

    let output = tokio::task::spawn_blocking(move || serve_failing(&through_pooler)).await.unwrap();
    let stderr = stderr_naming_database_url(&output);
    assert!(stderr.contains("user-listing connection"), "the listing's connection is named: {stderr}");
    assert!(stderr.contains("plan_cache_mode is auto, not the force_custom_plan"), "and why: {stderr}");
    let mut options = Vec::new();
    while let Ok(value) = dropped.try_recv() {
        options.push(value);
    }
    assert!(
        options.iter().any(|value| value.contains("plan_cache_mode=force_custom_plan")),
        "the binary asked for the setting and the pooler dropped it: {options:?}"
    );
}
