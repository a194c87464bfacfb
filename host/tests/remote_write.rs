//! `POST /api/v1/write` end to end: the real binary, remote-write bodies
//! encoded as Prometheus encodes them. Refusals with their reasons, samples
//! refused alone, and at-least-once delivery billing nothing twice.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::{Service, http, policy_dir};
use os_credits::ingest::remote_write::{
    Label, PromSample, STALE_NAN, TimeSeries, WriteRequest, encode,
};
use reqwest::StatusCode;
use rust_decimal::Decimal;

const T0: i64 = 1_714_609_360_727;
const MINUTE: i64 = 60_000;

fn label(name: &str, value: &str) -> Label {
    Label {
        name: Bytes::copy_from_slice(name.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

/// One series of the exporter at site 8676, with these samples.
fn series(
    metric: &str,
    project: &str,
    replica: Option<&str>,
    samples: &[(i64, f64)],
) -> TimeSeries {
    let mut labels = vec![
        label("__name__", metric),
        label("domain_name", "elixir"),
        label("location_id", "8676"),
        label("project_name", project),
    ];
    if let Some(replica) = replica {
        labels.push(label("replica", replica));
    }
    TimeSeries {
        labels,
        samples: samples
            .iter()
            .map(|&(timestamp, value)| PromSample { value, timestamp })
            .collect(),
        histograms: Vec::new(),
    }
}

fn post(service: &Service, body: Vec<u8>, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let mut request = http().post(service.at("/api/v1/write")).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().unwrap();
    (response.status(), response.text().unwrap())
}

/// Posts as Prometheus 2.x does.
fn send(service: &Service, request: &WriteRequest) -> StatusCode {
    let (status, body) = post(
        service,
        encode(request),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
            ("User-Agent", "Prometheus/2.42.0"),
        ],
    );
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    status
}

fn credits(service: &Service, project: &str) -> Decimal {
    service.get_json(&format!("/api/current_credits/{project}"))["current_credits_exact"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn start() -> (Service, tempfile::TempDir, tempfile::TempDir) {
    let (data, policies) = (tempfile::tempdir().unwrap(), policy_dir(&[]));
    let service = Service::start(data.path(), policies.path(), &[]);
    (service, data, policies)
}

#[test]
fn bodies_that_would_be_misread_are_refused_with_the_reason() {
    let (service, _data, _policies) = start();
    let good = encode(&WriteRequest {
        timeseries: vec![series("project_vcpu_usage", "p", None, &[(T0, 1.0)])],
    });
    let v1 = [
        ("Content-Type", "application/x-protobuf"),
        ("Content-Encoding", "snappy"),
    ];
    // Remote write 2.0: a 1.0 decoder would read it as empty.
    let (status, body) = post(
        &service,
        good.clone(),
        &[
            (
                "Content-Type",
                "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            ),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "2.0.0"),
        ],
    );
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(body.contains("2.0.0"), "{body}");
    // Another encoding.
    let (status, body) = post(
        &service,
        good.clone(),
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "gzip"),
        ],
    );
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(body.contains("gzip"), "{body}");
    // Truncated and not snappy at all: 400 with the reason.
    let (status, body) = post(&service, good[..good.len() - 2].to_vec(), &v1);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("snappy"), "{body}");
    let (status, body) = post(&service, b"project_vcpu_usage value=1".to_vec(), &v1);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Nothing of any of them was billed or even seen.
    assert_eq!(service.stats()["points"]["received"], 0);
    // The good one is.
    send(
        &service,
        &WriteRequest {
            timeseries: vec![series(
                "project_vcpu_usage",
                "p",
                None,
                &[(T0, 1.0), (T0 + MINUTE, 3.5)],
            )],
        },
    );
    assert_eq!(credits(&service, "p"), Decimal::new(25, 1));
}

#[test]
fn a_nan_is_refused_alone_and_counted_and_stale_markers_are_skipped() {
    let (service, _data, _policies) = start();
    let request = WriteRequest {
        timeseries: vec![
            series(
                "project_vcpu_usage",
                "p",
                None,
                &[(T0, 10.0), (T0 + MINUTE, f64::NAN), (T0 + 2 * MINUTE, 12.0)],
            ),
            series(
                "project_mb_usage",
                "p",
                None,
                &[
                    (T0, 100.0),
                    (T0 + MINUTE, 110.0),
                    (T0 + 2 * MINUTE, f64::from_bits(STALE_NAN)),
                ],
            ),
            series(
                "project_vcpu_usage",
                "q",
                None,
                &[(T0, f64::INFINITY), (T0 + MINUTE, 1.0)],
            ),
        ],
    };
    send(&service, &request);
    // 10 -> 12 vCPU-hours and 100 -> 110 GiB-hours at 0.3.
    assert_eq!(credits(&service, "p"), Decimal::from(5));
    let points = &service.stats()["points"];
    assert_eq!(points["received"], 8, "{points}");
    assert_eq!(points["rejected"], 2, "{points}");
    assert_eq!(points["ignored"]["stale marker"], 1, "{points}");
    let metrics = service.get("/metrics").1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("os_credits_points_rejected_total 2")),
        "{metrics}"
    );
}

