//! `POST /api/corrections` (preview, apply), `GET /api/corrections` and
//! `GET /api/statements` (CSV or JSON).
//!
//! A correction re-prices billed usage of a period with a module (a file
//! of the policy folder, or one the schedule knows by SHA-256) and, applied,
//! books the differences beside the charges (see
//! [`crate::billing::correction`]). Its id comes from the request, so a
//! request repeated books nothing twice; one overlapping a correction this
//! process is applying is refused (409); with replicas, bookings are
//! serialised in the database and a correction computed against a ledger
//! another changed meanwhile is computed again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::admin::{Admin, authorize};
use super::{AppState, blocking, error};
use crate::billing::correction::{CorrectionAnswer, CorrectionError, Request, apply, statement};
use crate::ledger::{CorrectionScope, PolicyStamp};
use crate::policy::Module;
use crate::policy::mapping::DEFAULT_SITE;
use crate::schedule::show_time;
use crate::sync::Locked;

/// The corrections this process is applying: another overlapping one waits
/// for no one, it is refused.
#[derive(Default)]
pub struct Applying(Mutex<Vec<(String, CorrectionScope)>>);

/// Two scopes touch the same usage.
fn overlap(x: &CorrectionScope, y: &CorrectionScope) -> bool {
    let sites = match (&x.site, &y.site) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    let projects = match (&x.projects, &y.projects) {
        (Some(a), Some(b)) => a.iter().any(|p| b.contains(p)),
        _ => true,
    };
    x.from < y.to && y.from < x.to && sites && projects
}

/// Holds a place in [`Applying`] until dropped.
struct Claim {
    applying: Arc<Applying>,
    id: String,
}

impl Applying {
    fn claim(self: &Arc<Self>, id: &str, scope: &CorrectionScope) -> Result<Claim, String> {
        let mut list = self.0.locked();
        if let Some((other, _)) = list.iter().find(|(_, s)| overlap(s, scope)) {
            return Err(format!(
                "correction {other} is being applied to overlapping usage: send this one when it is done"
            ));
        }
        list.push((id.to_owned(), scope.clone()));
        Ok(Claim {
            applying: Arc::clone(self),
            id: id.to_owned(),
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut list = self.applying.0.locked();
        list.retain(|(id, _)| *id != self.id);
    }
}

/// The body of `POST /api/corrections`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrectionBody {
    reason: String,
    from: String,
    to: String,
    site: Option<String>,
    projects: Option<Vec<String>>,
    /// A file of the policy folder.
    module: Option<String>,
    /// A module the schedule knows.
    sha256: Option<String>,
    config: Option<serde_json::Map<String, serde_json::Value>>,
    /// Only say what it would book (the default).
    #[serde(default = "yes")]
    dry_run: bool,
}

fn yes() -> bool {
    true
}

/// An RFC 3339 date-time, or a date (its midnight, UTC), as Unix ns.
fn instant(name: &str, text: &str) -> Result<i64, String> {
    let parsed = DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .and_then(|t| t.and_utc().timestamp_nanos_opt())
        });
    parsed.ok_or_else(|| {
        format!("{name} = {text:?} is not an RFC 3339 date-time (2026-11-01T00:00:00Z) or a date")
    })
}

type Refusal = (StatusCode, String);

/// A checked request and the module that re-prices it.
struct Checked {
    request: Request,
    module: Arc<Module>,
    dry_run: bool,
}

