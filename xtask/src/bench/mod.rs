//! `cargo xtask bench`: load-tests the release server on this machine and prints one table of the results.
//!
//! It builds the release binary, makes sure of a seeded database `um_bench_<users>` on the local Postgres, starts the
//! server on a free port with the per-IP limits off, and runs each scenario against it: `oha` for the scenarios that
//! repeat one request, a small built-in HTTP/1.1 loop for those `oha` cannot express (a refresh token is single use,
//! so every request needs the token the previous answer returned; a login with a second factor is two requests, the
//! second carrying the first's `mfa_token` and a TOTP code good once; idle connections only have to be held open),
//! and argon2 in-process for the raw hash rate the `login`, `login-mfa` and `register` figures are compared with.
//! `baseline` builds and starts `bench-baseline` (the `xtask/baseline` crate), a server with the service's HTTP
//! stack, runtime and pool that does nothing but the database read of `GET /me`, as the ceiling the `me` figure is
//! compared with. `register` signs up a new address on every request and deletes those accounts after. `login-mfa`
//! turns TOTP on for a range of seeded users in the database while it runs, and off again after it. `upload` starts
//! its own Garage and a second server storing in it (`STORAGE_BACKEND=s3`), and stops both when it is done;
//! `pictures` builds and runs `bench-pictures` (the `xtask/pictures` crate), the service's picture pipeline alone on
//! `upload`'s JPEG, in-process, as the ceiling the `upload` figure is compared with. `proxy`
//! starts a second instance on the same database and data directory and an nginx in front of both, and runs `me`
//! and `login` through it. `soak`,
//! run only when named, keeps `GET /me` going for minutes with nobody scraping the metrics and samples the server's
//! memory, to show that nothing accumulates per request. The table goes to standard output and, as JSON, to
//! `target/bench/<timestamp>.json`, so runs can be compared. The server is stopped whatever happens.
//!
//! This module holds the command and the order of the run; the parts live in its submodules: [`options`] (the
//! command line and the scenarios), [`seed`] (the seeded database), [`server`] (the server under test and signing in
//! to it), [`load`] (driving `oha`), [`system`] (memory and CPU figures from `/proc`), one module per family of
//! scenarios ([`requests`], [`baseline`], [`register`], [`mfa`] with the TOTP codes of [`totp`], [`refresh`],
//! [`proxy`], [`upload`], [`pictures`], [`soak`], [`idle`], [`hashing`]), and [`report`] (the rows, the table and
//! the JSON report).

mod baseline;
mod hashing;
mod idle;
mod load;
mod mfa;
mod options;
mod pictures;
mod proxy;
mod refresh;
mod register;
mod report;
mod requests;
mod seed;
mod server;
mod soak;
mod system;
mod totp;
mod upload;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use crate::{postgres, process, ui};
use load::ensure_oha;
use options::{Options, Scenario};
use report::{Row, compare_with_ceilings, render_table, report_json, summarise, timestamp};
use server::{Server, StartServer, start_server};
use system::Oha;

/// Above this share of the CPU used by other processes before the run, the run warns that its figures will be low.
const BUSY_WARNING_PERCENT: f64 = 15.0;

/// `cargo xtask bench [scenario...] [--users N] [--duration S] [--warmup S] [--fresh] [--server-bin PATH]
/// [--soak-minutes M]`.
pub struct Bench {
    /// The arguments after `bench`.
    args: Vec<String>,
}

impl Bench {
    /// A run with the arguments after `bench`.
    pub fn new(args: Vec<String>) -> Self {
        Self { args }
    }

