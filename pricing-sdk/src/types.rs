//! The plain Rust types a policy works with.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::DeserializeOwned;

/// Unix time in nanoseconds, as measurements carry it.
pub type Timestamp = i64;

/// Nanoseconds in one hour.
pub const HOUR_NS: i64 = 3_600_000_000_000;

/// An error a policy reports to the host; the host logs it with the
/// project, site and metric of the step, and bills that step later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error(message.to_owned())
    }
}

/// Parses decimal text exactly: `"3408.5"`, `"-2"`, `"1e3"`, `"1.5E-2"`.
///
/// Text with more significant digits than a [`Decimal`] holds (28) is an
/// error rather than silently rounded.
pub fn parse_decimal(text: &str) -> Result<Decimal, Error> {
    let parsed = if text.contains(['e', 'E']) {
        Decimal::from_scientific(text)
    } else {
        Decimal::from_str_exact(text)
    };
    parsed.map_err(|e| Error(format!("invalid decimal {text:?}: {e}")))
}

/// Parses site parameters into `T`: empty (or blank) text gives
/// `T::default()`, text starting with `{` is JSON, anything else TOML.
///
/// Declare prices as [`Decimal`] fields; in TOML write them as strings
/// (`cpu = "0.3"`) or numbers (`cpu = 0.3`, read via its shortest text, so
/// it stays `0.3` exactly). Add `#[serde(deny_unknown_fields)]` so that a
/// misspelt key is an error rather than ignored.
pub fn parse_config<T: DeserializeOwned + Default>(text: &str) -> Result<T, Error> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        Ok(T::default())
    } else if trimmed.starts_with('{') {
        serde_json::from_str(trimmed).map_err(|e| Error(format!("invalid JSON configuration: {e}")))
    } else {
        toml::from_str(trimmed).map_err(|e| Error(format!("invalid TOML configuration: {e}")))
    }
}

/// One measurement of a cumulative counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    /// Unix time in nanoseconds.
    pub timestamp: Timestamp,
    /// The value's text exactly as it arrived (without an `i`/`u` suffix).
    pub value: String,
}

impl Measurement {
    /// A measurement at `timestamp` (ns) with value text `value`.
    pub fn new(timestamp: Timestamp, value: impl Into<String>) -> Self {
        Measurement {
            timestamp,
            value: value.into(),
        }
    }

    /// The value as an exact decimal.
    pub fn decimal(&self) -> Result<Decimal, Error> {
        parse_decimal(&self.value)
    }
}

/// One step of a counter to price: from `previous` to `current`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Measurement name, e.g. `project_vcpu_usage`.
    pub metric: String,
    /// The project (the Perun group name, `project_name` tag).
    pub project: String,
    /// The site (`location_id` tag, the Perun resource id).
    pub location_id: String,
    /// The tags of the current measurement, sorted by key, unescaped:
    /// all of them, or those the policy declared in [`PolicyInfo::tags`].
    pub tags: Vec<(String, String)>,
    /// The last measurement billed for this project, site and metric.
    pub previous: Measurement,
    /// The new measurement; newer and higher than `previous`.
    pub current: Measurement,
}

impl Usage {
    /// The value of tag `key`, if the measurement has it.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// How much the counter grew in this step: `current - previous`.
    pub fn delta(&self) -> Result<Decimal, Error> {
        let current = self.current.decimal()?;
        let previous = self.previous.decimal()?;
        current
            .checked_sub(previous)
            .ok_or_else(|| Error::new("value difference overflows a decimal"))
    }

    /// The length of the step in hours (exact to 28 digits).
    pub fn hours(&self) -> Decimal {
        let nanos = Decimal::from(self.current.timestamp) - Decimal::from(self.previous.timestamp);
        (nanos / Decimal::from(HOUR_NS)).normalize()
    }
}

/// One metric a policy prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricInfo {
    /// Measurement name as it arrives, e.g. `project_vcpu_usage`.
    pub name: String,
    /// Short name the portal APIs use, e.g. `cpu`.
    pub friendly_name: String,
    /// Unit of the cumulative value, e.g. `vCPU-hours`.
    pub unit: String,
    /// What the metric measures.
    pub description: String,
    /// Type of quote amounts: `int` (the default) or `decimal`.
    pub amount_type: String,
}

