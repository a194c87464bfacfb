//! The portal's API, in the formats of the Python service:
//! `/api/metrics`, `/api/costs_per_hour`, `/api/credits_history/{project}`,
//! `/api/current_credits/{project}`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{AppState, Exact, blocking, error};
use crate::credits::round;
use crate::ledger::{HistoryCorrection, HistoryRow, ProjectRecord};
use crate::policy::set::DEFAULT_SITE;

/// The date format of the history API.
const DATE_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// `GET /api/metrics`: every metric the active policies price, by friendly name.
pub async fn metrics(State(app): State<AppState>) -> Response {
    let mut metrics = BTreeMap::new();
    for (_, module) in super::modules_at(&app, crate::time::now_ns()) {
        for m in &module.info().metrics {
            metrics.entry(m.friendly_name.clone()).or_insert_with(|| {
                serde_json::json!({
                    "type": m.amount_type, "description": m.description,
                    "name": m.name, "friendly_name": m.friendly_name,
                })
            });
        }
    }
    Json(metrics).into_response()
}

#[derive(Debug, Deserialize)]
pub struct SiteQuery {
    location_id: Option<String>,
    at: Option<String>,
}

/// `POST /api/costs_per_hour`: `{"cpu":16,"ram":32}` -> `25.6`. Each
/// metric's cost is rounded, the sum rounded again. `?location_id=` quotes
/// with that site's policy, `?at=` (RFC 3339) with the schedule's version
/// in force then (default: now).
pub async fn costs_per_hour(
    State(app): State<AppState>,
    Query(site): Query<SiteQuery>,
    body: Bytes,
) -> Response {
    let amounts: BTreeMap<String, Box<RawValue>> = match serde_json::from_slice(&body) {
        Ok(amounts) => amounts,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected a JSON object of metric amounts, e.g. {{\"cpu\":16,\"ram\":32}}: {e}"
                ),
            );
        }
    };
    let at = match &site.at {
        None => crate::time::now_ns(),
        Some(text) => match chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
        {
            Some(at) => at,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("at={text:?} is not an RFC 3339 date-time (e.g. 2027-01-01T00:00:00Z)"),
                );
            }
        },
    };
    let schedule = app.schedule.load_full();
    let location = site.location_id.as_deref().unwrap_or(DEFAULT_SITE);
    let policy = match schedule.in_force(location, at).map(|v| v.module()) {
        Some(Some(module)) => module.clone(),
        Some(None) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the policy in force then cannot be loaded (see /api/policies)",
            );
        }
        None => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no price schedule yet (the service is starting)",
            );
        }
    };
    let mut requests = Vec::new();
    for (friendly, raw) in &amounts {
        let Some(metric) = policy
            .info()
            .metrics
            .iter()
            .find(|m| m.friendly_name == *friendly)
        else {
            return error(
                StatusCode::NOT_FOUND,
                format!("unknown metric {friendly:?}"),
            );
        };
        let text = raw.get();
        let is_number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
        let integral = !text.contains(['.', 'e', 'E']);
        if !is_number || (metric.amount_type == "int" && !integral) {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{friendly}: expected {}, got {text}",
                    if metric.amount_type == "int" {
                        "an integer"
                    } else {
                        "a number"
                    }
                ),
            );
        }
        let Ok(amount) = pricing_sdk::parse_decimal(text) else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{friendly}: {text} is out of range"),
            );
        };
        requests.push((metric.name.clone(), amount));
    }
    let precision = app.precision;
    let now = crate::time::now_ns();
    let quoted = blocking(move || {
        let mut total = Decimal::ZERO;
        for (metric, amount) in requests {
            total += round(policy.cost_per_hour(&metric, amount, now)?, precision);
        }
        Ok::<_, crate::policy::CallError>(round(total, precision))
    })
    .await;
    match quoted {
        Ok(Ok(total)) => Json(Exact(total)).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    start_date: Option<String>,
    end_date: Option<String>,
}

