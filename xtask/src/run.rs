//! `cargo xtask run`: the server on this machine with the embedded defaults, in one command.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::postgres::{self, DatabaseUrl};
use crate::{http, process, ui};

/// The address the server listens on unless `BIND_ADDR` says otherwise.
const DEFAULT_BIND_ADDR: &str = "127.0.0.1:8080";

/// The database the server uses unless `DATABASE_URL` says otherwise.
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/user_management";

/// Ensures Postgres and the database, then runs `cargo run --release -p users-api --bin user-management -- serve`
/// in the workspace root and prints the URLs of the docs and the pages once `/healthz` answers.
///
/// Settings come from the environment and the `.env` file, as the server reads them; the task runner only fills in
/// `STORAGE_BACKEND=fs` and `MAIL_BACKEND=file` where neither sets them.
pub struct Run {
    /// Variables from `.env` in the workspace root.
    env_file: HashMap<String, String>,
}

impl Run {
    /// Reads the `.env` file, if there is one.
    pub fn new() -> Self {
        let env_file = std::fs::read_to_string(crate::project_root().join(".env"))
            .map(|text| parse_env_file(&text))
            .unwrap_or_default();
        Self { env_file }
    }

    /// The value the server will see for `name`: the environment's, else the `.env` file's.
    fn setting(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().or_else(|| self.env_file.get(name).cloned()).filter(|value| !value.is_empty())
    }

    /// Runs the server until it exits or is interrupted; the exit code is the server's.
    ///
    /// # Errors
    /// When Postgres or the database cannot be set up, the listen address is taken, or cargo cannot be started.
    pub fn execute(self) -> Result<ExitCode> {
        process::install_interrupt_handler()?;

        let database_url = self.setting("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        let database = DatabaseUrl::parse(&database_url)?;
        if database.is_local_server() {
            postgres::ensure_local_server()?;
        } else {
            ui::step(&format!("Postgres: using {}:{} from DATABASE_URL", database.host, database.port.unwrap_or(5432)));
        }
        ui::step(&format!("Postgres: checking the database `{}`", database.database));
        postgres::ensure_database(&database.admin_url, &database.database)?;

        let bind_addr = self.setting("BIND_ADDR").unwrap_or_else(|| DEFAULT_BIND_ADDR.to_owned());
        let (probe, port) = probe_address(&bind_addr)?;
        // Fail now rather than after a long release build, and never mistake another server for ours.
        if let Err(error) = TcpListener::bind(&bind_addr)
            && error.kind() == std::io::ErrorKind::AddrInUse
        {
            bail!("BIND_ADDR {bind_addr} is already in use; stop the other server or choose another BIND_ADDR");
        }

        let mut command = Command::new(crate::cargo());
        command.current_dir(crate::project_root()).args([
            "run",
            "--release",
            "-p",
            "users-api",
            "--bin",
            "user-management",
            "--",
            "serve",
        ]);
        for (name, value) in [("STORAGE_BACKEND", "fs"), ("MAIL_BACKEND", "file")] {
            if self.setting(name).is_none() {
                command.env(name, value);
            }
        }
        ui::step(&format!(
            "Starting the server: `{}` (the first release build takes a while)",
            process::describe(&command)
        ));
        let mut child = process::spawn_foreground(&mut command)?;

        // Watch for readiness while the child builds and starts; stop watching once it answered or exited.
        let mut announced = false;
        let status = loop {
            if let Some(status) = child.try_wait().context("could not wait for the server")? {
                break status;
            }
            if process::interrupted() {
                break process::wait_foreground(&mut child, "the server")?;
            }
            if !announced && http::is_ok(&probe, "/healthz") {
                ui::step(&format!(
                    "user-management is up: the API at http://localhost:{port}/docs, the pages at \
                     http://localhost:{port}/ui/ (Ctrl-C stops it)"
                ));
                announced = true;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        if status.success() {
            Ok(ExitCode::SUCCESS)
        } else {
            ui::error(&format!("the server exited with {}", process::describe_status(status)));
            Ok(process::exit_code(status))
        }
    }
}

/// Where to send readiness probes for a server listening on `bind_addr`, and its port.
///
/// A server bound to every interface (`0.0.0.0`, `[::]`) is probed on the loopback address.
fn probe_address(bind_addr: &str) -> Result<(String, u16)> {
    let (host, port) =
        bind_addr.rsplit_once(':').with_context(|| format!("BIND_ADDR `{bind_addr}` is not host:port"))?;
    let port: u16 = port.parse().with_context(|| format!("BIND_ADDR `{bind_addr}` has an invalid port"))?;
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "[::]" => "[::1]",
        other => other,
    };
    Ok((format!("{host}:{port}"), port))
}

/// The `NAME=value` lines of a `.env` file; comments, blank lines and an `export ` prefix are skipped, and
/// surrounding quotes removed.
fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| {
            let name = name.trim();
            let name = name.strip_prefix("export ").unwrap_or(name).trim();
            let value = value.trim();
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|quote| value.strip_prefix(*quote).and_then(|rest| rest.strip_suffix(*quote)))
                .unwrap_or(value);
            (name.to_owned(), unquoted.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_address_follows_bind_addr() -> Result<()> {
        assert_eq!(probe_address("127.0.0.1:8080")?, ("127.0.0.1:8080".to_owned(), 8080));
        assert_eq!(probe_address("0.0.0.0:9000")?, ("127.0.0.1:9000".to_owned(), 9000));
        assert_eq!(probe_address("[::]:8081")?, ("[::1]:8081".to_owned(), 8081));
        assert!(probe_address("localhost").is_err());
        Ok(())
    }

    #[test]
    fn env_files_are_read_like_dotenv() {
        let parsed =
            parse_env_file("# comment\n\nBIND_ADDR=0.0.0.0:9000\nexport MAIL_BACKEND=\"smtp\"\n# S3_ENDPOINT=x\n");
        assert_eq!(parsed.get("BIND_ADDR").map(String::as_str), Some("0.0.0.0:9000"));
        assert_eq!(parsed.get("MAIL_BACKEND").map(String::as_str), Some("smtp"));
        assert_eq!(parsed.len(), 2);
    }
}
