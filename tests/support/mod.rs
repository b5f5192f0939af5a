//! Support for the black-box tests: the app started in-process on a fresh database ([`TestApp`]), and the real
//! `user-management` binary run as a child process ([`BinaryApp`], [`run_cli`]).
//!
//! Every test gets its own database cloned from a migrated template (see `users-testkit`) and its own data
//! directory; nothing is shared between tests. Missing services fail with a message naming `cargo xtask test`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test support: failing loudly is the point")]

use std::collections::HashMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod browser;
pub mod garage;
pub mod maildev;
pub mod raw;
pub mod topology;
pub mod totp;
pub mod webhook_receiver;

use serde_json::{Value, json};
use users_api::config::Config;
use users_api::startup::Application;
use users_testkit::TestDatabase;

/// `PUBLIC_BASE_URL` of every [`TestApp`]: the `iss` of its tokens and the start of its links.
pub const PUBLIC_BASE_URL: &str = "http://app.test";

/// An address no other test uses (tests share MailDev and may share a database server).
pub fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// A string field of a JSON body, failing with the body when it is missing.
pub fn str_of<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or_else(|| panic!("{field} missing in {value}"))
}

/// A password that passes the default policy.
pub const STRONG_PASSWORD: &str = "violet-kettle-orbit-97";

/// A password no test account has.
pub const WRONG_PASSWORD: &str = "certainly-not-the-password-42";

/// The base settings every test app gets: its own database and data directory, rate limits off.
fn base_env(db: &TestDatabase, data_dir: &tempfile::TempDir) -> HashMap<String, String> {
    HashMap::from([
        ("DATABASE_URL".to_owned(), db.url()),
        ("DATA_DIR".to_owned(), data_dir.path().display().to_string()),
        ("STORAGE_BACKEND".to_owned(), "fs".to_owned()),
        ("MAIL_BACKEND".to_owned(), "file".to_owned()),
        ("RATE_LIMITS".to_owned(), "off".to_owned()),
        ("LOG_FORMAT".to_owned(), "json".to_owned()),
        // Never the default 9464: tests run in parallel, and a developer's server may hold it.
        ("METRICS_BIND_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
    ])
}

/// The app, started in-process on port 0 against a fresh database.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// A plain HTTP client.
    pub client: reqwest::Client,
    /// The test's own database (dropped with the app).
    pub db: TestDatabase,
    /// The test's own data directory (removed with the app).
    pub data_dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>` of the metrics listener, unless `METRICS_BIND_ADDR` was set empty.
    pub metrics_address: Option<String>,
}

impl TestApp {
    /// Starts the app with the base settings plus `extra`.
    pub async fn spawn_with(extra: &[(&str, &str)]) -> Self {
        let db = TestDatabase::create().await;
        let data_dir = tempfile::tempdir().unwrap();
        let mut env = base_env(&db, &data_dir);
        env.insert("BIND_ADDR".to_owned(), "127.0.0.1:0".to_owned());
        env.insert("PUBLIC_BASE_URL".to_owned(), PUBLIC_BASE_URL.to_owned());
        for (key, value) in extra {
            env.insert((*key).to_owned(), (*value).to_owned());
        }
        let config = Config::from_map(&env).unwrap();
        let app = Application::build(config).await.expect("the app should start");
        let address = format!("http://127.0.0.1:{}", app.port());
        let metrics_address = app.metrics_addr().map(|addr| format!("http://{addr}"));
        // Never stopped by a signal: the test process's own signals must keep their usual effect.
        tokio::spawn(app.run_until(futures_util::stream::pending()));
        Self { address, client: client(), db, data_dir, metrics_address }
    }

    /// Starts the app with the base settings.
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// The URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }
}

/// An HTTP client that opens a connection per request. Reusing idle keep-alive connections races with the server
/// closing them when a test blocks its thread for a while (encoding a test image, stopping a service), which shows
/// up as a spurious "connection closed" error.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("an HTTP client")
}

/// Runs the real binary with a subcommand, the given environment and standard input; waits for it to finish.
pub fn run_cli(args: &[&str], env: &HashMap<String, String>, stdin: &str) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the user-management binary should start");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Runs the real binary with a subcommand and the given environment, expecting it to exit on its own (a start-up
/// that should fail); fails the test if it is still running after `timeout`.
pub fn run_until_exit(args: &[&str], env: &HashMap<String, String>, timeout: Duration) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the user-management binary should start");
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "user-management {args:?} was still running after {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The path of the built `user-management` binary: `USER_MANAGEMENT_BIN`, set by `cargo xtask test`.
pub fn binary() -> PathBuf {
    let path = std::env::var("USER_MANAGEMENT_BIN")
        .map(PathBuf::from)
        .expect("USER_MANAGEMENT_BIN is not set: run the tests with `cargo xtask test`, which builds the binary");
    assert!(path.exists(), "{} does not exist: run the tests with `cargo xtask test`", path.display());
    path
}

/// A port for a child process to listen on, free when checked and chosen below the kernel's ephemeral range.
///
/// A port the kernel handed out for `:0` can be handed out again as soon as it is released: to an in-process
/// [`TestApp`] binding port 0 or to an outgoing connection of another test running in parallel, before the child
/// binds it. Ports below the ephemeral range are never given out that way, and a counter shared by the tests of
/// this process keeps any two of them apart.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|low| *low > FIRST + 1_000)
        .unwrap_or(32_768);
    let span = ephemeral_low - FIRST;
    // Different test binaries start at different places, in case two ever run at once.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let candidate = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(candidate).expect("below the ephemeral range, so below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {ephemeral_low}");
}

/// The real binary serving on a free port against a fresh database; killed when dropped.
pub struct BinaryApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The environment it runs with, to run CLI subcommands against the same database and data directory.
    pub env: HashMap<String, String>,
    /// A plain HTTP client.
    pub client: reqwest::Client,
    /// `http://127.0.0.1:<port>` of the metrics listener (`METRICS_BIND_ADDR`), on a free port of its own.
    pub metrics_address: String,
    child: Child,
    /// The app's own database.
    pub db: TestDatabase,
    _data_dir: tempfile::TempDir,
}

