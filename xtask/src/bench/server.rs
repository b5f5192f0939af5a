//! The server under test: starting the release binary on a free port with the bench settings, reading its memory,
//! and signing in to it as a seeded user.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::seed::PASSWORD;
use super::system::format_kib;
use super::system::rss_kib;
use crate::http::{self, HttpConn, Response};
use crate::postgres::{literal, psql};
use crate::process::Service;
use crate::ui;

/// How long the server may take to answer `/healthz` after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts a server with these environment variables on top of the bench defaults (none for the `fs` server).
pub(super) type StartServer<'a> = dyn Fn(&[(&str, String)]) -> Result<Server> + 'a;

/// The running server and how to reach it.
pub(super) struct Server {
    /// The supervised process; stopped on drop.
    pub(super) service: Service,
    /// The server's process id, for reading its memory.
    pub(super) pid: u32,
    /// `127.0.0.1:port`.
    pub(super) addr: SocketAddr,
    /// The database it uses.
    pub(super) database_url: String,
    /// The binary it runs, to start another instance of it.
    pub(super) binary: PathBuf,
    /// Its data directory (and its generated signing key, which another instance on it shares).
    pub(super) data_dir: PathBuf,
}

impl Server {
    /// `http://127.0.0.1:port{path}`.
    pub(super) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The server's resident set size in KiB.
    pub(super) fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid)
    }
}

/// Starts the release server on a free port with the bench settings and waits for `/healthz`.
pub(super) fn start_server(
    binary: &Path,
    data_dir: &Path,
    database_url: &str,
    bench_dir: &Path,
    env: &[(&str, String)],
) -> Result<Server> {
    let [port] = http::free_ports::<1>()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let pid_file = bench_dir.join("server.pid");
    let _ = std::fs::remove_file(&pid_file);
    // `sh` records its pid and then becomes the server (`exec` keeps the pid), so the memory read later is the
    // server's own.
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"echo $$ > "$0" && exec "$@""#])
        .arg(&pid_file)
        .arg(binary)
        .arg("serve")
        .current_dir(data_dir)
        .env("BIND_ADDR", addr.to_string())
        .env("PUBLIC_BASE_URL", format!("http://{addr}"))
        .env("DATABASE_URL", database_url)
        .env("DATA_DIR", data_dir)
        .env("STORAGE_BACKEND", "fs")
        .env("MAIL_BACKEND", "file")
        .env("RATE_LIMITS", "off")
        .env("LOGIN_BACKOFF_AFTER", "1000000")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        // A port of its own that nobody scrapes: `soak` measures the unscraped case, and a developer's server may
        // hold the default 9464.
        .env("METRICS_BIND_ADDR", "127.0.0.1:0");
    // The scenario's own settings (`upload`'s S3 storage) override the defaults above.
    command.envs(env.iter().map(|(name, value)| (name, value)));
    let storage = env.iter().find(|(name, _)| *name == "STORAGE_BACKEND").map_or("fs", |(_, value)| value.as_str());
    ui::step(&format!(
        "Starting the server on {addr} (RATE_LIMITS=off, LOGIN_BACKOFF_AFTER=1000000, STORAGE_BACKEND={storage})"
    ));
    let mut service = Service::start("user-management", command, &bench_dir.join("server.log"))?;
    http::wait_until("the server to answer /healthz", STARTUP_TIMEOUT, || {
        service.ensure_running()?;
        Ok(http::is_ok(&addr.to_string(), "/healthz"))
    })?;
    let pid = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("could not read {}", pid_file.display()))?
        .trim()
        .parse::<u32>()
        .with_context(|| format!("{} does not hold a pid", pid_file.display()))?;
    let _ = std::fs::remove_file(&pid_file);
    let server = Server {
        service,
        pid,
        addr,
        database_url: database_url.to_owned(),
        binary: binary.to_path_buf(),
        data_dir: data_dir.to_path_buf(),
    };
    ui::info(&format!("up (pid {pid}), {} resident", format_kib(server.rss_kib()?)));
    Ok(server)
}

/// The tokens of a fresh session.
pub(super) struct Tokens {
    /// The access token.
    pub(super) access_token: String,
    /// The refresh token, single use.
    pub(super) refresh_token: String,
}

/// Reads `access_token` and `refresh_token` out of a token response.
pub(super) fn tokens(response: &Response) -> Result<Tokens> {
    let json: Value = serde_json::from_slice(&response.body).context("the token response is not JSON")?;
    let field = |name: &str| {
        json[name].as_str().map(str::to_owned).with_context(|| format!("the token response has no `{name}`"))
    };
    Ok(Tokens { access_token: field("access_token")?, refresh_token: field("refresh_token")? })
}

/// Logs `email` in with [`PASSWORD`] on a new connection.
pub(super) fn login(addr: SocketAddr, email: &str) -> Result<Tokens> {
    login_on(&mut HttpConn::connect(addr)?, email)
}

/// Logs `email` in with [`PASSWORD`] on `conn`.
pub(super) fn login_on(conn: &mut HttpConn, email: &str) -> Result<Tokens> {
    let body = json!({"email": email, "password": PASSWORD}).to_string();
    let response = conn.send("POST", "/login", &[], Some(&body))?;
    if response.status != 200 {
        bail!("POST /login as {email} answered {}: {}", response.status, String::from_utf8_lossy(&response.body));
    }
    tokens(&response)
}

/// The id of the user with `email`, looked up in the database the server uses.
pub(super) fn user_id(server: &Server, email: &str) -> Result<String> {
    let rows = psql(&server.database_url, &format!("SELECT id FROM users WHERE email = {}", literal(email)))?;
    rows.into_iter().next().with_context(|| format!("no seeded user {email}"))
}
