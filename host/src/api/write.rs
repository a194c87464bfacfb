//! `POST /write`: line protocol from an InfluxDB subscription.
//!
//! Answers as InfluxDB does: 204 when every line was accepted; 400 with
//! `{"error", "lines": [{"line", "error"}]}` when some were not, while the
//! good lines are applied; 413 past the body limit. Never 429 or 503: a
//! subscription does not retry. With write credentials configured: 401
//! without a valid one; points of sites the writer may not bill are
//! refused and counted (403 when that is every line, else as above).

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::{AppState, auth, error};
use crate::billing::engine::Write;
use crate::ingest::Precision;

/// The query of an InfluxDB 1.x write; `db`, `rp`, `consistency` are
/// accepted and not used; `u` and `p` are a credential.
#[derive(Debug, Deserialize)]
pub struct WriteQuery {
    #[serde(default)]
    precision: String,
    #[serde(flatten)]
    credential: auth::CredentialQuery,
}

pub async fn write(
    State(app): State<AppState>,
    Query(query): Query<WriteQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let writer = match auth::writer(&app, "/write", &headers, &query.credential).await {
        Ok(writer) => writer,
        Err(refused) => return refused,
    };
    let Some(precision) = Precision::parse(&query.precision) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown precision {:?} (n, u, ms, s, m or h)",
                query.precision
            ),
        );
    };
    let received = crate::time::now_ns();
    let bytes = body.len();
    let write = Write::Lines {
        text: body,
        precision,
        received,
        scope: writer.scope.clone(),
    };
    let report = match app.replica.write(write).await {
        Ok(report) => report,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Some(forbidden) = auth::refused(&app, &writer, &report) {
        return forbidden;
    }
    tracing::debug!(
        bytes,
        lines = report.lines,
        billed = report.billed,
        "write applied"
    );
    if report.rejected_count == 0 {
        return StatusCode::NO_CONTENT.into_response();
    }
    let summary = format!(
        "{} of {} lines rejected; the other lines were applied",
        report.rejected_count, report.lines
    );
    tracing::warn!("write: {summary}");
    let body = serde_json::json!({ "error": summary, "lines": report.rejected });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}
