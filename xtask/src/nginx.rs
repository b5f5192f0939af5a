//! nginx, the reverse proxy the topology tests and the `proxy` bench scenario put in front of several instances:
//! found on the machine, or installed from Debian with apt, and started with a configuration of its own (nothing
//! here touches the system's `/etc/nginx` or its service). The tests write their own configuration; [`start`] is the
//! bench's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::{self, Service};
use crate::{http, ui};

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

/// A running nginx in front of some upstreams.
pub struct Proxy {
    /// The supervised process; stopped on drop.
    pub service: Service,
    /// `127.0.0.1:port`, where it listens.
    pub addr: SocketAddr,
}

/// Writes a configuration into `dir` and starts nginx on a free port in front of `upstreams`, round-robin, logging
/// to `log`; ready when it accepts connections.
///
/// The proxying is a production nginx's (the client's `Host`, `X-Forwarded-For` with the peer appended, kept-alive
/// connections to the upstreams, the next upstream tried when one refuses); the process is not: one process in the
/// foreground (`daemon off`, `master_process off`), so stopping the service stops all of it, with every file it
/// writes inside `dir`.
pub fn start(binary: &Path, dir: &Path, upstreams: &[SocketAddr], log: &Path) -> Result<Proxy> {
    let [port] = http::free_ports::<1>()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let config = dir.join("nginx.conf");
    std::fs::write(&config, config_text(dir, addr, upstreams))
        .with_context(|| format!("could not write {}", config.display()))?;
    ui::step(&format!("nginx: starting on {addr} in front of {} upstreams", upstreams.len()));
    let mut command = Command::new(binary);
    // `-e`: the log of errors met before the configuration is read, which would otherwise be /var/log/nginx's.
    command.arg("-c").arg(&config).arg("-e").arg(dir.join("error.log"));
    let mut service = Service::start("nginx", command, log)?;
    http::wait_until("nginx to accept connections", Duration::from_secs(10), || {
        service.ensure_running()?;
        Ok(http::accepts_connections(&addr.to_string()))
    })?;
    Ok(Proxy { service, addr })
}

/// The configuration [`start`] writes.
fn config_text(dir: &Path, addr: SocketAddr, upstreams: &[SocketAddr]) -> String {
    let dir = dir.display();
    let servers: String = upstreams.iter().map(|upstream| format!("        server {upstream};\n")).collect();
    format!(
        "daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 50m;
    upstream backends {{
{servers}        keepalive 64;
    }}
    server {{
        listen {addr};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_next_upstream error timeout;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_lists_every_upstream_and_keeps_its_files_in_its_directory() {
        let upstreams = [SocketAddr::from(([127, 0, 0, 1], 8001)), SocketAddr::from(([127, 0, 0, 1], 8002))];
        let text = config_text(Path::new("/tmp/x"), SocketAddr::from(([127, 0, 0, 1], 9000)), &upstreams);
        assert!(text.contains("server 127.0.0.1:8001;\n") && text.contains("server 127.0.0.1:8002;\n"));
        assert!(text.contains("listen 127.0.0.1:9000;"));
        assert!(text.contains("X-Forwarded-For $proxy_add_x_forwarded_for"));
        for line in text.lines().filter(|line| line.contains("_path ") || line.starts_with("pid ")) {
            assert!(line.contains(" /tmp/x/"), "{line}");
        }
    }
}
