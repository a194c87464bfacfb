//! Who sent a write: the credential of a `/write` or `/api/v1/write`
//! request (HTTP Basic, InfluxDB's `u`/`p`, or a bearer token), checked
//! against [`crate::writers::Writers`]; and how a write's refused points
//! are answered and counted.

use std::sync::Arc;

use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;

use super::{AppState, blocking, error};
use crate::billing::intake::FeedReport;
use crate::billing::scope::SITE_NOT_ALLOWED;
use crate::writers::{Credential, Denied, Writer};

/// InfluxDB's credential parameters, read by both write endpoints.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CredentialQuery {
    u: Option<String>,
    p: Option<String>,
}

/// The challenge sent with a 401.
const REALM: &str = "Basic realm=\"os-credits\"";

/// The credential a request presents: `Authorization` (Basic or Bearer)
/// first, else the `u` and `p` query parameters. `Err` for an
/// `Authorization` header that does not decode (refused as wrong).
fn credential(
    headers: &HeaderMap,
    u: Option<&str>,
    p: Option<&str>,
) -> Result<Option<Credential>, ()> {
    if let Some(value) = headers.get(AUTHORIZATION) {
        let value = value.to_str().map_err(|_| ())?.trim();
        let (scheme, rest) = value.split_once(' ').ok_or(())?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| ())?;
            let decoded = String::from_utf8(decoded).map_err(|_| ())?;
            let (user, password) = decoded.split_once(':').ok_or(())?;
            return Ok(Some(Credential::Password {
                user: user.to_owned(),
                password: password.to_owned(),
            }));
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            return Ok(Some(Credential::Token(rest.to_owned())));
        }
        return Err(());
    }
    match (u, p) {
        (Some(user), Some(password)) => Ok(Some(Credential::Password {
            user: user.to_owned(),
            password: password.to_owned(),
        })),
        (None, None) => Ok(None),
        _ => Err(()),
    }
}

/// The writer of a request to `endpoint`, or the 401 that refuses it
/// (counted). A bcrypt verification not yet remembered runs off the async
/// threads.
pub(crate) async fn writer(
    app: &AppState,
    endpoint: &'static str,
    headers: &HeaderMap,
    query: &CredentialQuery,
) -> Result<Arc<Writer>, Response> {
    let writers = app.writers.clone();
    let outcome = match credential(headers, query.u.as_deref(), query.p.as_deref()) {
        Err(()) => Err(Denied::Wrong),
        Ok(given) => match writers.known(given.as_ref()) {
            Some(known) => known,
            None => {
                let verifier = writers.clone();
                blocking(move || verifier.verify(given.as_ref())).await?
            }
        },
    };
    outcome.map_err(|why| {
        writers.count_denied(endpoint, why);
        tracing::warn!(
            endpoint,
            reason = why.as_str(),
            "write refused: not authenticated"
        );
        let message = match why {
            Denied::Missing => {
                "this endpoint requires a credential: HTTP Basic, u and p, or a bearer token"
            }
            Denied::Wrong => "wrong credential",
        };
        let mut response = error(StatusCode::UNAUTHORIZED, message);
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static(REALM),
        );
        response
    })
}

/// Counts the points `writer` sent for sites it may not bill, and the 403
/// that answers a body with nothing it may bill (`None`: answer as usual).
pub(crate) fn refused(app: &AppState, writer: &Writer, report: &FeedReport) -> Option<Response> {
    if report.out_of_scope.is_empty() {
        return None;
    }
    let points = report.out_of_scope_count();
    app.writers
        .count_refused(&writer.name, SITE_NOT_ALLOWED, points);
    let sites = report
        .out_of_scope
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    tracing::warn!(
        writer = %writer.name,
        points,
        sites = %sites,
        "points of sites the writer may not bill refused"
    );
    report.nothing_allowed().then(|| {
        error(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not bill site {sites}: nothing of this write was billed",
                writer.name
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(AUTHORIZATION, value.parse().unwrap());
        map
    }

    #[test]
    fn basic_bearer_and_query_credentials_are_read() {
        let basic = base64::engine::general_purpose::STANDARD.encode("exporter:s3cr:et");
        assert_eq!(
            credential(&headers(&format!("Basic {basic}")), None, None),
            Ok(Some(Credential::Password {
                user: "exporter".into(),
                password: "s3cr:et".into()
            }))
        );
        assert_eq!(
            credential(&headers("bearer abc"), None, None),
            Ok(Some(Credential::Token("abc".into())))
        );
        assert_eq!(
            credential(&HeaderMap::new(), Some("u"), Some("p")),
            Ok(Some(Credential::Password {
                user: "u".into(),
                password: "p".into()
            }))
        );
        assert_eq!(credential(&HeaderMap::new(), None, None), Ok(None));
    }

    #[test]
    fn malformed_credentials_are_wrong_not_missing() {
        assert_eq!(credential(&headers("Basic %%%"), None, None), Err(()));
        assert_eq!(credential(&headers("Digest x"), None, None), Err(()));
        assert_eq!(credential(&headers("Basic"), None, None), Err(()));
        assert_eq!(credential(&HeaderMap::new(), Some("u"), None), Err(()));
    }
}