/// Checks the body and loads its module (blocking: may compile it).
fn check(app: &AppState, body: CorrectionBody) -> Result<Checked, Refusal> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let reason = body.reason.trim().to_owned();
    if reason.is_empty() {
        return Err(bad(
            "reason is empty: say why the prices are corrected".into()
        ));
    }
    let (from, to) = (
        instant("from", &body.from).map_err(bad)?,
        instant("to", &body.to).map_err(bad)?,
    );
    if from >= to {
        return Err(bad(format!(
            "from ({}) must be before to ({})",
            body.from, body.to
        )));
    }
    let site = body
        .site
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    // `default` is the name policies.toml and `[[changes]]` give the
    // default entry, never a location: taken as one, it would match no
    // usage and book nothing without a word.
    if site.as_deref() == Some(DEFAULT_SITE) {
        return Err(bad(format!(
            "site {DEFAULT_SITE:?} names the default entry of policies.toml, not a location: \
             leave \"site\" out to correct every site, or give a location_id (e.g. \"8676\")"
        )));
    }
    let projects = match body.projects {
        Some(list) if list.iter().any(|p| p.trim().is_empty()) => {
            return Err(bad("projects holds a blank name".into()));
        }
        Some(mut list) if !list.is_empty() => {
            list.sort();
            list.dedup();
            Some(list)
        }
        Some(_) => {
            return Err(bad(
                "projects is empty: leave it out for every project".into()
            ));
        }
        None => None,
    };
    let schedule = app.schedule.load_full();
    // Bytes from the folder are kept in the ledger when the correction is
    // applied, so that its module stays known by its SHA-256.
    let mut from_folder = false;
    let (bytes, sha256) = match (body.module, body.sha256) {
        (Some(file), None) => {
            from_folder = true;
            let bytes = folder_module(app, &file)?;
            let sha256 = hex::encode(Sha256::digest(&bytes));
            (bytes, sha256)
        }
        (None, Some(sha256)) => {
            let sha256 = sha256.trim().to_ascii_lowercase();
            if !schedule.entries().iter().any(|v| v.entry.sha256 == sha256) {
                return Err((
                    StatusCode::NOT_FOUND,
                    format!(
                        "the price schedule knows no module with sha256 {sha256} (see GET /api/policies)"
                    ),
                ));
            }
            let bytes = app
                .prices
                .module_bytes(&sha256)
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .ok_or_else(|| {
                    (
                        StatusCode::NOT_FOUND,
                        format!("the ledger holds no module with sha256 {sha256}"),
                    )
                })?;
            (bytes, sha256)
        }
        _ => {
            return Err(bad(
                "give the module that re-prices: \"module\" (a file in the policy folder) or \"sha256\" (a module of the schedule), not both".into(),
            ));
        }
    };
    // No configuration given: the schedule's latest for these bytes, else none.
    let config = match body.config {
        Some(object) => {
            let table: toml::Table = serde_json::from_value(serde_json::Value::Object(object))
                .map_err(|e| bad(format!("config: {e}")))?;
            toml::to_string(&table).map_err(|e| bad(format!("config: {e}")))?
        }
        None => schedule
            .entries()
            .iter()
            .rev()
            .find(|v| v.entry.sha256 == sha256)
            .map(|v| v.entry.config.clone())
            .unwrap_or_default(),
    };
    let runtime = app.prices.runtime();
    let module = runtime
        .load_bytes_with(&bytes, &config, runtime.limits())
        .map_err(|e| {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the module is not usable: {e}"),
            )
        })?;
    if from_folder && !body.dry_run {
        app.prices
            .keep_module(&sha256, &bytes)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    }
    Ok(Checked {
        request: Request {
            reason,
            scope: CorrectionScope {
                from,
                to,
                site,
                projects,
            },
            sha256,
            config,
        },
        module: Arc::new(module),
        dry_run: body.dry_run,
    })
}

/// A module file of the policy folder (signed, where signatures are required).
fn folder_module(app: &AppState, file: &str) -> Result<Vec<u8>, Refusal> {
    let plain =
        !file.is_empty() && !file.contains(['/', '\\']) && file != ".." && file.ends_with(".wasm");
    if !plain {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("module = {file:?} is not the name of a .wasm file in the policy folder"),
        ));
    }
    let path = app.registry.folder().join(file);
    let bytes = std::fs::read(&path).map_err(|e| {
        (
            StatusCode::NOT_FOUND,
            format!("cannot read {file} in the policy folder: {e}"),
        )
    })?;
    if let Some(keys) = app.prices.runtime().trusted_keys() {
        let signature = std::fs::read_to_string(path.with_extension("wasm.sig")).map_err(|e| {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("modules need a signature by a trusted key: {file}.sig: {e}"),
            )
        })?;
        keys.verify(&bytes, &signature)
            .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    }
    Ok(bytes)
}

