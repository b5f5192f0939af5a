//! Production defaults of the real binary: metrics on their own listener only, secrets read from files
//! (`NAME_FILE`), and how it stops on SIGTERM.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers: failing loudly is the point")]

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use users_e2e::maildev::{MailDev, SmtpGate};
use users_e2e::{BinaryApp, STRONG_PASSWORD, free_port, json_body, run_until_exit, unique_email};

/// Asserts a problem document with `status` and `code`.
async fn assert_problem(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: Value = json_body(response).await;
    assert_eq!(body["code"], code, "{body}");
}

#[tokio::test]
async fn metrics_are_served_on_the_metrics_listener_and_are_a_404_problem_on_the_public_one() {
    let app = BinaryApp::start(|_| {}).await;
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);

    assert_problem(app.client.get(app.url("/metrics")).send().await.unwrap(), 404, "not_found").await;
    let openapi = json_body(app.client.get(app.url("/openapi.json")).send().await.unwrap()).await;
    assert!(openapi["paths"].get("/metrics").is_none(), "/metrics is not part of the public API");

    let scrape = app.client.get(format!("{}/metrics", app.metrics_address)).send().await.unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(scrape.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = scrape.text().await.unwrap();
    assert!(text.contains("http_requests_total{"), "{text}");
    assert!(text.contains(r#"route="/healthz""#), "the public request is counted: {text}");
    // Latencies are fixed-bucket histograms, whose memory does not grow with traffic.
    assert!(text.contains("http_request_duration_seconds_bucket{"), "{text}");

    assert_problem(app.client.get(format!("{}/users", app.metrics_address)).send().await.unwrap(), 404, "not_found")
        .await;
}

#[tokio::test]
async fn the_binary_reads_database_url_from_database_url_file() {
    let secrets = tempfile::tempdir().unwrap();
    let path = secrets.path().join("database-url");
    let path_text = path.display().to_string();
    let app = BinaryApp::start_editing(
        |env| {
            let url = env.remove("DATABASE_URL").unwrap();
            // As a secret file usually ends: with one newline, which is not part of the value.
            std::fs::write(&path, format!("{url}\n")).unwrap();
            env.insert("DATABASE_URL_FILE".to_owned(), path_text.clone());
        },
        |_| {},
    )
    .await;
    assert!(!app.env.contains_key("DATABASE_URL"));
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
}

#[tokio::test]
async fn setting_a_secret_and_its_file_form_stops_start_up_naming_both() {
    let secrets = tempfile::tempdir().unwrap();
    let path = secrets.path().join("database-url");
    std::fs::write(&path, "postgres://postgres@127.0.0.1:5432/elsewhere\n").unwrap();
    let env = HashMap::from([
        ("DATABASE_URL".to_owned(), "postgres://postgres@127.0.0.1:5432/user_management".to_owned()),
        ("DATABASE_URL_FILE".to_owned(), path.display().to_string()),
        ("DATA_DIR".to_owned(), secrets.path().display().to_string()),
        ("BIND_ADDR".to_owned(), format!("127.0.0.1:{}", free_port())),
        ("METRICS_BIND_ADDR".to_owned(), String::new()),
    ]);
    let output = run_until_exit(&["serve"], &env, Duration::from_secs(30));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DATABASE_URL and DATABASE_URL_FILE are both set"), "{stderr}");
}

/// Waits until `/readyz` answers 503 after a stop was asked (10 s at most), every answer until then a 200.
async fn wait_until_stopping(app: &BinaryApp) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = app.client.get(app.url("/readyz")).send().await;
        let ready = ready.unwrap_or_else(|error| panic!("no longer serving while stopping: {error}"));
        if ready.status() == 503 {
            assert_eq!(ready.headers()["content-type"], "application/problem+json");
            return;
        }
        assert_eq!(ready.status(), 200);
        assert!(std::time::Instant::now() < deadline, "/readyz did not answer 503 within 10 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Registers a new address (its verification mail is queued) and returns it.
async fn register_new(app: &BinaryApp, tag: &str) -> String {
    let email = unique_email(tag);
    let body = json!({"email": email, "password": STRONG_PASSWORD});
    let registered = app.client.post(app.url("/register")).json(&body).send().await.unwrap();
    assert_eq!(registered.status(), 202, "registering {email}");
    email
}

/// The real binary sending mail through a closed gate, with one registration's mail held in flight at it.
async fn app_with_mail_in_flight(gate: &SmtpGate) -> (BinaryApp, String) {
    let app = BinaryApp::start_with(&gate.app_env(), |_| {}).await;
    let email = register_new(&app, "sigterm").await;
    // The outbox has claimed the verification mail and is delivering it: the gate holds it in flight.
    gate.wait_for_client().await;
    (app, email)
}

/// The statuses of the outbox rows to `to`, comma-separated.
async fn outbox_statuses(app: &BinaryApp, to: &str) -> String {
    let query =
        format!("SELECT coalesce(string_agg(status, ','), '') AS value FROM mail_outbox WHERE to_address = '{to}'");
    app.db.text(&query).await
}

#[tokio::test]
async fn sigterm_lets_the_mail_in_flight_finish_and_record_itself_before_the_requests_stop() {
    let maildev = MailDev::shared();
    let gate = SmtpGate::start(&maildev).await;
    let (mut app, email) = app_with_mail_in_flight(&gate).await;

    app.terminate();
    // Stopping: the load balancer is told to send new traffic elsewhere, and requests are still served while the
    // mail in flight is finished (the database connections it needs live on the HTTP workers).
    wait_until_stopping(&app).await;
    // A request that needs the database (a registration) is still served.
    let late_email = register_new(&app, "sigterm-late").await;
    assert!(app.is_running(), "the server waits for the mail in flight");

    gate.open();
    let status = app.wait_for_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "a SIGTERM stop is a clean exit, got {status}");
    assert_eq!(maildev.wait_for(&email, 1).await.len(), 1);
    let sent = outbox_statuses(&app, &email).await;
    assert_eq!(sent, "sent", "the delivered mail was recorded as sent, so no instance sends it again");
    let queued = outbox_statuses(&app, &late_email).await;
    assert_eq!(queued, "pending", "the mail queued while stopping stays queued for the next start");
}

#[tokio::test]
async fn a_second_sigterm_stops_at_once_and_the_mail_in_flight_stays_queued() {
    let gate = SmtpGate::start(&MailDev::shared()).await;
    let (mut app, email) = app_with_mail_in_flight(&gate).await;
    app.terminate();
    wait_until_stopping(&app).await;

    // A signal within a second of the first is taken as the same one, so SIGTERM is sent again until one is taken
    // as a second request. The gate never opens: only that can end the process before the SMTP timeout.
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while app.is_running() {
        assert!(std::time::Instant::now() < deadline, "repeated SIGTERMs did not stop the server");
        app.terminate();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = app.wait_for_exit(Duration::from_secs(1)).await;
    assert!(!status.success(), "a stop cut short is reported by the exit status, got {status}");
    let queued = outbox_statuses(&app, &email).await;
    assert_eq!(queued, "pending", "the mail not known to be sent stays queued for the next start");
}

/// Sends `GET /healthz` on an open keep-alive connection and returns the answer's head, lower-cased.
async fn healthz_on(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut received = Vec::new();
    let mut buffer = [0_u8; 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer)).await.unwrap().unwrap();
        assert!(read > 0, "the connection closed before answering");
        received.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&received).to_lowercase();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse().unwrap());
            if body.len() >= length {
                return head.to_owned();
            }
        }
    }
}

#[tokio::test]
async fn a_stopping_server_closes_keep_alive_connections_after_their_next_answer_and_waits_for_them() {
    let gate = SmtpGate::start(&MailDev::shared()).await;
    let (mut app, _email) = app_with_mail_in_flight(&gate).await;
    let mut kept_alive = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://")).await.unwrap();
    assert!(!healthz_on(&mut kept_alive).await.contains("connection: close"), "kept alive before the stop");
    app.terminate();
    wait_until_stopping(&app).await;
    gate.open();
    // Once the mail is done, the connections are drained: the next answer on this one closes it. Until the drain
    // starts, answers keep it open, so ask until one closes it (each answer must come: the server still serves).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !healthz_on(&mut kept_alive).await.contains("connection: close") {
        assert!(std::time::Instant::now() < deadline, "no answer closed the connection within 10 s of the mail");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rest = Vec::new();
    let closed = tokio::io::AsyncReadExt::read_to_end(&mut kept_alive, &mut rest);
    tokio::time::timeout(Duration::from_secs(5), closed).await.unwrap().unwrap();
    assert!(rest.is_empty(), "nothing after the closing answer");
    let status = app.wait_for_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "a drained stop is a clean exit, got {status}");
}
