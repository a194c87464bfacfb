//! An InfluxDB line-protocol parser that keeps the original text of numbers.
//!
//! Written here rather than taken from `influxdb-line-protocol` (the IOx
//! parser) because that crate turns every float into an `f64`: the exact
//! decimal text that billing needs (`10749.617071944445`, `1.50`, `1e3`)
//! would be lost. This parser borrows from the input wherever nothing is
//! escaped, reports errors with line and column, and follows InfluxDB 1.x:
//! - `measurement[,tag=value…] field=value[,field=value…] [timestamp]`;
//! - `\,` and `\ ` escaped in measurements; `\,`, `\=` and `\ ` in tag keys,
//!   tag values and field keys; a backslash before anything else stays;
//! - string fields in double quotes with `\"` and `\\`;
//! - integers `5i`, unsigned `5u`, floats (`1`, `-1.5`, `1e3`), booleans
//!   (`t`, `T`, `true`, `True`, `TRUE` and the same for false);
//! - an optional integer timestamp; blank lines and `#` comments skipped;
//!   `\r\n` line ends accepted.
//!
//! A string field cannot span lines.

use std::borrow::Cow;
use std::fmt;

/// A tag: key and value, unescaped.
pub type Tag<'a> = (Cow<'a, str>, Cow<'a, str>);

/// One parsed line.
#[derive(Debug, Clone, PartialEq)]
pub struct Point<'a> {
    /// The measurement name, unescaped.
    pub measurement: Cow<'a, str>,
    /// Tags in the order they arrived.
    pub tags: Vec<Tag<'a>>,
    /// Fields in the order they arrived; at least one.
    pub fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
    /// The timestamp as written (its unit is the write's precision).
    pub timestamp: Option<i64>,
}

impl<'a> Point<'a> {
    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// The value of field `key`.
    pub fn field(&self, key: &str) -> Option<&FieldValue<'a>> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Writes `text` escaping `specials` with a backslash.
fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str, specials: &[u8]) -> fmt::Result {
    for c in text.chars() {
        if c.is_ascii() && specials.contains(&(c as u8)) {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    Ok(())
}

/// Whether `text` reads back as itself once escaped for `specials`: line
/// protocol has no escape for a backslash, so one right before a special
/// character or at the end would be read as an escape.
fn writable(text: &str, specials: &[u8]) -> bool {
    let bytes = text.as_bytes();
    bytes.last() != Some(&b'\\')
        && !bytes
            .windows(2)
            .any(|w| w[0] == b'\\' && specials.contains(&w[1]))
}

impl Point<'_> {
    /// Whether [`Point`]'s `Display` writes a line that parses back to this
    /// very point: every point without a backslash right before a special
    /// character or at the end of a name (line protocol cannot write those).
    pub fn writes_back(&self) -> bool {
        writable(&self.measurement, MEASUREMENT_SPECIALS)
            && self
                .tags
                .iter()
                .all(|(k, v)| writable(k, KEY_SPECIALS) && writable(v, KEY_SPECIALS))
            && self.fields.iter().all(|(k, _)| writable(k, KEY_SPECIALS))
    }
}

/// The point as one line of line protocol (escaped as InfluxDB 1.x does).
impl fmt::Display for Point<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, &self.measurement, MEASUREMENT_SPECIALS)?;
        for (key, value) in &self.tags {
            f.write_str(",")?;
            write_escaped(f, key, KEY_SPECIALS)?;
            f.write_str("=")?;
            write_escaped(f, value, KEY_SPECIALS)?;
        }
        for (index, (key, value)) in self.fields.iter().enumerate() {
            f.write_str(if index == 0 { " " } else { "," })?;
            write_escaped(f, key, KEY_SPECIALS)?;
            f.write_str("=")?;
            match value {
                FieldValue::Float(text) => f.write_str(text)?,
                FieldValue::Integer(text) => write!(f, "{text}i")?,
                FieldValue::UInteger(text) => write!(f, "{text}u")?,
                FieldValue::Boolean(value) => write!(f, "{value}")?,
                FieldValue::String(text) => {
                    f.write_str("\"")?;
                    write_escaped(f, text, b"\"\\")?;
                    f.write_str("\"")?;
                }
            }
        }
        if let Some(timestamp) = self.timestamp {
            write!(f, " {timestamp}")?;
        }
        Ok(())
    }
}

