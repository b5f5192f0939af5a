//! The `register` scenario: `POST /register` with an address never used before on every request (argon2 hash,
//! the user's insert and its verification mail's outbox row), in a built-in loop since `oha` repeats one fixed
//! body, and a repeated address takes the cheaper "already registered" path.
//!
//! The server runs with `MAIL_BACKEND=file`, so the outbox delivers to `.eml` files and no SMTP server is
//! measured. The addresses share [`REGISTER_DOMAIN`]; the accounts and their mails are deleted after the run (and
//! before the next, should a run have been cut short), so the seeded database stays as it was.

use std::net::SocketAddr;
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use serde_json::json;

use super::options::Options;
use super::report::{Row, error_note, measure_latencies};
use super::requests::LOGIN_CONNECTIONS;
use super::seed::PASSWORD;
use super::server::Server;
use super::system::CpuMeter;
use crate::http::HttpConn;
use crate::postgres::{literal, psql};
use crate::{process, ui};

/// The domain of every address `register` signs up: `r<run>-<connection>-<n>@register.bench.example.com`.
pub(super) const REGISTER_DOMAIN: &str = "register.bench.example.com";

/// The status `POST /register` answers a new address with.
const ACCEPTED: u16 = 202;

/// `register`: [`LOGIN_CONNECTIONS`] connections (registering hashes a password, as a login does) each sign up
/// fresh addresses as fast as the server answers.
pub(super) fn register(server: &Server, options: &Options) -> Result<Row> {
    let connections = LOGIN_CONNECTIONS;
    // Unique to this run: with the connection and a counter, no address repeats, in this run or another.
    let run = run_tag();
    let barrier = Barrier::new(usize::try_from(connections).unwrap_or(1) + 1);
    let addr = server.addr;
    let (results, server_cpu_percent) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|index| {
                let (barrier, run) = (&barrier, run.as_str());
                scope.spawn(move || sign_up_loop(addr, run, index, barrier, options))
            })
            .collect();
        barrier.wait();
        std::thread::sleep(options.warmup);
        let meter = CpuMeter::start(server.pid).ok();
        std::thread::sleep(options.duration);
        let cpu = meter.and_then(|meter| meter.percent().ok());
        let results: Vec<Result<LoopResult>> = handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a register thread panicked"))))
            .collect();
        (results, cpu)
    });
    let cleaned = delete_registered(&server.database_url);
    let mut latencies = Vec::new();
    let mut errors: Vec<(String, u64)> = Vec::new();
    let mut elapsed = Duration::ZERO;
    for result in results {
        let done = result?;
        latencies.extend(done.latencies);
        elapsed = elapsed.max(done.measured_for);
        for kind in done.errors {
            match errors.iter_mut().find(|(known, _)| *known == kind) {
                Some((_, count)) => *count += 1,
                None => errors.push((kind, 1)),
            }
        }
    }
    cleaned?;
    let mut measurement = measure_latencies(latencies, elapsed);
    measurement.server_cpu_percent = server_cpu_percent;
    measurement.errors = errors.iter().map(|(_, count)| count).sum();
    measurement.total += measurement.errors;
    measurement.error_kinds = errors;
    let mut row = Row::new("register");
    row.connections = Some(u64::from(connections));
    row.note = format!("built-in loop, a new address per request, file mailer{}", error_note(&measurement));
    row.measurement = Some(measurement);
    row.rss_kib = server.rss_kib().ok();
    Ok(row)
}

/// Deletes the accounts `register` created and their queued mails.
pub(super) fn delete_registered(database_url: &str) -> Result<()> {
    let pattern = literal(&format!("%@{REGISTER_DOMAIN}"));
    psql(database_url, &format!("DELETE FROM mail_outbox WHERE to_address LIKE {pattern}"))?;
    psql(database_url, &format!("DELETE FROM users WHERE email LIKE {pattern}"))?;
    ui::info(&format!("deleted the accounts registered at {REGISTER_DOMAIN}"));
    Ok(())
}