/// `POST /api/corrections` (`X-API-KEY`): previews (`dry_run`, the
/// default) or applies a correction; 200 with what it changes per project.
pub async fn correct(State(app): State<AppState>, _: Admin, body: axum::body::Bytes) -> Response {
    let body: CorrectionBody = match super::json_body(
        &body,
        r#"{"reason": "…", "from": "RFC 3339", "to": "RFC 3339", "module": "file.wasm" or "sha256": "…", "dry_run": true}"#,
    ) {
        Ok(body) => body,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let checked = {
        let app = app.clone();
        match blocking(move || check(&app, body)).await {
            Ok(Ok(checked)) => checked,
            Ok(Err((status, message))) => return error(status, message),
            Err(response) => return response,
        }
    };
    let id = checked.request.id();
    let claim = if checked.dry_run {
        None
    } else {
        match app.applying.claim(&id, &checked.request.scope) {
            Ok(claim) => Some(claim),
            Err(message) => return error(StatusCode::CONFLICT, message),
        }
    };
    let ledger = app.corrections.clone();
    let webhook = app.webhooks.is_some();
    let work = blocking(move || run(&*ledger, checked, webhook)).await;
    drop(claim);
    match work {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err((status, message))) => error(status, message),
        Err(response) => response,
    }
}

/// Computes (and, applying, books) a checked correction.
fn run(
    ledger: &dyn crate::ledger::Corrections,
    checked: Checked,
    webhook: bool,
) -> Result<CorrectionAnswer, Refusal> {
    let info = checked.module.info();
    let policy = PolicyStamp {
        name: info.name.clone(),
        version: info.version.clone(),
        sha256: info.sha256.clone(),
    };
    apply(
        ledger,
        &checked.request,
        &*checked.module,
        &policy,
        checked.dry_run,
        webhook,
    )
    .map_err(|e| {
        let status = match e {
            CorrectionError::Unpriceable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            CorrectionError::Busy => StatusCode::CONFLICT,
            CorrectionError::Ledger(_) | CorrectionError::Corrupt(..) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, e.to_string())
    })
}

/// `GET /api/corrections` (`X-API-KEY`): every correction booked, oldest first.
pub async fn list(State(app): State<AppState>, _: Admin) -> Response {
    let ledger = app.corrections.clone();
    match blocking(move || ledger.corrections()).await {
        Ok(Ok(all)) => {
            let shown: Vec<serde_json::Value> = all
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "id": c.id, "reason": c.reason,
                        "from": show_time(c.scope.from), "to": show_time(c.scope.to),
                        "site": c.scope.site, "only_projects": c.scope.projects,
                        "policy": {"name": c.policy.name, "version": c.policy.version, "sha256": c.policy.sha256},
                        "total_difference": c.total.to_string(),
                        "booked_at": show_time(c.booked_at),
                    })
                })
                .collect();
            Json(serde_json::json!({ "corrections": shown })).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(response) => response,
    }
}

/// The query of `GET /api/statements`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementQuery {
    from: Option<String>,
    to: Option<String>,
    /// `YYYY-MM`: that calendar month (UTC), instead of `from` and `to`.
    month: Option<String>,
    project: Option<String>,
    format: Option<String>,
}

/// The CSV header of a statement.
pub const CSV_HEADER: [&str; 13] = [
    "period_start",
    "period_end",
    "project",
    "site",
    "metric",
    "unit",
    "quantity",
    "credits",
    "policy",
    "policy_version",
    "policy_sha256",
    "correction_id",
    "reason",
];

/// The first instant of a month, as Unix ns.
fn month_start(year: i32, month: u32) -> Option<i64> {
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .and_then(|t| t.timestamp_nanos_opt())
}

