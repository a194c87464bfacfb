//! The HTTP API (axum): `/write` for the InfluxDB subscription and
//! `/api/v1/write` for Prometheus remote write (two decoders, one engine), the portal's
//! `/api/*` in the formats of the Python service, the operational
//! endpoints (`/ping`, `/stats`, `/metrics`, `/logconfig`), the OpenAPI
//! document with its page, and the credits history page. Every route is
//! declared once ([`ROUTES`]) and described in `pages/openapi.json`: tests
//! keep the document equal to the list and probe the running service.

mod admin;
mod auth;
mod corrections;
mod credits;
mod metrics;
mod ops;
mod pages;
mod remote_write;
mod write;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rust_decimal::Decimal;
use serde_json::value::RawValue;

use crate::ledger::Reads;
use crate::policy::Module;
use crate::policy::registry::Registry;
use crate::policy::schedule::Schedule;
use crate::replica::Replica;

/// Replaces the tracing filter with new `EnvFilter` directives, or says why not.
pub type LogFilter = Arc<dyn Fn(&str) -> Result<(), LogFilterError> + Send + Sync>;

/// Why a log filter was not put in place.
#[derive(Debug, thiserror::Error)]
pub enum LogFilterError {
    /// The directives do not parse.
    #[error(transparent)]
    Parse(#[from] tracing_subscriber::filter::ParseError),
    /// The running subscriber is gone.
    #[error(transparent)]
    Reload(#[from] tracing_subscriber::reload::Error),
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// This replica: its billing engine while it leads.
    pub replica: Arc<Replica>,
    /// The ledger, for reads.
    pub ledger: Arc<dyn Reads>,
    /// The price schedule in force (from the ledger).
    pub schedule: Arc<ArcSwap<Schedule>>,
    /// Where it comes from.
    pub prices: Arc<crate::billing::prices::LiveSchedule>,
    /// Where they come from (hot reload).
    pub registry: Arc<Registry>,
    /// The Perun sync, when configured.
    pub perun: Option<Arc<crate::perun::sync::Publisher>>,
    /// The alerts (mails, webhook events), when configured.
    pub notifier: Option<Arc<crate::alerts::Notifier>>,
    /// The webhooks' delivery, when configured.
    pub webhooks: Option<Arc<crate::alerts::webhook::Deliverer>>,
    /// What forecasts read.
    pub forecasts: Arc<dyn crate::ledger::Forecasts>,
    /// The forecasts' default window, in hours.
    pub forecast_window_hours: u32,
    /// Replaces the log filter (`POST /logconfig`).
    pub log_filter: LogFilter,
    /// The key admin endpoints require; `None` disables them.
    pub api_key: Option<String>,
    /// Decimal places of shown credits.
    pub precision: u32,
    /// When the service started.
    pub started: Instant,
    /// Tokio worker threads.
    pub workers: usize,
    /// How `/api/v1/write` reads Prometheus' samples.
    pub remote_write: RemoteWriteSettings,
    /// Who may write measurements (open when no credential file is set).
    pub writers: Arc<crate::writers::Writers>,
    /// Corrections and statements.
    pub corrections: Arc<dyn crate::ledger::Corrections>,
    /// Corrections being applied by this process (an overlapping one is refused).
    pub applying: Arc<corrections::Applying>,
    /// What the statements' roll-up thread has done (`/stats`).
    pub roll_up: Arc<crate::service::RollUpStatus>,
}

/// How `/api/v1/write` reads Prometheus' samples.
#[derive(Debug, Clone)]
pub struct RemoteWriteSettings {
    /// The labels naming the project and the site.
    pub labels: Arc<crate::ingest::remote_write::Labels>,
    /// The most a body may decompress to, in bytes (checked before).
    pub max_decompressed: usize,
}

impl Default for RemoteWriteSettings {
    fn default() -> Self {
        RemoteWriteSettings {
            labels: Arc::default(),
            max_decompressed: 64 << 20,
        }
    }
}

/// Declares every route once: the router is built from this list, and
/// [`ROUTES`] lists it (the OpenAPI document is tested against both the
/// list and the running service).
macro_rules! routes {
    ($limit:ident; $($method:literal $path:literal => $handler:expr,)*) => {
        /// Every route the router serves: `(method, path)`.
        pub const ROUTES: &[(&str, &str)] = &[$(($method, $path)),*];

        /// The router with every route.
        pub fn router(state: AppState, $limit: usize) -> Router {
            Router::new()
                $(.route($path, $handler))*
                .with_state(state)
        }
    };
}

/// The largest module `POST /api/policies` takes (a Python policy is
/// about 18 MiB).
const MAX_MODULE_BYTES: usize = 64 << 20;

routes! {
    max_body_bytes;
    "post" "/write" => post(write::write).layer(DefaultBodyLimit::max(max_body_bytes)),
    "post" "/api/v1/write" => post(remote_write::remote_write).layer(DefaultBodyLimit::max(max_body_bytes)),
    "get" "/ping" => get(ops::ping),
    "get" "/stats" => get(ops::stats),
    "get" "/metrics" => get(metrics::metrics),
    "get" "/api/metrics" => get(credits::metrics),
    "get" "/api/policies" => get(admin::policies),
    "post" "/api/policies" => post(admin::upload).layer(DefaultBodyLimit::max(MAX_MODULE_BYTES)),
    "post" "/api/policies/reload" => post(admin::reload),
    "post" "/logconfig" => post(admin::logconfig),
    "post" "/api/costs_per_hour" => post(credits::costs_per_hour),
    "get" "/api/credits_history/{project}" => get(credits::credits_history),
    "get" "/api/current_credits/{project}" => get(credits::current_credits),
    "get" "/api/forecast/{project}" => get(credits::forecast),
    "post" "/api/corrections" => post(corrections::correct),
    "get" "/api/corrections" => get(corrections::list),
    "get" "/api/statements" => get(corrections::statements),
    "get" "/api/openapi.json" => get(pages::openapi),
    "get" "/api/docs" => get(pages::docs),
    "get" "/credits_history/{project}" => get(pages::history),
}

/// An answer that is not a success: its status and what went wrong,
/// answered as `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status answered (4xx or 5xx).
    pub status: StatusCode,
    /// What went wrong, for the person who sent the request.
    pub message: String,
}

impl ApiError {
    /// An error answered with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

/// The body of every error answer.
#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(ErrorBody {
                error: &self.message,
            }),
        )
            .into_response()
    }
}