/// A field value. Numbers keep their text (without the `i`/`u` suffix).
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    /// A float, e.g. `3408.5`, `1e3`.
    Float(&'a str),
    /// A signed integer (`5i`), text without the suffix.
    Integer(&'a str),
    /// An unsigned integer (`5u`), text without the suffix.
    UInteger(&'a str),
    /// A string, unescaped.
    String(Cow<'a, str>),
    /// A boolean.
    Boolean(bool),
}

impl<'a> FieldValue<'a> {
    /// The text of a numeric value; `None` for strings and booleans.
    pub fn numeric_text(&self) -> Option<&'a str> {
        match self {
            FieldValue::Float(t) | FieldValue::Integer(t) | FieldValue::UInteger(t) => Some(t),
            FieldValue::String(_) | FieldValue::Boolean(_) => None,
        }
    }
}

/// A line that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number in the body.
    pub line: usize,
    /// 1-based byte column where the problem was found.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for LineError {}

/// The longest line read, in bytes; a longer one is refused unread (a
/// stack line is ~300 bytes; a sender gone wrong can send megabytes).
pub const MAX_LINE: usize = 64 << 10;

/// Parses a body of line protocol: yields `(line number, result)` for
/// every line that is neither blank nor a comment.
pub fn parse_lines(body: &[u8]) -> Lines<'_> {
    Lines {
        body,
        pos: 0,
        line: 0,
    }
}

/// Iterator over the points of a body; see [`parse_lines`].
pub struct Lines<'a> {
    body: &'a [u8],
    pos: usize,
    line: usize,
}