fn parse_date(name: &str, text: &Option<String>) -> Result<Option<i64>, String> {
    let Some(text) = text.as_deref().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    NaiveDateTime::parse_from_str(text, DATE_FORMAT)
        .ok()
        .and_then(|d| d.and_utc().timestamp_nanos_opt())
        .map(Some)
        .ok_or_else(|| format!("{name} {text:?} is not a date of the form 2019-01-08 00:00:00"))
}

/// The history's JSON: lists headed by their names (the Python format).
/// Raw values, so that credits are written exactly. `reasons` only when a
/// correction is shown (its entries name it; a charge's are empty).
#[derive(serde::Serialize)]
struct History {
    timestamps: Vec<String>,
    credits: Vec<Cell>,
    metrics: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasons: Option<Vec<String>>,
}

/// A cell of the history's credits: the list's name, then numbers.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Cell {
    Name(&'static str),
    Credits(Exact),
}

/// `/api/current_credits`' JSON.
#[derive(serde::Serialize)]
struct CurrentCredits {
    current_credits: Exact,
    granted_credits: Option<Exact>,
    /// Exact credits used, as a decimal string.
    current_credits_exact: Decimal,
}

/// One shown history entry.
struct Entry {
    timestamp: i64,
    credits: Decimal,
    metric: String,
    /// A correction's reason.
    reason: Option<String>,
}

/// The metric a correction's entry shows.
const CORRECTION: &str = "correction";

/// The entries a history shows: one per charge that changed the rounded
/// credits used (so small steps appear when they add up, as in the Python
/// service), and one per correction, at the time it was booked, with its
/// reason; credits left when granted credits are known, else credits used.
/// A correction counts from its booking on: earlier entries stay as they were.
fn entries(
    rows: Vec<HistoryRow>,
    corrections: Vec<HistoryCorrection>,
    record: &ProjectRecord,
    precision: u32,
) -> Vec<Entry> {
    let corrected: Decimal = corrections.iter().map(|c| c.amount).sum();
    let mut base = record.adopted - corrected;
    let mut shown = Vec::new();
    let mut last = round(base, precision);
    let mut charged = Decimal::ZERO;
    let mut pending = corrections.into_iter().peekable();
    let show = |used: Decimal| match record.granted {
        Some(granted) => round(granted - used, precision),
        None => round(used, precision),
    };
    let correct = |correction: HistoryCorrection,
                   base: &mut Decimal,
                   last: &mut Decimal,
                   charged: Decimal,
                   shown: &mut Vec<Entry>| {
        *base += correction.amount;
        *last = round(*base + charged, precision);
        shown.push(Entry {
            timestamp: correction.recorded_at,
            credits: show(*base + charged),
            metric: CORRECTION.into(),
            reason: Some(correction.reason),
        });
    };
    for row in rows {
        while let Some(correction) = pending.next_if(|c| c.recorded_at <= row.recorded_at) {
            correct(correction, &mut base, &mut last, charged, &mut shown);
        }
        charged = row.charged_after;
        let used = round(base + charged, precision);
        if used == last {
            continue;
        }
        last = used;
        shown.push(Entry {
            timestamp: row.timestamp,
            credits: show(base + charged),
            metric: row.metric,
            reason: None,
        });
    }
    for correction in pending {
        correct(correction, &mut base, &mut last, charged, &mut shown);
    }
    shown
}

