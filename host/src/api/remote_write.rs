//! `POST /api/v1/write`: Prometheus remote write 1.0, so that a site needs
//! no InfluxDB: the portal Prometheus `remote_write`s here directly.
//!
//! Answers as Prometheus expects: 204 once the samples are committed to
//! the ledger (a refused sample, e.g. a NaN, is counted and logged; the
//! rest is billed: resending would not help it); 400 with the reason for a
//! body that does not decode; 415 for a request this decoder would read
//! wrongly (remote write 2.0, another encoding or content type: a 1.0
//! decoder would see a 2.0 body as empty and lose it silently); 5xx, never
//! 4xx, when the ledger cannot commit, so that Prometheus retries. With
//! write credentials configured: 401 without a valid one (before the body
//! is decoded); samples of sites the writer may not bill are refused and
//! counted (403 when that is every sample, else 204).

use axum::extract::{Query, State};
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::{AppState, auth, blocking, error};
use crate::billing::engine::Write;
use crate::ingest::remote_write;

/// The header Prometheus sends with the protocol version.
const VERSION_HEADER: &str = "x-prometheus-remote-write-version";

/// Why a request is not remote write 1.0 as this endpoint reads it.
fn unsupported(headers: &HeaderMap) -> Option<String> {
    let header = |name| {
        headers.get(name).map(|v| {
            v.to_str()
                .unwrap_or("(not text)")
                .trim()
                .to_ascii_lowercase()
        })
    };
    if let Some(version) = header(VERSION_HEADER)
        && !version.starts_with("0.")
        && !version.starts_with("1.")
    {
        return Some(format!(
            "remote write version {version} is not supported: this endpoint speaks remote write 1.0 (0.1.0); configure protobuf_message: prometheus.WriteRequest"
        ));
    }
    match header(CONTENT_TYPE.as_str()) {
        None => {}
        Some(content_type) => {
            let mut parts = content_type.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            if media != "application/x-protobuf" {
                return Some(format!(
                    "content type {media:?} is not supported: send application/x-protobuf (remote write 1.0)"
                ));
            }
            for parameter in parts {
                if let Some(proto) = parameter.strip_prefix("proto=")
                    && proto != "prometheus.writerequest"
                {
                    return Some(format!(
                        "protobuf message {proto:?} is not supported: this endpoint reads prometheus.WriteRequest (remote write 1.0)"
                    ));
                }
            }
        }
    }
    match header(CONTENT_ENCODING.as_str()).as_deref() {
        Some("snappy") => None,
        None => Some("no Content-Encoding: remote write bodies are snappy-compressed".into()),
        Some(other) => Some(format!(
            "content encoding {other:?} is not supported: remote write 1.0 is snappy (block format)"
        )),
    }
}

pub async fn remote_write(
    State(app): State<AppState>,
    Query(query): Query<auth::CredentialQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let writer = match auth::writer(&app, "/api/v1/write", &headers, &query).await {
        Ok(writer) => writer,
        Err(refused) => return refused,
    };
    if let Some(reason) = unsupported(&headers) {
        tracing::warn!("remote write refused: {reason}");
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, reason);
    }
    let limit = app.remote_write.max_decompressed;
    let raw = body.clone();
    let decoded = match blocking(move || remote_write::decode(&body, limit)).await {
        Ok(decoded) => decoded,
        Err(response) => return response,
    };
    let request = match decoded {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!("remote write refused: {e}");
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let series = request.timeseries.len();
    let write = Write::RemoteWrite {
        raw,
        request: Box::new(request),
        labels: app.remote_write.labels.clone(),
        received: crate::time::now_ns(),
        scope: writer.scope.clone(),
    };
    match app.replica.write(write).await {
        Ok(report) => {
            if let Some(forbidden) = auth::refused(&app, &writer, &report) {
                return forbidden;
            }
            if report.rejected_count > 0 {
                let first = report
                    .rejected
                    .first()
                    .map(|issue| format!("sample {}: {}", issue.line, issue.error))
                    .unwrap_or_default();
                tracing::warn!(
                    refused = report.rejected_count,
                    samples = report.lines,
                    "remote write: samples refused, the others billed (first: {first})"
                );
            }
            tracing::debug!(
                series,
                samples = report.lines,
                billed = report.billed,
                "remote write applied"
            );
            StatusCode::NO_CONTENT.into_response()
        }
        // 5xx: Prometheus keeps the samples and retries.
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn prometheus_1_0_headers_are_accepted_and_2_0_refused_with_a_reason() {
        let v1 = headers(&[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "snappy"),
            ("x-prometheus-remote-write-version", "0.1.0"),
        ]);
        assert_eq!(unsupported(&v1), None);
        let v1_named = headers(&[
            (
                "content-type",
                "application/x-protobuf;proto=prometheus.WriteRequest",
            ),
            ("content-encoding", "snappy"),
        ]);
        assert_eq!(unsupported(&v1_named), None);
        let v2 = headers(&[
            (
                "content-type",
                "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            ),
            ("content-encoding", "snappy"),
            ("x-prometheus-remote-write-version", "2.0.0"),
        ]);
        assert!(unsupported(&v2).unwrap().contains("2.0.0"));
        let v2_type_only = headers(&[
            (
                "content-type",
                "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            ),
            ("content-encoding", "snappy"),
        ]);
        assert!(
            unsupported(&v2_type_only)
                .unwrap()
                .contains("io.prometheus.write.v2.request")
        );
        let gzip = headers(&[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ]);
        assert!(unsupported(&gzip).unwrap().contains("gzip"));
        let plain = headers(&[("content-type", "application/x-protobuf")]);
        assert!(unsupported(&plain).unwrap().contains("snappy"));
        let json = headers(&[
            ("content-type", "application/json"),
            ("content-encoding", "snappy"),
        ]);
        assert!(unsupported(&json).unwrap().contains("application/json"));
    }
}
