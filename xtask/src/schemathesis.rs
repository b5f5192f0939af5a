//! The schemathesis step: a schema-driven fuzzer run against the real server, failing on any request the OpenAPI
//! document allows but the server refuses, any answer the document does not list, and any server error.
//!
//! Schemathesis [`VERSION`] is installed with pip into a virtual environment under
//! `~/.cache/user-management/schemathesis` (or `$XDG_CACHE_HOME`), which survives clean clones. The step starts the
//! debug `user-management` binary on a free port against a fresh database of its own (`um_test_fuzz_<hex>`, so a
//! crashed run's leftover is dropped by the next `cargo xtask test`), with pictures and mail in files, the per-IP
//! limits off and the login backoff out of reach (the fuzzer logs in and guesses passwords far more often than a
//! person would). It creates an administrator with `create-admin`, logs in, and runs `schemathesis run` with every
//! check on and the settings of `xtask/schemathesis.toml`, in five runs:
//!
//! 1. every operation except the four below, with one session of the administrator; then the same operations
//!    again with any Unicode text (see [`UNICODE`]);
//! 2. `POST /users`, `GET /users/{id}` and `DELETE /users/{id}` together, with a second session: deleting users is
//!    kept out of the first run because once the fuzzer has created a second unlocked ADMIN, `DELETE /users/{id}` on
//!    the administrator's own id (which `GET /me` and the user list show) deletes the account the whole run uses;
//!    here it only sees the ids of users it created itself;
//! 3. `DELETE /me/sessions/{id}` and `DELETE /me`, with a third session: listing the sessions would hand the fuzzer
//!    the id of the session it runs on;
//! 4. `POST /logout/all` last, with a fourth session, since it ends every session of the administrator.
//!
//! Each run writes a JSON report under `target/xtask/schemathesis/`; the step prints the findings of every run and
//! fails when any run does. The server's log is `target/xtask/schemathesis/server.log`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::garage::random_hex;
use crate::http::{free_ports, is_ok, wait_until};
use crate::process::{self, Service};
use crate::{postgres, ui};

/// The schemathesis release the document is checked with; pinned so a new release cannot fail a run by itself.
pub const VERSION: &str = "4.32.5";

/// Test cases per operation and phase when nothing else is asked for: the whole step then takes about a minute.
pub const DEFAULT_MAX_EXAMPLES: u32 = 40;

/// The fixed seed, so a finding can be reproduced with the same command.
const SEED: &str = "20261204";

/// The administrator the fuzzer acts as.
const ADMIN_EMAIL: &str = "fuzz-admin@example.com";

/// One schemathesis invocation: a name for messages and reports, its operation filter and its generation.
struct FuzzRun {
    /// Short name, also the report's directory.
    name: &'static str,
    /// What it covers, for the status line.
    what: &'static str,
    /// `--include-operation-id` or `--exclude-operation-id` arguments.
    filter: &'static [&'static str],
    /// Whether it generates any Unicode text rather than ASCII (see [`UNICODE`]).
    unicode: bool,
}

/// The operations of the main run: all but those that delete users or end the caller's sessions.
const MAIN: &[&str] = &[
    "--exclude-operation-id",
    "delete_user",
    "--exclude-operation-id",
    "revoke_session",
    "--exclude-operation-id",
    "delete_me",
    "--exclude-operation-id",
    "logout_all",
];

/// The arguments of a run that generates any Unicode text.
///
/// The server counts lengths in code points after NFKC normalisation (`½` is three of them), which JSON Schema
/// cannot state, so a run generating arbitrary Unicode would see lengths the document cannot describe. ASCII is
/// NFKC-stable: the runs that judge which requests the server accepts or refuses generate ASCII, and one more run
/// over the main operations generates any Unicode with every other check (server errors, documented statuses,
/// content types, response schemas and headers).
const UNICODE: &[&str] = &["--exclude-checks", "positive_data_acceptance,negative_data_rejection"];

