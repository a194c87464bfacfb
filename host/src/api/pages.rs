//! Self-contained pages and the API description: `GET /api/openapi.json`,
//! `GET /api/docs` and `GET /credits_history/{project}`. Everything they
//! need is in the binary (no CDN: such stacks often run offline).

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The OpenAPI 3.1 document of every route.
pub const OPENAPI: &str = include_str!("pages/openapi.json");

const DOCS: &str = include_str!("pages/docs.html");
const HISTORY: &str = include_str!("pages/history.html");

fn html(page: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The pages load nothing from elsewhere; say so to the browser.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
        ],
        page,
    )
        .into_response()
}

/// `GET /api/openapi.json`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `GET /api/docs`: the document as a page.
pub async fn docs() -> Response {
    html(DOCS)
}

/// `GET /credits_history/{project}`: a chart of the project's credits; the
/// page reads the project from its own address and the data from
/// `/api/credits_history/{project}`.
pub async fn history() -> Response {
    html(HISTORY)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The operations of the OpenAPI document: `(method, path)`.
    pub fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |method| (method.clone(), path.clone()))
            })
            .collect()
    }

    #[test]
    fn the_openapi_document_describes_exactly_the_routes_there_are() {
        let routed: BTreeSet<(String, String)> = super::super::ROUTES
            .iter()
            .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
            .collect();
        assert_eq!(documented(), routed);
    }
}
