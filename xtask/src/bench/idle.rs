//! The `idle` scenario: the server's memory at rest, and with thousands of keep-alive connections that each sent one
//! request and then stay idle.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::report::Row;
use super::server::Server;
use super::system::IDLE_CONNECTIONS;
use super::system::format_kib;
use crate::http::HttpConn;

/// `idle`: the server's memory at rest, then with [`IDLE_CONNECTIONS`] keep-alive connections that each sent one
/// request and then stay idle.
pub(super) fn idle(server: &Server, open_files: u64) -> Result<Row> {
    let rest = server.rss_kib()?;
    // The task runner needs a descriptor per connection plus a few of its own.
    let wanted = IDLE_CONNECTIONS.min(usize::try_from(open_files.saturating_sub(256)).unwrap_or(IDLE_CONNECTIONS));
    let threads = 4;
    let started = Instant::now();
    let opened: Vec<Result<Vec<HttpConn>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let count = wanted / threads + usize::from(thread < wanted % threads);
                scope.spawn(move || -> Result<Vec<HttpConn>> {
                    let mut conns = Vec::with_capacity(count);
                    for _ in 0..count {
                        let mut conn = HttpConn::connect(server.addr)?;
                        let response = conn.send("GET", "/healthz", &[], None)?;
                        if response.status != 200 {
                            bail!("GET /healthz answered {}", response.status);
                        }
                        conns.push(conn);
                    }
                    Ok(conns)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a connecting thread panicked"))))
            .collect()
    });
    let mut conns = Vec::with_capacity(wanted);
    for batch in opened {
        conns.extend(batch?);
    }
    let open_took = started.elapsed();
    // Let the server finish handling the last requests before reading its memory.
    std::thread::sleep(Duration::from_millis(200));
    let loaded = server.rss_kib()?;
    let still_open = conns.iter().filter(|conn| conn.is_open()).count();
    let checked_after = started.elapsed();
    drop(conns);

    let per_connection = (loaded.saturating_sub(rest)) as f64 / wanted.max(1) as f64;
    let mut row = Row::new("idle");
    row.connections = Some(wanted as u64);
    row.rss_kib = Some(loaded);
    row.note = format!(
        "at rest {} -> {} with {wanted} idle keep-alive connections: {per_connection:.1} KiB per connection \
         (opened in {:.1} s; {still_open} still open {:.1} s after the first)",
        format_kib(rest),
        format_kib(loaded),
        open_took.as_secs_f64(),
        checked_after.as_secs_f64()
    );
    Ok(row)
}
