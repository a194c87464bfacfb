//! Webhook delivery: the alerts and corrections queued in the ledger's
//! outbox are POSTed to `OS_CREDITS_WEBHOOK_URL` as JSON, signed as the
//! Standard Webhooks specification says (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">`, with the library of the specification's authors).
//!
//! At least once: an event stays queued until the receiver answers 2xx;
//! each failure waits twice as long as the last (1 s up to 1 h). An event
//! keeps its id on every attempt (the id is derived from what it is about
//! when it is queued), so a receiver that answered late, or a crash after a
//! delivery and before its record, leads to the same id again, never to
//! another one; receivers drop ids they have seen.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tracing::Instrument;

use crate::ledger::{Leadership, PendingWebhook, Webhooks};
use crate::sync::Locked;
use crate::time::now_ns;

/// How often the outbox is read.
const PASS: Duration = Duration::from_millis(500);
/// The longest wait between two attempts of one event.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Events sent per pass at most.
const BATCH: usize = 100;

/// Where events go.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The receiver.
    pub url: reqwest::Url,
    /// The signing secret: `whsec_` and base64, as the specification has it.
    pub secret: String,
    /// Time limit of one delivery.
    pub timeout: Duration,
}

/// Why the webhooks cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookSetupError {
    /// The secret is not `whsec_` and base64.
    #[error(
        "OS_CREDITS_WEBHOOK_SECRET is not a Standard Webhooks secret (whsec_ followed by base64, e.g. whsec_$(head -c 32 /dev/urandom | base64)): {0}"
    )]
    Secret(String),
    /// The HTTP client cannot be built.
    #[error("webhook client: {0}")]
    Client(String),
}

/// Events delivered and failed, for `/stats` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WebhookStatus {
    /// Whether webhooks are on.
    pub enabled: bool,
    /// Events the receiver took.
    pub delivered: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Events not delivered yet (as of the last pass).
    pub queued: u64,
    /// Of those, events that failed at least once.
    pub retrying: u64,
}

/// Delivers the queued events.
pub struct Deliverer {
    ledger: Arc<dyn Webhooks>,
    leadership: Arc<dyn Leadership>,
    url: reqwest::Url,
    signer: standardwebhooks::Webhook,
    client: reqwest::Client,
    status: Mutex<WebhookStatus>,
}

impl Deliverer {
    /// A deliverer to `config`'s receiver; it sends nothing unless
    /// `leadership` says this process leads right then.
    pub fn new(
        ledger: Arc<dyn Webhooks>,
        leadership: Arc<dyn Leadership>,
        config: WebhookConfig,
    ) -> Result<Self, WebhookSetupError> {
        if !config.secret.trim().starts_with("whsec_") {
            return Err(WebhookSetupError::Secret("no whsec_ prefix".into()));
        }
        let signer = standardwebhooks::Webhook::new(config.secret.trim())
            .map_err(|e| WebhookSetupError::Secret(e.to_string()))?;
        let client = crate::http::client(config.timeout)
            .map_err(|e| WebhookSetupError::Client(e.to_string()))?;
        Ok(Deliverer {
            ledger,
            leadership,
            url: config.url,
            signer,
            client,
            status: Mutex::new(WebhookStatus {
                enabled: true,
                ..WebhookStatus::default()
            }),
        })
    }

    /// Delivered, failed, queued.
    pub fn status(&self) -> WebhookStatus {
        self.status.locked().clone()
    }

    /// Runs forever.
    pub async fn run(self: Arc<Self>) {
        crate::leader::every(PASS, || self.pass()).await;
    }

    /// Sends what is due now, while this process leads.
    pub async fn pass(&self) {
        if !self.leadership.leading() {
            return;
        }
        let ledger = self.ledger.clone();
        let read = tokio::task::spawn_blocking(move || {
            let due = ledger.webhooks_due(now_ns(), BATCH)?;
            Ok::<_, crate::ledger::LedgerError>((due, ledger.webhook_depth()?))
        })
        .await;
        let (due, (queued, retrying)) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => return tracing::error!("webhooks: cannot read the outbox: {e}"),
            Err(e) => return tracing::error!("webhooks: {e}"),
        };
        {
            let mut status = self.status.locked();
            status.queued = queued;
            status.retrying = retrying;
        }
        for pending in due {
            if !self.leadership.leading() {
                return;
            }
            let span =
                tracing::info_span!("webhook", id = %pending.event.id, kind = %pending.event.kind);
            if !self.deliver(&pending).instrument(span).await {
                return; // the receiver is down: the rest waits for the next pass
            }
        }
    }

    /// Sends one event and records the outcome; `false` when the receiver
    /// could not be reached.
    async fn deliver(&self, pending: &PendingWebhook) -> bool {
        let event = &pending.event;
        let timestamp = now_ns() / 1_000_000_000;
        let signature = match self
            .signer
            .sign(&event.id, timestamp, event.body.as_bytes())
        {
            Ok(signature) => signature,
            Err(e) => {
                self.failed(pending, format!("cannot sign: {e}")).await;
                return true;
            }
        };
        let sent = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header(standardwebhooks::HEADER_WEBHOOK_ID, &event.id)
            .header(
                standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
                timestamp.to_string(),
            )
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .body(event.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                let ledger = self.ledger.clone();
                let id = event.id.clone();
                let recorded =
                    tokio::task::spawn_blocking(move || ledger.webhook_delivered(&id)).await;
                if !matches!(recorded, Ok(Ok(()))) {
                    tracing::error!(
                        "cannot record a delivered webhook; it may be sent again (same id)"
                    );
                }
                self.status.locked().delivered += 1;
                tracing::info!("webhook delivered");
                true
            }
            Ok(response) => {
                let status = response.status();
                self.failed(pending, format!("the receiver answered {status}"))
                    .await;
                true
            }
            Err(e) => {
                self.failed(pending, format!("cannot reach the receiver: {e}"))
                    .await;
                false
            }
        }
    }

    async fn failed(&self, pending: &PendingWebhook, error: String) {
        let delay = crate::leader::backoff(pending.attempts.saturating_add(1), MAX_BACKOFF);
        tracing::warn!(
            attempts = pending.attempts + 1,
            "webhook not delivered, retrying in {delay:?}: {error}"
        );
        {
            let mut status = self.status.locked();
            status.failed += 1;
            status.last_error = Some(error.clone());
        }
        let ledger = self.ledger.clone();
        let id = pending.event.id.clone();
        let next = now_ns().saturating_add(i64::try_from(delay.as_nanos()).unwrap_or(i64::MAX));
        let recorded =
            tokio::task::spawn_blocking(move || ledger.webhook_failed(&id, next, &error)).await;
        if !matches!(recorded, Ok(Ok(()))) {
            tracing::error!("cannot record a failed webhook delivery");
        }
    }
}
