//! The `proxy` scenario: the service as it is deployed, several instances behind a reverse proxy. A second instance
//! starts on the same database and data directory as the server under test (so it signs with the same generated
//! key) and with its `PUBLIC_BASE_URL` (the tokens' issuer), so either accepts the other's tokens; nginx balances
//! round-robin over the two, and `oha` sends `GET /me` and `POST /login` through it. Each instance's CPU is
//! measured; the row's CPU column is the two together.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::load::{Load, get, oha_command, parse_oha, post_json, probe};
use super::options::Options;
use super::report::{Row, error_note};
use super::requests::{LOGIN_CONNECTIONS, READ_CONNECTIONS};
use super::seed::{PASSWORD, SEED_DOMAIN};
use super::server::{Server, login, start_server};
use super::system::{CpuMeter, Oha};
use crate::{nginx, process, ui};

/// `proxy`: starts the second instance and nginx, measures `me` and `login` through nginx, and stops both again.
pub(super) fn proxy(server: &Server, oha: &Oha, options: &Options) -> Result<Vec<Row>> {
    let nginx_bin = nginx::ensure_installed()?;
    let proxy_dir = crate::target_dir().join("bench").join("proxy");
    // One issuer for both, as behind a real proxy: an instance refuses tokens whose `iss` is not its own
    // PUBLIC_BASE_URL, so the second takes the first's.
    let issuer = [("PUBLIC_BASE_URL", server.url(""))];
    let mut second = start_server(&server.binary, &server.data_dir, &server.database_url, &proxy_dir, &issuer)?;
    let outcome =
        nginx::start(&nginx_bin, &proxy_dir.join("nginx"), &[server.addr, second.addr], &proxy_dir.join("nginx.log"))
            .and_then(|mut proxy| {
                let rows = measure(proxy.addr, [server, &second], oha, options);
                ui::step("Stopping nginx");
                if let Err(error) = proxy.service.stop() {
                    ui::warn(&format!("{error:#}"));
                }
                rows
            });
    ui::step("Stopping the second instance of `proxy`");
    if let Err(error) = second.service.stop() {
        ui::warn(&format!("{error:#}"));
    }
    outcome
}

/// The two measured loads, through nginx at `proxy`.
fn measure(proxy: SocketAddr, instances: [&Server; 2], oha: &Oha, options: &Options) -> Result<Vec<Row>> {
    let email = format!("user1@{SEED_DOMAIN}");
    let token = login(proxy, &email)?.access_token;
    let url = |path: &str| format!("http://{proxy}{path}");
    let body = json!({"email": email, "password": PASSWORD}).to_string();
    let loads = [
        ("proxy: me", get(url("/me"), Some(token), READ_CONNECTIONS)),
        ("proxy: login", post_json(url("/login"), body, LOGIN_CONNECTIONS, 200)),
    ];
    let mut rows = Vec::new();
    for (name, load) in loads {
        // Twice, so that both instances answer once before the load: a route one of them refuses fails here.
        for _ in 0..2 {
            let status = probe(proxy, &load)?;
            if status != load.expected_status {
                bail!("{} {} through nginx answered {status}", load.method, load.url.trim_start_matches(&url("")));
            }
        }
        rows.push(measure_one(name, &load, instances, oha, options)?);
    }
    Ok(rows)
}

/// Runs `oha` with `load` for the warm-up and then for the measured duration, metering both instances' CPU over the
/// measured part.
fn measure_one(name: &str, load: &Load, instances: [&Server; 2], oha: &Oha, options: &Options) -> Result<Row> {
    if !options.warmup.is_zero() {
        process::output(&mut oha_command(oha, load, options.warmup)).context("the warm-up run of oha failed")?;
    }
    let meters = [CpuMeter::start(instances[0].pid)?, CpuMeter::start(instances[1].pid)?];
    let output = process::output(&mut oha_command(oha, load, options.duration))?;
    process::check_interrupted()?;
    let [first, second] = meters.map(|meter| meter.percent().ok());
    let mut measured = parse_oha(&output, load.expected_status)?;
    measured.server_cpu_percent = first.zip(second).map(|(a, b)| a + b);
    let mut row = Row::new(name);
    row.connections = Some(u64::from(load.connections));
    let cpu = |percent: Option<f64>| percent.map_or_else(|| "?".to_owned(), |percent| format!("{percent:.0}%"));
    row.note = format!(
        "2 instances behind nginx, CPU {} + {}; memory: the first's{}",
        cpu(first),
        cpu(second),
        error_note(&measured)
    );
    row.measurement = Some(measured);
    row.rss_kib = instances[0].rss_kib().ok();
    Ok(row)
}
