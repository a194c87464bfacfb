//! The operator's endpoints end to end: `/metrics` as Prometheus text
//! (read back with a Prometheus parser), `/stats?verbose=true`, and the
//! API key on every admin endpoint.

mod common;

use common::{Service, http, policy_dir};
use prometheus_parse::{Scrape, Value};
use reqwest::StatusCode;

/// The value of the sample `name` with `label` (name, value), if any.
fn sample(scrape: &Scrape, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
}

#[test]
fn metrics_parse_as_prometheus_text_and_agree_with_stats() {
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let service = Service::start(data.path(), policies.path(), &[]);
    service.post_sample();
    let response = http().get(service.at("/metrics")).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().unwrap();
    assert!(text.ends_with("# EOF\n"));
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("# HELP") && l.ends_with("..")),
        "help texts end with one period:\n{text}"
    );
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text");

    let stats = service.get_json("/stats");
    let points = &stats["points"];
    let received = sample(&scrape, "os_credits_points_received_total", None).unwrap();
    assert_eq!(received, points["received"].as_f64().unwrap());
    assert!(received > 6000.0);
    let applied = sample(&scrape, "os_credits_points_applied_total", None).unwrap();
    assert_eq!(applied, points["billed"].as_f64().unwrap());
    for (reason, count) in points["ignored"].as_object().unwrap() {
        let scraped = sample(
            &scrape,
            "os_credits_points_ignored_total",
            Some(("reason", reason.as_str())),
        );
        assert_eq!(scraped, count.as_f64(), "ignored for {reason}");
    }
    // Every pricing call timed; the charges of a write are priced in
    // batches, so there are fewer calls than charges.
    let calls = sample(&scrape, "os_credits_policy_call_seconds", None).unwrap();
    assert!(
        calls >= 1.0 && calls < applied,
        "{calls} calls for {applied} charges"
    );
    let charges = sample(&scrape, "os_credits_charges_total", None).unwrap();
    assert_eq!(charges, stats["charges"].as_f64().unwrap());
    assert_eq!(sample(&scrape, "os_credits_queue_depth", None), Some(0.0));
    // The folder is the schedule's only entry, as it was at start.
    assert_eq!(
        sample(&scrape, "os_credits_policy_folder_differences", None),
        Some(0.0)
    );
    assert_eq!(
        sample(&scrape, "os_credits_policy_schedule_entries", None),
        Some(1.0)
    );
    for name in [
        "os_credits_policy_errors_total",
        "os_credits_perun_sync_lag_seconds",
        "os_credits_perun_errors_total",
        "os_credits_mails_sent_total",
        "os_credits_mails_failed_total",
    ] {
        assert!(sample(&scrape, name, None).is_some(), "{name} missing");
    }

    let verbose = service.get_json("/stats?verbose=true");
    assert_eq!(verbose["queue"]["depth"], 0);
    assert!(verbose["queue"]["transactions"].as_u64().unwrap() >= 1);
    let workers = verbose["runtime"]["workers"].as_array().unwrap();
    assert_eq!(workers.len() as u64, stats["workers"].as_u64().unwrap());
    assert!(workers[0]["busy_seconds"].is_number());
    assert!(stats.get("runtime").is_none(), "only with verbose=true");
}

#[test]
fn every_admin_endpoint_refuses_a_missing_or_wrong_key() {
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let service = Service::start(data.path(), policies.path(), &[("API_KEY", "s3cret")]);
    // (`POST /api/policies` with the key and this body: the key passes,
    // the body is refused as no upload.)
    let admin = [
        ("/logconfig", r#"{"filter":"os_credits=info"}"#, true),
        ("/api/policies/reload", "", true),
        ("/api/policies", "{}", false),
        ("/api/corrections", "{}", false),
    ];
    for (path, body, succeeds) in admin {
        let send = |key: Option<&str>| {
            let mut request = http()
                .post(service.at(path))
                .header("content-type", "application/json")
                .body(body.to_owned());
            if let Some(key) = key {
                request = request.header("X-API-KEY", key);
            }
            request.send().unwrap().status()
        };
        assert_eq!(send(None), StatusCode::UNAUTHORIZED, "{path} without a key");
        assert_eq!(
            send(Some("wrong")),
            StatusCode::FORBIDDEN,
            "{path} with a wrong key"
        );
        assert_eq!(
            send(Some("s3cre")),
            StatusCode::FORBIDDEN,
            "{path} with a near miss"
        );
        let with_key = send(Some("s3cret"));
        if succeeds {
            assert!(with_key.is_success(), "{path} with the key");
        } else {
            assert_eq!(with_key, StatusCode::BAD_REQUEST, "{path} with the key");
        }
    }
    // The admin reads: every correction, every project's statement.
    let reads = ["/api/corrections", "/api/statements"];
    for path in reads {
        let send = |key: Option<&str>| {
            let mut request = http().get(service.at(path));
            if let Some(key) = key {
                request = request.header("X-API-KEY", key);
            }
            request.send().unwrap().status()
        };
        assert_eq!(send(None), StatusCode::UNAUTHORIZED, "{path} without a key");
        assert_eq!(
            send(Some("wrong")),
            StatusCode::FORBIDDEN,
            "{path} wrong key"
        );
        assert_eq!(send(Some("s3cret")), StatusCode::OK, "{path} with the key");
    }
    // The documented admin operations are exactly these.
    let doc = service.get_json("/api/openapi.json");
    let (mut secured, mut writes): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    let needs = |op: &serde_json::Value, scheme: &str| {
        op["security"]
            .as_array()
            .is_some_and(|all| all.iter().any(|s| s.get(scheme).is_some()))
    };
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for op in ops.as_object().unwrap().values() {
            if needs(op, "apiKey") {
                secured.push(path.clone());
            }
            if needs(op, "writeBasic") && needs(op, "writeToken") {
                writes.push(path.clone());
            }
        }
    }
    secured.sort();
    secured.dedup();
    let mut expected: Vec<String> = admin.iter().map(|(p, _, _)| (*p).to_owned()).collect();
    expected.extend(reads.iter().map(|p| (*p).to_owned()));
    expected.sort();
    expected.dedup();
    assert_eq!(secured, expected);
    // The write endpoints document their (optional) credentials.
    assert_eq!(writes, ["/api/v1/write", "/write"]);
}

#[test]
fn every_documented_operation_is_served_and_no_other_method_on_its_path() {
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let service = Service::start(data.path(), policies.path(), &[("API_KEY", "k")]);
    // The document as the running service serves it.
    let doc = service.get_json("/api/openapi.json");
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(
        paths
            .values()
            .map(|ops| ops.as_object().unwrap().len())
            .sum::<usize>(),
        os_credits::api::ROUTES.len()
    );
    let methods = ["get", "post", "put", "delete", "patch"];
    for (path, ops) in paths {
        let url = service.at(&path.replace("{project}", "p"));
        for method in methods {
            let request = http()
                .request(method.to_uppercase().parse().unwrap(), &url)
                .header("X-API-KEY", "k")
                .header("content-type", "application/json")
                .body("{}");
            let status = request.send().unwrap().status();
            if ops.get(method).is_some() {
                // Served: the handler answered (404 only as a handler's
                // "no such project", with a JSON body, never the router's).
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                if status == StatusCode::NOT_FOUND {
                    assert!(path.contains("{project}"), "{method} {path}: router 404");
                }
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not documented"
                );
            }
        }
    }
    // A path the document does not have is not served.
    let unknown = http().get(service.at("/api/nope")).send().unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}