    /// Runs the benchmark and prints the table; fails only when the set-up fails (a scenario that fails becomes a
    /// row saying so).
    ///
    /// # Errors
    /// When the arguments are wrong, or the build, the load generator, Postgres, the database or the server cannot
    /// be set up. The server is stopped before this returns, in every case.
    pub fn execute(self) -> Result<ExitCode> {
        let options = Options::parse(&self.args)?;
        process::install_interrupt_handler()?;
        let bench_dir = crate::target_dir().join("bench");
        std::fs::create_dir_all(&bench_dir).with_context(|| format!("could not create {}", bench_dir.display()))?;

        let oha = if options.scenarios.iter().any(|scenario| scenario.uses_oha()) { Some(ensure_oha()?) } else { None };
        let open_files = system::raise_open_files_limit()?;

        let binary = match &options.server_bin {
            Some(binary) => {
                ui::step(&format!("Using the server binary {}", binary.display()));
                std::path::absolute(binary).with_context(|| format!("bad --server-bin {}", binary.display()))?
            }
            None => crate::build_server(true)?,
        };
        if !binary.is_file() {
            bail!("{} does not exist", binary.display());
        }
        // Built up front like the server: a build is set-up, and would load the machine during a scenario.
        let baseline_bin = match (&options.baseline_bin, options.scenarios.contains(&Scenario::Baseline)) {
            (Some(given), false) => {
                ui::warn(&format!("--baseline-bin {} is unused: the `baseline` scenario is not run", given.display()));
                None
            }
            (None, false) => None,
            (Some(given), true) => {
                ui::step(&format!("Using the baseline binary {}", given.display()));
                let given =
                    std::path::absolute(given).with_context(|| format!("bad --baseline-bin {}", given.display()))?;
                if !given.is_file() {
                    bail!("{} does not exist", given.display());
                }
                Some(given)
            }
            (None, true) => Some(baseline::build()?),
        };
        let pictures_bin =
            if options.scenarios.contains(&Scenario::Pictures) { Some(pictures::build()?) } else { None };

        postgres::ensure_local_server()?;
        let data_dir = bench_dir.join("data");
        std::fs::create_dir_all(&data_dir).with_context(|| format!("could not create {}", data_dir.display()))?;
        let database_url = seed::prepare_database(&binary, &data_dir, options.users, options.fresh)?;

        let start = |env: &[(&str, String)]| start_server(&binary, &data_dir, &database_url, &bench_dir, env);
        let mut server = start(&[])?;
        // Other processes' load (a build, a test run) lowers every figure; measure it so the report says so.
        let busy_before = system::machine_busy_percent(Duration::from_secs(2)).ok();
        if let Some(busy) = busy_before.filter(|busy| *busy > BUSY_WARNING_PERCENT) {
            ui::warn(&format!(
                "other processes kept {busy:.0}% of the CPU busy just before the run; the figures will be lower"
            ));
        }
        let tools = Tools {
            oha: oha.as_ref(),
            baseline: baseline_bin.as_deref(),
            pictures: pictures_bin.as_deref(),
            bench_dir: &bench_dir,
            open_files,
        };
        let rows = run_scenarios(&options, &mut server, &start, &tools);
        ui::step("Stopping the server");
        if let Err(error) = server.service.stop() {
            ui::warn(&format!("{error:#}"));
        }
        let mut rows = rows?;
        compare_with_ceilings(&mut rows);

        let table = render_table(&rows);
        writeln!(std::io::stdout().lock(), "\n{table}").context("could not write the table to standard output")?;
        let report = report_json(&options, &self.args, oha.as_ref(), busy_before, &rows)?;
        let path = bench_dir.join(format!("{}.json", timestamp(SystemTime::now())));
        std::fs::write(&path, report).with_context(|| format!("could not write {}", path.display()))?;
        ui::step(&format!("Wrote {}", path.display()));
        Ok(ExitCode::SUCCESS)
    }
}

/// Builds the workspace member `package`, a binary of the same name that a ceiling runs (`what`, for the progress
/// line), in release mode as the server is built, and returns its path.
fn build_release(package: &str, what: &str) -> Result<std::path::PathBuf> {
    ui::step(&format!("Building {what} (cargo build --release -p {package})"));
    let mut build = std::process::Command::new(crate::cargo());
    build.current_dir(crate::project_root()).args(["build", "--release", "-p", package]);
    process::run(&mut build).with_context(|| format!("could not build {package}"))?;
    Ok(crate::target_dir().join("release").join(package))
}

/// What the scenarios need besides the server: the load generator, the `bench-baseline` and `bench-pictures`
/// binaries (when `baseline` and `pictures` run), where logs go, and the open-files limit.
struct Tools<'a> {
    /// `oha`, when a scenario uses it.
    oha: Option<&'a Oha>,
    /// `bench-baseline`, when `baseline` runs.
    baseline: Option<&'a std::path::Path>,
    /// `bench-pictures`, when `pictures` runs.
    pictures: Option<&'a std::path::Path>,
    /// `target/bench`.
    bench_dir: &'a std::path::Path,
    /// The raised limit of open files, for `idle`.
    open_files: u64,
}

/// The note of a row whose scenario ran without the vacuum before it.
const UNVACUUMED: &str = "not vacuumed before it";

/// `note` with [`UNVACUUMED`] in front. A note that starts with `"; "` (a row whose only note is its errors) is
/// joined without a second separator, as the ceilings' shares are.
fn note_unvacuumed(note: &str) -> String {
    match note {
        "" => UNVACUUMED.to_owned(),
        note if note.starts_with("; ") => format!("{UNVACUUMED}{note}"),
        note => format!("{UNVACUUMED}; {note}"),
    }
}

