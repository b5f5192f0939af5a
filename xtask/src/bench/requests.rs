//! The scenarios that repeat one request with `oha`: `me`, `user-by-id`, `search`, `login`, and `storm`, which
//! measures `GET /me` while a second `oha` floods `POST /login` with wrong passwords.

use anyhow::{Result, bail};
use serde_json::json;

use super::load::{get, post_json, probe, run_oha, start_background};
use super::options::{Options, Scenario};
use super::report::{Row, error_note};
use super::seed::{ADMIN_EMAIL, PASSWORD, SEED_DOMAIN};
use super::server::{Server, login, user_id};
use super::system::Oha;

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
        | Scenario::Pictures
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
        let flood_run = start_background(oha, &flood, options)?;
        let measured = run_oha(oha, &load, options, server);
        let flood_measured = flood_run.finish();
        let measured = measured?;
        let mut row = Row::new("storm");
        row.connections = Some(u64::from(load.connections));
        row.note = format!("GET /me during the flood below{}", error_note(&measured));
        row.measurement = Some(measured);
        row.rss_kib = server.rss_kib().ok();
        rows.push(row);

        let mut flood_row = Row::new("storm: login flood");
        flood_row.connections = Some(u64::from(flood.connections));
        match flood_measured {
            Ok(flood_measured) => {
                flood_row.note = format!("wrong passwords, 401 expected{}", error_note(&flood_measured));
                flood_row.measurement = Some(flood_measured);
            }
            Err(error) => flood_row.failure = Some(format!("{error:#}")),
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
