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
use crate::schedule::{Kind, show_time};
use sha2::{Digest, Sha256};

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

/// One entry of the price schedule, as `/api/policies` lists it.
#[derive(Serialize)]
struct EntryView {
    id: i64,
    site: String,
    /// RFC 3339, or `beginning`.
    from: String,
    kind: &'static str,
    /// `past`, `current` or `upcoming` at its site (entries no longer
    /// counting: `withdrawn`, `replaced`).
    status: &'static str,
    file: String,
    sha256: String,
    config_sha256: String,
    memory_mb: Option<u64>,
    timeout_ms: Option<u64>,
    added_at: String,
    origin: String,
    /// Why its module cannot be loaded now.
    error: Option<String>,
}

#[derive(Serialize)]
struct FolderView {
    matches_schedule: bool,
    differences: Vec<String>,
}

#[derive(Serialize)]
struct PoliciesView {
    active: Vec<ActiveView>,
    schedule: Vec<EntryView>,
    folder: FolderView,
    errors: Vec<Failure>,
}

fn view(app: &AppState) -> PoliciesView {
    let now = super::now_ns();
    let schedule = app.schedule.load_full();
    let active = schedule
        .at(now)
        .into_iter()
        .filter_map(|(site, version)| {
            let info = version.module()?.info();
            Some(ActiveView {
                site,
                file: version.entry.file.clone(),
                name: info.name.clone(),
                version: info.version.clone(),
                sha256: info.sha256.clone(),
                config_sha256: info.config_sha256.clone(),
                contract: info.contract.clone(),
                loaded_at: show_time(version.entry.added_at),
                activation: info.activation,
            })
        })
        .collect();
    let in_force: Vec<i64> = schedule
        .at(now)
        .into_iter()
        .map(|(_, v)| v.entry.id)
        .collect();
    let entries = schedule
        .entries()
        .iter()
        .map(|version| {
            let entry = &version.entry;
            let counts = schedule.counts(entry.id);
            let status = match entry.kind {
                Kind::Withdrawn => "withdrawn",
                _ if !counts => "replaced",
                _ if in_force.contains(&entry.id) => "current",
                _ if entry.from > now => "upcoming",
                _ => "past",
            };
            EntryView {
                id: entry.id,
                site: entry.site.clone(),
                from: show_time(entry.from),
                kind: entry.kind.as_str(),
                status,
                file: entry.file.clone(),
                sha256: entry.sha256.clone(),
                config_sha256: hex::encode(Sha256::digest(entry.config.as_bytes())),
                memory_mb: entry.memory_mb,
                timeout_ms: entry.timeout_ms,
                added_at: show_time(entry.added_at),
                origin: entry.origin.clone(),
                error: match (&version.policy, entry.kind) {
                    (Err(why), Kind::Module) => Some(why.clone()),
                    _ => None,
                },
            }
        })
        .collect();
    let differences = schedule.differences(&app.registry.policies().load(), now);
    PoliciesView {
        active,
        schedule: entries,
        folder: FolderView {
            matches_schedule: differences.is_empty(),
            differences,
        },
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
