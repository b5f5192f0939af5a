//! Just enough networking for readiness checks: free ports and an HTTP/1.0 `GET` that returns the status code.
//!
//! A full HTTP client would cost more build time than the rest of the task runner together.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Finds `N` distinct free TCP ports on 127.0.0.1 by binding port 0 `N` times at once, then releasing them.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("could not bind 127.0.0.1:0 to find a free port"))
        .collect::<Result<Vec<_>>>()?;
    let ports = listeners.iter().map(|listener| Ok(listener.local_addr()?.port())).collect::<Result<Vec<u16>>>()?;
    <[u16; N]>::try_from(ports).map_err(|ports| anyhow::anyhow!("expected {N} ports, found {}", ports.len()))
}

/// Sends `GET path` to `authority` (`host:port`) over HTTP/1.0 and returns the response's status code.
///
/// # Errors
/// When the address does not resolve, the connection fails or times out, or the answer is not HTTP.
pub fn get_status(authority: &str, path: &str, timeout: Duration) -> Result<u16> {
    let address: SocketAddr = authority
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n")?;

    // Only the status line matters; read until it is complete.
    let mut head = Vec::with_capacity(128);
    let mut chunk = [0_u8; 128];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(chunk.get(..read).unwrap_or_default());
    }
    let head = String::from_utf8_lossy(&head);
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(status))) if version.starts_with("HTTP/") => Ok(status),
        _ => bail!("{authority} answered {path} with something that is not HTTP: {status_line:?}"),
    }
}

/// Whether `GET http://{authority}{path}` answers 200 right now.
pub fn is_ok(authority: &str, path: &str) -> bool {
    matches!(get_status(authority, path, Duration::from_secs(2)), Ok(200))
}

/// Whether something accepts TCP connections at `address` right now.
pub fn accepts_connections(address: &str) -> bool {
    address
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
        .is_some_and(|address| TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok())
}

/// Calls `ready` every 100 ms until it answers `true` (then `Ok`) or `timeout` passes (then an error naming `what`).
///
/// `ready` may itself fail, for instance when the process being waited for has exited; that error is returned at once.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready()? {
            return Ok(());
        }
        crate::process::check_interrupted()?;
        if Instant::now() >= deadline {
            bail!("timed out after {}s waiting for {what}", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