/// The runs, in order: `logout_all` last, since it ends every session of the administrator.
const RUNS: [FuzzRun; 5] = [
    FuzzRun {
        name: "main",
        what: "every operation but those that delete users or end the caller's sessions",
        filter: MAIN,
        unicode: false,
    },
    FuzzRun {
        name: "main-unicode",
        what: "the same operations with any Unicode text, all checks but request acceptance",
        filter: MAIN,
        unicode: true,
    },
    FuzzRun {
        name: "users",
        what: "POST /users, GET and DELETE /users/{id}",
        filter: &[
            "--include-operation-id",
            "create_user",
            "--include-operation-id",
            "get_user",
            "--include-operation-id",
            "delete_user",
        ],
        unicode: false,
    },
    FuzzRun {
        name: "own-sessions",
        what: "DELETE /me/sessions/{id} and DELETE /me",
        filter: &["--include-operation-id", "revoke_session", "--include-operation-id", "delete_me"],
        unicode: false,
    },
    FuzzRun {
        name: "logout-all",
        what: "POST /logout/all",
        filter: &["--include-operation-id", "logout_all"],
        unicode: false,
    },
];

/// `cargo xtask schemathesis [--max-examples N] [--server-bin PATH]`: the schemathesis step alone, against the debug
/// binary (built first) or a binary built elsewhere, for a before/after comparison.
pub struct Schemathesis {
    /// The arguments after `schemathesis`.
    args: Vec<String>,
}

impl Schemathesis {
    /// The command with its arguments.
    pub fn new(args: Vec<String>) -> Self {
        Self { args }
    }

    /// Makes sure of Postgres and schemathesis, builds the server unless `--server-bin` names one, runs the step
    /// and stops the server again. The exit code is 0 when every run was clean, 1 otherwise.
    ///
    /// # Errors
    /// On unknown arguments, and when something cannot be installed, built or started.
    pub fn execute(self) -> Result<std::process::ExitCode> {
        let mut max_examples = DEFAULT_MAX_EXAMPLES;
        let mut server_bin: Option<PathBuf> = None;
        let mut args = self.args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--max-examples" => {
                    max_examples = args
                        .next()
                        .and_then(|value| value.parse().ok())
                        .filter(|&n| n > 0)
                        .context("--max-examples needs a whole number above 0")?;
                }
                "--server-bin" => {
                    let path = args.next().context("--server-bin needs a path")?;
                    server_bin = Some(std::path::absolute(&path).with_context(|| format!("bad path {path}"))?);
                }
                other => bail!("unknown argument `{other}` (expected --max-examples N or --server-bin PATH)"),
            }
        }
        process::install_interrupt_handler()?;
        let database_admin_url = match std::env::var("UM_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                postgres::ensure_local_server()?;
                postgres::LOCAL_ADMIN_URL.to_owned()
            }
        };
        let schemathesis = ensure_installed()?;
        // Held until the step ends, so that a `cargo xtask test` starting meanwhile leaves the step's database alone.
        let _run_lock = crate::test::RunLock::acquire()?;
        let server_bin = match server_bin {
            Some(path) if path.is_file() => path,
            Some(path) => bail!("--server-bin {} is not a file", path.display()),
            None => crate::build_server(false)?,
        };
        let work_dir = std::env::temp_dir().join(format!("um-xtask-fuzz-{}-{}", std::process::id(), random_hex(4)?));
        std::fs::create_dir_all(&work_dir).with_context(|| format!("could not create {}", work_dir.display()))?;
        let mut services = Vec::new();
        let outcome = Fuzz {
            schemathesis: &schemathesis,
            server_bin: &server_bin,
            database_admin_url: &database_admin_url,
            work_dir: &work_dir,
            max_examples,
        }
        .execute(&mut services);
        for service in services.iter_mut().rev() {
            if let Err(error) = service.stop() {
                ui::warn(&format!("{error:#}"));
            }
        }
        if let Err(error) = std::fs::remove_dir_all(&work_dir) {
            ui::warn(&format!("could not remove {}: {error}", work_dir.display()));
        }
        if outcome? {
            ui::step("schemathesis found nothing");
            Ok(std::process::ExitCode::SUCCESS)
        } else {
            ui::error("schemathesis found requests the OpenAPI document gets wrong");
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}

