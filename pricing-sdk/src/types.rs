//! The plain Rust types a policy works with.

use std::borrow::Cow;
use std::fmt;

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
    if let Some(value) = parse_plain(text) {
        return Ok(value);
    }
    let parsed = if text.contains(['e', 'E']) {
        Decimal::from_scientific(text)
    } else {
        Decimal::from_str_exact(text)
    };
    parsed.map_err(|e| Error(format!("invalid decimal {text:?}: {e}")))
}

/// The common case of [`parse_decimal`], without overflow checks: plain
/// non-negative text (`123`, `10749.617071944445`) of at most 19 digits,
/// which a `u64` holds. Gives what `Decimal::from_str_exact` gives (the
/// scale is the number of digits after the point); `None` for anything
/// else. On `wasm32` this is several times faster than rust_decimal's
/// parser, whose overflow checks multiply in 128 bits (a library call).
fn parse_plain(text: &str) -> Option<Decimal> {
    const MAX_DIGITS: usize = 19;
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_DIGITS + 1 {
        return None;
    }
    let mut mantissa: u64 = 0;
    let mut point = None;
    for (index, &byte) in bytes.iter().enumerate() {
        if byte == b'.' && index > 0 && point.is_none() {
            point = Some(index);
            continue;
        }
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        // Wrapping: with at most 19 digits (checked below) nothing wraps,
        // and checked arithmetic would cost a 128-bit multiply on wasm32.
        mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(digit));
    }
    let scale = match point {
        None if bytes.len() <= MAX_DIGITS => 0,
        Some(point) if point + 1 < bytes.len() => bytes.len() - point - 1,
        _ => return None,
    };
    Some(Decimal::from_parts(
        mantissa as u32,
        (mantissa >> 32) as u32,
        0,
        false,
        u32::try_from(scale).ok()?,
    ))
}

/// Writes `value` as [`Decimal`]'s `Display` does (every digit of its
/// scale kept, `5.00` stays `5.00`), with a fast path for non-negative
/// values whose mantissa fits 64 bits: the charges policies return.
pub fn decimal_text(value: Decimal) -> String {
    let mut text = String::new();
    push_decimal(&mut text, value);
    text
}

