//! The load generator: finding or installing `oha`, the one request a scenario has it repeat, running it (a warm-up,
//! then the measured run, with the server's CPU measured over the latter) and reading its JSON report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use super::options::Options;
use super::report::Measurement;
use super::server::Server;
use super::system::{CpuMeter, Oha};
use crate::http::HttpConn;
use crate::{process, ui};

/// Finds `oha` on `PATH` or in cargo's `bin` directory, installing it with `cargo install --locked oha` if missing.
pub(super) fn ensure_oha() -> Result<Oha> {
    ui::step("Load generator: checking for oha");
    if let Some(oha) = find_oha() {
        ui::info(&format!("found {} ({})", oha.path.display(), oha.version));
        return Ok(oha);
    }
    ui::info("not found; installing it with `cargo install --locked oha` (about 6 minutes on 2 cores, once)");
    let mut install = Command::new(crate::cargo());
    install.args(["install", "--locked", "oha"]);
    process::run(&mut install).context("could not install oha")?;
    find_oha().context("`cargo install oha` finished but no working oha was found")
}

/// The first `oha` on `PATH` or in cargo's `bin` directory that answers `--version`.
fn find_oha() -> Option<Oha> {
    process::executables_named("oha").find_map(|path| {
        let version = process::output(Command::new(&path).arg("--version")).ok()?;
        Some(Oha { path, version: version.trim().to_owned() })
    })
}

/// One request, repeated by `oha` on `connections` connections.
pub(super) struct Load {
    /// The full URL.
    pub(super) url: String,
    /// `GET` or `POST`.
    pub(super) method: &'static str,
    /// The body, for `POST`.
    pub(super) body: Option<Body>,
    /// An access token for `Authorization: Bearer`.
    pub(super) bearer: Option<String>,
    /// Connections kept busy at once.
    pub(super) connections: u32,
    /// The status a correct answer has; any other counts as an error.
    pub(super) expected_status: u16,
    /// A fixed rate for all connections together, in requests per second, with `oha`'s correction for coordinated
    /// omission (a request that had to wait for its slot counts its wait); `None` sends as fast as answers come.
    pub(super) rate: Option<u32>,
}

/// A request body.
pub(super) enum Body {
    /// JSON text, sent as `application/json`.
    Json(String),
    /// The contents of a file, sent with this `Content-Type`.
    File {
        /// The `Content-Type` header's value.
        content_type: String,
        /// The file.
        path: PathBuf,
    },
}

/// A `GET` expecting 200.
pub(super) fn get(url: String, bearer: Option<String>, connections: u32) -> Load {
    Load { url, method: "GET", body: None, bearer, connections, expected_status: 200, rate: None }
}

/// A JSON `POST` without a token.
pub(super) fn post_json(url: String, body: String, connections: u32, expected_status: u16) -> Load {
    Load { url, method: "POST", body: Some(Body::Json(body)), bearer: None, connections, expected_status, rate: None }
}

