//! The `baseline` scenario: the ceiling `me` is measured against. `bench-baseline` (the `xtask/baseline` crate)
//! answers `GET /me` with the service's HTTP stack, runtime and pool and one primary-key read of the session joined
//! to its user, and nothing else; it is loaded exactly as `me` is, for the same session of the same seeded user.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::load::{get, probe, run_oha};
use super::options::Options;
use super::report::{Row, error_note};
use super::requests::READ_CONNECTIONS;
use super::seed::SEED_DOMAIN;
use super::server::{Server, login};
use super::system::Oha;
use crate::http;
use crate::postgres::{literal, psql};
use crate::process::Service;
use crate::ui;

/// How long `bench-baseline` may take to answer `/healthz` after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds `bench-baseline` in release mode, as the server is built, and returns its path.
pub(super) fn build() -> Result<PathBuf> {
    super::build_release("bench-baseline", "the baseline server")
}

/// `baseline`: `user1` logs in to the service, as for `me`, and `bench-baseline` is loaded with that session's id
/// as the bearer token, on as many connections and for as long as `me`.
pub(super) fn baseline(server: &Server, binary: &Path, bench_dir: &Path, oha: &Oha, options: &Options) -> Result<Row> {
    let email = format!("user1@{SEED_DOMAIN}");
    login(server.addr, &email)?;
    let session_id = latest_session(&server.database_url, &email)?;
    let ceiling = start(binary, server, bench_dir)?;
    let load = get(ceiling.url("/me"), Some(session_id), READ_CONNECTIONS);
    let status = probe(ceiling.addr, &load)?;
    if status != load.expected_status {
        bail!("bench-baseline answered GET /me with {status}");
    }
    let measured = run_oha(oha, &load, options, &ceiling)?;
    let mut row = Row::new("baseline");
    row.connections = Some(u64::from(load.connections));
    row.note = format!("bench-baseline: one session+user read, no token check{}", error_note(&measured));
    row.measurement = Some(measured);
    row.rss_kib = ceiling.rss_kib().ok();
    Ok(row)
}

/// The id of the newest session of `email`: the one its login just started.
fn latest_session(database_url: &str, email: &str) -> Result<String> {
    let rows = psql(
        database_url,
        &format!(
            "SELECT s.id FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.email = {} \
             ORDER BY s.created_at DESC LIMIT 1",
            literal(email)
        ),
    )?;
    rows.into_iter().next().with_context(|| format!("no session of {email} after its login"))
}

/// Starts `bench-baseline` on a free port, on the service's database, and waits for `/healthz`.
fn start(binary: &Path, server: &Server, bench_dir: &Path) -> Result<Server> {
    let [port] = http::free_ports::<1>()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut command = Command::new(binary);
    command.env("BIND_ADDR", addr.to_string()).env("DATABASE_URL", &server.database_url);
    ui::step(&format!("Starting bench-baseline on {addr}"));
    let mut service = Service::start("bench-baseline", command, &bench_dir.join("baseline.log"))?;
    http::wait_until("bench-baseline to answer /healthz", STARTUP_TIMEOUT, || {
        service.ensure_running()?;
        Ok(http::is_ok(&addr.to_string(), "/healthz"))
    })?;
    let pid = service.pid().context("bench-baseline is not running")?;
    Ok(Server {
        service,
        pid,
        addr,
        database_url: server.database_url.clone(),
        binary: binary.to_path_buf(),
        data_dir: server.data_dir.clone(),
    })
}
