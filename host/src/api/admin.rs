//! Policies and admin endpoints: `GET /api/policies`,
//! `POST /api/policies/reload` (requires `X-API-KEY`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::{AppState, blocking, error};
use axum::extract::{FromRequest, Multipart};

use crate::billing::engine::ScheduleChange;
use crate::billing::prices::{LiveSchedule, Wanted};
use crate::policy::mapping::LimitOverrides;
use crate::policy::set::Failure;
use crate::replica::Scheduled;
use crate::schedule::{Entry, Kind, show_time};
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

/// A request that carried the admin key: the extractor of every admin
/// route, so that no handler runs (nor reads a body) without the key. It
/// answers as [`authorize`] says otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl axum::extract::FromRequestParts<AppState> for Admin {
    type Rejection = super::ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &AppState,
    ) -> Result<Admin, super::ApiError> {
        authorize(app, &parts.headers)
            .map(|()| Admin)
            .map_err(|(status, message)| super::ApiError::new(status, message))
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
    /// Why it re-prices billed usage (a back-dated entry's correction).
    correction_reason: Option<String>,
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
    let now = crate::time::now_ns();
    let schedule = app.schedule.load_full();
    let now_in_force = schedule.at(now);
    let in_force: Vec<i64> = now_in_force.iter().map(|(_, v)| v.entry.id).collect();
    let active = now_in_force
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
                correction_reason: entry.correction_reason.clone(),
                error: match (&version.policy, entry.kind) {
                    (Err(why), Kind::Module) => Some(why.to_string()),
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
pub async fn reload(State(app): State<AppState>, _: Admin) -> Response {
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
pub async fn logconfig(State(app): State<AppState>, _: Admin, body: axum::body::Bytes) -> Response {
    let config: LogConfig = match super::json_body(&body, r#"{"filter": "<EnvFilter directives>"}"#)
    {
        Ok(config) => config,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match (app.log_filter)(&config.filter) {
        Ok(()) => {
            tracing::info!(filter = %config.filter, "log filter changed");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e @ super::LogFilterError::Parse(_)) => error(
            StatusCode::BAD_REQUEST,
            format!("invalid filter {:?}: {e}", config.filter),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot change the log filter: {e}"),
        ),
    }
}

/// The `entry` part of `POST /api/policies`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Upload {
    /// `default` or a location id.
    site: String,
    /// RFC 3339; none: from the moment it is added.
    from: Option<String>,
    /// A name for the module (shown in the schedule).
    file: Option<String>,
    /// The configuration, as a JSON object (as an inline `config`).
    config: Option<serde_json::Map<String, serde_json::Value>>,
    memory_mb: Option<u64>,
    timeout_ms: Option<u64>,
    /// The module's expected SHA-256: other bytes are refused.
    sha256: Option<String>,
    /// Why a `from` before billed usage re-prices it (a correction is booked).
    correction_reason: Option<String>,
}

/// `POST /api/policies` (`X-API-KEY`, `multipart/form-data`): adds an entry
/// to the price schedule for every replica. Parts: `entry` (JSON: `site`,
/// optional `from`, `file`, `config`, `memory_mb`, `timeout_ms`, `sha256`),
/// `module` (the module's bytes) and, where signatures are required,
/// `signature` (its `.sig`). The module is validated as a folder's would
/// be; an entry whose `from` lies before billed usage is refused (409).
pub async fn upload(
    State(app): State<AppState>,
    // The key first: nothing of the body is read without it.
    _: Admin,
    request: axum::extract::Request,
) -> Response {
    let multipart = match Multipart::from_request(request, &()).await {
        Ok(multipart) => multipart,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{rejection} (send multipart/form-data with the parts entry and module, as curl -F does)"
                ),
            );
        }
    };
    let (upload, module, signature) = match read_upload(multipart).await {
        Ok(parts) => parts,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let wanted = {
        let prices = app.prices.clone();
        match blocking(move || vet_upload(&prices, upload, module, signature)).await {
            Ok(Ok(wanted)) => wanted,
            Ok(Err((status, message))) => return error(status, message),
            Err(response) => return response,
        }
    };
    let entry = wanted.entry.clone();
    let answer = app
        .replica
        .schedule(ScheduleChange {
            wanted: vec![wanted],
            complete: false,
        })
        .await;
    match answer {
        Ok(Scheduled::Planned(plan)) if plan.entries.is_empty() && !plan.refused.is_empty() => {
            error(StatusCode::CONFLICT, plan.refused.join("; "))
        }
        Ok(Scheduled::Planned(plan)) => {
            for added in &plan.entries {
                tracing::info!(entry = added.id, site = %added.site, from = %show_time(added.from), sha256 = %added.sha256, "price schedule: entry uploaded");
            }
            let added: Vec<serde_json::Value> = plan
                .entries
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "id": e.id, "site": e.site, "from": show_time(e.from),
                        "kind": e.kind.as_str(), "file": e.file, "sha256": e.sha256,
                    })
                })
                .collect();
            Json(serde_json::json!({ "added": added, "refused": plan.refused })).into_response()
        }
        Ok(Scheduled::Stored) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "stored_for_the_leader": true, "site": entry.site, "sha256": entry.sha256,
            })),
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Reads the parts of an upload.
async fn read_upload(
    mut multipart: Multipart,
) -> Result<(Upload, Vec<u8>, Option<String>), String> {
    let (mut upload, mut module, mut signature) = (None, None, None);
    let mut unknown: Vec<String> = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| format!("not a multipart/form-data body: {e}"))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| format!("part {name:?}: {e}"))?;
        match name.as_str() {
            "entry" => upload = Some(bytes),
            "module" => module = Some(bytes.to_vec()),
            "signature" => {
                signature = Some(
                    String::from_utf8(bytes.to_vec())
                        .map_err(|_| "part \"signature\" is not text".to_owned())?,
                );
            }
            other => unknown.push(other.to_owned()),
        }
    }
    if let Some(other) = unknown.first() {
        return Err(format!(
            "unknown part {other:?} (give entry, module and, where signatures are required, signature)"
        ));
    }
    // Read only once every part is in (an answer before the request is
    // read in full would cut the client off).
    let upload = upload.ok_or("no \"entry\" part")?;
    let upload = serde_json::from_slice::<Upload>(&upload).map_err(|e| {
        format!("part \"entry\": {e} (expected {{\"site\": \"default\", \"from\": \"2027-01-01T00:00:00Z\", \"config\": {{…}}}})")
    })?;
    let module = module.ok_or("no \"module\" part")?;
    Ok((upload, module, signature))
}

