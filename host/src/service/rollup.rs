//! The statements' daily roll-up and the corrections of back-dated
//! schedule entries: one thread of the service, beside billing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::billing::prices::LiveSchedule;
use crate::ledger::Ledger;

/// What the roll-up thread has done since start (`/stats` `statements`):
/// the markers tests wait for instead of sleeping.
#[derive(Debug, Default)]
pub struct RollUpStatus {
    passes: AtomicU64,
    back_dated_settled: AtomicU64,
    back_dated_booked: AtomicU64,
}

/// [`RollUpStatus`] as `/stats` shows it.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RollUpView {
    /// Passes of the thread (each looks for back-dated entries first).
    pub passes: u64,
    /// Back-dated schedule entries settled: their correction found booked
    /// already, booked by this process, or found unpriceable.
    pub back_dated_settled: u64,
    /// Of those, the corrections this process booked.
    pub back_dated_booked: u64,
}

impl RollUpStatus {
    /// The counts now.
    pub fn view(&self) -> RollUpView {
        RollUpView {
            passes: self.passes.load(Ordering::Relaxed),
            back_dated_settled: self.back_dated_settled.load(Ordering::Relaxed),
            back_dated_booked: self.back_dated_booked.load(Ordering::Relaxed),
        }
    }
}

/// Charges rolled up into their days per pass of [`roll_up_days`].
const ROLL_UP_BATCH: usize = 5_000;

/// A pass that found a full batch waits this many times as long as it
/// took: the roll-up takes at most a quarter of a core (and of the
/// ledger's writer) from billing.
const ROLL_UP_PAUSE: u32 = 3;

/// The roll-up waits until billing has not committed for this long…
const ROLL_UP_QUIET: Duration = Duration::from_millis(300);

/// …but not longer than this (under a steady load it still progresses).
const ROLL_UP_PATIENCE: Duration = Duration::from_secs(10);

/// Keeps the statements' daily totals up with the charges, on a thread of
/// its own: a pass every second, sooner while there is more (paced by
/// [`ROLL_UP_PAUSE`]), each once billing has been quiet for
/// [`ROLL_UP_QUIET`] (or waited [`ROLL_UP_PATIENCE`]); statements read
/// what is not rolled up yet from the charges. And it
/// books the correction of each back-dated schedule entry that has none yet.
pub(super) fn roll_up_days(
    ledger: Arc<dyn Ledger>,
    prices: Arc<LiveSchedule>,
    webhook: bool,
    status: Arc<RollUpStatus>,
) {
    let spawned = std::thread::Builder::new()
        .name("roll-up".into())
        .spawn(move || {
            let mut corrected = std::collections::HashSet::new();
            let mut waiting = std::time::Instant::now();
            loop {
                book_back_dated(&*ledger, &prices, &mut corrected, webhook, &status);
                status.passes.fetch_add(1, Ordering::Relaxed);
                let quiet = Duration::from_nanos(ledger.quiet_for().max(0) as u64);
                if quiet < ROLL_UP_QUIET && waiting.elapsed() < ROLL_UP_PATIENCE {
                    std::thread::sleep(ROLL_UP_QUIET - quiet);
                    continue;
                }
                waiting = std::time::Instant::now();
                let started = std::time::Instant::now();
                match ledger.roll_up(ROLL_UP_BATCH) {
                    Ok(count) if count == ROLL_UP_BATCH => {
                        std::thread::sleep(started.elapsed() * ROLL_UP_PAUSE);
                    }
                    Ok(_) => std::thread::sleep(Duration::from_secs(1)),
                    Err(e) => {
                        tracing::warn!("statements: cannot roll the charges up into days (statements read the charges meanwhile): {e}");
                        std::thread::sleep(Duration::from_secs(10));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("statements: no roll-up thread (statements read the charges): {e}");
    }
}

/// Books the correction of every back-dated schedule entry (one with a
/// `correction_reason`) not booked yet, re-priced by the schedule in force
/// (which holds the entry). Idempotent: the correction's id comes from the
/// entry, so a crash between the entry and its correction, or two replicas,
/// book it once. `done`: entries settled in this process.
fn book_back_dated(
    ledger: &dyn Ledger,
    prices: &LiveSchedule,
    done: &mut std::collections::HashSet<i64>,
    webhook: bool,
    status: &RollUpStatus,
) {
    use crate::billing::correction::{CorrectionError, apply, for_entry};
    let schedule = prices.current();
    let pending: Vec<_> = schedule
        .entries()
        .iter()
        .filter(|v| !done.contains(&v.entry.id))
        .collect();
    if pending.is_empty() {
        return;
    }
    let booked: std::collections::HashSet<String> = match ledger.corrections() {
        Ok(all) => all.into_iter().map(|c| c.id).collect(),
        Err(e) => {
            return tracing::warn!("back-dated schedule entries: cannot read the corrections: {e}");
        }
    };
    for version in pending {
        let entry = &version.entry;
        let Some(request) = for_entry(entry) else {
            done.insert(entry.id);
            continue;
        };
        if booked.contains(&request.id()) {
            done.insert(entry.id);
            status.back_dated_settled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Some(module) = version.module() else {
            continue; // its module does not load (logged where the schedule is built)
        };
        let info = module.info();
        let policy = crate::ledger::PolicyStamp {
            name: info.name.clone(),
            version: info.version.clone(),
            sha256: info.sha256.clone(),
        };
        let span = tracing::info_span!("back-dated", entry = entry.id, site = %entry.site);
        let _in = span.enter();
        match apply(ledger, &request, &*schedule, &policy, false, webhook) {
            Ok(answer) => {
                done.insert(entry.id);
                status.back_dated_settled.fetch_add(1, Ordering::Relaxed);
                status.back_dated_booked.fetch_add(1, Ordering::Relaxed);
                tracing::info!(correction = %answer.id, total = %answer.total_difference, "back-dated schedule entry: its correction is booked");
            }
            Err(e @ CorrectionError::Unpriceable { .. }) => {
                done.insert(entry.id);
                status.back_dated_settled.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "back-dated schedule entry: no correction booked (restart to try again): {e}"
                );
            }
            Err(e) => tracing::warn!("back-dated schedule entry: correction not booked yet: {e}"),
        }
    }
}