/// A JSON error response: `{"error": message}`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// An admin request's JSON body (after its key was checked), or what was
/// wrong and what was `expected` (for a 400).
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    expected: &str,
) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("expected {expected}: {e}"))
}

/// A decimal as a JSON number, written exactly (no float in between): its
/// text as a raw JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exact(pub Decimal);

impl serde::Serialize for Exact {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // A decimal's text is a JSON number; were it ever not, the answer
        // fails (500) rather than showing another figure.
        let raw = RawValue::from_string(self.0.to_string()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// The ledger's sizes, or the error response.
pub(crate) async fn counts(app: &AppState) -> Result<crate::ledger::Counts, Response> {
    let ledger = app.ledger.clone();
    match blocking(move || ledger.counts()).await {
        Ok(Ok(counts)) => Ok(counts),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(response) => Err(response),
    }
}

/// Runs blocking work (ledger reads, policy calls) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The modules in force at `at` (Unix ns): the default's first, then each
/// site's own, with the site they price.
pub(crate) fn modules_at(app: &AppState, at: i64) -> Vec<(String, Arc<Module>)> {
    let schedule = app.schedule.load();
    schedule
        .at(at)
        .into_iter()
        .filter_map(|(site, version)| Some((site, version.module()?.clone())))
        .collect()
}
