//! A webhook receiver for the tests: a small HTTP/1.1 server on a chosen port that records every request (its
//! headers and body) and answers 500 to the first `failures` of them, 204 afterwards. Stopping it closes the port;
//! starting it again on the same port brings it back, as a receiver that went down and returned.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
pub struct Received {
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
    /// The status answered.
    pub status: u16,
}

/// What the receiver saw, shared across restarts.
#[derive(Debug, Default)]
struct Log {
    requests: Vec<Received>,
    failures_left: usize,
}

/// A running (or stopped) receiver.
pub struct Receiver {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    port: u16,
    log: Arc<Mutex<Log>>,
    task: Option<JoinHandle<()>>,
}

impl Receiver {
    /// A receiver on a free port, not started yet.
    pub fn new(failures: usize) -> Self {
        let port = crate::free_port();
        let log = Log { requests: Vec::new(), failures_left: failures };
        Self { url: format!("http://127.0.0.1:{port}/hook"), port, log: Arc::new(Mutex::new(log)), task: None }
    }

    /// Starts (or restarts) listening on its port.
    pub async fn start(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("the receiver's port is free");
        let log = Arc::clone(&self.log);
        self.task = Some(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let _ = serve(stream, &log).await;
                });
            }
        }));
    }

    /// Stops listening, and returns once the port is closed: it refuses connections until [`Self::start`].
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // The listener is dropped when the aborted task is; waiting for that frees the port for a restart.
            let _ = task.await;
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Received> {
        self.log.lock().unwrap().requests.clone()
    }

    /// The requests answered with 2xx, by `webhook-id`.
    pub fn accepted_by_id(&self) -> HashMap<String, Vec<Received>> {
        let mut by_id: HashMap<String, Vec<Received>> = HashMap::new();
        for request in self.requests().into_iter().filter(|request| (200..300).contains(&request.status)) {
            by_id.entry(request.headers.get("webhook-id").cloned().unwrap_or_default()).or_default().push(request);
        }
        by_id
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn serve(mut stream: TcpStream, log: &Mutex<Log>) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 8192];
    let head_end = loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers.get("content-length").and_then(|value| value.parse().ok()).unwrap_or(0);
    while buffer.len() < head_end + length {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let body = buffer[head_end..].to_vec();
    let status = {
        let mut log = log.lock().unwrap();
        let status = if log.failures_left > 0 {
            log.failures_left -= 1;
            500
        } else {
            204
        };
        log.requests.push(Received { headers, body, status });
        status
    };
    let reason = if status == 204 { "No Content" } else { "Internal Server Error" };
    let answer = format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}
