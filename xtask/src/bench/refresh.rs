//! The `refresh` scenario: one rotating session per connection, each request presenting the refresh token the
//! previous answer returned, in a built-in loop since `oha` repeats one fixed request.

use std::net::SocketAddr;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;

use super::options::Options;
use super::report::{Row, error_note, measure_latencies};
use super::seed::SEED_DOMAIN;
use super::server::{Server, login_on, tokens};
use super::system::CpuMeter;
use crate::http::HttpConn;
use crate::process;

/// Connections of `refresh`: each holds one session whose token it rotates.
pub(super) const REFRESH_CONNECTIONS: u32 = 32;

/// `refresh`: every connection logs in once, then rotates its session's refresh token as fast as the server
/// answers, each request presenting the token the previous answer returned (a used token would revoke the session).
pub(super) fn refresh(server: &Server, options: &Options) -> Result<Row> {
    let connections = REFRESH_CONNECTIONS;
    // The connections and this thread, which measures the server's CPU over the measured window.
    let barrier = Barrier::new(usize::try_from(connections).unwrap_or(1) + 1);
    let addr = server.addr;
    let (results, server_cpu_percent) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|index| {
                let barrier = &barrier;
                scope.spawn(move || refresh_chain(addr, u64::from(index) + 1, barrier, options))
            })
            .collect();
        barrier.wait();
        std::thread::sleep(options.warmup);
        let meter = CpuMeter::start(server.pid).ok();
        std::thread::sleep(options.duration);
        let cpu = meter.and_then(|meter| meter.percent().ok());
        let results: Vec<Result<ChainResult>> = handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a refresh thread panicked"))))
            .collect();
        (results, cpu)
    });
    let mut latencies = Vec::new();
    let mut errors: Vec<(String, u64)> = Vec::new();
    let mut elapsed = Duration::ZERO;
    for result in results {
        let chain = result?;
        latencies.extend(chain.latencies);
        elapsed = elapsed.max(chain.measured_for);
        for kind in chain.errors {
            match errors.iter_mut().find(|(known, _)| *known == kind) {
                Some((_, count)) => *count += 1,
                None => errors.push((kind, 1)),
            }
        }
    }
    let mut measurement = measure_latencies(latencies, elapsed);
    measurement.server_cpu_percent = server_cpu_percent;
    measurement.errors = errors.iter().map(|(_, count)| count).sum();
    measurement.total += measurement.errors;
    measurement.error_kinds = errors;
    let mut row = Row::new("refresh");
    row.connections = Some(u64::from(connections));
    row.note = format!("built-in loop, one rotating session per connection{}", error_note(&measurement));
    row.measurement = Some(measurement);
    row.rss_kib = server.rss_kib().ok();
    Ok(row)
}

/// What one refresh connection measured.
struct ChainResult {
    /// The latency of every successful refresh in the measured window.
    latencies: Vec<Duration>,
    /// What went wrong, one entry per failed request in the measured window.
    errors: Vec<String>,
    /// From the start of the measured window to the end of this connection's last request.
    measured_for: Duration,
}

/// One connection of the `refresh` scenario, logged in as `user{n}`.
fn refresh_chain(addr: SocketAddr, n: u64, barrier: &Barrier, options: &Options) -> Result<ChainResult> {
    let email = format!("user{n}@{SEED_DOMAIN}");
    let session = HttpConn::connect(addr).and_then(|mut conn| Ok((login_on(&mut conn, &email)?.refresh_token, conn)));
    // Every connection reaches the barrier, logged in or not, so that none waits there forever.
    barrier.wait();
    let (mut token, mut conn) = session?;
    let start = Instant::now();
    let measure_from = start + options.warmup;
    let end = measure_from + options.duration;
    let mut result = ChainResult { latencies: Vec::new(), errors: Vec::new(), measured_for: Duration::ZERO };
    loop {
        let sent = Instant::now();
        if sent >= end || process::interrupted() {
            break;
        }
        let body = json!({"refresh_token": token}).to_string();
        let outcome = conn.send("POST", "/token/refresh", &[], Some(&body)).and_then(|response| {
            if response.status == 200 { tokens(&response) } else { bail!("HTTP {}", response.status) }
        });
        let took = sent.elapsed();
        let measured = sent >= measure_from;
        match outcome {
            Ok(next) => {
                token = next.refresh_token;
                if measured {
                    result.latencies.push(took);
                }
            }
            Err(error) => {
                if measured {
                    result.errors.push(format!("{error:#}"));
                }
                // The chain is broken (the token may have been used); start a new session on a new connection.
                conn = HttpConn::connect(addr)?;
                token = login_on(&mut conn, &email)?.refresh_token;
            }
        }
    }
    result.measured_for = measure_from.elapsed();
    Ok(result)
}
