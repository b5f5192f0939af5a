//! Webhook delivery: the background task that posts audit events to the configured endpoints, signed the Standard
//! Webhooks way, from the Postgres outbox the audit table's trigger fills.
//!
//! Each round claims due deliveries under a lease (so instances never post the same one at once, and one that dies
//! mid-round lets its lease run out), posts them concurrently, and records each outcome: a 2xx delivers it; anything
//! else, or no answer within [`ATTEMPT_TIMEOUT`], is retried after 1 s, 2 s, 4 s ... (at most an hour) until
//! `WEBHOOK_MAX_ATTEMPTS`, then the delivery is dead. Redirects are not followed. The body and its signature are
//! built from the stored event at each attempt; the signing key never leaves this module and no error recorded or
//! logged holds it, nor the endpoint's URL (which may carry a token of the receiver's): logs name endpoints by id.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::FutureExt as _;
use hmac::{Hmac, Mac as _};
use serde::Serialize;
use sha2::Sha256;
use time::{Duration, OffsetDateTime};
use tokio::sync::Notify;
use users_postgres::{ClaimedDelivery, DeliveryOutcome, PgRepository};

use crate::background::{Background, Round};
use crate::config::WebhookConfig;
use crate::dto::EventResponse;

/// How long one attempt may take, answer included.
pub const ATTEMPT_TIMEOUT: StdDuration = StdDuration::from_secs(10);

/// How long a claim holds its deliveries: longer than an attempt, with room to record the outcome.
const LEASE: Duration = Duration::seconds(30);

/// Deliveries posted at once per round.
const BATCH: u32 = 16;

/// How often the worker looks for due deliveries when the last round found none.
const POLL_INTERVAL: StdDuration = StdDuration::from_millis(500);

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::hours(1);

/// The body of a delivery.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    timestamp: OffsetDateTime,
    data: &'a EventResponse,
}

/// The wait before the attempt after `attempts` failed ones: 1 s, 2 s, 4 s, ... at most [`MAX_BACKOFF`].
#[must_use]
pub fn backoff(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(20);
    Duration::seconds(1_i64 << exponent).min(MAX_BACKOFF)
}

/// `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under `key` (Standard Webhooks).
#[must_use]
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this never fails.
    let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The running delivery task; [`WebhookWorker::stop`] lets the round in flight finish, then ends it.
#[derive(Debug)]
pub struct WebhookWorker(Background);

impl WebhookWorker {
    /// Starts delivering to the endpoints of `config` (written to the database at start-up, before any event).
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn start(db: PgRepository, config: WebhookConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("user-management-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the webhook HTTP client")?;
        let config = Arc::new(config);
        let task = Background::spawn("webhook worker", POLL_INTERVAL, Arc::new(Notify::new()), move |_| {
            let (db, client, config) = (db.clone(), client.clone(), Arc::clone(&config));
            async move {
                match round(&db, &client, &config).await {
                    Ok(0) => Round::Idle,
                    Ok(_) => Round::Busy,
                    Err(error) => {
                        tracing::warn!(error = %format!("{error:#}"), "webhook round failed");
                        Round::Failed
                    }
                }
            }
        });
        Ok(Self(task))
    }

    /// Asks the worker to stop after its current round and waits until it has. Deliveries not attempted stay
    /// pending for the next start (or another instance).
    pub async fn stop(self) {
        self.0.stop().await;
    }
}

/// One round: claims due deliveries, posts them at once, records each outcome; returns how many it claimed.
async fn round(db: &PgRepository, client: &reqwest::Client, config: &WebhookConfig) -> anyhow::Result<usize> {
    let claimed = db.claim_webhook_deliveries(OffsetDateTime::now_utc(), BATCH, LEASE).await?;
    let count = claimed.len();
    let attempts = claimed.into_iter().map(|delivery| async move {
        // A panicking attempt is a failed attempt of its own delivery; the others in the round are still recorded.
        let outcome = AssertUnwindSafe(attempt(client, config, &delivery))
            .catch_unwind()
            .await
            .unwrap_or_else(|_panic| failed(config, &delivery, "the attempt panicked".to_owned()));
        let label = match &outcome {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::RetryAt(..) => "failed",
            DeliveryOutcome::Dead(_) => "dead",
        };
        metrics::counter!("webhook_deliveries_total", "outcome" => label).increment(1);
        if let DeliveryOutcome::Dead(error) = &outcome {
            // The endpoint by its id: a webhook URL may itself hold a token (in its path or query).
            let endpoint_id = delivery.endpoint_id;
            tracing::warn!(event_id = %delivery.event.id, endpoint_id, %error, "webhook delivery given up");
        }
        let recorded = db
            .finish_webhook_attempt(delivery.event.id, delivery.endpoint_id, OffsetDateTime::now_utc(), &outcome)
            .await;
        if let Err(error) = recorded {
            // The lease runs out and the delivery is attempted again: at least once, never lost.
            tracing::warn!(error = %format!("{:#}", anyhow::Error::new(error)), "recording a webhook attempt failed");
        }
    });
    futures_util::future::join_all(attempts).await;
    Ok(count)
}

/// Posts one delivery and judges the answer.
async fn attempt(client: &reqwest::Client, config: &WebhookConfig, delivery: &ClaimedDelivery) -> DeliveryOutcome {
    let data = EventResponse::from(&delivery.event);
    let body = Body { kind: delivery.event.kind.as_str(), timestamp: delivery.event.at, data: &data };
    let failure = match serde_json::to_vec(&body) {
        Ok(body) => {
            let id = delivery.event.id.to_string();
            let timestamp = OffsetDateTime::now_utc().unix_timestamp();
            let sent = client
                .post(&delivery.url)
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature(&config.key, &id, timestamp, &body))
                .body(body)
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => return DeliveryOutcome::Delivered,
                Ok(response) => format!("HTTP {}", response.status().as_u16()),
                // Without the URL: the error's text is enough, and the URL is in the endpoint's row.
                Err(error) => describe(&error.without_url()),
            }
        }
        Err(error) => format!("encoding the body: {error}"),
    };
    failed(config, delivery, failure)
}

/// The outcome of a failed attempt: another one after the backoff, or given up after the last.
fn failed(config: &WebhookConfig, delivery: &ClaimedDelivery, failure: String) -> DeliveryOutcome {
    let attempts = delivery.attempts.saturating_add(1);
    if attempts >= config.max_attempts {
        DeliveryOutcome::Dead(failure)
    } else {
        DeliveryOutcome::RetryAt(OffsetDateTime::now_utc() + backoff(attempts), failure)
    }
}

/// An HTTP client error as one line: what kind it was, and its innermost cause.
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    format!("{kind}: {cause}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_follows_standard_webhooks() {
        // The example of the Standard Webhooks specification.
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn the_backoff_doubles_from_a_second_up_to_an_hour() {
        assert_eq!(backoff(1), Duration::seconds(1));
        assert_eq!(backoff(2), Duration::seconds(2));
        assert_eq!(backoff(5), Duration::seconds(16));
        assert_eq!(backoff(13), Duration::hours(1));
        assert_eq!(backoff(u32::MAX), Duration::hours(1));
    }
}