impl Lines<'_> {
    /// How many bytes of the body have been consumed.
    pub fn offset(&self) -> usize {
        self.pos.min(self.body.len())
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = (usize, Result<Point<'a>, LineError>);

    fn next(&mut self) -> Option<Self::Item> {
        while self.pos < self.body.len() {
            let rest = &self.body[self.pos..];
            let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            self.pos += end + 1;
            self.line += 1;
            let mut raw = &rest[..end];
            if raw.len() > MAX_LINE {
                return Some((
                    self.line,
                    Err(LineError {
                        line: self.line,
                        column: MAX_LINE + 1,
                        message: format!(
                            "line is {} bytes, longer than the {MAX_LINE} allowed",
                            raw.len()
                        ),
                    }),
                ));
            }
            if let [head @ .., b'\r'] = raw {
                raw = head;
            }
            let start = raw
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(raw.len());
            if start == raw.len() || raw[start] == b'#' {
                continue;
            }
            let result = match std::str::from_utf8(raw) {
                Ok(text) => parse_line(text, start).map_err(|(column, message)| LineError {
                    line: self.line,
                    column: column + 1,
                    message,
                }),
                Err(e) => Err(LineError {
                    line: self.line,
                    column: e.valid_up_to() + 1,
                    message: "line is not valid UTF-8".into(),
                }),
            };
            return Some((self.line, result));
        }
        None
    }
}

type Failure = (usize, String);

fn fail<T>(column: usize, message: impl Into<String>) -> Result<T, Failure> {
    Err((column, message.into()))
}

/// A set of bytes that end a token, as a lookup table.
struct Stops([bool; 256]);

impl Stops {
    const fn of(bytes: &[u8]) -> Self {
        let mut table = [false; 256];
        table[b'\\' as usize] = true;
        let mut i = 0;
        while i < bytes.len() {
            table[bytes[i] as usize] = true;
            i += 1;
        }
        Stops(table)
    }
}

/// Ends of a measurement name.
const MEASUREMENT_END: Stops = Stops::of(b", ");
/// Ends of a tag key or field key.
const KEY_END: Stops = Stops::of(b",= ");
/// Ends of a tag value (an `=` there is an error).
const TAG_VALUE_END: Stops = Stops::of(b", =");

/// Scans from `pos` to the first unescaped byte in `stops` (or the end).
/// Returns the end and whether a backslash was seen.
fn scan(bytes: &[u8], mut pos: usize, stops: &Stops) -> (usize, bool) {
    let mut escaped = false;
    while pos < bytes.len() {
        let b = bytes[pos];
        if !stops.0[b as usize] {
            pos += 1;
        } else if b == b'\\' {
            escaped = true;
            pos += 2;
        } else {
            return (pos, escaped);
        }
    }
    (bytes.len(), escaped)
}

/// Replaces `\X` by `X` for each `X` in `specials`; other backslashes stay.
fn unescape<'a>(text: &'a str, escaped: bool, specials: &[u8]) -> Cow<'a, str> {
    if !escaped {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next) = chars.peek()
            && next.is_ascii()
            && specials.contains(&(next as u8))
        {
            out.push(next);
            chars.next();
            continue;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

const MEASUREMENT_SPECIALS: &[u8] = b", ";
const KEY_SPECIALS: &[u8] = b",= ";

fn parse_line(line: &str, start: usize) -> Result<Point<'_>, Failure> {
    let bytes = line.as_bytes();
    // measurement
    let (end, escaped) = scan(bytes, start, &MEASUREMENT_END);
    if end == start {
        return fail(start, "missing measurement name");
    }
    let measurement = unescape(&line[start..end], escaped, MEASUREMENT_SPECIALS);
    let mut pos = end;
    // tags
    let mut tags = Vec::with_capacity(8);
    while pos < bytes.len() && bytes[pos] == b',' {
        pos += 1;
        let (key_end, key_escaped) = scan(bytes, pos, &KEY_END);
        if key_end == pos {
            return fail(pos, "missing tag key");
        }
        if key_end >= bytes.len() || bytes[key_end] != b'=' {
            return fail(key_end, "tag without '=' and value");
        }
        let key = unescape(&line[pos..key_end], key_escaped, KEY_SPECIALS);
        pos = key_end + 1;
        let (value_end, value_escaped) = scan(bytes, pos, &TAG_VALUE_END);
        if value_end == pos {
            return fail(pos, format!("missing value of tag {key:?}"));
        }
        if value_end < bytes.len() && bytes[value_end] == b'=' {
            return fail(value_end, "unescaped '=' in tag value");
        }
        let value = unescape(&line[pos..value_end], value_escaped, KEY_SPECIALS);
        tags.push((key, value));
        pos = value_end;
    }
    if pos >= bytes.len() {
        return fail(pos, "missing fields");
    }
    // exactly one separator space (more are tolerated, as InfluxDB does)
    while pos < bytes.len() && bytes[pos] == b' ' {
        pos += 1;
    }
    // fields
    let mut fields = Vec::with_capacity(1);
    loop {
        let (key_end, key_escaped) = scan(bytes, pos, &KEY_END);
        if key_end == pos {
            return fail(pos, "missing field key");
        }
        if key_end >= bytes.len() || bytes[key_end] != b'=' {
            return fail(key_end, "field without '=' and value");
        }
        let key = unescape(&line[pos..key_end], key_escaped, KEY_SPECIALS);
        pos = key_end + 1;
        let (value, value_end) = parse_field_value(line, pos)?;
        fields.push((key, value));
        pos = value_end;
        match bytes.get(pos) {
            Some(b',') => pos += 1,
            Some(b' ') | None => break,
            Some(_) => return fail(pos, "expected ',' or ' ' after field value"),
        }
    }
    // timestamp
    while pos < bytes.len() && bytes[pos] == b' ' {
        pos += 1;
    }
    let timestamp = if pos < bytes.len() {
        let text = line[pos..].trim_end();
        let parsed = text
            .parse::<i64>()
            .or_else(|_| fail(pos, format!("invalid timestamp {text:?}")))?;
        Some(parsed)
    } else {
        None
    };
    Ok(Point {
        measurement,
        tags,
        fields,
        timestamp,
    })
}

