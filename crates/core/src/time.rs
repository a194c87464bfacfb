//! Time as the ledger keeps it: nanoseconds since the Unix epoch (UTC) in
//! an `i64`, the unit of line protocol's timestamps. The clock is read here
//! and nowhere else.

/// The clock now, in Unix nanoseconds (`i64::MAX` past the year 2262).
pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_the_project_began() {
        // 2026-11-01T00:00:00Z, before any clock this runs on.
        assert!(now_ns() > 1_793_491_200_000_000_000);
    }
}
