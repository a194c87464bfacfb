//! The HTTP client the service's own requests use (Perun, webhooks, the
//! CLI talking to a running service): rustls on ring (reqwest is built
//! without a default TLS provider), the service's user agent. A leaf.

use std::time::Duration;

/// An HTTP client with rustls on ring, the service's user agent and
/// `timeout` per request.
pub fn client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("os-credits/", env!("CARGO_PKG_VERSION")))
        .build()
}
