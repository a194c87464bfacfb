//! # os-credits-ingest: what arrives becomes samples
//!
//! The first stage of the flow `ingest -> billing -> ledger -> perun /
//! alerts`. It owns the two decoders and the shape they share; it must not
//! know billing, the ledger, the policies or HTTP (the service hands it
//! request bodies). It depends on nothing of the workspace but the SDK's
//! decimal parser, and the fuzz targets build it on its own.
//!
//! A sample is one reading of a cumulative usage counter: the metric
//! (measurement name), project (`project_name` tag), site (`location_id`
//! tag), timestamp and the exact text of the value. Two decoders, one
//! shape: [`lines`] (InfluxDB line protocol, parsed by [`line_protocol`])
//! and [`remote_write::samples`] (Prometheus remote write 1.0) both yield
//! numbered [`Item`]s ([`Decoded`]), each sample converted once.

pub mod line_protocol;
pub mod remote_write;

use std::borrow::Cow;
use std::fmt;

use rust_decimal::Decimal;

pub use line_protocol::{FieldValue, LineError, Lines, Point, Tag, parse_lines};

/// The tag naming the project (the Perun group).
pub const PROJECT_TAG: &str = "project_name";
/// The tag naming the site (the Perun resource id).
pub const LOCATION_TAG: &str = "location_id";
/// The field holding the counter's value.
pub const VALUE_FIELD: &str = "value";

/// The unit of timestamps in a write (`?precision=` of InfluxDB's `/write`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// `n`, `ns` (the default).
    #[default]
    Nanoseconds,
    /// `u`, `us`, `µ`.
    Microseconds,
    /// `ms`.
    Milliseconds,
    /// `s`.
    Seconds,
    /// `m`.
    Minutes,
    /// `h`.
    Hours,
}

impl Precision {
    /// Parses InfluxDB's precision names; empty means nanoseconds.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "" | "n" | "ns" => Precision::Nanoseconds,
            "u" | "us" | "µ" => Precision::Microseconds,
            "ms" => Precision::Milliseconds,
            "s" => Precision::Seconds,
            "m" => Precision::Minutes,
            "h" => Precision::Hours,
            _ => return None,
        })
    }

    /// The name [`Precision::parse`] reads back.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Nanoseconds => "n",
            Precision::Microseconds => "u",
            Precision::Milliseconds => "ms",
            Precision::Seconds => "s",
            Precision::Minutes => "m",
            Precision::Hours => "h",
        }
    }

    /// A timestamp in this unit as nanoseconds, `None` on overflow.
    pub fn to_nanos(self, timestamp: i64) -> Option<i64> {
        let factor: i64 = match self {
            Precision::Nanoseconds => 1,
            Precision::Microseconds => 1_000,
            Precision::Milliseconds => 1_000_000,
            Precision::Seconds => 1_000_000_000,
            Precision::Minutes => 60_000_000_000,
            Precision::Hours => 3_600_000_000_000,
        };
        timestamp.checked_mul(factor)
    }
}

/// Why a well-formed point is not a measurement billing can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// No `value` field.
    NoValue,
    /// The `value` field is a string or boolean, or not a decimal.
    BadValue(String),
    /// A required tag (label) is missing.
    MissingTag(Cow<'static, str>),
    /// The timestamp is not a usable time (why).
    BadTimestamp(&'static str),
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unusable::NoValue => write!(f, "no field `{VALUE_FIELD}`"),
            Unusable::BadValue(why) => write!(f, "field `{VALUE_FIELD}` {why}"),
            Unusable::MissingTag(tag) => write!(f, "missing tag `{tag}`"),
            Unusable::BadTimestamp(why) => write!(f, "timestamp {why}"),
        }
    }
}

/// One sample of a cumulative usage counter: a project's usage of a metric
/// at a site, at a time. Borrows from the body it was decoded from
/// wherever nothing had to be unescaped.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// Measurement name, e.g. `project_vcpu_usage`.
    pub metric: Cow<'a, str>,
    /// The project (`project_name` tag).
    pub project: Cow<'a, str>,
    /// The site (`location_id` tag).
    pub location_id: Cow<'a, str>,
    /// Unix time in ns.
    pub timestamp: i64,
    /// The value, exact.
    pub value: Decimal,
    /// The value's text as it arrived.
    pub text: Cow<'a, str>,
    /// Every tag of the point, in the order they arrived.
    pub tags: Vec<Tag<'a>>,
}

