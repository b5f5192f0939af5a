//! Just enough networking for the task runner: free ports, an HTTP/1.1 `GET` that returns the status code for
//! readiness checks, and [`HttpConn`], a small HTTP/1.1 keep-alive client that sends requests and reads whole answers.
//!
//! A full HTTP client would cost more build time than the rest of the task runner together.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
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

/// Sends `GET path` to `authority` (`host:port`) over HTTP/1.1 (one request, then the connection closes; ChromeDriver
/// refuses HTTP/1.0) and returns the response's status code.
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
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")?;

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

/// How long the client may wait to connect and for every read and write, so a hung server fails the request
/// instead of the task.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP/1.1 keep-alive connection: just enough client to log in, chain requests on one connection and hold
/// connections open.
pub struct HttpConn {
    /// The connection, buffered for reading.
    reader: BufReader<TcpStream>,
    /// `host:port`, for the `Host` header.
    authority: String,
}

/// A response: its status and body.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpConn {
    /// Connects to `addr`, with [`REQUEST_TIMEOUT`] on every read and write.
    pub fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
            .with_context(|| format!("could not connect to {addr}"))?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self { reader: BufReader::new(stream), authority: addr.to_string() })
    }

    /// Sends one request (with a JSON body when given) and reads the whole response.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        json_body: Option<&str>,
    ) -> Result<Response> {
        self.send_bytes(method, path, headers, json_body.map(|body| ("application/json", body.as_bytes())))
    }

    /// Sends one request with a body of the given `Content-Type` when given, and reads the whole response.
    pub fn send_bytes(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Result<Response> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.authority);
        for (name, value) in headers {
            let _ = write!(request, "{name}: {value}\r\n");
        }
        let mut bytes = Vec::new();
        if let Some((content_type, body)) = body {
            let _ = write!(request, "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n", body.len());
            bytes.extend_from_slice(request.as_bytes());
            bytes.extend_from_slice(body);
        } else {
            request.push_str("\r\n");
            bytes.extend_from_slice(request.as_bytes());
        }
        self.reader.get_mut().write_all(&bytes).context("could not send the request")?;
        self.read_response()
    }

    /// Reads a response: status line, headers, and a body framed by `Content-Length` or chunked encoding.
    fn read_response(&mut self) -> Result<Response> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).context("could not read the status line")? == 0 {
            bail!("the server closed the connection");
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .with_context(|| format!("not an HTTP status line: {line:?}"))?;
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        loop {
            line.clear();
            if self.reader.read_line(&mut line).context("could not read a header")? == 0 {
                bail!("the server closed the connection in the headers");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = Some(value.parse().with_context(|| format!("bad Content-Length {value:?}"))?);
                } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line).context("could not read a chunk size")?;
                let size_text = line.trim().split(';').next().unwrap_or_default();
                let size = usize::from_str_radix(size_text, 16)
                    .with_context(|| format!("bad chunk size {:?}", line.trim()))?;
                if size == 0 {
                    // Trailers, then the blank line that ends the message.
                    loop {
                        line.clear();
                        if self.reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                self.reader.read_exact(body.get_mut(start..).unwrap_or_default())?;
                line.clear();
                self.reader.read_line(&mut line)?;
            }
        } else if let Some(length) = content_length {
            body.resize(length, 0);
            self.reader.read_exact(&mut body).context("could not read the body")?;
        }
        Ok(Response { status, body })
    }

    /// Whether the server has not closed the connection (nothing to read yet, and no end of stream).
    pub fn is_open(&self) -> bool {
        let stream = self.reader.get_ref();
        if stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0_u8; 1];
        let open = matches!(stream.peek(&mut byte), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock);
        let _ = stream.set_nonblocking(false);
        open
    }
}
