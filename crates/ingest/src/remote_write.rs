//! Prometheus remote write 1.0: a snappy-compressed (block format)
//! protobuf `prometheus.WriteRequest`, decoded into [`Sample`]s.
//!
//! The messages are derived by hand with `prost` (no `protoc` at build
//! time), from Prometheus' `prompb/remote.proto` and `types.proto`; label
//! names and values are kept as slices of the decompressed body (no copy)
//! and checked to be UTF-8. Only what billing needs is decoded: labels and
//! float samples. Exemplars, metadata and native histograms are skipped
//! (histograms are counted, a usage counter is never one).
//!
//! A sample becomes a [`Sample`]: the metric from `__name__`, the project
//! and the site from two labels (`project_name` and `location_id` by
//! default), every other label a tag, the value as the shortest decimal
//! text that reads back as the same float (what InfluxDB forwarded too),
//! the timestamp from milliseconds to nanoseconds. Prometheus' stale
//! markers (a special NaN) are skipped; any other NaN or infinity is
//! refused, that sample alone.

use std::borrow::Cow;

use bytes::Bytes;
use prost::Message;
use rust_decimal::Decimal;

use super::{Decoded, Item, Tag, Unusable};

/// `prometheus.WriteRequest` (remote write 1.0).
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    /// The series, each with its samples.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    /// Sorted by name; `__name__` is the metric.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// Float samples, oldest first.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<PromSample>,
    /// Native histograms, kept undecoded: only counted.
    #[prost(bytes = "bytes", repeated, tag = "4")]
    pub histograms: Vec<Bytes>,
}

/// `prometheus.Label`, its strings as slices of the body.
#[derive(Clone, PartialEq, Message)]
pub struct Label {
    /// The label's name.
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    /// Its value.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, Message)]
pub struct PromSample {
    /// The value.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Unix time in milliseconds.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// The bits of Prometheus' stale marker (`value.StaleNaN`).
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// The reason counted for stale markers.
pub const STALE_MARKER: &str = "stale marker";
/// The reason counted for native histograms.
pub const HISTOGRAM: &str = "native histogram";

/// Why a body is not a remote-write 1.0 request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The snappy block is broken.
    #[error("body is not snappy-compressed (block format): {0}")]
    Snappy(String),
    /// It would decompress to more than allowed.
    #[error("body decompresses to {declared} bytes, more than the {limit} allowed")]
    TooLarge {
        /// What the snappy header declares.
        declared: usize,
        /// The limit.
        limit: usize,
    },
    /// The protobuf is broken.
    #[error("body is not a prometheus.WriteRequest: {0}")]
    Protobuf(String),
    /// A label is not UTF-8.
    #[error("series {series}: a label is not valid UTF-8")]
    Utf8 {
        /// 1-based index of the series.
        series: usize,
    },
}

/// The labels that name the project and the site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// The project's label (`project_name`).
    pub project: String,
    /// The site's label (`location_id`).
    pub site: String,
}

impl Default for Labels {
    fn default() -> Self {
        Labels {
            project: super::PROJECT_TAG.to_owned(),
            site: super::LOCATION_TAG.to_owned(),
        }
    }
}

/// Decompresses and decodes a request body; the decompressed size is
/// checked against `limit` before anything is decompressed.
pub fn decode(body: &[u8], limit: usize) -> Result<WriteRequest, DecodeError> {
    let declared =
        snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if declared > limit {
        return Err(DecodeError::TooLarge { declared, limit });
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| DecodeError::Snappy(e.to_string()))?;
    let request =
        WriteRequest::decode(Bytes::from(raw)).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    for (index, series) in request.timeseries.iter().enumerate() {
        let utf8 = series.labels.iter().all(|label| {
            std::str::from_utf8(&label.name).is_ok() && std::str::from_utf8(&label.value).is_ok()
        });
        if !utf8 {
            return Err(DecodeError::Utf8 { series: index + 1 });
        }
    }
    Ok(request)
}

/// The shortest decimal text that reads back as `value` (Rust's `Display`
/// of an `f64`: `1847808`, `3408.5`, `0.1`), or why it is not a usage value.
pub fn value_text(value: f64) -> Result<String, Unusable> {
    if value.is_nan() {
        return Err(Unusable::BadValue("is NaN".into()));
    }
    if value.is_infinite() {
        return Err(Unusable::BadValue("is infinite".into()));
    }
    Ok(value.to_string())
}

/// Text of a label already checked by [`decode`].
fn text(bytes: &Bytes) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// The items of a decoded request: one per sample (numbered from 1 in
/// the order they came), a stale marker or histogram as an ignored item.
pub fn samples<'a>(request: &'a WriteRequest, labels: &'a Labels) -> Samples<'a> {
    Samples {
        request,
        labels,
        series: 0,
        sample: 0,
        histograms: 0,
        number: 0,
        tags: Vec::new(),
    }
}

