//! The remote-write decoder: never panics, as a snappy body and as the
//! protobuf inside one; a request it accepts gives one item per sample and
//! histogram, and encodes to a body that decodes to the same request.
#![no_main]

use os_credits_ingest as ingest;

use ingest::remote_write::{Labels, decode, encode, samples};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 20;

fn check(body: &[u8]) {
    let Ok(request) = decode(body, LIMIT) else {
        return;
    };
    let labels = Labels::default();
    let expected: usize = request
        .timeseries
        .iter()
        .map(|s| s.samples.len() + s.histograms.len())
        .sum();
    assert_eq!(samples(&request, &labels).count(), expected);
    // Compared as bytes: a NaN sample is not equal to itself.
    let body = encode(&request);
    let again = decode(&body, LIMIT.max(body.len() * 2)).expect("a re-encoded request decodes");
    assert_eq!(encode(&again), body);
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Ok(body) = snap::raw::Encoder::new().compress_vec(data) {
        check(&body);
    }
});
