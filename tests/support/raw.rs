//! A raw HTTP/1.1 client over TCP, for requests an ordinary client cannot make: a head that announces more body
//! than is ever sent, a body sent in parts with pauses chosen by the test, and an answer read while the body is
//! still incomplete (which proves the server decided without reading it).

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// An HTTP/1.1 request being sent by hand over its own connection (`Connection: close`).
pub struct RawRequest {
    stream: TcpStream,
    read: Vec<u8>,
}

/// A response read off a [`RawRequest`]'s connection.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The header fields, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body, as text.
    pub body: String,
}

impl RawResponse {
    /// The first value of a header, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// The body parsed as JSON, failing with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("expected JSON, got {:?}", self.body))
    }
}

impl RawRequest {
    /// Connects to `base` (`http://host:port`) and sends the request head: the request line, `Host`, the given
    /// header fields, `Content-Length: content_length` when given, and `Connection: close`. No body is sent yet.
    pub async fn start(
        base: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        content_length: Option<usize>,
    ) -> Self {
        let address = base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).await.unwrap();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(length) = content_length {
            head.push_str(&format!("Content-Length: {length}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        Self { stream, read: Vec::new() }
    }

    /// Sends part of the body (or all of it).
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Whether any of the answer arrives within `wait`, without consuming it.
    pub async fn answered_within(&mut self, wait: Duration) -> bool {
        if !self.read.is_empty() {
            return true;
        }
        let mut buffer = [0_u8; 4096];
        match tokio::time::timeout(wait, self.stream.read(&mut buffer)).await {
            Ok(Ok(count)) => {
                self.read.extend_from_slice(&buffer[..count]);
                true
            }
            // A reset connection has answered too, in its way.
            Ok(Err(_)) => true,
            Err(_) => false,
        }
    }

    /// Reads the complete answer, failing the test when it does not arrive `within` the given time: the server
    /// must answer on what it has, whatever part of the body is still missing.
    pub async fn response(mut self, within: Duration) -> RawResponse {
        let read = async {
            let mut buffer = [0_u8; 8192];
            loop {
                if let Some(response) = parse(&self.read) {
                    return response;
                }
                let count = self.stream.read(&mut buffer).await.unwrap();
                if count == 0 {
                    return parse(&self.read).unwrap_or_else(|| {
                        panic!("the connection closed before a whole answer: {:?}", String::from_utf8_lossy(&self.read))
                    });
                }
                self.read.extend_from_slice(&buffer[..count]);
            }
        };
        tokio::time::timeout(within, read)
            .await
            .unwrap_or_else(|_| panic!("no complete answer within {within:?} while the request body is incomplete"))
    }
}

/// Sends `bytes` as they are over a fresh connection to `base` (`http://host:port`), then reads until the server
/// closes the connection, failing the test when it has not closed it `within` the given time. For requests whose
/// head an ordinary client would not write (contradicting framing, repeated or missing fields); the bytes read are
/// returned whole, so a test sees every answer the server gave on that connection.
pub async fn exchange(base: &str, bytes: &[u8], within: Duration) -> Vec<u8> {
    let address = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut read = Vec::new();
    tokio::time::timeout(within, async {
        let mut buffer = [0_u8; 8192];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(count) => read.extend_from_slice(&buffer[..count]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("the server kept the connection open for {within:?}; read so far: {:?}", String::from_utf8_lossy(&read))
    });
    read
}

/// The status codes of the HTTP/1.1 answers in `bytes`, in order (a status line starts the bytes or follows a
/// line break).
pub fn statuses(bytes: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("HTTP/1.1 ")
        .filter(|(at, _)| *at == 0 || text[..*at].ends_with('\n'))
        .filter_map(|(at, _)| text[at + 9..].get(..3)?.parse().ok())
        .collect()
}

/// A whole response, once `bytes` holds its head and `Content-Length` bytes of body.
fn parse(bytes: &[u8]) -> Option<RawResponse> {
    let end = bytes.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers.iter().find(|(name, _)| name == "content-length")?.1.parse().ok()?;
    let body = bytes.get(end + 4..end + 4 + length)?;
    Some(RawResponse { status, headers, body: String::from_utf8_lossy(body).into_owned() })
}

/// A `multipart/form-data` body with one field `file` holding `bytes`, and its `Content-Type` value.
pub fn multipart_file(bytes: &[u8]) -> (Vec<u8>, &'static str) {
    let mut body = b"--XBOUNDARY\r\nContent-Disposition: form-data; name=\"file\"; filename=\"picture.png\"\r\n\
        Content-Type: image/png\r\n\r\n"
        .to_vec();
    body.extend_from_slice(bytes);
    body.extend_from_slice(b"\r\n--XBOUNDARY--\r\n");
    (body, "multipart/form-data; boundary=XBOUNDARY")
}