/// A tag no other run shares: the start time in milliseconds and the process id, in base 36 to keep the
/// nicknames within their 32 characters.
fn run_tag() -> String {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis());
    format!("{}{}", base36(millis), base36(u128::from(std::process::id())))
}

/// `value` in lower-case base 36.
fn base36(mut value: u128) -> String {
    let mut digits = Vec::new();
    loop {
        let digit = u32::try_from(value % 36).unwrap_or(0);
        digits.push(char::from_digit(digit, 36).unwrap_or('0'));
        value /= 36;
        if value == 0 {
            break;
        }
    }
    digits.iter().rev().collect()
}

/// The body of the `n`th sign-up of connection `connection` in run `run`: a new address and nickname.
fn sign_up_body(run: &str, connection: u32, n: u64) -> String {
    json!({
        "email": format!("r{run}-{connection}-{n}@{REGISTER_DOMAIN}"),
        "password": PASSWORD,
        "nickname": format!("r{run}_{connection}_{n}"),
    })
    .to_string()
}

/// What one register connection measured.
struct LoopResult {
    /// The latency of every accepted sign-up in the measured window.
    latencies: Vec<Duration>,
    /// What went wrong, one entry per failed request in the measured window.
    errors: Vec<String>,
    /// From the start of the measured window to the end of this connection's last request.
    measured_for: Duration,
}

/// One connection of the `register` scenario.
fn sign_up_loop(
    addr: SocketAddr,
    run: &str,
    connection: u32,
    barrier: &Barrier,
    options: &Options,
) -> Result<LoopResult> {
    let conn = HttpConn::connect(addr);
    // Every connection reaches the barrier, connected or not, so that none waits there forever.
    barrier.wait();
    let mut conn = conn?;
    let start = Instant::now();
    let measure_from = start + options.warmup;
    let end = measure_from + options.duration;
    let mut result = LoopResult { latencies: Vec::new(), errors: Vec::new(), measured_for: Duration::ZERO };
    for n in 0.. {
        let sent = Instant::now();
        if sent >= end || process::interrupted() {
            break;
        }
        let body = sign_up_body(run, connection, n);
        let outcome = conn
            .send("POST", "/register", &[], Some(&body))
            .and_then(|response| if response.status == ACCEPTED { Ok(()) } else { bail!("HTTP {}", response.status) });
        let took = sent.elapsed();
        let measured = sent >= measure_from;
        match outcome {
            Ok(()) if measured => result.latencies.push(took),
            Ok(()) => {}
            Err(error) => {
                if measured {
                    result.errors.push(format!("{error:#}"));
                }
                if !conn.is_open() {
                    conn = HttpConn::connect(addr)?;
                }
            }
        }
    }
    result.measured_for = measure_from.elapsed();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_ups_never_repeat_an_address_or_a_nickname_and_fit_the_nickname_rules() -> Result<()> {
        let run = run_tag();
        let mut seen = std::collections::HashSet::new();
        for connection in [0, 1, 15] {
            for n in [0, 1, 10, 999_999] {
                let body: serde_json::Value = serde_json::from_str(&sign_up_body(&run, connection, n))?;
                let email = body["email"].as_str().unwrap_or_default().to_owned();
                let nickname = body["nickname"].as_str().unwrap_or_default().to_owned();
                assert!(email.ends_with(&format!("@{REGISTER_DOMAIN}")), "{email}");
                assert!((3..=32).contains(&nickname.len()), "{nickname}");
                assert!(nickname.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'), "{nickname}");
                assert!(seen.insert(email), "a repeated address");
                assert!(seen.insert(nickname), "a repeated nickname");
            }
        }
        assert_eq!(base36(0), "0");
        assert_eq!(base36(36 * 36 + 35), "10z");
        Ok(())
    }
}