fn parse_field_value(line: &str, start: usize) -> Result<(FieldValue<'_>, usize), Failure> {
    let bytes = line.as_bytes();
    match bytes.get(start) {
        None | Some(b' ') | Some(b',') => fail(start, "missing field value"),
        Some(b'"') => {
            let mut pos = start + 1;
            let mut escaped = false;
            while pos < bytes.len() {
                match bytes[pos] {
                    b'\\' => {
                        escaped = true;
                        pos += 2;
                    }
                    b'"' => {
                        let text = &line[start + 1..pos];
                        return Ok((
                            FieldValue::String(unescape(text, escaped, b"\"\\")),
                            pos + 1,
                        ));
                    }
                    _ => pos += 1,
                }
            }
            fail(start, "unterminated string field value")
        }
        Some(_) => {
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b',' || b == b' ')
                .map_or(bytes.len(), |n| start + n);
            let text = &line[start..end];
            let value = match text {
                "t" | "T" | "true" | "True" | "TRUE" => FieldValue::Boolean(true),
                "f" | "F" | "false" | "False" | "FALSE" => FieldValue::Boolean(false),
                _ if text.ends_with('i') && is_integer(&text[..text.len() - 1], true) => {
                    FieldValue::Integer(&text[..text.len() - 1])
                }
                _ if text.ends_with('u') && is_integer(&text[..text.len() - 1], false) => {
                    FieldValue::UInteger(&text[..text.len() - 1])
                }
                _ if is_float(text) => FieldValue::Float(text),
                _ => return fail(start, format!("invalid field value {text:?}")),
            };
            Ok((value, end))
        }
    }
}

