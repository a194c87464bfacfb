//! `policies.toml`: never panics; a mapping it accepts starts with the
//! default and names only files inside the policy folder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use os_credits_policy::mapping::{ConfigSource, DEFAULT_SITE, inside_folder, parse};

fuzz_target!(|text: &str| {
    let Ok(mapped) = parse(text) else { return };
    assert_eq!(mapped.first().map(|m| m.site.as_str()), Some(DEFAULT_SITE));
    for entry in &mapped {
        assert!(inside_folder(&entry.module), "{entry:?}");
        if let ConfigSource::File(file) = &entry.config {
            assert!(inside_folder(file), "{entry:?}");
        }
        if let Some(pin) = &entry.sha256 {
            assert!(
                pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()),
                "{entry:?}"
            );
            assert_eq!(pin, &pin.to_ascii_lowercase(), "{entry:?}");
        }
        for path in std::iter::once(&entry.module) {
            let path = std::path::Path::new(path);
            assert!(path.is_relative() && !path.components().any(|c| c.as_os_str() == ".."));
        }
    }
});