impl<'a> Sample<'a> {
    /// Takes the sample out of `point`, whose timestamp is in `precision`;
    /// a point without one gets `received` (ns). The point's tags move
    /// into the sample.
    pub fn from_point(
        point: Point<'a>,
        precision: Precision,
        received: i64,
    ) -> Result<Self, Unusable> {
        let parts = Parts::of(&point, precision, received)?;
        Ok(parts.into_sample(point))
    }

    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }
}

/// What a sample takes from its point, read without moving the point (so
/// that a point that is no sample is still whole for its error).
struct Parts<'a> {
    project: Cow<'a, str>,
    location_id: Cow<'a, str>,
    timestamp: i64,
    value: Decimal,
    text: &'a str,
}

impl<'a> Parts<'a> {
    fn of(point: &Point<'a>, precision: Precision, received: i64) -> Result<Self, Unusable> {
        let field = point.field(VALUE_FIELD).ok_or(Unusable::NoValue)?;
        let text = field
            .numeric_text()
            .ok_or_else(|| Unusable::BadValue("is not a number".into()))?;
        let value = pricing_sdk::parse_decimal(text)
            .map_err(|e| Unusable::BadValue(e.message().to_owned()))?;
        let tag = |key: &'static str| {
            point
                .tags
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .ok_or(Unusable::MissingTag(Cow::Borrowed(key)))
        };
        let project = tag(PROJECT_TAG)?;
        let location_id = tag(LOCATION_TAG)?;
        let timestamp = match point.timestamp {
            Some(ts) => precision
                .to_nanos(ts)
                .ok_or(Unusable::BadTimestamp("out of range"))?,
            None => received,
        };
        check_time(timestamp)?;
        Ok(Parts {
            project,
            location_id,
            timestamp,
            value,
            text,
        })
    }

    /// The sample, the point's name and tags moved into it.
    fn into_sample(self, point: Point<'a>) -> Sample<'a> {
        Sample {
            metric: point.measurement,
            project: self.project,
            location_id: self.location_id,
            timestamp: self.timestamp,
            value: self.value,
            text: Cow::Borrowed(self.text),
            tags: point.tags,
        }
    }
}

/// Refuses times before 1970: no usage exporter sends them, and a key
/// whose state went there would bill a nonsense span.
pub fn check_time(timestamp: i64) -> Result<(), Unusable> {
    if timestamp < 0 {
        return Err(Unusable::BadTimestamp("is before 1970"));
    }
    Ok(())
}

/// One decoded piece of a body, as billing receives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    /// A sample.
    Sample(Sample<'a>),
    /// Not decodable at all (a broken line): why.
    Invalid(String),
    /// Nothing to bill, by design (a stale marker): the reason counted.
    Ignored(&'static str),
    /// Decoded, but not a sample billing can use: the metric and site it
    /// names (billing tells an unknown metric from a broken sample), and why.
    Unusable {
        /// The measurement name.
        metric: Cow<'a, str>,
        /// The `location_id` tag, if any.
        location_id: Option<Cow<'a, str>>,
        /// Why it is unusable.
        why: Unusable,
    },
}

/// The items of a body of line protocol, each with its 1-based line
/// number; timestamps are in `precision`, points without one get
/// `received` (ns).
pub fn lines(body: &[u8], precision: Precision, received: i64) -> Items<'_> {
    Items {
        lines: parse_lines(body),
        precision,
        received,
    }
}

/// The iterator [`lines`] returns.
pub struct Items<'a> {
    lines: Lines<'a>,
    precision: Precision,
    received: i64,
}

/// The items of one body from any decoder: numbered (line, or sample in a
/// request), in arrival order.
pub trait Decoded<'a>: Iterator<Item = (usize, Item<'a>)> {
    /// How far into its input the decoder got, in bytes (for progress).
    fn offset(&self) -> usize;
}

impl<'a, D: Decoded<'a> + ?Sized> Decoded<'a> for &mut D {
    fn offset(&self) -> usize {
        (**self).offset()
    }
}