impl BinaryApp {
    /// Prepares a database and data directory, lets `before_start` run CLI commands against them, then starts
    /// `user-management serve` and waits until `/healthz` answers.
    pub async fn start(before_start: impl FnOnce(&HashMap<String, String>)) -> Self {
        Self::start_with(&[], before_start).await
    }

    /// As [`Self::start`], with extra settings.
    pub async fn start_with(extra: &[(String, String)], before_start: impl FnOnce(&HashMap<String, String>)) -> Self {
        Self::start_editing(|env| env.extend(extra.iter().cloned()), before_start).await
    }

    /// As [`Self::start`], with the environment edited by `edit` (which sees the test database's `DATABASE_URL`).
    pub async fn start_editing(
        edit: impl FnOnce(&mut HashMap<String, String>),
        before_start: impl FnOnce(&HashMap<String, String>),
    ) -> Self {
        let db = TestDatabase::create().await;
        let data_dir = tempfile::tempdir().unwrap();
        let mut env = base_env(&db, &data_dir);
        // Only warnings and errors from the server reach the test output; a failing test shows them.
        env.insert("RUST_LOG".to_owned(), "warn".to_owned());
        env.insert("METRICS_BIND_ADDR".to_owned(), format!("127.0.0.1:{}", free_port()));
        edit(&mut env);
        let port = free_port();
        env.insert("BIND_ADDR".to_owned(), format!("127.0.0.1:{port}"));
        env.insert("PUBLIC_BASE_URL".to_owned(), format!("http://127.0.0.1:{port}"));
        let metrics_address = format!("http://{}", env["METRICS_BIND_ADDR"]);
        before_start(&env);
        let child = spawn_serve(&env);
        let mut app = Self {
            address: format!("http://127.0.0.1:{port}"),
            env,
            client: client(),
            metrics_address,
            child,
            db,
            _data_dir: data_dir,
        };
        app.wait_until_healthy().await;
        app
    }