/// The stack's shape: 3 projects, cpu and ram, a sample a minute for an
/// hour; the exporter refreshes every other minute.
fn samples(project: usize, metric: usize, offset: i64) -> Vec<(i64, f64)> {
    (0..60)
        .map(|minute| {
            let refreshes = (minute / 2) as f64;
            let value = 1000.0 + refreshes * (0.1 + 0.3 * (project + metric) as f64);
            (T0 + minute * MINUTE + offset, value)
        })
        .collect()
}

const METRICS: [&str; 2] = ["project_vcpu_usage", "project_mb_usage"];

/// All series, each with the samples of `minutes`, from the sender `replica`.
fn request(minutes: std::ops::Range<usize>, replica: Option<&str>, offset: i64) -> WriteRequest {
    let mut timeseries = Vec::new();
    for project in 0..3 {
        for (m, metric) in METRICS.iter().enumerate() {
            let all = samples(project, m, offset);
            timeseries.push(series(
                metric,
                &format!("p{project}"),
                replica,
                &all[minutes.clone()],
            ));
        }
    }
    WriteRequest { timeseries }
}

fn all_credits(service: &Service) -> BTreeMap<String, Decimal> {
    (0..3)
        .map(|p| (format!("p{p}"), credits(service, &format!("p{p}"))))
        .collect()
}

#[test]
fn at_least_once_delivery_bills_nothing_twice() {
    // The reference: every sample once, in order, one sender.
    let (once, _d1, _p1) = start();
    for chunk in 0..6 {
        send(&once, &request(chunk * 10..chunk * 10 + 10, None, 0));
    }
    let expected = all_credits(&once);
    assert!(expected.values().all(|c| *c > Decimal::ZERO));

    // A request re-sent after a lost answer; two shards, one resending out
    // of order across series; an HA pair with its own scrape times.
    let (twice, _d2, _p2) = start();
    for chunk in 0..6 {
        let minutes = chunk * 10..chunk * 10 + 10;
        let whole = request(minutes.clone(), None, 0);
        send(&twice, &whole);
        send(&twice, &whole);
        // The second shard's later half of the series arrives first, then
        // its resend of everything.
        let mut late = whole.clone();
        late.timeseries.reverse();
        send(&twice, &late);
    }
    assert_eq!(all_credits(&twice), expected);

    let (pair, _d3, _p3) = start();
    for chunk in 0..6 {
        let minutes = chunk * 10..chunk * 10 + 10;
        // Replica b scrapes 7 s later than a; both send, interleaved. With
        // the replica label dropped (or kept: it is only a tag) both are
        // the same key.
        send(&pair, &request(minutes.clone(), Some("a"), 0));
        send(&pair, &request(minutes, Some("b"), 7_000));
    }
    assert_eq!(all_credits(&pair), expected);
}