/// `$XDG_CACHE_HOME/user-management/schemathesis`, or `~/.cache/user-management/schemathesis`.
fn venv_dir() -> Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set; cannot choose where to install schemathesis")?;
    Ok(cache.join("user-management").join("schemathesis"))
}

/// Whether `executable` is schemathesis [`VERSION`].
fn reports_version(executable: &Path) -> bool {
    Command::new(executable)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|output| output.status.success() && String::from_utf8_lossy(&output.stdout).contains(VERSION))
}

/// Returns the `schemathesis` executable, creating the virtual environment and installing [`VERSION`] with pip
/// first when it is not there.
pub fn ensure_installed() -> Result<PathBuf> {
    ui::step(&format!("schemathesis {VERSION}: checking the installation"));
    let dir = venv_dir()?;
    let executable = dir.join("bin").join("schemathesis");
    if !reports_version(&executable) {
        ui::info(&format!("installing it with pip into the virtual environment {}", dir.display()));
        if !dir.join("bin").join("pip").is_file() {
            let mut venv = Command::new("python3");
            venv.args(["-m", "venv"]).arg(&dir);
            process::run(&mut venv).context("could not create a Python virtual environment (it needs python3-venv)")?;
        }
        let mut install = Command::new(dir.join("bin").join("pip"));
        install.args(["install", "--quiet", "--disable-pip-version-check"]).arg(format!("schemathesis=={VERSION}"));
        process::run(&mut install).context("could not install schemathesis with pip")?;
        if !reports_version(&executable) {
            bail!("{} does not report version {VERSION} after installing it", executable.display());
        }
    }
    ui::info(&format!("found {}", executable.display()));
    Ok(executable)
}

/// What the step needs: the tools, the server binary and where Postgres is.
pub struct Fuzz<'a> {
    /// The `schemathesis` executable.
    pub schemathesis: &'a Path,
    /// The `user-management` binary under test.
    pub server_bin: &'a Path,
    /// Admin URL of the Postgres server the step creates its database on.
    pub database_admin_url: &'a str,
    /// A scratch directory for the server's files, removed by the caller.
    pub work_dir: &'a Path,
    /// Test cases per operation and phase.
    pub max_examples: u32,
}

