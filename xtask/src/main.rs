//! `cargo xtask`: the project's development tasks, written in Rust instead of shell scripts.
//!
//! - `cargo xtask run` makes sure a local Postgres and the `user_management` database exist, then runs the server
//!   with the embedded defaults (pictures and mail under `DATA_DIR`) and prints the URL of the interactive docs.
//! - `cargo xtask test [ARGS]` starts every service the tests talk to (Postgres, Garage as the S3 server, MailDev as
//!   the SMTP catcher) on free ports, runs `cargo test --workspace --all-targets [ARGS]` with the `UM_TEST_*`
//!   variables pointing at them, then (without ARGS) fuzzes the server from its OpenAPI document with schemathesis,
//!   and stops the services again, whatever the outcome.
//! - `cargo xtask schemathesis [--max-examples N] [--server-bin PATH]` runs that fuzz step alone.
//! - `cargo xtask bench [SCENARIO...] [--users N] [--duration S] [--warmup S] [--fresh] [--server-bin PATH]
//!   [--baseline-bin PATH] [--soak-minutes M]` load-tests the release server against a seeded database and prints
//!   one table of throughput, latency and memory.
//!
//! The `cargo xtask` alias lives in `.cargo/config.toml`; status lines go to standard error, like cargo's own.

mod bench;
mod browser;
mod garage;
mod http;
mod maildev;
mod nginx;
mod postgres;
mod process;
mod run;
mod schemathesis;
mod test;
mod ui;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use bench::Bench;
use run::Run;
use schemathesis::Schemathesis;
use test::Test;

/// The text printed for `cargo xtask help` and for anything the task runner does not understand.
const USAGE: &str = "\
Usage: cargo xtask <COMMAND> [ARGS]

Commands:
  run           Ensure Postgres and the `user_management` database, then run the server
                (`cargo run --release -p users-api -- serve`) and print the docs URL
  test [ARGS]   Start Postgres, Garage (S3), MailDev (SMTP) and ChromeDriver on free ports
                (installing Chromium and axe-core for the page tests, and nginx for the tests
                that start their own, when missing) and run
                `cargo test --workspace --all-targets [ARGS]` against them; without ARGS, then
                fuzz the debug server from its OpenAPI document with schemathesis
  schemathesis [--max-examples N] [--server-bin PATH]
                Only the schemathesis step: build the debug server (or take PATH), start it on
                a fresh database and run `schemathesis run --checks all` against it (default
                40 examples per operation and phase)
  bench [SCENARIO...] [--users N] [--duration S] [--warmup S] [--fresh] [--server-bin PATH]
        [--baseline-bin PATH] [--soak-minutes M]
                Build the release server, seed `um_bench_<N>` (default 1000 users), start the
                server and load it; scenarios: idle me baseline user-by-id search login
                login-mfa register argon2 refresh storm proxy upload (default: all of these) and
                soak (only when named: GET /me for M minutes, default 10, with the server's
                memory sampled); baseline is GET /me on bench-baseline, the same session read
                with nothing around it, the ceiling of me; register signs up a new address per
                request; login-mfa is POST /login then POST /login/mfa with a TOTP code, as
                seeded users from user101 on whose TOTP it turns on for the run; proxy is me and
                login through nginx in front of two instances; defaults 3 s warm-up + 10 s
                measured; prints a table and writes it as JSON to
                target/bench/<timestamp>.json. `--fresh` reseeds the database; `--server-bin`
                and `--baseline-bin` measure binaries built elsewhere
  help          Print this message";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next();
    let rest: Vec<String> = args.collect();

    let outcome = match command.as_deref() {
        Some("run") if rest.is_empty() => Run::new().execute(),
        Some("test") => Test::new(rest).execute(),
        Some("bench") => Bench::new(rest).execute(),
        Some("schemathesis") => Schemathesis::new(rest).execute(),
        Some("help" | "-h" | "--help") => {
            eprintln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("run") => {
            eprintln!(
                "error: `cargo xtask run` takes no arguments (configure the server with environment variables)\n"
            );
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        Some(other) => {
            eprintln!("error: unknown command `{other}`\n");
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        None => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };

    match outcome {
        Ok(code) => code,
        Err(error) => {
            ui::error(&format!("{error:#}"));
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this package's directory, wherever `cargo xtask` was started from.
fn project_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else `target/` in the workspace root.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => project_root().join(dir),
        None => project_root().join("target"),
    }
}

/// The cargo executable that started us (cargo sets `CARGO` for the programs it runs), so nested builds use the
/// same toolchain.
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Builds the server with `cargo build -p users-api --bin user-management` (with `--release` when `release`) and
/// returns where cargo put the binary.
fn build_server(release: bool) -> anyhow::Result<PathBuf> {
    let (what, profile) = if release { ("the release server", "release") } else { ("the server binary", "debug") };
    let release_flag = if release { " --release" } else { "" };
    ui::step(&format!("Building {what} (cargo build{release_flag} -p users-api --bin user-management)"));
    let mut build = std::process::Command::new(cargo());
    build.current_dir(project_root()).arg("build");
    if release {
        build.arg("--release");
    }
    build.args(["-p", "users-api", "--bin", "user-management"]);
    process::run(&mut build).with_context(|| format!("could not build {what}"))?;
    Ok(target_dir().join(profile).join("user-management"))
}