/// `[from, to)` of a statement: given, a month, or the previous calendar month.
fn period(query: &StatementQuery) -> Result<(i64, i64), String> {
    let month = |year: i32, month: u32| -> Result<(i64, i64), String> {
        let (next_year, next) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        match (month_start(year, month), month_start(next_year, next)) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(format!("no month {year}-{month:02}")),
        }
    };
    match (&query.month, &query.from, &query.to) {
        (Some(text), None, None) => {
            let parsed = NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d")
                .map_err(|_| format!("month = {text:?} is not of the form 2026-11"))?;
            month(parsed.year(), parsed.month())
        }
        (Some(_), _, _) => Err("give month, or from and to, not both".into()),
        (None, None, None) => {
            let now = Utc::now();
            let (year, previous) = if now.month() == 1 {
                (now.year() - 1, 12)
            } else {
                (now.year(), now.month() - 1)
            };
            month(year, previous)
        }
        (None, Some(from), Some(to)) => {
            let (from, to) = (instant("from", from)?, instant("to", to)?);
            if from >= to {
                return Err("from must be before to".into());
            }
            Ok((from, to))
        }
        (None, _, _) => {
            Err("give both from and to (or month, or neither for the previous month)".into())
        }
    }
}

/// `GET /api/statements?from=&to=[&project=][&format=csv|json]`: what each
/// project used per site, metric and schedule version, the corrections and
/// adjustments; all projects need `X-API-KEY`, one is as public as its history.
pub async fn statements(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<StatementQuery>,
) -> Response {
    let project = query.project.clone().filter(|p| !p.trim().is_empty());
    if project.is_none()
        && let Err((status, message)) = authorize(&app, &headers)
    {
        return error(
            status,
            format!(
                "{message} (a statement of every project needs the admin key; give project= for one)"
            ),
        );
    }
    let csv = match query.format.as_deref() {
        None | Some("csv") => true,
        Some("json") => false,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("format = {other:?}: give csv or json"),
            );
        }
    };
    let (from, to) = match period(&query) {
        Ok(period) => period,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let ledger = app.corrections.clone();
    let units = units(&app);
    let made = blocking(move || {
        let basis = ledger.statement_basis(from, to, project.as_deref())?;
        statement(&basis, (from, to))
    })
    .await;
    let lines = match made {
        Ok(Ok(lines)) => lines,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(response) => return response,
    };
    let (start, end) = (show_time(from), show_time(to));
    let unit = |line: &crate::billing::correction::StatementLine| {
        units
            .get(&(line.policy.sha256.clone(), line.metric.clone()))
            .cloned()
            .unwrap_or_default()
    };
    if csv {
        let mut out = csv::Writer::from_writer(Vec::new());
        let mut rows = vec![CSV_HEADER.map(str::to_owned).to_vec()];
        for line in &lines {
            rows.push(vec![
                start.clone(),
                end.clone(),
                line.project.clone(),
                line.site.clone(),
                line.metric.clone(),
                unit(line),
                line.quantity
                    .map(|q| q.normalize().to_string())
                    .unwrap_or_default(),
                line.credits.normalize().to_string(),
                line.policy.name.clone(),
                line.policy.version.clone(),
                line.policy.sha256.clone(),
                line.correction_id.clone().unwrap_or_default(),
                line.reason.clone().unwrap_or_default(),
            ]);
        }
        for row in rows {
            if let Err(e) = out.write_record(&row) {
                return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
        }
        return match out.into_inner() {
            Ok(bytes) => (
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!(
                            "attachment; filename=\"statement-{}.csv\"",
                            &start[..10.min(start.len())]
                        ),
                    ),
                ],
                bytes,
            )
                .into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
    }
    let mut totals: BTreeMap<&str, Decimal> = BTreeMap::new();
    for line in &lines {
        *totals.entry(&line.project).or_default() += line.credits;
    }
    let shown: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| {
            serde_json::json!({
                "period_start": start, "period_end": end,
                "project": line.project, "site": line.site, "metric": line.metric,
                "unit": unit(line),
                "quantity": line.quantity.map(|q| q.normalize().to_string()),
                "credits": line.credits.normalize().to_string(),
                "policy": line.policy.name, "policy_version": line.policy.version,
                "policy_sha256": line.policy.sha256,
                "correction_id": line.correction_id, "reason": line.reason,
            })
        })
        .collect();
    let totals: Vec<serde_json::Value> = totals
        .into_iter()
        .map(|(project, credits)| serde_json::json!({"project": project, "credits": credits.normalize().to_string()}))
        .collect();
    Json(serde_json::json!({
        "period_start": start, "period_end": end, "lines": shown, "totals": totals,
    }))
    .into_response()
}