/// Appends `value` to `text` as [`decimal_text`] writes it.
pub fn push_decimal(out: &mut String, value: Decimal) {
    use std::fmt::Write as _;
    let (Ok(mantissa), false) = (u64::try_from(value.mantissa()), value.is_sign_negative()) else {
        let _ = write!(out, "{value}");
        return;
    };
    let mut digits = [b'0'; 20];
    let start = write_digits(mantissa, &mut digits);
    let digits = &digits[start..];
    let scale = value.scale() as usize;
    // At most `0.` and 28 places, or 20 digits and the point.
    let mut text = [b'0'; 32];
    let len = if scale == 0 {
        text[..digits.len()].copy_from_slice(digits);
        digits.len()
    } else if digits.len() <= scale {
        text[1] = b'.';
        text[2 + scale - digits.len()..2 + scale].copy_from_slice(digits);
        2 + scale
    } else {
        let (int, frac) = digits.split_at(digits.len() - scale);
        text[..int.len()].copy_from_slice(int);
        text[int.len()] = b'.';
        text[int.len() + 1..=digits.len()].copy_from_slice(frac);
        digits.len() + 1
    };
    match std::str::from_utf8(&text[..len]) {
        Ok(text) => out.push_str(text),
        Err(_) => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Writes the decimal digits of `value` at the end of `digits`; returns
/// where they start. Works in 32-bit chunks of nine digits and divides
/// those by multiplying: Wasm compilers emit a real division for `/ 10`.
fn write_digits(mut value: u64, digits: &mut [u8; 20]) -> usize {
    const CHUNK: u64 = 1_000_000_000;
    let mut end = digits.len();
    loop {
        let mut chunk = (value % CHUNK) as u32;
        value /= CHUNK;
        let mut start = end;
        loop {
            start -= 1;
            // chunk / 10 by a multiply (exact for every u32).
            let quotient = ((u64::from(chunk) * 0xCCCC_CCCD) >> 35) as u32;
            digits[start] = b'0' + (chunk - quotient * 10) as u8;
            chunk = quotient;
            // A chunk below the most significant one keeps its zeros.
            if chunk == 0 && (value == 0 || end - start == 9) {
                break;
            }
        }
        if value == 0 {
            return start;
        }
        end = start;
    }
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

/// One metric a policy prices. Declared as data, in a constant:
///
/// ```
/// use pricing_sdk::MetricInfo;
///
/// const METRICS: &[MetricInfo] = &[
///     MetricInfo::new("project_vcpu_usage", "cpu", "vCPU-hours", "Amount of vCPUs."),
///     MetricInfo::decimal("project_mb_usage", "ram", "GiB-hours", "Amount of RAM."),
/// ];
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricInfo {
    /// Measurement name as it arrives, e.g. `project_vcpu_usage`.
    pub name: Cow<'static, str>,
    /// Short name the portal APIs use, e.g. `cpu`.
    pub friendly_name: Cow<'static, str>,
    /// Unit of the cumulative value, e.g. `vCPU-hours`.
    pub unit: Cow<'static, str>,
    /// What the metric measures.
    pub description: Cow<'static, str>,
    /// Type of quote amounts: `int` (the default) or `decimal`.
    pub amount_type: Cow<'static, str>,
}

impl MetricInfo {
    /// A metric whose quote amounts are integers (usable in a `const`).
    pub const fn new(
        name: &'static str,
        friendly_name: &'static str,
        unit: &'static str,
        description: &'static str,
    ) -> Self {
        MetricInfo {
            name: Cow::Borrowed(name),
            friendly_name: Cow::Borrowed(friendly_name),
            unit: Cow::Borrowed(unit),
            description: Cow::Borrowed(description),
            amount_type: Cow::Borrowed("int"),
        }
    }

    /// A metric whose quote amounts may be decimals (usable in a `const`).
    pub const fn decimal(
        name: &'static str,
        friendly_name: &'static str,
        unit: &'static str,
        description: &'static str,
    ) -> Self {
        MetricInfo {
            name: Cow::Borrowed(name),
            friendly_name: Cow::Borrowed(friendly_name),
            unit: Cow::Borrowed(unit),
            description: Cow::Borrowed(description),
            amount_type: Cow::Borrowed("decimal"),
        }
    }

    /// Lets quotes for this metric take decimal amounts.
    pub fn decimal_amounts(mut self) -> Self {
        self.amount_type = Cow::Borrowed("decimal");
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

    /// Adds metrics declared as data (a `const` slice).
    pub fn metrics(mut self, metrics: &[MetricInfo]) -> Self {
        self.metrics.extend_from_slice(metrics);
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
    /// An example named `name`: billing `usage` must give exactly `expected`.
    pub fn new(name: &str, usage: Usage, expected: Decimal) -> Self {
        Example {
            name: name.to_owned(),
            usage,
            expected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_parser_agrees_with_rust_decimal() {
        let texts = [
            "0",
            "7",
            "00012",
            "1.50",
            "10749.617071944445",
            "0.001",
            "0.0000",
            "1234567890123456789",
            "9999999999999999999",
            "999999999.9999999999",
            // Not for the fast path; still parsed the same as rust_decimal.
            "12345678901234567890",
            "0.00000000000000000001",
            "-1",
            "+1",
            "-0.5",
            ".5",
            "5.",
            "1_000",
            "1e3",
            "1.5E-2",
            "",
            "-",
            "1.2.3",
            "１",
            "0x10",
        ];
        for text in texts {
            let ours = parse_decimal(text).ok();
            let theirs = if text.contains(['e', 'E']) {
                Decimal::from_scientific(text).ok()
            } else {
                Decimal::from_str_exact(text).ok()
            };
            assert_eq!(ours, theirs, "{text:?}");
            // Same value and the same scale (the text shows it).
            assert_eq!(
                ours.map(|d| d.to_string()),
                theirs.map(|d| d.to_string()),
                "{text:?}"
            );
        }
        assert!(
            parse_plain("12345678901234567890").is_none(),
            "20 digits overflow u64"
        );
        assert!(parse_plain("1_000").is_none());
    }

    #[test]
    fn decimal_text_writes_what_display_writes() {
        let mut values: Vec<Decimal> = [
            "0",
            "5",
            "5.00",
            "0.005",
            "0.0000",
            "10749.617071944445",
            "25.6",
            "-1.5",
            "-0",
            "10",
            "100",
            "1000000000",
            "1000000000.000000001",
            "1000000001000000000",
            "18446744073709551615",
            "18446744073709551616",
            "0.3333333333333333333333333333",
            "79228162514264337593543950335",
        ]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
        values.push(Decimal::new(3, 1) / Decimal::from(1024));
        values.push(Decimal::from(17) * Decimal::new(3, 1) / Decimal::from(3600));
        for value in values {
            assert_eq!(decimal_text(value), value.to_string(), "{value:?}");
        }
    }

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