    async fn wait_until_healthy(&mut self) {
        wait_until_healthy(&mut self.child, &self.client, &self.address).await;
    }

    /// A second instance of the binary on this one's database and settings, as a second node behind a load
    /// balancer: its own port, metrics port and data directory, and the same `PUBLIC_BASE_URL` (the issuer its
    /// tokens name), with `extra` settings on top of this app's. Started and healthy when this returns; killed when
    /// dropped.
    pub async fn start_peer(&self, extra: &[(&str, &str)]) -> PeerApp {
        let data_dir = tempfile::tempdir().unwrap();
        let mut env = self.env.clone();
        env.extend(extra.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())));
        env.insert("DATA_DIR".to_owned(), data_dir.path().display().to_string());
        env.insert("METRICS_BIND_ADDR".to_owned(), format!("127.0.0.1:{}", free_port()));
        let port = free_port();
        env.insert("BIND_ADDR".to_owned(), format!("127.0.0.1:{port}"));
        let child = spawn_serve(&env);
        let mut peer =
            PeerApp { address: format!("http://127.0.0.1:{port}"), env, client: client(), child, _data_dir: data_dir };
        wait_until_healthy(&mut peer.child, &peer.client, &peer.address).await;
        peer
    }

    /// The URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Sends the server SIGTERM, as an orchestrator stopping it does.
    pub fn terminate(&self) {
        let sent = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        assert!(sent.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Whether the server is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits until the server has exited and returns how; fails the test after `timeout`.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "user-management did not exit within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for BinaryApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `user-management serve` with exactly `env` (and `PATH`); its standard error goes to the test's.
fn spawn_serve(env: &HashMap<String, String>) -> Child {
    Command::new(binary())
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the user-management binary should start")
}

/// Waits until the server `child` answers `/healthz` at `address`, failing at once if it exits first.
async fn wait_until_healthy(child: &mut Child, client: &reqwest::Client, address: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A child that exited (a port taken, a bad setting) must not let another server's answer pass for its own.
        if let Some(status) = child.try_wait().unwrap() {
            panic!("user-management serve exited with {status} before answering /healthz (its stderr is above)");
        }
        if let Ok(response) = client.get(format!("{address}/healthz")).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "user-management did not answer /healthz within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A second instance of the binary serving a [`BinaryApp`]'s database ([`BinaryApp::start_peer`]); killed when
/// dropped.
pub struct PeerApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The environment it runs with.
    pub env: HashMap<String, String>,
    /// A plain HTTP client.
    pub client: reqwest::Client,
    child: Child,
    _data_dir: tempfile::TempDir,
}

impl PeerApp {
    /// The URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }
}

impl Drop for PeerApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Logs in with JSON and returns the whole response.
pub async fn login_json(client: &reqwest::Client, base: &str, email: &str, password: &str) -> reqwest::Response {
    client.post(format!("{base}/login")).json(&json!({"email": email, "password": password})).send().await.unwrap()
}

/// Reads a response body as JSON, failing with the body when it is not.
pub async fn json_body(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("expected JSON, got {text:?}"))
}

/// Checks a problem answer (status, `application/problem+json`, `code` and `status` in the body) and returns its
/// body; `what` names the step in the failure message.
///
/// # Panics
/// When any of those differs.
pub async fn assert_problem(response: reqwest::Response, status: u16, code: &str, what: &str) -> Value {
    let actual = response.status();
    let content_type = response.headers().get("content-type").cloned();
    let body = response.text().await.unwrap();
    assert_eq!(actual, status, "{what}: expected {status} {code}, got {actual}: {body}");
    assert_eq!(content_type.unwrap(), "application/problem+json", "{what}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], code, "{what}: {body}");
    assert_eq!(body["status"], status, "{what}: {body}");
    body
}
