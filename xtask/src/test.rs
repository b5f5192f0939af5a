//! `cargo xtask test`: the one command that runs every test against real services, then fuzzes the running server
//! from its OpenAPI document with schemathesis.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};

use anyhow::{Context, Result};

use crate::garage::{self, Garage};
use crate::maildev::{self, MailDev};
use crate::process::{self, Service};
use crate::{http, postgres, ui};

/// Starts Postgres, Garage, MailDev and ChromeDriver (installing Chromium, ChromeDriver and axe-core when missing),
/// installs nginx when it is missing (the topology tests start their own),
/// builds the server binary, runs `cargo test --workspace --all-targets` with the `UM_TEST_*` variables pointing at
/// the services, runs the schemathesis step when the whole suite was asked for and passed, and stops the services
/// again.
pub struct Test {
    /// Extra arguments for `cargo test`, such as `-p users-domain` or `-- --nocapture`.
    cargo_args: Vec<String>,
}

/// Everything installed or chosen before any service starts.
struct Prepared {
    /// Admin URL of the Postgres server the tests create their databases on.
    database_url: String,
    /// The `garage` executable.
    garage_bin: PathBuf,
    /// The `maildev` executable.
    maildev_bin: PathBuf,
    /// The `nginx` executable, for the tests that put a reverse proxy in front of several instances.
    nginx_bin: PathBuf,
    /// Chromium, ChromeDriver and axe-core, for the page tests.
    browser: crate::browser::Browser,
    /// The `schemathesis` executable, when the run fuzzes the server.
    schemathesis_bin: Option<PathBuf>,
}

/// How the run went.
struct Outcome {
    /// How `cargo test` ended.
    tests: ExitStatus,
    /// Whether the schemathesis step was clean, when it ran.
    fuzz: Option<bool>,
}

impl Test {
    /// A test run passing `cargo_args` on to `cargo test`.
    pub fn new(cargo_args: Vec<String>) -> Self {
        Self { cargo_args }
    }

