//! The scenarios that repeat one request with `oha`: `me`, `user-by-id`, `search`, `login`, and `storm`, which
//! measures `GET /me` while a second `oha` floods `POST /login` with wrong passwords.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::load::{get, oha_command, parse_oha, post_json, probe, run_oha};
use super::options::{Options, Scenario};
use super::report::{Row, error_note};
use super::seed::{ADMIN_EMAIL, PASSWORD, SEED_DOMAIN};
use super::server::{Server, login, user_id};
use super::system::Oha;
use crate::process;

/// Connections of the read scenarios (`me`, `user-by-id`, `search`, and the measured half of `storm`).
pub(super) const READ_CONNECTIONS: u32 = 64;

/// Connections of `login`: the server hashes on one slot per core and queues the rest for at most 5 s, so a deeper
/// queue would only add latency (and eventually 503s) without adding throughput. `login-mfa` uses as many.
pub(super) const LOGIN_CONNECTIONS: u32 = 16;

/// Connections of the wrong-password flood in `storm`.
const STORM_FLOOD_CONNECTIONS: u32 = 200;

/// The password the `storm` scenario's flood sends: wrong for every account.
const WRONG_PASSWORD: &str = "not-the-password-at-all-42";

/// The scenarios `oha` drives.
pub(super) fn oha_scenario(scenario: Scenario, server: &Server, oha: &Oha, options: &Options) -> Result<Vec<Row>> {
    let seeded_email = |n: u64| format!("user{n}@{SEED_DOMAIN}");
    let (load, note) = match scenario {
        Scenario::Me | Scenario::Storm => {
            let token = login(server.addr, &seeded_email(1))?.access_token;
            (get(server.url("/me"), Some(token), READ_CONNECTIONS), String::new())
        }
        Scenario::UserById => {
            let admin = login(server.addr, ADMIN_EMAIL)?.access_token;
            let middle = options.users.div_ceil(2);
            let id = user_id(server, &seeded_email(middle))?;
            (get(server.url(&format!("/users/{id}")), Some(admin), READ_CONNECTIONS), format!("target: user{middle}"))
        }
        Scenario::Search => {
            let admin = login(server.addr, ADMIN_EMAIL)?.access_token;
            (get(server.url("/users?q=user12&limit=20"), Some(admin), READ_CONNECTIONS), String::new())
        }
        Scenario::Login => {
            let body = json!({"email": seeded_email(1), "password": PASSWORD}).to_string();
            (post_json(server.url("/login"), body, LOGIN_CONNECTIONS, 200), String::new())
        }
        Scenario::Idle
        | Scenario::Baseline
        | Scenario::Register
        | Scenario::LoginMfa
        | Scenario::Argon2
        | Scenario::Refresh
        | Scenario::Upload
        | Scenario::Proxy
        | Scenario::Soak => {
            bail!("`{}` is not an oha scenario", scenario.name())
        }
    };
    // One request first: a route that is missing or refuses the caller fails the scenario with its answer, rather
    // than producing a table line of fast errors.
    let status = probe(server.addr, &load)?;
    if status != load.expected_status {
        bail!("{} {} answered {status}", load.method, load.url.trim_start_matches(&server.url("")));
    }

    let mut rows = Vec::new();
    if scenario == Scenario::Storm {
        let body = json!({"email": seeded_email(2), "password": WRONG_PASSWORD}).to_string();
        let flood = post_json(server.url("/login"), body, STORM_FLOOD_CONNECTIONS, 401);
        // The flood runs through the warm-up and the measured run, and a second beyond.
        let flood_duration = options.warmup + options.duration + Duration::from_secs(1);
        let mut flood_command = oha_command(oha, &flood, flood_duration);
        flood_command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let flood_child = flood_command
            .spawn()
            .with_context(|| format!("could not start `{}`", process::describe(&flood_command)))?;
        let measured = run_oha(oha, &load, options, server);
        let flood_output = flood_child.wait_with_output().context("could not wait for the flood's oha")?;
        let measured = measured?;
        let mut row = Row::new("storm");
        row.connections = Some(u64::from(load.connections));
        row.note = format!("GET /me during the flood below{}", error_note(&measured));
        row.measurement = Some(measured);
        row.rss_kib = server.rss_kib().ok();
        rows.push(row);

        let mut flood_row = Row::new("storm: login flood");
        flood_row.connections = Some(u64::from(flood.connections));
        if flood_output.status.success() {
            let flood_measured = parse_oha(&String::from_utf8_lossy(&flood_output.stdout), 401)?;
            flood_row.note = format!("wrong passwords, 401 expected{}", error_note(&flood_measured));
            flood_row.measurement = Some(flood_measured);
        } else {
            flood_row.failure = Some(format!(
                "oha failed with {}: {}",
                process::describe_status(flood_output.status),
                String::from_utf8_lossy(&flood_output.stderr).trim()
            ));
        }
        rows.push(flood_row);
    } else {
        let measured = run_oha(oha, &load, options, server)?;
        let mut row = Row::new(scenario.name());
        row.connections = Some(u64::from(load.connections));
        row.note = format!("{note}{}", error_note(&measured));
        row.measurement = Some(measured);
        row.rss_kib = server.rss_kib().ok();
        rows.push(row);
    }
    Ok(rows)
}