/// Runs the chosen scenarios one after the other. A scenario that fails becomes a row saying why; a server that died
/// ends the run with a row for each scenario left, and an interrupt ends it at once.
///
/// `idle` runs first, on the fresh server, and the server is restarted after it: the buffers of its 10k connections
/// would otherwise stay in the memory figures of every later row. The database is vacuumed before each scenario but
/// the first (see [`seed::vacuum`]).
fn run_scenarios(
    options: &Options,
    server: &mut Server,
    start: &StartServer<'_>,
    tools: &Tools<'_>,
) -> Result<Vec<Row>> {
    let (oha, open_files) = (tools.oha, tools.open_files);
    let mut rows = Vec::new();
    for (index, &scenario) in options.scenarios.iter().enumerate() {
        if index > 0 && options.scenarios.get(index - 1) == Some(&Scenario::Idle) {
            ui::step("Restarting the server after `idle`");
            server.service.stop()?;
            *server = start(&[])?;
        }
        let current = &*server;
        process::check_interrupted()?;
        ui::step(&format!("Scenario `{}`", scenario.name()));
        // A failed vacuum costs this scenario its clean start, not the run: the row says so.
        let unvacuumed = match index {
            0 => None,
            _ => seed::vacuum(&current.database_url).err().map(|error| format!("{error:#}")),
        };
        if let Some(error) = &unvacuumed {
            // An interrupt kills psql too; it ends the run, as it would have a moment later.
            process::check_interrupted()?;
            ui::warn(&format!("{error}; `{}` runs on the rows earlier scenarios left", scenario.name()));
        }
        let outcome = match scenario {
            Scenario::Idle => idle::idle(current, open_files).map(|row| vec![row]),
            Scenario::Argon2 => hashing::argon2_rate().map(|row| vec![row]),
            Scenario::LoginMfa => mfa::login_mfa(current, options).map(|row| vec![row]),
            Scenario::Refresh => refresh::refresh(current, options).map(|row| vec![row]),
            Scenario::Register => register::register(current, options).map(|row| vec![row]),
            Scenario::Baseline => match (oha, tools.baseline) {
                (Some(oha), Some(binary)) => {
                    baseline::baseline(current, binary, tools.bench_dir, oha, options).map(|row| vec![row])
                }
                _ => Err(anyhow::anyhow!("oha or bench-baseline is not available")),
            },
            Scenario::Pictures => match tools.pictures {
                Some(binary) => pictures::pictures(binary, tools.bench_dir, options).map(|row| vec![row]),
                None => Err(anyhow::anyhow!("bench-pictures is not available")),
            },
            Scenario::Upload => match oha {
                Some(oha) => upload::upload(start, oha, options),
                None => Err(anyhow::anyhow!("oha is not available")),
            },
            Scenario::Proxy => match oha {
                Some(oha) => proxy::proxy(current, oha, options),
                None => Err(anyhow::anyhow!("oha is not available")),
            },
            Scenario::Soak => match oha {
                Some(oha) => soak::soak(current, oha, options).map(|row| vec![row]),
                None => Err(anyhow::anyhow!("oha is not available")),
            },
            Scenario::Me | Scenario::UserById | Scenario::Search | Scenario::Login | Scenario::Storm => match oha {
                Some(oha) => requests::oha_scenario(scenario, current, oha, options),
                None => Err(anyhow::anyhow!("oha is not available")),
            },
        };
        let outcome = outcome.map(|mut new_rows| {
            if unvacuumed.is_some() {
                for row in &mut new_rows {
                    row.note = note_unvacuumed(&row.note);
                }
            }
            new_rows
        });
        match outcome {
            Ok(new_rows) => {
                for row in &new_rows {
                    ui::info(&summarise(row));
                }
                rows.extend(new_rows);
            }
            Err(error) => {
                process::check_interrupted()?;
                ui::warn(&format!("scenario `{}` failed: {error:#}", scenario.name()));
                let mut row = Row::new(scenario.name());
                row.failure = Some(format!("failed: {error:#}"));
                row.rss_kib = current.rss_kib().ok();
                if unvacuumed.is_some() {
                    row.note = UNVACUUMED.to_owned();
                }
                rows.push(row);
            }
        }
        // A crashed server would make every later row a failure for the same reason; say so once instead.
        if let Err(error) = server.service.ensure_running() {
            ui::warn(&format!("{error:#}"));
            for &left in options.scenarios.iter().skip(index + 1) {
                let mut row = Row::new(left.name());
                row.failure = Some(format!("not run: the server exited during `{}`", scenario.name()));
                rows.push(row);
            }
            break;
        }
    }
    process::check_interrupted()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unvacuumed_row_says_so_once_and_keeps_its_note() {
        assert_eq!(note_unvacuumed(""), "not vacuumed before it");
        assert_eq!(note_unvacuumed("; errors: 3x HTTP 503"), "not vacuumed before it; errors: 3x HTTP 503");
        assert_eq!(note_unvacuumed("target: user500"), "not vacuumed before it; target: user500");
    }
}