/// `GET /api/credits_history/{project}?start_date=&end_date=`.
pub async fn credits_history(
    State(app): State<AppState>,
    Path(project): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Response {
    if project.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "project name is blank");
    }
    let (start, end) = match (
        parse_date("start_date", &query.start_date),
        parse_date("end_date", &query.end_date),
    ) {
        (Ok(start), Ok(end)) => (start, end),
        (Err(message), _) | (_, Err(message)) => return error(StatusCode::BAD_REQUEST, message),
    };
    if let (Some(start), Some(end)) = (start, end)
        && end <= start
    {
        return error(StatusCode::BAD_REQUEST, "end_date must be after start_date");
    }
    let ledger = app.ledger.clone();
    let name = project.clone();
    let read = blocking(move || {
        Ok::<_, crate::ledger::LedgerError>((
            ledger.project(&name)?,
            ledger.history(&name)?,
            ledger.history_corrections(&name)?,
        ))
    })
    .await;
    let (record, rows, corrections) = match read {
        Ok(Ok((Some(record), rows, corrections))) => (record, rows, corrections),
        Ok(Ok((None, _, _))) => {
            return error(StatusCode::NOT_FOUND, format!("no history for {project}"));
        }
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(response) => return response,
    };
    let all = entries(rows, corrections, &record, app.precision);
    if all.is_empty() {
        return error(StatusCode::NOT_FOUND, format!("no history for {project}"));
    }
    let friendly = friendly_names(&app);
    let in_range: Vec<&Entry> = all
        .iter()
        .rev()
        .filter(|e| start.is_none_or(|s| e.timestamp >= s) && end.is_none_or(|t| e.timestamp <= t))
        .collect();
    if in_range.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let text = |s: &str| s.to_owned();
    let mut timestamps = vec![text("timestamps")];
    let mut credits = vec![Cell::Name("credits")];
    let mut metrics = vec![text("metrics")];
    let any_reason = in_range.iter().any(|e| e.reason.is_some());
    let mut reasons = vec![text("reasons")];
    for entry in in_range {
        reasons.push(text(entry.reason.as_deref().unwrap_or_default()));
        let date = DateTime::from_timestamp_nanos(entry.timestamp)
            .format(DATE_FORMAT)
            .to_string();
        timestamps.push(text(&date));
        credits.push(Cell::Credits(Exact(entry.credits)));
        let metric = friendly.get(&entry.metric).unwrap_or(&entry.metric);
        metrics.push(text(metric));
    }
    Json(History {
        timestamps,
        credits,
        metrics,
        reasons: any_reason.then_some(reasons),
    })
    .into_response()
}

/// Metric name -> friendly name, from the active policies.
fn friendly_names(app: &AppState) -> BTreeMap<String, String> {
    super::modules_at(app, crate::time::now_ns())
        .into_iter()
        .flat_map(|(_, module)| module.info().metrics.clone())
        .map(|m| (m.name, m.friendly_name))
        .collect()
}

/// `GET /api/current_credits/{project}`:
/// `{"current_credits": used, "granted_credits": granted or null}`, rounded.
pub async fn current_credits(State(app): State<AppState>, Path(project): Path<String>) -> Response {
    let ledger = app.ledger.clone();
    let name = project.clone();
    let record = match blocking(move || ledger.project(&name)).await {
        Ok(Ok(Some(record))) => record,
        Ok(Ok(None)) => return error(StatusCode::NOT_FOUND, format!("unknown project {project}")),
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(response) => return response,
    };
    let precision = app.precision;
    Json(CurrentCredits {
        current_credits: Exact(round(record.used(), precision)),
        granted_credits: record.granted.map(|g| Exact(round(g, precision))),
        current_credits_exact: record.used(),
    })
    .into_response()
}

/// `GET /api/forecast/{project}`'s query.
#[derive(Debug, Deserialize)]
pub struct ForecastQuery {
    /// The window, in hours (1-2160; default the service's).
    window_hours: Option<String>,
}

/// `GET /api/forecast/{project}?window_hours=`: when the project's credits
/// run out at the pace of the window ending at its latest billed
/// measurement ([`crate::forecast`]); as public as its history.
pub async fn forecast(
    State(app): State<AppState>,
    Path(project): Path<String>,
    Query(query): Query<ForecastQuery>,
) -> Response {
    use crate::forecast::{Forecast, MAX_WINDOW_HOURS, window_ns};
    let hours = match query.window_hours.as_deref().map(str::trim) {
        None | Some("") => app.forecast_window_hours,
        Some(text) => match text.parse::<u32>() {
            Ok(hours) if (1..=MAX_WINDOW_HOURS).contains(&hours) => hours,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "window_hours {text:?} is not a whole number of hours within 1-{MAX_WINDOW_HOURS}"
                    ),
                );
            }
        },
    };
    let ledger = app.forecasts.clone();
    let name = project.clone();
    match blocking(move || ledger.pace(&name, window_ns(hours))).await {
        Ok(Ok(Some(pace))) => Json(Forecast::of(&pace, hours).answer()).into_response(),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, format!("unknown project {project}")),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(response) => response,
    }
}