type Refusal = (StatusCode, String);

/// Checks an upload as a folder entry is checked, loads its module and
/// keeps its bytes in the ledger; what the engine is asked to add.
fn vet_upload(
    prices: &LiveSchedule,
    upload: Upload,
    module: Vec<u8>,
    signature: Option<String>,
) -> Result<Wanted, Refusal> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, message);
    let unusable = |message: String| (StatusCode::UNPROCESSABLE_ENTITY, message);
    let site = upload.site.trim().to_owned();
    if site.is_empty() {
        return Err(bad(
            "site is empty (give \"default\" or a location id)".into()
        ));
    }
    let from = upload
        .from
        .as_deref()
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(text)
                .ok()
                .and_then(|t| t.timestamp_nanos_opt())
                .ok_or_else(|| bad(format!("from = {text:?} is not an RFC 3339 date-time")))
        })
        .transpose()?;
    let overrides = LimitOverrides {
        memory_mb: upload.memory_mb,
        timeout_ms: upload.timeout_ms,
    }
    .check()
    .map_err(|e| bad(e.0))?;
    let config = match upload.config {
        None => String::new(),
        Some(object) => {
            let table: toml::Table = serde_json::from_value(serde_json::Value::Object(object))
                .map_err(|e| bad(format!("config: {e}")))?;
            toml::to_string(&table).map_err(|e| bad(format!("config: {e}")))?
        }
    };
    let sha256 = hex::encode(Sha256::digest(&module));
    if let Some(pin) = &upload.sha256
        && pin.trim().to_ascii_lowercase() != sha256
    {
        return Err(unusable(format!(
            "the module has sha256 {sha256}, the entry pins {pin}"
        )));
    }
    let runtime = prices.runtime();
    if let Some(keys) = runtime.trusted_keys() {
        let signature = signature.ok_or_else(|| {
            unusable("modules need a signature by a trusted key: give a \"signature\" part".into())
        })?;
        keys.verify(&module, &signature)
            .map_err(|e| unusable(e.to_string()))?;
    }
    let loaded = runtime
        .load_bytes_with(&module, &config, runtime.limits().with(overrides))
        .map_err(|e| unusable(format!("the module is not usable: {e}")))?;
    prices
        .keep_module(&sha256, &module)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let now = crate::time::now_ns();
    Ok(Wanted {
        entry: Entry {
            id: 0,
            site,
            from: from.unwrap_or(now),
            kind: Kind::Module,
            file: upload.file.unwrap_or_else(|| "upload.wasm".into()),
            sha256,
            config,
            memory_mb: upload.memory_mb,
            timeout_ms: upload.timeout_ms,
            added_at: now,
            origin: "api".into(),
            correction_reason: upload
                .correction_reason
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty()),
        },
        from,
        module: Some(std::sync::Arc::new(loaded)),
    })
}