    /// Runs the tests; the exit code is `cargo test`'s, or 1 when the tests passed but the schemathesis step found
    /// something.
    ///
    /// # Errors
    /// When a service cannot be installed or started, or a build fails. Services already started are stopped
    /// before this returns, in every case.
    pub fn execute(self) -> Result<ExitCode> {
        process::install_interrupt_handler()?;
        // Arguments select a part of the suite (`-p users-domain`, a test name): the fuzz step checks the whole
        // server, so it runs only with the whole suite.
        let fuzz = self.cargo_args.is_empty();
        let prepared = prepare(fuzz)?;

        let work_dir = TempDir::create()?;
        let logs = crate::target_dir().join("xtask");
        let mut services: Vec<Service> = Vec::new();
        let outcome = self.start_services_and_test(&prepared, work_dir.path(), &logs, &mut services);

        ui::step("Stopping services");
        for service in services.iter_mut().rev() {
            if let Err(error) = service.stop() {
                ui::warn(&format!("{error:#}"));
            }
        }
        let succeeded = matches!(&outcome, Ok(outcome) if outcome.tests.success() && outcome.fuzz != Some(false));
        if !succeeded {
            for service in &services {
                ui::info(&format!("{} log: {}", service.name(), service.log().display()));
            }
        }
        drop(work_dir);

        let Outcome { tests, fuzz } = outcome?;
        if !tests.success() {
            ui::error(&format!("`cargo test` failed with {}", process::describe_status(tests)));
            return Ok(process::exit_code(tests));
        }
        match fuzz {
            Some(false) => {
                ui::error("`cargo test` passed, but schemathesis found requests the OpenAPI document gets wrong");
                Ok(ExitCode::FAILURE)
            }
            Some(true) => {
                ui::step("Tests passed; schemathesis found nothing");
                Ok(ExitCode::SUCCESS)
            }
            None => {
                ui::step("Tests passed");
                ui::info(
                    "schemathesis was not run: the arguments select a part of the suite (`cargo xtask schemathesis` runs it alone)",
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    }

    /// Starts the services (pushing each onto `services` as soon as it runs, so the caller stops it whatever
    /// happens next), builds the binary and runs `cargo test`.
    fn start_services_and_test(
        &self,
        prepared: &Prepared,
        work_dir: &Path,
        logs: &Path,
        services: &mut Vec<Service>,
    ) -> Result<Outcome> {
        let [s3, rpc, admin, smtp, web, webdriver] = http::free_ports::<6>()?;

        let garage_dir = work_dir.join("garage");
        std::fs::create_dir_all(&garage_dir).with_context(|| format!("could not create {}", garage_dir.display()))?;
        let Garage { service, config: garage_config, endpoint, access_key, secret_key } = garage::start(
            &prepared.garage_bin,
            &garage_dir,
            &garage::Ports { s3, rpc, admin },
            &logs.join("garage.log"),
        )?;
        services.push(service);

        let mail_dir = work_dir.join("maildev");
        std::fs::create_dir_all(&mail_dir).with_context(|| format!("could not create {}", mail_dir.display()))?;
        let MailDev { service, smtp_port, web_url } =
            maildev::start(&prepared.maildev_bin, smtp, web, &mail_dir, &logs.join("maildev.log"))?;
        services.push(service);

        services.push(crate::browser::start_chromedriver(
            &prepared.browser.chromedriver,
            webdriver,
            &logs.join("chromedriver.log"),
        )?);

        process::check_interrupted()?;
        // Every run holds a shared lock on one file for its whole life; only a run that can take it exclusively is
        // alone on this machine, and only then are `um_test_*` databases leftovers rather than another run's.
        let run_lock = RunLock::acquire()?;
        if run_lock.alone {
            ui::step("Postgres: dropping databases left behind by crashed test runs");
            postgres::drop_leftover_test_databases(&prepared.database_url)?;
        } else {
            ui::step("Postgres: another test run is active on this machine; leaving existing test databases alone");
        }

        let binary = crate::build_server(false)?;
        if !binary.is_file() {
            anyhow::bail!("the build succeeded but {} does not exist", binary.display());
        }

        process::check_interrupted()?;
        let mut test = Command::new(crate::cargo());
        test.current_dir(crate::project_root()).arg("test");
        // `--workspace` would override a package selection among the extra arguments.
        let cargo_options: Vec<&String> = self.cargo_args.iter().take_while(|arg| *arg != "--").collect();
        if !cargo_options.iter().any(|arg| selects_packages(arg)) {
            test.arg("--workspace");
        }
        // `--all-targets` would run every target beside a chosen one (`--test accounts_flow`).
        if !cargo_options.iter().any(|arg| selects_targets(arg)) {
            test.arg("--all-targets");
        }
        test.args(&self.cargo_args);
        let variables = [
            ("UM_TEST_DATABASE_URL", prepared.database_url.clone()),
            ("UM_TEST_S3_ENDPOINT", endpoint),
            ("UM_TEST_S3_REGION", garage::REGION.to_owned()),
            ("UM_TEST_S3_BUCKET", garage::BUCKET.to_owned()),
            ("UM_TEST_S3_ACCESS_KEY", access_key),
            ("UM_TEST_S3_SECRET_KEY", secret_key),
            ("UM_TEST_SMTP_HOST", "127.0.0.1".to_owned()),
            ("UM_TEST_SMTP_PORT", smtp_port.to_string()),
            ("UM_TEST_MAILDEV_URL", web_url),
            ("UM_TEST_GARAGE_BIN", prepared.garage_bin.display().to_string()),
            ("UM_TEST_GARAGE_CONFIG", garage_config.display().to_string()),
            ("UM_TEST_MAILDEV_BIN", prepared.maildev_bin.display().to_string()),
            ("UM_TEST_NGINX_BIN", prepared.nginx_bin.display().to_string()),
            ("UM_TEST_WEBDRIVER_URL", format!("http://127.0.0.1:{webdriver}")),
            ("UM_TEST_CHROMIUM_BIN", prepared.browser.chromium.display().to_string()),
            ("UM_TEST_AXE_SCRIPT", prepared.browser.axe_script.display().to_string()),
            ("UM_TEST_SCREENSHOTS_DIR", crate::target_dir().join("screenshots").display().to_string()),
            ("USER_MANAGEMENT_BIN", binary.display().to_string()),
        ];
        ui::step(&format!("Running `{}` with", process::describe(&test)));
        for (name, value) in &variables {
            // The secret key stays out of the terminal and CI logs.
            let shown = if name.ends_with("SECRET_KEY") { "(hidden)" } else { value.as_str() };
            ui::info(&format!("{name}={shown}"));
        }
        test.envs(variables);
        let mut child = process::spawn_foreground(&mut test)?;
        let tests = process::wait_foreground(&mut child, "cargo test")?;
        let fuzz = match &prepared.schemathesis_bin {
            Some(schemathesis) if tests.success() => Some(
                crate::schemathesis::Fuzz {
                    schemathesis,
                    server_bin: &binary,
                    database_admin_url: &prepared.database_url,
                    work_dir,
                    max_examples: crate::schemathesis::DEFAULT_MAX_EXAMPLES,
                }
                .execute(services)?,
            ),
            _ => None,
        };
        Ok(Outcome { tests, fuzz })
    }
}

/// Installs or finds everything the run needs, before anything is started; schemathesis only when `fuzz`.
fn prepare(fuzz: bool) -> Result<Prepared> {
    let database_url = match std::env::var("UM_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            ui::step("Postgres: using UM_TEST_DATABASE_URL from the environment");
            url
        }
        _ => {
            postgres::ensure_local_server()?;
            postgres::LOCAL_ADMIN_URL.to_owned()
        }
    };
    let garage_bin = garage::ensure_installed()?;
    let maildev_bin = maildev::ensure_installed()?;
    let nginx_bin = crate::nginx::ensure_installed()?;
    let browser = crate::browser::ensure_installed()?;
    let schemathesis_bin = if fuzz { Some(crate::schemathesis::ensure_installed()?) } else { None };
    Ok(Prepared { database_url, garage_bin, maildev_bin, nginx_bin, browser, schemathesis_bin })
}

/// A shared lock on `$TMPDIR/user-management-xtask-test.lock`, held until the run ends, so concurrent runs of
/// `cargo xtask test` (and `cargo xtask schemathesis`) on one machine know about each other.
pub struct RunLock {
    /// The locked file; the lock is released when it closes.
    _file: std::fs::File,
    /// Whether no other run held the lock when this one started.
    alone: bool,
}

impl RunLock {
    /// Takes the lock exclusively when possible (then no other run is active) and keeps it shared.
    pub fn acquire() -> Result<Self> {
        let path = std::env::temp_dir().join("user-management-xtask-test.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("could not open {}", path.display()))?;
        let alone = file.try_lock().is_ok();
        // Downgrade to a shared lock: other runs may start, but none of them will think it is alone.
        file.lock_shared().with_context(|| format!("could not lock {}", path.display()))?;
        Ok(Self { _file: file, alone })
    }
}

/// Whether a `cargo test` argument chooses packages itself.
fn selects_packages(arg: &str) -> bool {
    arg == "-p" || arg.starts_with("--package") || (arg.starts_with("-p") && arg.len() > 2)
}

/// Whether a cargo argument picks test targets (`--test NAME`, `--lib`, ...).
fn selects_targets(arg: &str) -> bool {
    ["--test", "--lib", "--bin", "--bins", "--example", "--examples", "--bench", "--benches", "--doc", "--tests"]
        .iter()
        .any(|flag| arg == *flag || arg.strip_prefix(flag).is_some_and(|rest| rest.starts_with('=')))
}

/// A directory under the system's temporary directory, removed again on drop.
struct TempDir {
    /// Its path.
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory named after this process, with a random suffix.
    fn create() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("um-xtask-{}-{}", std::process::id(), garage::random_hex(4)?));
        std::fs::create_dir_all(&path).with_context(|| format!("could not create {}", path.display()))?;
        Ok(Self { path })
    }

    /// Its path.
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            ui::warn(&format!("could not remove {}: {error}", self.path.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_selections_are_recognised() {
        for arg in ["-p", "-pusers-domain", "--package", "--package=users-domain"] {
            assert!(selects_packages(arg), "{arg}");
        }
        for arg in ["--", "--nocapture", "--lib", "login"] {
            assert!(!selects_packages(arg), "{arg}");
        }
    }
}