/// (module sha256, metric) -> unit, from the schedule's modules.
fn units(app: &AppState) -> BTreeMap<(String, String), String> {
    let schedule = app.schedule.load_full();
    schedule
        .entries()
        .iter()
        .filter_map(|v| v.module())
        .flat_map(|m| {
            let info = m.info();
            info.metrics
                .iter()
                .map(|metric| {
                    (
                        (info.sha256.clone(), metric.name.clone()),
                        metric.unit.clone(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(from: i64, to: i64, site: Option<&str>, projects: Option<&[&str]>) -> CorrectionScope {
        CorrectionScope {
            from,
            to,
            site: site.map(str::to_owned),
            projects: projects.map(|p| p.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    #[test]
    fn a_correction_overlapping_one_being_applied_is_refused_until_it_is_done() {
        let applying = Arc::new(Applying::default());
        let first = applying.claim("a", &scope(10, 20, None, None)).unwrap();
        // Overlapping in time, every site and project: refused, naming it.
        let refused = applying.claim("b", &scope(15, 30, Some("8676"), None));
        assert!(refused.err().unwrap().contains("correction a"));
        // Other times, sites or projects: fine.
        let later = applying.claim("c", &scope(20, 30, None, None)).unwrap();
        let other_site = applying
            .claim("d", &scope(0, 5, Some("8676"), None))
            .unwrap();
        let site_b = applying
            .claim("e", &scope(0, 5, Some("8677"), Some(&["p"])))
            .unwrap();
        assert!(
            applying
                .claim("f", &scope(0, 5, Some("8677"), Some(&["q"])))
                .is_ok()
        );
        assert!(
            applying
                .claim("g", &scope(0, 5, Some("8677"), Some(&["p", "r"])))
                .is_err()
        );
        drop((later, other_site, site_b));
        drop(first);
        assert!(
            applying
                .claim("b", &scope(15, 30, Some("8676"), None))
                .is_ok()
        );
    }

    #[test]
    fn a_statement_period_is_a_month_the_previous_one_or_given() {
        let query = |month: Option<&str>, from: Option<&str>, to: Option<&str>| StatementQuery {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            month: month.map(str::to_owned),
            project: None,
            format: None,
        };
        let november = period(&query(Some("2026-11"), None, None)).unwrap();
        assert_eq!(show_time(november.0), "2026-11-01T00:00:00Z");
        assert_eq!(show_time(november.1), "2026-12-01T00:00:00Z");
        let december = period(&query(Some("2026-12"), None, None)).unwrap();
        assert_eq!(show_time(december.1), "2027-01-01T00:00:00Z");
        let previous = period(&query(None, None, None)).unwrap();
        assert!(previous.1 - previous.0 >= 28 * 86_400_000_000_000);
        assert!(period(&query(Some("2026-13"), None, None)).is_err());
        assert!(period(&query(Some("2026-11"), Some("2026-11-01"), None)).is_err());
        assert!(period(&query(None, Some("2026-11-02"), Some("2026-11-01"))).is_err());
        assert!(period(&query(None, Some("2026-11-01"), None)).is_err());
        let given = period(&query(
            None,
            Some("2026-11-01"),
            Some("2026-11-01T12:00:00+01:00"),
        ))
        .unwrap();
        assert_eq!(given.1 - given.0, 11 * 3_600_000_000_000);
    }
}