impl<'a> Decoded<'a> for Items<'a> {
    fn offset(&self) -> usize {
        self.lines.offset()
    }
}

impl<'a> Iterator for Items<'a> {
    type Item = (usize, Item<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let (line, parsed) = self.lines.next()?;
        let item = match parsed {
            Err(e) => Item::Invalid(e.to_string()),
            Ok(point) => match Parts::of(&point, self.precision, self.received) {
                Ok(parts) => Item::Sample(parts.into_sample(point)),
                Err(why) => Item::Unusable {
                    location_id: point
                        .tags
                        .into_iter()
                        .find(|(k, _)| k == LOCATION_TAG)
                        .map(|(_, v)| v),
                    metric: point.measurement,
                    why,
                },
            },
        };
        Some((line, item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(line: &str) -> Point<'_> {
        parse_lines(line.as_bytes())
            .next()
            .and_then(|(_, r)| r.ok())
            .expect("a valid line")
    }

    #[test]
    fn measurement_from_a_stack_point() {
        let p = point(
            r"project_mb_usage,location_id=8676,project_name=Genome\ Lab value=1847808 1556813561",
        );
        let m = Sample::from_point(p, Precision::Seconds, 0).unwrap();
        assert_eq!(m.metric, "project_mb_usage");
        assert_eq!(m.project, "Genome Lab");
        assert_eq!(m.location_id, "8676");
        assert_eq!(m.timestamp, 1_556_813_561_000_000_000);
        assert_eq!(m.value, Decimal::from(1_847_808));
        assert_eq!(m.text, "1847808");
        assert_eq!(m.tags.len(), 2);
    }

    #[test]
    fn missing_pieces_are_named() {
        let cases = [
            (
                "m,location_id=1,project_name=p other=1 1",
                Unusable::NoValue,
            ),
            (
                "m,location_id=1 value=1 1",
                Unusable::MissingTag(PROJECT_TAG.into()),
            ),
            (
                "m,project_name=p value=1 1",
                Unusable::MissingTag(LOCATION_TAG.into()),
            ),
        ];
        for (line, expected) in cases {
            let p = point(line);
            assert_eq!(
                Sample::from_point(p, Precision::default(), 0),
                Err(expected)
            );
        }
        let p = point("m,location_id=1,project_name=p value=\"x\" 1");
        let err = Sample::from_point(p, Precision::default(), 0).unwrap_err();
        assert_eq!(err.to_string(), "field `value` is not a number");
        let p = point("m,location_id=1,project_name=p value=1 9223372036854775807");
        assert_eq!(
            Sample::from_point(p, Precision::Hours, 0),
            Err(Unusable::BadTimestamp("out of range"))
        );
    }

    #[test]
    fn a_point_without_timestamp_gets_the_receive_time() {
        let p = point("m,location_id=1,project_name=p value=5i");
        let m = Sample::from_point(p, Precision::Seconds, 42).unwrap();
        assert_eq!(m.timestamp, 42);
        assert_eq!(m.text, "5");
    }

    #[test]
    fn a_body_decodes_into_numbered_items_each_converted_once() {
        let body = "m,location_id=1,project_name=p value=1 1\n\nbroken\n# note\ngo_goroutines,location_id=2 value=7 1\n";
        let items: Vec<_> = lines(body.as_bytes(), Precision::Seconds, 0).collect();
        assert_eq!(items.len(), 3);
        assert!(
            matches!(&items[0], (1, Item::Sample(s)) if s.project == "p" && s.timestamp == 1_000_000_000)
        );
        assert!(matches!(&items[1], (3, Item::Invalid(e)) if e.contains("line 3")));
        assert!(matches!(
            &items[2],
            (5, Item::Unusable { metric, location_id: Some(site), why: Unusable::MissingTag(tag) })
                if metric == "go_goroutines" && site == "2" && tag == PROJECT_TAG
        ));
    }

    #[test]
    fn precision_names() {
        assert_eq!(Precision::parse(""), Some(Precision::Nanoseconds));
        assert_eq!(Precision::parse("ms"), Some(Precision::Milliseconds));
        assert_eq!(Precision::parse("weeks"), None);
        assert_eq!(Precision::Microseconds.to_nanos(3), Some(3000));
    }
}
