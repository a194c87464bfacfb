//! The line-protocol parser: never panics; every point it accepts writes
//! back (its `Display`) to a line that parses to the same point; the
//! samples decoded from a body are one item per non-blank line.
#![no_main]

use os_credits_ingest as ingest;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let mut lines = 0;
    for (_, parsed) in ingest::parse_lines(body) {
        lines += 1;
        let Ok(point) = parsed else { continue };
        if !point.writes_back() {
            continue;
        }
        let text = point.to_string();
        let mut again = ingest::parse_lines(text.as_bytes());
        let (_, reparsed) = again.next().expect("the written line");
        let reparsed = reparsed.unwrap_or_else(|e| panic!("{text:?} does not parse: {e}"));
        assert_eq!(reparsed, point, "{text:?}");
        assert!(again.next().is_none(), "{text:?} is more than one line");
    }
    let items = ingest::lines(body, ingest::Precision::Nanoseconds, 0).count();
    assert_eq!(items, lines);
});
