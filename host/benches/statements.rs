//! Statements and corrections at a site's size: a ledger of 2000 projects
//! (two metrics each, one site) with a month of hourly measurements, about
//! 2.9M charges, written through the ledger's own commit. Measured: a month's
//! statement of every project (ledger read and the arithmetic, as the API
//! does it, CSV left out; the charges rolled up into days first, as the
//! service's roll-up thread does while it bills) and a correction of one day of every project with
//! the de.NBI module (read, re-price, book); the forecasts' paces of every
//! project over a day. SQLite by default; PostgreSQL
//! (a server the benchmark starts) with `BENCH_STORE=postgres`.
//! `cargo bench -p os-credits --bench statements`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use os_credits::account::{Account, Key, State};
use os_credits::billing::correction::{Request, reprice, statement};
use os_credits::ledger::{
    Batch, ChargeRecord, CorrectionRecord, CorrectionScope, Corrections, EngineStore, Forecasts,
    PerunStore, PolicyStamp, Store,
};
use os_credits::policy::{Limits, PolicyRuntime};
use rust_decimal::Decimal;

const PROJECTS: usize = 2000;
const METRICS: [&str; 2] = ["project_vcpu_usage", "project_mb_usage"];
const HOURS: i64 = 30 * 24;
/// 2026-11-01T00:00:00Z.
const START: i64 = 1_793_491_200_000_000_000;
const HOUR: i64 = 3_600_000_000_000;
const ROUNDS: usize = 5;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let postgres;
    let store = if std::env::var("BENCH_STORE").as_deref() == Ok("postgres") {
        postgres = common::postgres::Postgres::start();
        let url = postgres.database("statements");
        Store::postgres(&url, Default::default(), "bench").expect("PostgreSQL ledger")
    } else {
        Store::sqlite(data.path(), Default::default()).expect("SQLite ledger")
    };
    let store = Arc::new(store);
    let filled = Instant::now();
    let stamp = PolicyStamp {
        name: "denbi".into(),
        version: "1.0.0".into(),
        sha256: "f4".repeat(32),
    };
    let mut charges = 0usize;
    for hour in 1..=HOURS {
        let mut batch = Batch::default();
        for project in 0..PROJECTS {
            for metric in METRICS {
                let key = Key {
                    project: format!("project-{project:04}").into(),
                    location_id: "8676".into(),
                    metric: metric.into(),
                };
                let (t0, t1) = (START + (hour - 1) * HOUR, START + hour * HOUR);
                let (v0, v1) = (
                    Decimal::from(hour - 1) * Decimal::from(4),
                    Decimal::from(hour) * Decimal::from(4),
                );
                let credits = Decimal::from(4) / Decimal::from(3);
                batch.charges.push(ChargeRecord {
                    key: key.clone(),
                    previous: (t0, v0.to_string()),
                    current: (t1, v1.to_string()),
                    credits,
                    charged_after: credits * Decimal::from(hour),
                    policy: stamp.clone(),
                    reversed: false,
                    schedule_entry: Some(1),
                });
                if hour == HOURS {
                    batch.states.push((
                        key,
                        Account {
                            state: State {
                                timestamp: t1,
                                value: v1,
                                text: v1.to_string().into(),
                            },
                            charged: credits * Decimal::from(hour),
                            awaiting_baseline: false,
                            pending: false,
                        },
                    ));
                }
                charges += 1;
            }
        }
        store.commit(&batch).expect("commit");
    }
    println!(
        "statements: {charges} charges of {PROJECTS} projects written in {:.1?}",
        filled.elapsed()
    );

    // What the service's roll-up thread does as the ledger commits.
    let rolling = Instant::now();
    let mut rolled = 0;
    loop {
        let count = store.roll_up(20_000).expect("roll-up");
        rolled += count;
        if count < 20_000 {
            break;
        }
    }
    let took = rolling.elapsed();
    println!(
        "statements: rolled up {rolled} charges into days in {took:.1?} ({:.0} charges/s)",
        rolled as f64 / took.as_secs_f64()
    );

    let month = (START, START + HOURS * HOUR);
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let basis = store.statement_basis(month.0, month.1, None).expect("read");
        let read = started.elapsed();
        let lines = statement(&basis, month).expect("statement");
        let took = started.elapsed();
        assert_eq!(lines.len(), PROJECTS * METRICS.len());
        println!(
            "statements: a month of every project: {} lines in {took:.2?} (ledger read {read:.2?})",
            lines.len()
        );
        times.push(took);
    }
    times.sort();
    println!(
        "statements: month statement median {:.2?}",
        times[ROUNDS / 2]
    );

    // A correction of one day of every project, with the de.NBI module at
    // other prices.
    let runtime = PolicyRuntime::new(Limits::default()).expect("engine");
    let bytes = std::fs::read(common::wasm("denbi-policy")).expect("module");
    let module = runtime
        .load_bytes(&bytes, "cpu_price = \"2\"\nram_price = \"0.6\"\n")
        .expect("module loads");
    let mut times = Vec::new();
    for day in 0..ROUNDS as i64 {
        let scope = CorrectionScope {
            from: START + (10 + day) * 24 * HOUR + HOUR / 2,
            to: START + (11 + day) * 24 * HOUR + HOUR / 2,
            site: None,
            projects: None,
        };
        let request = Request {
            reason: format!("bench day {day}"),
            scope: scope.clone(),
            sha256: module.info().sha256.clone(),
            config: String::new(),
        };
        let id = request.id();
        let started = Instant::now();
        let basis = store.correction_basis(&scope).expect("basis");
        let read = started.elapsed();
        let done = reprice(&id, &scope, &basis, &module).expect("re-priced");
        let priced = started.elapsed();
        let record = CorrectionRecord {
            id,
            reason: request.reason,
            scope,
            policy: stamp.clone(),
            config: String::new(),
            total: done.total,
            answer: "{}".into(),
            booked_at: 0,
        };
        store
            .book_correction(&record, &done.lines, basis.head, None)
            .expect("booked");
        let took = started.elapsed();
        println!(
            "statements: correction of a day of every project: {} parts, {} lines in {took:.2?} (read {read:.2?}, priced {:.2?})",
            done.steps,
            done.lines.len(),
            priced - read
        );
        times.push(took);
    }
    times.sort();
    println!(
        "statements: day correction median {:.2?}",
        times[ROUNDS / 2]
    );

    // Forecasts: the pace of every project over a day's window, as the
    // alerts read it every 10 s and /metrics at each scrape.
    for project in 0..PROJECTS {
        let name = format!("project-{project:04}");
        store
            .set_contacts(&name, Some(Decimal::from(10_000)), None, &[])
            .expect("granted");
    }
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let paces = store.paces(24 * HOUR).expect("paces");
        let took = started.elapsed();
        assert_eq!(paces.len(), PROJECTS);
        times.push(took);
    }
    times.sort();
    println!(
        "statements: forecasts of every project (24 h window) median {:.2?}",
        times[ROUNDS / 2]
    );
}