/// The iterator [`samples`] returns.
pub struct Samples<'a> {
    request: &'a WriteRequest,
    labels: &'a Labels,
    series: usize,
    sample: usize,
    histograms: usize,
    number: usize,
    /// The current series' tags, cloned into each of its samples.
    tags: Vec<Tag<'a>>,
}

impl<'a> Samples<'a> {
    fn label(&self, series: &'a TimeSeries, name: &str) -> Option<&'a str> {
        series
            .labels
            .iter()
            .find(|l| text(&l.name) == name)
            .map(|l| text(&l.value))
    }
}

impl<'a> Iterator for Samples<'a> {
    type Item = (usize, Item<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let series = self.request.timeseries.get(self.series)?;
            if self.sample == 0 && self.histograms == 0 {
                self.tags = series
                    .labels
                    .iter()
                    .filter(|l| text(&l.name) != "__name__")
                    .map(|l| (Cow::Borrowed(text(&l.name)), Cow::Borrowed(text(&l.value))))
                    .collect();
            }
            if let Some(sample) = series.samples.get(self.sample) {
                self.sample += 1;
                self.number += 1;
                return Some((self.number, self.item(series, sample)));
            }
            if self.histograms < series.histograms.len() {
                self.histograms += 1;
                self.number += 1;
                return Some((self.number, Item::Ignored(HISTOGRAM)));
            }
            self.series += 1;
            self.sample = 0;
            self.histograms = 0;
        }
    }
}

impl<'a> Samples<'a> {
    fn item(&self, series: &'a TimeSeries, sample: &PromSample) -> Item<'a> {
        if sample.value.to_bits() == STALE_NAN {
            return Item::Ignored(STALE_MARKER);
        }
        let metric = Cow::Borrowed(self.label(series, "__name__").unwrap_or_default());
        let site = self.label(series, &self.labels.site);
        let unusable = |why| Item::Unusable {
            metric: metric.clone(),
            location_id: site.map(Cow::Borrowed),
            why,
        };
        let text = match value_text(sample.value) {
            Ok(text) => text,
            Err(why) => return unusable(why),
        };
        let value: Decimal = match pricing_sdk::parse_decimal(&text) {
            Ok(value) => value,
            Err(e) => return unusable(Unusable::BadValue(e.message().to_owned())),
        };
        let Some(project) = self.label(series, &self.labels.project) else {
            return unusable(Unusable::MissingTag(Cow::Owned(
                self.labels.project.clone(),
            )));
        };
        let Some(site) = site else {
            return unusable(Unusable::MissingTag(Cow::Owned(self.labels.site.clone())));
        };
        let Some(timestamp) = sample.timestamp.checked_mul(1_000_000) else {
            return unusable(Unusable::BadTimestamp("out of range"));
        };
        if let Err(why) = super::check_time(timestamp) {
            return unusable(why);
        }
        Item::Sample(super::Sample {
            metric,
            project: Cow::Borrowed(project),
            location_id: Cow::Borrowed(site),
            timestamp,
            value,
            text: Cow::Owned(text),
            tags: self.tags.clone(),
        })
    }
}

impl<'a> Decoded<'a> for Samples<'a> {
    fn offset(&self) -> usize {
        self.series
    }
}