impl Fuzz<'_> {
    /// Runs the step: creates the database, starts the server (pushed onto `services`, so the caller stops it
    /// whatever happens), runs every fuzz run and drops the database again. `Ok(true)` when every run was clean.
    ///
    /// # Errors
    /// When the database, the administrator or the server cannot be set up, or schemathesis cannot be started.
    pub fn execute(&self, services: &mut Vec<Service>) -> Result<bool> {
        let reports = crate::target_dir().join("xtask").join("schemathesis");
        std::fs::create_dir_all(&reports).with_context(|| format!("could not create {}", reports.display()))?;
        let database = format!("um_test_fuzz_{}", random_hex(6)?);
        ui::step(&format!("schemathesis: creating the database `{database}`"));
        postgres::create_database(self.database_admin_url, &database)?;
        let outcome = self.with_database(&database, &reports, services);
        if let Err(error) = postgres::drop_database(self.database_admin_url, &database) {
            ui::warn(&format!("could not drop the database `{database}`: {error:#}"));
        }
        outcome
    }

    fn with_database(&self, database: &str, reports: &Path, services: &mut Vec<Service>) -> Result<bool> {
        let database_url = postgres::database_url(self.database_admin_url, database)?;
        let [port] = free_ports::<1>()?;
        let authority = format!("127.0.0.1:{port}");
        let data_dir = self.work_dir.join("fuzz-data");
        std::fs::create_dir_all(&data_dir).with_context(|| format!("could not create {}", data_dir.display()))?;

        let password = format!("fuzz {} admin", random_hex(16)?);
        ui::step(&format!("schemathesis: creating the administrator {ADMIN_EMAIL}"));
        let mut create_admin = self.server_command(&database_url, &authority, &data_dir);
        create_admin.args(["create-admin", "--email", ADMIN_EMAIL]);
        process::run_with_input(&mut create_admin, &password)?;

        ui::step(&format!("schemathesis: starting {} on {authority}", self.server_bin.display()));
        let mut serve = self.server_command(&database_url, &authority, &data_dir);
        serve.arg("serve");
        services.push(Service::start("user-management (fuzz)", serve, &reports.join("server.log"))?);
        let index = services.len() - 1;
        wait_until("the server's /healthz", Duration::from_secs(60), || {
            if let Some(server) = services.get_mut(index) {
                server.ensure_running()?;
            }
            Ok(is_ok(&authority, "/healthz"))
        })?;

        let config = crate::project_root().join("xtask").join("schemathesis.toml");
        // One session per run, so a run that ends its session leaves the others alone. All are opened before the
        // first run: the fuzzer may change the administrator's own email through `PATCH /users/{id}`, after which
        // logging in with the original address would fail.
        let tokens = RUNS.iter().map(|_| login(&authority, &password)).collect::<Result<Vec<_>>>()?;
        let mut clean = true;
        for (run, token) in RUNS.iter().zip(tokens) {
            process::check_interrupted()?;
            let report_dir = reports.join(run.name);
            // Only this run's report is read afterwards.
            if report_dir.exists() {
                std::fs::remove_dir_all(&report_dir)
                    .with_context(|| format!("could not clear {}", report_dir.display()))?;
            }
            ui::step(&format!("schemathesis run `{}`: {}", run.name, run.what));
            std::fs::create_dir_all(&report_dir)
                .with_context(|| format!("could not create {}", report_dir.display()))?;
            let mut command = Command::new(self.schemathesis);
            // schemathesis keeps a cache of earlier failures in `.schemathesis/` under its working directory and
            // replays them first; in the run's own, freshly cleared directory each run starts from the seed alone.
            command
                .current_dir(&report_dir)
                .arg("--config-file")
                .arg(&config)
                .arg("run")
                .arg(format!("http://{authority}/openapi.json"))
                // Every check is on by default, as with `--checks all`; naming them on the command line would
                // override the one exception in the configuration file.
                .args(["--seed", SEED, "--no-color", "--report", "json"])
                .args(["--max-examples", &self.max_examples.to_string()])
                .arg("--report-dir")
                .arg(&report_dir)
                .args(run.filter)
                .args(if run.unicode { UNICODE } else { &["--generation-codec", "ascii"] })
                .arg("--header")
                .arg(format!("Authorization: Bearer {token}"));
            let status = run_logged(&mut command, &report_dir.join("output.txt"))?;
            let summary = summarise_report(&report_dir);
            if status.success() {
                ui::info(&format!("clean: {summary}"));
            } else {
                clean = false;
                ui::error(&format!(
                    "schemathesis run `{}` failed with {}: {summary}; details in {}",
                    run.name,
                    process::describe_status(status),
                    report_dir.join("output.txt").display()
                ));
            }
        }
        Ok(clean)
    }

    /// The server binary with a clean environment: only what the fuzz run configures, so neither the caller's
    /// variables nor a `.env` file (the working directory is the scratch directory) change its behaviour.
    fn server_command(&self, database_url: &str, authority: &str, data_dir: &Path) -> Command {
        let mut command = Command::new(self.server_bin);
        command
            .current_dir(self.work_dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .env("BIND_ADDR", authority)
            .env("PUBLIC_BASE_URL", format!("http://{authority}"))
            .env("DATA_DIR", data_dir)
            .env("STORAGE_BACKEND", "fs")
            .env("MAIL_BACKEND", "file")
            // The fuzzer sends far more requests per second and per account than any person.
            .env("RATE_LIMITS", "off")
            .env("LOGIN_BACKOFF_AFTER", "1000000")
            // One token lasts the whole step.
            .env("ACCESS_TOKEN_TTL", "1h")
            // No second listener on a fixed port that another server on this machine may hold.
            .env("METRICS_BIND_ADDR", "")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn");
        command
    }
}

