//! nginx, the reverse proxy the topology tests and the `proxy` bench scenario put in front of several instances:
//! found on the machine, or installed from Debian with apt. Each user starts nginx itself with a configuration of
//! its own (nothing here touches the system's `/etc/nginx` service).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{process, ui};

/// Where Debian puts the executable; `/usr/sbin` is not on every user's `PATH`.
const DEBIAN_PATH: &str = "/usr/sbin/nginx";

/// Returns the path of the `nginx` executable, installing Debian's package with apt first when there is none.
pub fn ensure_installed() -> Result<PathBuf> {
    ui::step("nginx: checking the installation");
    if let Some(binary) = find_installed() {
        ui::info(&format!("found {}", binary.display()));
        return Ok(binary);
    }
    install()?;
    find_installed().context("`apt-get install -y nginx` finished but no nginx executable was found")
}

/// `nginx` on `PATH`, or Debian's.
fn find_installed() -> Option<PathBuf> {
    process::executables_named("nginx")
        .next()
        .or_else(|| Some(PathBuf::from(DEBIAN_PATH)).filter(|path| Path::new(path).is_file()))
}

/// Installs Debian's nginx with apt. (Debian's `nginx-light` is only a transitional name for the same package.)
fn install() -> Result<()> {
    ui::info("nginx is not installed; installing it with apt-get (needs root)");
    process::run(Command::new("apt-get").arg("update")).context("could not install nginx")?;
    process::run(Command::new("apt-get").args(["install", "-y", "nginx"]).env("DEBIAN_FRONTEND", "noninteractive"))
        .context("could not install nginx")
}
