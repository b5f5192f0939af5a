//! MailDev 2.2.1, the SMTP catcher the tests read mail back from: installed with npm into a cache directory that
//! survives clean clones, started per test run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::http::{is_ok, wait_until};
use crate::process::{self, Service};
use crate::ui;

/// The MailDev release the project is tested against (3.x wants Node 22; the machines have Node 20).
const VERSION: &str = "2.2.1";

/// `$XDG_CACHE_HOME/user-management/maildev`, or `~/.cache/user-management/maildev`.
fn install_dir() -> Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set; cannot choose where to install MailDev")?;
    Ok(cache.join("user-management").join("maildev"))
}

/// Whether `dir` holds MailDev [`VERSION`].
fn is_installed(dir: &Path) -> bool {
    let manifest = dir.join("node_modules").join("maildev").join("package.json");
    std::fs::read_to_string(manifest).is_ok_and(|json| json.contains(&format!("\"version\": \"{VERSION}\"")))
        && executable(dir).is_file()
}

/// The `maildev` executable inside an installation directory.
fn executable(dir: &Path) -> PathBuf {
    dir.join("node_modules").join(".bin").join("maildev")
}

/// Returns the path of the `maildev` executable, installing MailDev with npm first when it is not in the cache.
pub fn ensure_installed() -> Result<PathBuf> {
    ui::step(&format!("MailDev {VERSION}: checking the installation"));
    let dir = install_dir()?;
    if !is_installed(&dir) {
        ui::info(&format!("installing it with npm into {}", dir.display()));
        std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        let mut install = Command::new("npm");
        install.arg("install").arg("--prefix").arg(&dir).arg(format!("maildev@{VERSION}")).args([
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ]);
        process::run(&mut install).context("could not install MailDev (it needs Node.js 20 and npm)")?;
    }
    let binary = executable(&dir);
    ui::info(&format!("found {}", binary.display()));
    Ok(binary)
}

/// What the tests need to know about a running MailDev.
pub struct MailDev {
    /// The running catcher.
    pub service: Service,
    /// Its SMTP port on 127.0.0.1.
    pub smtp_port: u16,
    /// `http://127.0.0.1:PORT` of its web UI and REST API.
    pub web_url: String,
}

/// Starts MailDev on 127.0.0.1 with the given ports, keeping its mail under `mail_dir` and logging to `log`; ready
/// when `/healthz` answers 200.
pub fn start(binary: &Path, smtp_port: u16, web_port: u16, mail_dir: &Path, log: &Path) -> Result<MailDev> {
    ui::step(&format!("MailDev: starting (SMTP on 127.0.0.1:{smtp_port}, web on :{web_port})"));
    let mut command = Command::new(binary);
    command
        .args(["--ip", "127.0.0.1", "--web-ip", "127.0.0.1"])
        .args(["--smtp", &smtp_port.to_string(), "--web", &web_port.to_string()])
        .arg("--mail-directory")
        .arg(mail_dir);
    let mut service = Service::start("maildev", command, log)?;
    let web = format!("127.0.0.1:{web_port}");
    wait_until("MailDev's /healthz", Duration::from_secs(30), || {
        service.ensure_running()?;
        Ok(is_ok(&web, "/healthz"))
    })?;
    let web_url = format!("http://{web}");
    ui::info(&format!("ready: SMTP 127.0.0.1:{smtp_port}, web {web_url}"));
    Ok(MailDev { service, smtp_port, web_url })
}
