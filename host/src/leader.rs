//! The leader's tasks (the Perun publisher, the alerts, the webhooks):
//! each a pass over the ledger run on a timer, and retried after failures
//! by one backoff. A pass itself asks whether this replica leads, before
//! and during its work, so a replica that lost the lead acts on nothing.

use std::future::Future;
use std::time::Duration;

/// Runs `pass` every `period`, for ever; a pass that takes longer than
/// the period delays the next (no burst of passes to catch up).
pub async fn every<Pass, Done>(period: Duration, mut pass: Pass)
where
    Pass: FnMut() -> Done,
    Done: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        pass().await;
    }
}

/// The wait after the `failures`-th failure in a row: 1 s, 2 s, 4 s …,
/// at most `cap`.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(30)).min(cap)
}

/// `delay` spread over `[0.5, 1.5)` of itself by the clock's nanoseconds
/// (no random generator needed), so that retries of many projects do not
/// all fall on the same instant.
pub fn jittered(delay: Duration) -> Duration {
    let nanos = chrono::Utc::now().timestamp_subsec_nanos();
    delay.mul_f64(0.5 + f64::from(nanos % 1000) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_waits_twice_as_long_up_to_the_cap() {
        let hour = Duration::from_secs(3600);
        assert_eq!(backoff(0, hour), Duration::from_secs(1));
        assert_eq!(backoff(1, hour), Duration::from_secs(1));
        assert_eq!(backoff(2, hour), Duration::from_secs(2));
        assert_eq!(backoff(5, hour), Duration::from_secs(16));
        assert_eq!(backoff(40, hour), hour);
        assert_eq!(backoff(u32::MAX, hour), hour);
    }

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half() {
        let delay = Duration::from_secs(10);
        for _ in 0..100 {
            let got = jittered(delay);
            assert!(got >= delay / 2 && got < delay * 3 / 2, "{got:?}");
        }
    }
}
