//! A webhook receiver over real HTTP: records every request, checks its
//! Standard Webhooks signature itself (HMAC-SHA256 of "id.timestamp.body"
//! with the base64-decoded secret, written out here, not the service's
//! library), and can answer 500 or late for a while.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A secret as the specification has them: `whsec_` and base64.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: String,
    /// Whether one of the `webhook-signature` entries is right.
    pub signed: bool,
    /// The body.
    pub body: serde_json::Value,
    /// What the receiver answered.
    pub answered: u16,
}

struct Shared {
    received: Mutex<Vec<Received>>,
    /// Requests still to answer 500.
    failing: AtomicUsize,
    /// Requests still to answer late (2xx, after `late`).
    slow: AtomicUsize,
    late: Duration,
    key: Vec<u8>,
}

/// The receiver.
pub struct Receiver {
    /// Where it listens.
    pub url: String,
    shared: Arc<Shared>,
}

/// Whether `signatures` (`v1,<base64> …`) holds the HMAC of `id.timestamp.body`.
pub fn signed(key: &[u8], id: &str, timestamp: &str, body: &[u8], signatures: &str) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    signatures
        .split(' ')
        .any(|entry| entry.strip_prefix("v1,") == Some(expected.as_str()))
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    let ok = signed(
        &shared.key,
        &id,
        &timestamp,
        &body,
        &header("webhook-signature"),
    );
    let take = |counter: &AtomicUsize| {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    };
    let status = if take(&shared.failing) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    let late = status.is_success() && take(&shared.slow);
    shared.received.lock().unwrap().push(Received {
        id,
        timestamp,
        signed: ok,
        body: serde_json::from_slice(&body).unwrap_or_default(),
        answered: status.as_u16(),
    });
    if late {
        tokio::time::sleep(shared.late).await;
    }
    status
}

impl Receiver {
    /// A receiver checking signatures with [`SECRET`]; the first `failing`
    /// requests get 500, the next `slow` successful ones their 204 after `late`.
    pub fn start(failing: usize, slow: usize, late: Duration) -> Receiver {
        let key = base64::engine::general_purpose::STANDARD
            .decode(SECRET.trim_start_matches("whsec_"))
            .unwrap();
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            failing: AtomicUsize::new(failing),
            slow: AtomicUsize::new(slow),
            late,
            key,
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let state = shared.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new()
                    .route("/hooks", axum::routing::post(receive))
                    .with_state(state);
                axum::serve(listener, app).await.unwrap();
            });
        });
        Receiver { url, shared }
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The service's environment to use it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OS_CREDITS_WEBHOOK_URL", self.url.clone()),
            ("OS_CREDITS_WEBHOOK_SECRET", SECRET.to_owned()),
            ("OS_CREDITS_WEBHOOK_TIMEOUT_SECONDS", "1".to_owned()),
        ]
    }
}