impl MetricInfo {
    /// A metric whose quote amounts are integers.
    pub fn new(name: &str, friendly_name: &str, unit: &str, description: &str) -> Self {
        MetricInfo {
            name: name.to_owned(),
            friendly_name: friendly_name.to_owned(),
            unit: unit.to_owned(),
            description: description.to_owned(),
            amount_type: "int".to_owned(),
        }
    }

    /// Lets quotes for this metric take decimal amounts.
    pub fn decimal_amounts(mut self) -> Self {
        self.amount_type = "decimal".to_owned();
        self
    }
}

/// What a policy says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    /// Short name, e.g. `denbi`.
    pub name: String,
    /// Version of the policy (not of the contract), e.g. `1.0.0`.
    pub version: String,
    /// One line on what it charges.
    pub description: String,
    /// The metrics it prices; points of other metrics are ignored.
    pub metrics: Vec<MetricInfo>,
    /// The tags [`Policy::bill`](crate::Policy::bill) reads: `None` (the
    /// default) for all, or only these keys. Each tag costs two strings
    /// per call across the Wasm boundary: declare what you read.
    pub tags: Option<Vec<String>>,
}

impl PolicyInfo {
    /// Info without metrics; add them with [`PolicyInfo::metric`].
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        PolicyInfo {
            name: name.to_owned(),
            version: version.to_owned(),
            description: description.to_owned(),
            metrics: Vec::new(),
            tags: None,
        }
    }

    /// Declares the tags `bill` reads; the host passes only these
    /// (`&[]` for none). Without this, every tag is passed.
    pub fn reads_tags(mut self, keys: &[&str]) -> Self {
        self.tags = Some(keys.iter().map(|k| (*k).to_owned()).collect());
        self
    }

    /// Adds a metric.
    pub fn metric(mut self, metric: MetricInfo) -> Self {
        self.metrics.push(metric);
        self
    }
}

/// A usage with the charge it must give: a self-test the host runs before
/// it activates the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// What the example shows, for error messages.
    pub name: String,
    /// The step to bill.
    pub usage: Usage,
    /// The exact charge expected.
    pub expected: Decimal,
}

impl Example {
    /// An example named `name`.
    pub fn new(name: &str, usage: Usage, expected: &str) -> Result<Self, Error> {
        Ok(Example {
            name: name.to_owned(),
            usage,
            expected: Decimal::from_str(expected)
                .map_err(|e| Error(format!("example {name:?}: invalid expected charge: {e}")))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly_and_reject_garbage() {
        assert_eq!(parse_decimal("3408.5").unwrap().to_string(), "3408.5");
        assert_eq!(parse_decimal("1e3").unwrap(), Decimal::from(1000));
        assert_eq!(parse_decimal("1.5E-2").unwrap().to_string(), "0.015");
        assert_eq!(
            parse_decimal("10749.617071944445").unwrap().to_string(),
            "10749.617071944445"
        );
        assert!(parse_decimal("1.5.2").is_err());
        assert!(parse_decimal("").is_err());
        // 30 significant digits do not fit: an error, not a silent rounding.
        assert!(parse_decimal("1.23456789012345678901234567890").is_err());
    }

    #[derive(serde::Deserialize, Default, Debug)]
    #[serde(deny_unknown_fields)]
    struct Prices {
        #[serde(default)]
        cpu: Decimal,
    }

    #[test]
    fn config_reads_toml_json_and_defaults() {
        let toml: Prices = parse_config("cpu = \"0.3\"").unwrap();
        assert_eq!(toml.cpu.to_string(), "0.3");
        let float: Prices = parse_config("cpu = 0.3").unwrap();
        assert_eq!(float.cpu.to_string(), "0.3");
        let json: Prices = parse_config(r#"{"cpu": "1.25"}"#).unwrap();
        assert_eq!(json.cpu.to_string(), "1.25");
        let default: Prices = parse_config("  \n").unwrap();
        assert_eq!(default.cpu, Decimal::ZERO);
        let err = parse_config::<Prices>("cpuu = 1").unwrap_err();
        assert!(err.message().contains("unknown field"), "{err}");
    }

    #[test]
    fn usage_delta_and_hours() {
        let usage = crate::testing::step("m", "10.5", "12")
            .at(0, HOUR_NS / 2)
            .with_tag("flavor", "de.NBI large");
        assert_eq!(usage.delta().unwrap().to_string(), "1.5");
        assert_eq!(usage.hours().to_string(), "0.5");
        assert_eq!(usage.tag("flavor"), Some("de.NBI large"));
        assert_eq!(usage.tag("missing"), None);
    }
}