/// Encodes `request` as a remote-write 1.0 body (protobuf, then snappy
/// block format): what Prometheus sends. For tests, benchmarks and tools.
pub fn encode(request: &WriteRequest) -> Vec<u8> {
    let raw = request.encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(name: &str, value: &str) -> Label {
        Label {
            name: Bytes::copy_from_slice(name.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    fn series(metric: &str, project: &str, values: &[(f64, i64)]) -> TimeSeries {
        TimeSeries {
            labels: vec![
                label("__name__", metric),
                label("location_id", "8676"),
                label("project_name", project),
            ],
            samples: values
                .iter()
                .map(|&(value, timestamp)| PromSample { value, timestamp })
                .collect(),
            histograms: Vec::new(),
        }
    }

    fn items(request: &WriteRequest) -> Vec<(usize, Item<'_>)> {
        static LABELS: std::sync::OnceLock<Labels> = std::sync::OnceLock::new();
        samples(request, LABELS.get_or_init(Labels::default)).collect()
    }

    #[test]
    fn a_request_round_trips_into_samples_with_exact_value_text() {
        let request = WriteRequest {
            timeseries: vec![
                series(
                    "project_vcpu_usage",
                    "p",
                    &[(3408.5, 1_556_813_561_098), (1847808.0, 1_556_813_576_098)],
                ),
                series("project_mb_usage", "Genome Lab", &[(0.1, 1)]),
            ],
        };
        let decoded = decode(&encode(&request), 1 << 20).unwrap();
        assert_eq!(decoded, request);
        let items = items(&decoded);
        let texts: Vec<(usize, String, String, i64)> = items
            .iter()
            .map(|(n, item)| match item {
                Item::Sample(s) => (*n, s.project.to_string(), s.text.to_string(), s.timestamp),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            texts,
            vec![
                (1, "p".into(), "3408.5".into(), 1_556_813_561_098_000_000),
                (2, "p".into(), "1847808".into(), 1_556_813_576_098_000_000),
                (3, "Genome Lab".into(), "0.1".into(), 1_000_000),
            ]
        );
        let Item::Sample(first) = &items[0].1 else {
            unreachable!()
        };
        assert_eq!(first.metric, "project_vcpu_usage");
        assert_eq!(first.tag("location_id"), Some("8676"));
        assert_eq!(first.tag("__name__"), None);
    }

    #[test]
    fn stale_markers_are_skipped_and_other_nans_refused_alone() {
        let request = WriteRequest {
            timeseries: vec![series(
                "project_vcpu_usage",
                "p",
                &[
                    (f64::from_bits(STALE_NAN), 1),
                    (f64::NAN, 2),
                    (f64::INFINITY, 3),
                    (5.0, 4),
                ],
            )],
        };
        let items = items(&request);
        assert!(matches!(items[0].1, Item::Ignored(STALE_MARKER)));
        assert!(
            matches!(&items[1].1, Item::Unusable { why: Unusable::BadValue(w), .. } if w == "is NaN")
        );
        assert!(
            matches!(&items[2].1, Item::Unusable { why: Unusable::BadValue(w), .. } if w == "is infinite")
        );
        assert!(matches!(&items[3].1, Item::Sample(s) if s.text == "5"));
    }

    #[test]
    fn broken_bodies_are_refused_with_the_reason() {
        let good = encode(&WriteRequest {
            timeseries: vec![series("m", "p", &[(1.0, 1)])],
        });
        // truncated
        let error = decode(&good[..good.len() - 3], 1 << 20).unwrap_err();
        assert!(matches!(error, DecodeError::Snappy(_)), "{error}");
        // not snappy at all (a gzip header)
        let error = decode(&[0x1f, 0x8b, 0x08, 0x00, 0xff, 0xff], 1 << 20).unwrap_err();
        assert!(matches!(error, DecodeError::Snappy(_)), "{error}");
        // snappy around something that is not protobuf
        let junk = snap::raw::Encoder::new()
            .compress_vec(b"\xff\xff\xff\xff\xff")
            .unwrap();
        let error = decode(&junk, 1 << 20).unwrap_err();
        assert!(matches!(error, DecodeError::Protobuf(_)), "{error}");
        // a huge declared length is refused before decompressing
        let mut huge = Vec::new();
        let mut declared: u64 = 1 << 31;
        while declared >= 0x80 {
            huge.push((declared as u8) | 0x80);
            declared >>= 7;
        }
        huge.push(declared as u8);
        huge.extend_from_slice(&[0; 8]);
        let error = decode(&huge, 64 << 20).unwrap_err();
        assert_eq!(
            error,
            DecodeError::TooLarge {
                declared: 1 << 31,
                limit: 64 << 20
            }
        );
        // a label that is not UTF-8
        let mut bad = series("m", "p", &[(1.0, 1)]);
        bad.labels[2].value = Bytes::from_static(b"\xc3\x28");
        let error = decode(
            &encode(&WriteRequest {
                timeseries: vec![bad],
            }),
            1 << 20,
        )
        .unwrap_err();
        assert_eq!(error, DecodeError::Utf8 { series: 1 });
    }

    #[test]
    fn missing_labels_name_the_label_and_histograms_are_counted() {
        let mut no_site = series("project_vcpu_usage", "p", &[(1.0, 1)]);
        no_site.labels.remove(1);
        no_site.histograms.push(Bytes::from_static(b"\x08\x01"));
        let request = WriteRequest {
            timeseries: vec![no_site],
        };
        let items = items(&request);
        assert!(matches!(
            &items[0].1,
            Item::Unusable { why: Unusable::MissingTag(tag), .. } if tag == "location_id"
        ));
        assert!(matches!(items[1].1, Item::Ignored(HISTOGRAM)));
    }

    #[test]
    fn value_text_is_the_shortest_round_trip() {
        for value in [
            0.1,
            1847808.0,
            3408.5,
            10749.617071944445,
            1e-7,
            123456789.123,
        ] {
            let text = value_text(value).unwrap();
            assert_eq!(text.parse::<f64>().unwrap(), value, "{text}");
            assert!(!text.contains('e'), "{text}");
        }
        assert_eq!(value_text(1847808.0).unwrap(), "1847808");
    }
}