/// Runs `command` in the foreground with its output going to `log` as well as being shown on failure.
fn run_logged(command: &mut Command, log: &Path) -> Result<ExitStatus> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    let file = std::fs::File::create(log).with_context(|| format!("could not create {}", log.display()))?;
    let stderr = file.try_clone().with_context(|| format!("could not reopen {}", log.display()))?;
    command.stdin(Stdio::null()).stdout(file).stderr(stderr);
    let mut child = process::spawn_foreground(command)?;
    let status = process::wait_foreground(&mut child, "schemathesis")?;
    if !status.success() {
        // The failures section names each case and how to reproduce it.
        if let Ok(text) = std::fs::read_to_string(log) {
            eprintln!("{text}");
        }
    }
    Ok(status)
}

/// A one-line summary of the JSON report in `report_dir`: cases generated and failures by code.
fn summarise_report(report_dir: &Path) -> String {
    let report = std::fs::read_dir(report_dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "json"));
    let Some(path) = report else {
        return "no JSON report was written".to_owned();
    };
    let Ok(json) = std::fs::read_to_string(&path)
        .map_err(anyhow::Error::from)
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).map_err(anyhow::Error::from))
    else {
        return format!("could not read {}", path.display());
    };
    let generated = json.pointer("/test_cases/generated").and_then(serde_json::Value::as_u64).unwrap_or(0);
    let operations = json.pointer("/operations/tested").and_then(serde_json::Value::as_u64).unwrap_or(0);
    let failures: Vec<String> = json
        .get("failures")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .map(|failure| {
            let code = failure.get("code").and_then(serde_json::Value::as_str).unwrap_or("?");
            let title = failure.get("title").and_then(serde_json::Value::as_str).unwrap_or("?");
            let count = failure.get("count").and_then(serde_json::Value::as_u64).unwrap_or(0);
            format!("{count}x {code} {title}")
        })
        .collect();
    let errors = json.get("errors").and_then(serde_json::Value::as_array).map_or(0, Vec::len);
    let mut summary = format!("{operations} operations, {generated} test cases");
    if failures.is_empty() {
        summary.push_str(", no failures");
    } else {
        summary.push_str(&format!(", failures: {}", failures.join(", ")));
    }
    if errors > 0 {
        summary.push_str(&format!(", {errors} errors"));
    }
    summary
}

/// Logs the administrator in (`POST /login` as JSON) and returns the access token.
fn login(authority: &str, password: &str) -> Result<String> {
    let body = serde_json::json!({ "email": ADMIN_EMAIL, "password": password }).to_string();
    let mut stream = TcpStream::connect(authority).with_context(|| format!("could not connect to {authority}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "POST /login HTTP/1.0\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .context("could not send POST /login")?;
    let mut response = String::new();
    stream.read_to_string(&mut response).context("could not read the answer to POST /login")?;
    let (head, payload) = response.split_once("\r\n\r\n").unwrap_or((response.as_str(), ""));
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("POST /login as {ADMIN_EMAIL} answered {}: {payload}", head.lines().next().unwrap_or_default());
    }
    let json: serde_json::Value = serde_json::from_str(payload).context("POST /login did not answer JSON")?;
    json.get("access_token")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .context("POST /login answered no access_token")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Operations that end the fuzzer's session or account, or delete users, and the two that run with
    /// `delete_user` so it has users to delete.
    const ISOLATED: [&str; 6] = ["create_user", "get_user", "delete_user", "revoke_session", "delete_me", "logout_all"];

    #[test]
    fn every_isolated_operation_is_left_out_of_the_main_run_and_tested_in_another() {
        let main: Vec<&str> = MAIN.to_vec();
        for id in ISOLATED {
            let in_main = main.contains(&id);
            let in_own_run = RUNS.iter().filter(|run| run.filter != MAIN).any(|run| run.filter.contains(&id));
            assert!(in_own_run, "{id} is tested in no run");
            // create_user and get_user are safe in the main run too; the others must stay out of it.
            if !matches!(id, "create_user" | "get_user") {
                assert!(in_main, "{id} is not excluded from the main run");
            }
        }
    }
}
