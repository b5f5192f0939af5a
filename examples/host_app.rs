//! The HTTP routes of user-management mounted under `/auth` in a host actix-web application that has routes of its
//! own, over the in-memory adapters, driven over HTTP.
//!
//! Run it with `cargo run -p users-examples --example host_app`.

#![allow(clippy::print_stdout, reason = "an example reports what it does on standard output")]

use std::collections::HashMap;
use std::net::TcpListener;

use actix_web::{App, HttpResponse, HttpServer, web};
use users_api::config::Config;
use users_api::routes::mount;
use users_api::state::AppState;
use users_domain::Service;
use users_memory::MemoryPorts;

/// What the requests answered, for the test that runs it.
#[derive(Debug)]
pub struct Summary {
    /// The host's own route.
    pub hello: u16,
    /// `POST /auth/register`.
    pub register: u16,
    /// Following the verification link.
    pub verify: u16,
    /// `POST /auth/login`.
    pub login: u16,
    /// `GET /auth/me` with the access token, and the email it returned.
    pub me: (u16, String),
}

/// Starts the host on a free port, registers, verifies, logs in and reads `/auth/me`, then stops.
///
/// # Errors
/// Whatever step fails.
pub async fn serve_and_call() -> anyhow::Result<Summary> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);

    // The service's links and picture URLs start where the routes are mounted.
    let mut config = Config::from_map(&HashMap::new())?;
    config.service.public_base_url = format!("{base}/auth");
    let ports = MemoryPorts::new()?;
    let jwks = ports.codec().jwks();
    let state = AppState::new(Service::new(ports.clone(), config.service.clone()), &config, jwks);

    let server = HttpServer::new(move || {
        let state = state.clone();
        App::new()
            .route("/hello", web::get().to(|| async { HttpResponse::Ok().body("the host's own route") }))
            .service(web::scope("/auth").configure(move |cfg| mount(cfg, &state)))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    let running = tokio::spawn(server);

    let client = reqwest::Client::new();
    let hello = client.get(format!("{base}/hello")).send().await?.status().as_u16();
    let password = "violet-kettle-orbit-97";
    let body = serde_json::json!({ "email": "ada@example.com", "password": password });
    let register = client.post(format!("{base}/auth/register")).json(&body).send().await?.status().as_u16();
    let mail = ports.store().outbox_mails().pop().ok_or_else(|| anyhow::anyhow!("no verification mail"))?;
    let link = mail.mail.text.split_whitespace().find(|word| word.contains("/verify-email/")).unwrap_or_default();
    let verify = client.get(link).send().await?.status().as_u16();
    let login = client.post(format!("{base}/auth/login")).json(&body).send().await?;
    let login_status = login.status().as_u16();
    let tokens: serde_json::Value = login.json().await?;
    let access = tokens["access_token"].as_str().unwrap_or_default();
    let me = client.get(format!("{base}/auth/me")).bearer_auth(access).send().await?;
    let me_status = me.status().as_u16();
    let me_body: serde_json::Value = me.json().await?;
    let me_email = me_body["email"].as_str().unwrap_or_default().to_owned();

    handle.stop(true).await;
    running.await??;
    Ok(Summary { hello, register, verify, login: login_status, me: (me_status, me_email) })
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let summary = serve_and_call().await?;
    println!("{summary:#?}");
    Ok(())
}
