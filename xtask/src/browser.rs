//! The real browser of the page tests: Debian's Chromium driven through Debian's ChromeDriver (both installed with
//! apt when missing; no browser is ever downloaded), and axe-core, the accessibility checker the tests run inside
//! each page, installed with npm into a cache directory that survives clean clones.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::http::{is_ok, wait_until};
use crate::process::{self, Service};
use crate::ui;

/// Where Debian's packages put the two executables.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The axe-core major version the tests are written against.
const AXE_VERSION: &str = "4";

/// What the page tests need.
pub struct Browser {
    /// The Chromium executable.
    pub chromium: PathBuf,
    /// The ChromeDriver executable.
    pub chromedriver: PathBuf,
    /// `axe.min.js`, to inject into pages.
    pub axe_script: PathBuf,
}

/// Finds Chromium, ChromeDriver and axe-core, installing what is missing.
pub fn ensure_installed() -> Result<Browser> {
    ui::step("Chromium and ChromeDriver: checking the installation");
    let find = || {
        let chromium = process::executables_named("chromium")
            .next()
            .or_else(|| Some(PathBuf::from(CHROMIUM)).filter(|path| path.is_file()));
        let chromedriver = process::executables_named("chromedriver")
            .next()
            .or_else(|| Some(PathBuf::from(CHROMEDRIVER)).filter(|path| path.is_file()));
        chromium.zip(chromedriver)
    };
    let (chromium, chromedriver) = match find() {
        Some(found) => found,
        None => {
            ui::info("not installed; installing Debian's chromium and chromium-driver with apt-get (needs root)");
            process::run(Command::new("apt-get").arg("update")).context("could not install Chromium")?;
            process::run(
                Command::new("apt-get")
                    .args(["install", "-y", "chromium", "chromium-driver"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
            .context("could not install Chromium")?;
            find().context("`apt-get install -y chromium chromium-driver` finished but the executables are missing")?
        }
    };
    ui::info(&format!("found {} and {}", chromium.display(), chromedriver.display()));
    let axe_script = ensure_axe()?;
    Ok(Browser { chromium, chromedriver, axe_script })
}

/// `$XDG_CACHE_HOME/user-management/axe`, or `~/.cache/user-management/axe`.
fn axe_dir() -> Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set; cannot choose where to install axe-core")?;
    Ok(cache.join("user-management").join("axe"))
}

/// The path of `axe.min.js`, installing axe-core with npm first when it is not in the cache.
fn ensure_axe() -> Result<PathBuf> {
    ui::step(&format!("axe-core {AXE_VERSION}: checking the installation"));
    let dir = axe_dir()?;
    let script = dir.join("node_modules").join("axe-core").join("axe.min.js");
    if !script.is_file() {
        ui::info(&format!("installing it with npm into {}", dir.display()));
        std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        let mut install = Command::new("npm");
        install.arg("install").arg("--prefix").arg(&dir).arg(format!("axe-core@{AXE_VERSION}")).args([
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ]);
        process::run(&mut install).context("could not install axe-core (it needs npm)")?;
    }
    ui::info(&format!("found {}", script.display()));
    Ok(script)
}

/// Starts ChromeDriver on `port`, ready when its `/status` answers.
pub fn start_chromedriver(binary: &Path, port: u16, log: &Path) -> Result<Service> {
    ui::step(&format!("ChromeDriver: starting on 127.0.0.1:{port}"));
    let mut command = Command::new(binary);
    command.arg(format!("--port={port}")).arg("--allowed-ips=127.0.0.1");
    let mut service = Service::start("chromedriver", command, log)?;
    let authority = format!("127.0.0.1:{port}");
    wait_until("ChromeDriver to answer /status", Duration::from_secs(20), || {
        service.ensure_running()?;
        Ok(is_ok(&authority, "/status"))
    })?;
    Ok(service)
}