fn is_integer(text: &str, signed: bool) -> bool {
    let digits = match text.strip_prefix('-') {
        Some(rest) if signed => rest,
        _ => text,
    };
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `[+-]digits[.digits][e[+-]digits]`, with digits on at least one side
/// of the point; no `inf` or `nan`.
fn is_float(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut pos = usize::from(matches!(bytes.first(), Some(b'-' | b'+')));
    let digits = |pos: &mut usize| {
        let start = *pos;
        while *pos < bytes.len() && bytes[*pos].is_ascii_digit() {
            *pos += 1;
        }
        *pos - start
    };
    let mut mantissa = digits(&mut pos);
    if bytes.get(pos) == Some(&b'.') {
        pos += 1;
        mantissa += digits(&mut pos);
    }
    if mantissa == 0 {
        return false;
    }
    if matches!(bytes.get(pos), Some(b'e' | b'E')) {
        pos += 1;
        if matches!(bytes.get(pos), Some(b'-' | b'+')) {
            pos += 1;
        }
        if digits(&mut pos) == 0 {
            return false;
        }
    }
    pos == bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Point<'_> {
        match parse_lines(line.as_bytes()).next() {
            Some((_, Ok(point))) => point,
            other => panic!("expected a point from {line:?}, got {other:?}"),
        }
    }

    fn error(line: &str) -> LineError {
        match parse_lines(line.as_bytes()).next() {
            Some((_, Err(e))) => e,
            other => panic!("expected an error from {line:?}, got {other:?}"),
        }
    }

    #[test]
    fn stack_line_keeps_value_text_and_sorted_tags() {
        let p = one(
            "project_vcpu_usage,domain_id=e049ffa7b625b12f,location=site-a,location_id=8676,project_name=os_credits_1 value=3408.5 1556813561098000000",
        );
        assert_eq!(p.measurement, "project_vcpu_usage");
        assert_eq!(p.tag("location_id"), Some("8676"));
        assert_eq!(p.tag("project_name"), Some("os_credits_1"));
        assert_eq!(p.field("value"), Some(&FieldValue::Float("3408.5")));
        assert_eq!(p.timestamp, Some(1_556_813_561_098_000_000));
        assert!(matches!(p.measurement, Cow::Borrowed(_)));
    }

    #[test]
    fn escapes_in_names_and_tags() {
        let p = one(r"my\ metric\,x,project_name=Genome\ Lab,k\=ey=a\,b\=c value=1 5");
        assert_eq!(p.measurement, "my metric,x");
        assert_eq!(p.tag("project_name"), Some("Genome Lab"));
        assert_eq!(p.tag("k=ey"), Some("a,b=c"));
        // a backslash before anything else is literal
        let p = one(r"m,path=C:\dir value=1");
        assert_eq!(p.tag("path"), Some(r"C:\dir"));
    }

    #[test]
    fn field_kinds() {
        let p = one(r#"m a=5i,b=7u,c=1e3,d="say \"hi\", x=1 \\ ok",e=T,f=false,g=-1.50,h=.5 -12"#);
        assert_eq!(p.field("a"), Some(&FieldValue::Integer("5")));
        assert_eq!(p.field("b"), Some(&FieldValue::UInteger("7")));
        assert_eq!(p.field("c"), Some(&FieldValue::Float("1e3")));
        assert_eq!(
            p.field("d"),
            Some(&FieldValue::String(r#"say "hi", x=1 \ ok"#.into()))
        );
        assert_eq!(p.field("e"), Some(&FieldValue::Boolean(true)));
        assert_eq!(p.field("f"), Some(&FieldValue::Boolean(false)));
        assert_eq!(p.field("g"), Some(&FieldValue::Float("-1.50")));
        assert_eq!(p.field("h"), Some(&FieldValue::Float(".5")));
        assert_eq!(p.timestamp, Some(-12));
        assert_eq!(p.field("c").and_then(FieldValue::numeric_text), Some("1e3"));
    }

    #[test]
    fn timestamp_is_optional_and_crlf_accepted() {
        let p = one("m value=1\r\n");
        assert_eq!(p.timestamp, None);
        assert_eq!(p.field("value"), Some(&FieldValue::Float("1")));
    }

    #[test]
    fn blank_and_comment_lines_are_skipped_but_counted() {
        let body = b"# comment\n\n   \nm value=1 1\n# more\nm value=2 2\n";
        let lines: Vec<usize> = parse_lines(body)
            .map(|(n, r)| {
                assert!(r.is_ok());
                n
            })
            .collect();
        assert_eq!(lines, vec![4, 6]);
    }

    #[test]
    fn errors_name_line_and_column() {
        let body = b"m value=1 1\nm value=abc 2\nm,tag value=1\nm\nm value=\"open\n";
        let errors: Vec<LineError> = parse_lines(body).filter_map(|(_, r)| r.err()).collect();
        assert_eq!(errors.len(), 4);
        assert_eq!(errors[0].line, 2);
        assert_eq!(errors[0].column, 9);
        assert!(errors[0].message.contains("invalid field value \"abc\""));
        assert_eq!(errors[1].line, 3);
        assert!(errors[1].message.contains("tag without '='"));
        assert_eq!(errors[2].line, 4);
        assert!(errors[2].message.contains("missing fields"));
        assert_eq!(errors[3].line, 5);
        assert!(errors[3].message.contains("unterminated string"));
        assert_eq!(
            errors[3].to_string(),
            "line 5, column 9: unterminated string field value"
        );
    }

    #[test]
    fn malformed_values_and_timestamps_are_refused() {
        for bad in [
            "m value=1.2.3",
            "m value=nan",
            "m value=inf",
            "m value=1e",
            "m value=-",
            "m value=5i 12x",
            "m value=1 1 2",
            "m value=",
            "m =1",
            "m,=v value=1",
            "m,k= value=1",
            "m,k=a=b value=1",
            ",k=v value=1",
            "m value=1,",
            "m value=12ii",
            "m value=-5u",
        ] {
            let e = error(bad);
            assert_eq!(e.line, 1, "{bad}");
        }
        assert!(
            error("m value=1 99999999999999999999")
                .message
                .contains("invalid timestamp")
        );
    }

    #[test]
    fn invalid_utf8_is_an_error_of_that_line_only() {
        let body = b"m value=1 1\nm,t=\xff value=1 2\nm value=3 3\n";
        let results: Vec<_> = parse_lines(body).collect();
        assert_eq!(results.len(), 3);
        assert!(results[0].1.is_ok());
        let e = results[1].1.as_ref().unwrap_err();
        assert_eq!((e.line, e.column), (2, 5));
        assert!(results[2].1.is_ok());
    }
}