/// The `oha` command that sends `load` for `duration` and prints its results as JSON.
pub(super) fn oha_command(oha: &Oha, load: &Load, duration: Duration) -> Command {
    let mut command = Command::new(&oha.path);
    command
        .args(["--no-tui", "--output-format", "json", "--wait-ongoing-requests-after-deadline"])
        .args(["-z", &format!("{}s", duration.as_secs().max(1))])
        .args(["-c", &load.connections.to_string()])
        .args(["-m", load.method]);
    match &load.body {
        Some(Body::Json(body)) => {
            command.args(["-T", "application/json", "-d", body]);
        }
        Some(Body::File { content_type, path }) => {
            command.args(["-T", content_type]).arg("-D").arg(path);
        }
        None => {}
    }
    if let Some(token) = &load.bearer {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    if let Some(rate) = load.rate {
        command.args(["-q", &rate.to_string(), "--latency-correction"]);
    }
    command.arg(&load.url);
    command
}

/// An `oha` running a load beside the measured one, through the warm-up and the measured run (and a second more),
/// whose figures are read when it ends.
pub(super) struct Background {
    child: Child,
    description: String,
    expected_status: u16,
}

/// Starts `load` in the background for the warm-up and the measured duration of `options`, and a second beyond, so
/// that it covers the whole measured run.
pub(super) fn start_background(oha: &Oha, load: &Load, options: &Options) -> Result<Background> {
    let mut command = oha_command(oha, load, options.warmup + options.duration + Duration::from_secs(1));
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let description = process::describe(&command);
    let child = command.spawn().with_context(|| format!("could not start `{description}`"))?;
    Ok(Background { child, description, expected_status: load.expected_status })
}

impl Background {
    /// Waits for the background `oha` to end and reads its report.
    pub(super) fn finish(self) -> Result<Measurement> {
        let output =
            self.child.wait_with_output().with_context(|| format!("could not wait for `{}`", self.description))?;
        if !output.status.success() {
            anyhow::bail!(
                "oha failed with {}: {}",
                process::describe_status(output.status),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        parse_oha(&String::from_utf8_lossy(&output.stdout), self.expected_status)
    }
}

/// Runs `oha` for the warm-up (results dropped), then for the measured duration.
pub(super) fn run_oha(oha: &Oha, load: &Load, options: &Options, server: &Server) -> Result<Measurement> {
    if !options.warmup.is_zero() {
        process::output(&mut oha_command(oha, load, options.warmup)).context("the warm-up run of oha failed")?;
    }
    let cpu = CpuMeter::start(server.pid)?;
    let output = process::output(&mut oha_command(oha, load, options.duration))?;
    // oha stops early on Ctrl-C and still reports; a cut-short run is not a measurement.
    process::check_interrupted()?;
    let server_cpu_percent = cpu.percent().ok();
    Ok(Measurement { server_cpu_percent, ..parse_oha(&output, load.expected_status)? })
}

/// Reads the figures out of `oha --output-format json`.
pub(super) fn parse_oha(output: &str, expected_status: u16) -> Result<Measurement> {
    let report: Value = serde_json::from_str(output).context("oha printed something that is not JSON")?;
    let summary = &report["summary"];
    let percentiles = &report["latencyPercentiles"];
    let seconds_to_ms = |value: &Value| value.as_f64().map_or(f64::NAN, |seconds| seconds * 1000.0);
    let mut error_kinds = Vec::new();
    let mut errors = 0;
    let mut total = 0;
    if let Some(statuses) = report["statusCodeDistribution"].as_object() {
        for (status, count) in statuses {
            let count = count.as_u64().unwrap_or(0);
            total += count;
            if status.parse::<u16>().ok() != Some(expected_status) {
                errors += count;
                error_kinds.push((format!("HTTP {status}"), count));
            }
        }
    }
    if let Some(failures) = report["errorDistribution"].as_object() {
        for (message, count) in failures {
            let count = count.as_u64().unwrap_or(0);
            total += count;
            errors += count;
            error_kinds.push((message.clone(), count));
        }
    }
    Ok(Measurement {
        requests_per_sec: summary["requestsPerSec"].as_f64().context("oha's JSON has no summary.requestsPerSec")?,
        p50_ms: seconds_to_ms(&percentiles["p50"]),
        p99_ms: seconds_to_ms(&percentiles["p99"]),
        p999_ms: seconds_to_ms(&percentiles["p99.9"]),
        errors,
        total,
        error_kinds,
        server_cpu_percent: None,
    })
}

/// Sends `load`'s request once with the built-in client and returns the status.
pub(super) fn probe(addr: SocketAddr, load: &Load) -> Result<u16> {
    let path = load.url.splitn(4, '/').nth(3).map_or_else(|| "/".to_owned(), |path| format!("/{path}"));
    let mut conn = HttpConn::connect(addr)?;
    let mut headers = Vec::new();
    let authorization = load.bearer.as_ref().map(|token| format!("Bearer {token}"));
    if let Some(value) = &authorization {
        headers.push(("Authorization", value.as_str()));
    }
    let response = match &load.body {
        None => conn.send(load.method, &path, &headers, None)?,
        Some(Body::Json(body)) => conn.send(load.method, &path, &headers, Some(body))?,
        Some(Body::File { content_type, path: file }) => {
            let bytes = std::fs::read(file).with_context(|| format!("could not read {}", file.display()))?;
            conn.send_bytes(load.method, &path, &headers, Some((content_type, &bytes)))?
        }
    };
    Ok(response.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oha_json_is_read_with_unexpected_statuses_as_errors() -> Result<()> {
        let output = r#"{
            "summary": {"successRate": 1.0, "requestsPerSec": 15000.5},
            "latencyPercentiles": {"p50": 0.002, "p99": 0.009, "p99.9": 0.015},
            "statusCodeDistribution": {"200": 1000, "503": 3},
            "errorDistribution": {"connection closed": 2}
        }"#;
        let measured = parse_oha(output, 200)?;
        assert!((measured.requests_per_sec - 15000.5).abs() < 1e-9);
        assert!((measured.p50_ms - 2.0).abs() < 1e-9);
        assert!((measured.p999_ms - 15.0).abs() < 1e-9);
        assert_eq!(measured.errors, 5);
        assert_eq!(measured.total, 1005);
        Ok(())
    }
}
