//! Policies and admin endpoints: `GET /api/policies`,
//! `POST /api/policies/reload` (requires `X-API-KEY`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::{AppState, blocking, error};
use crate::policy::set::Failure;

/// The header carrying the admin key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Checks the admin key: 401 when missing, 403 when wrong (compared in
/// constant time) or when no `API_KEY` is configured.
pub fn authorize(app: &AppState, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    let Some(given) = headers.get(API_KEY_HEADER) else {
        return Err((StatusCode::UNAUTHORIZED, "missing X-API-KEY header"));
    };
    let Some(expected) = &app.api_key else {
        return Err((
            StatusCode::FORBIDDEN,
            "admin endpoints are disabled: set API_KEY to enable them",
        ));
    };
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err((StatusCode::FORBIDDEN, "wrong X-API-KEY"))
    }
}

#[derive(Serialize)]
struct ActiveView {
    site: String,
    file: String,
    name: String,
    version: String,
    sha256: String,
    config_sha256: String,
    contract: String,
    loaded_at: String,
    activation: crate::policy::Activation,
}

#[derive(Serialize)]
struct PoliciesView {
    active: Vec<ActiveView>,
    errors: Vec<Failure>,
}

fn view(app: &AppState) -> PoliciesView {
    let set = app.policies.load();
    let active = set
        .active()
        .map(|a| {
            let info = a.policy.info();
            ActiveView {
                site: a.site.clone(),
                file: a.file.clone(),
                name: info.name.clone(),
                version: info.version.clone(),
                sha256: info.sha256.clone(),
                config_sha256: info.config_sha256.clone(),
                contract: info.contract.clone(),
                loaded_at: a.loaded_at.clone(),
                activation: info.activation,
            }
        })
        .collect();
    PoliciesView {
        active,
        errors: app.registry.failures(),
    }
}

/// `GET /api/policies`: the policies in force and the latest failures.
pub async fn policies(State(app): State<AppState>) -> Response {
    Json(view(&app)).into_response()
}

/// `POST /api/policies/reload`: rescan the folder now.
pub async fn reload(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Err((status, message)) = authorize(&app, &headers) {
        return error(status, message);
    }
    let registry = app.registry.clone();
    match blocking(move || registry.reload()).await {
        Ok(_) => Json(view(&app)).into_response(),
        Err(response) => response,
    }
}

/// The body of `POST /logconfig`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `EnvFilter` directives, e.g. `os_credits=debug`.
    filter: String,
}

/// `POST /logconfig` `{"filter": "os_credits=debug"}`: changes the log
/// filter at runtime; 204, or 400 for a bad body or filter.
pub async fn logconfig(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err((status, message)) = authorize(&app, &headers) {
        return error(status, message);
    }
    let config: LogConfig = match serde_json::from_slice(&body) {
        Ok(config) => config,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"filter\": \"<EnvFilter directives>\"}}: {e}"),
            );
        }
    };
    match (app.log_filter)(&config.filter) {
        Ok(()) => {
            tracing::info!(filter = %config.filter, "log filter changed");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!("invalid filter {:?}: {e}", config.filter),
        ),
    }
}
