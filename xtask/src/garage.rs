//! Garage 2.5.0, the S3 server the tests store pictures in: install it once per machine, start it per test run.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::http::{is_ok, wait_until};
use crate::process::{self, Service};
use crate::ui;

/// The Garage release the project is tested against.
const VERSION: &str = "2.5.0";

/// The S3 region the test server answers to; clients must sign for exactly this region.
pub const REGION: &str = "garage";

/// The bucket created at start-up for the tests.
pub const BUCKET: &str = "um-test";

/// Finds `garage` 2.5.0 on `PATH` or in cargo's `bin` directory, installing it with `cargo install` when missing.
pub fn ensure_installed() -> Result<PathBuf> {
    ui::step(&format!("Garage {VERSION}: checking the installation"));
    if let Some(binary) = find_installed() {
        ui::info(&format!("found {}", binary.display()));
        return Ok(binary);
    }
    ui::info("not found; installing it with cargo install (about 7 minutes, once per machine)");
    let mut install = Command::new(crate::cargo());
    install.args(["install", "--locked", &format!("garage@{VERSION}")]);
    install.args(["--no-default-features", "--features", "bundled-libs,sqlite"]);
    process::run(&mut install).context("could not install Garage")?;
    find_installed().with_context(|| format!("`cargo install` finished but no garage {VERSION} was found"))
}

/// The first `garage` on `PATH`, or in cargo's `bin` directory, that reports version 2.5.0.
fn find_installed() -> Option<PathBuf> {
    process::executables_named("garage")
        .find(|candidate| reports_version(candidate))
        .map(|binary| std::path::absolute(&binary).unwrap_or(binary))
}

/// Whether `binary --version` names [`VERSION`] (a `cargo install` build prints
/// `garage cargo:2.5.0 [features: ...]`, a release build `garage v2.5.0 [...]`).
fn reports_version(binary: &Path) -> bool {
    process::output(Command::new(binary).arg("--version")).is_ok_and(|output| mentions_version(&output))
}

/// Whether a `garage --version` line names [`VERSION`].
fn mentions_version(output: &str) -> bool {
    output.split(|c: char| c.is_whitespace() || c == ':').any(|word| word.strip_prefix('v').unwrap_or(word) == VERSION)
}

/// What the tests need to know about a running Garage.
pub struct Garage {
    /// The running server.
    pub service: Service,
    /// The generated configuration file.
    pub config: PathBuf,
    /// `http://127.0.0.1:PORT` of the S3 API.
    pub endpoint: String,
    /// The access key id with read and write access to [`BUCKET`].
    pub access_key: String,
    /// Its secret.
    pub secret_key: String,
}

/// The ports one Garage instance listens on.
pub struct Ports {
    /// S3 API.
    pub s3: u16,
    /// Internal RPC between nodes.
    pub rpc: u16,
    /// Admin API, which serves `/health`.
    pub admin: u16,
}

/// Writes a single-node configuration into `dir` and starts Garage with a default key and bucket, logging to `log`.
///
/// Ready when the admin API's `/health` answers 200; by then the key and the bucket exist, since Garage creates them
/// before it opens its API ports.
pub fn start(binary: &Path, dir: &Path, ports: &Ports, log: &Path) -> Result<Garage> {
    ui::step(&format!(
        "Garage: starting (S3 on 127.0.0.1:{}, RPC on :{}, admin on :{})",
        ports.s3, ports.rpc, ports.admin
    ));
    let config = dir.join("garage.toml");
    let toml = format!(
        r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{token}"
"#,
        meta = dir.join("meta").display(),
        data = dir.join("data").display(),
        rpc = ports.rpc,
        s3 = ports.s3,
        admin = ports.admin,
        secret = random_hex(32)?,
        token = random_hex(16)?,
    );
    std::fs::write(&config, toml).with_context(|| format!("could not write {}", config.display()))?;
    ui::info(&format!("config: {}", config.display()));

    // Garage accepts key ids of 8+ characters; the `GK` prefix and 24 hex digits mimic the ones it generates.
    let access_key = format!("GK{}", random_hex(12)?);
    let secret_key = random_hex(32)?;
    let mut command = Command::new(binary);
    command
        .arg("-c")
        .arg(&config)
        .args(["server", "--single-node", "--default-bucket"])
        .env("GARAGE_DEFAULT_ACCESS_KEY", &access_key)
        .env("GARAGE_DEFAULT_SECRET_KEY", &secret_key)
        .env("GARAGE_DEFAULT_BUCKET", BUCKET)
        // Plain text in the log file, without terminal colour codes.
        .env("NO_COLOR", "1")
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "garage=info".to_owned()));
    let mut service = Service::start("garage", command, log)?;

    let admin = format!("127.0.0.1:{}", ports.admin);
    wait_until("Garage's admin /health", Duration::from_secs(30), || {
        service.ensure_running()?;
        Ok(is_ok(&admin, "/health"))
    })?;
    let endpoint = format!("http://127.0.0.1:{}", ports.s3);
    ui::info(&format!("ready: S3 endpoint {endpoint}, region {REGION}, bucket {BUCKET}"));
    Ok(Garage { service, config, endpoint, access_key, secret_key })
}

/// `bytes` random bytes from the kernel, as lowercase hex.
pub fn random_hex(bytes: usize) -> Result<String> {
    let mut buffer = vec![0_u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut buffer))
        .context("could not read /dev/urandom")?;
    let mut hex = String::with_capacity(bytes * 2);
    for byte in buffer {
        write!(hex, "{byte:02x}").context("could not format random bytes")?;
    }
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_lines_of_cargo_and_release_builds_are_recognised() {
        assert!(mentions_version("garage cargo:2.5.0 [features: bundled-libs, sqlite]"));
        assert!(mentions_version("garage v2.5.0 [features: k2v, lmdb]"));
        assert!(!mentions_version("garage cargo:2.5.01 [features: sqlite]"));
        assert!(!mentions_version("garage v1.0.1"));
    }
}
