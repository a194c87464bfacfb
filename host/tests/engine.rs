//! The engine's failed-commit path: a ledger that refuses a commit. The
//! writes of that transaction are answered 500 (nothing of them is stored),
//! the book is rebuilt from the ledger, and the same write sent again bills
//! exactly once. The real router over real HTTP, the real SQLite store
//! behind a switch.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use os_credits::api::{AppState, router};
use os_credits::billing::engine::{Body, Engine, WriteResult};
use os_credits::billing::prices::Prices;
use os_credits::billing::{Account, Key};
use os_credits::ledger::{Batch, EngineStore, Floor, LedgerError, Reads};
use os_credits::ledger::{Durability, Store};
use os_credits::policy::registry::Registry;
use os_credits::policy::schedule::wanted_of;
use os_credits::policy::{Limits, PolicyRuntime};
use rust_decimal::Decimal;

/// The SQLite store whose commits fail while `failing` is set (as when the
/// disk is full).
struct Switch {
    store: Arc<Store>,
    failing: AtomicBool,
}

impl EngineStore for Switch {
    fn accounts(&self) -> Result<Vec<(Key, Account)>, LedgerError> {
        self.store.accounts()
    }
    fn commit(&self, batch: &Batch) -> Result<(), LedgerError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(LedgerError::Corrupt("disk I/O error (simulated)".into()));
        }
        self.store.commit(batch)
    }
    fn reversible(&self, project: &str, floors: &[Floor]) -> Result<Vec<Decimal>, LedgerError> {
        self.store.reversible(project, floors)
    }
    fn rebase(
        &self,
        project: &str,
        floors: &[Floor],
        states: &[(Key, Account)],
        charged: Decimal,
    ) -> Result<usize, LedgerError> {
        self.store.rebase(project, floors, states, charged)
    }
}

fn line(value: &str, at: i64) -> String {
    format!("project_vcpu_usage,location_id=8676,project_name=p value={value} {at}\n")
}

#[test]
fn a_failed_commit_answers_500_rebuilds_the_book_and_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let policies = common::policy_dir(&[]);
    let store = Arc::new(Store::sqlite(data.path(), Durability::Normal).unwrap());
    let switch = Arc::new(Switch {
        store: store.clone(),
        failing: AtomicBool::new(false),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let policy_runtime = Arc::new(PolicyRuntime::new(Limits::default()).unwrap());
    let registry = Arc::new(Registry::open(policy_runtime.clone(), policies.path()).unwrap());
    let prices = Arc::new(Prices::new(policy_runtime, store.clone()));
    prices.store_modules(&registry.policies().load()).unwrap();
    let engine =
        Arc::new(Engine::start(switch.clone(), prices.clone(), Default::default()).unwrap());
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let seeded = runtime.block_on(engine.submit(Body::Schedule {
        wanted: wanted_of(&registry.policies().load(), "folder", now),
        complete: true,
    }));
    assert!(
        matches!(&seeded, WriteResult::Scheduled(plan) if plan.entries.len() == 1 && plan.refused.is_empty()),
        "{seeded:?}"
    );
    let state = AppState {
        replica: Arc::new(os_credits::replica::Replica::single(engine.clone())),
        ledger: store.clone(),
        schedule: prices.live(),
        prices,
        registry,
        perun: None,
        notifier: None,
        log_filter: Arc::new(|_: &str| Ok(())),
        api_key: None,
        precision: 2,
        started: std::time::Instant::now(),
        workers: 2,
        remote_write: Default::default(),
        writers: Arc::new(os_credits::writers::Writers::open_to_all()),
        corrections: store.clone(),
        applying: Default::default(),
        roll_up: Default::default(),
        webhooks: None,
        forecasts: store.clone(),
        forecast_window_hours: 24,
    };
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!(
        "http://{}/write?precision=s",
        listener.local_addr().unwrap()
    );
    runtime.spawn(async move { axum::serve(listener, router(state, 1 << 20)).await });
    let post = |body: String| {
        let response = common::http().post(&url).body(body).send().unwrap();
        (response.status().as_u16(), response.text().unwrap())
    };
    let used = || {
        store
            .project("p")
            .unwrap()
            .map(|p| p.used())
            .unwrap_or_default()
    };

    // 10 -> 15: five credits, committed.
    assert_eq!(post(line("10", 1) + &line("15", 2)).0, 204);
    assert_eq!(used(), Decimal::from(5));
    // 15 -> 18 while the disk fails: 500, nothing stored.
    switch.failing.store(true, Ordering::SeqCst);
    let (status, body) = post(line("18", 3));
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("ledger write failed"), "{body}");
    assert_eq!(used(), Decimal::from(5));
    assert_eq!(engine.stats().failed_commits, 1);
    let failed_before_remote = engine.stats().failed_commits;
    // Prometheus' samples get a 5xx too, never a 4xx: it retries them.
    let remote = {
        use os_credits::ingest::remote_write::{
            Label, PromSample, TimeSeries, WriteRequest, encode,
        };
        let label = |n: &str, v: &str| Label {
            name: n.as_bytes().to_vec().into(),
            value: v.as_bytes().to_vec().into(),
        };
        encode(&WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![
                    label("__name__", "project_vcpu_usage"),
                    label("location_id", "8676"),
                    label("project_name", "p"),
                ],
                samples: vec![PromSample {
                    value: 19.0,
                    timestamp: 3_500,
                }],
                histograms: Vec::new(),
            }],
        })
    };
    let response = common::http()
        .post(url.replace("/write?precision=s", "/api/v1/write"))
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .body(remote)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 500);
    assert_eq!(engine.stats().failed_commits, failed_before_remote + 1);
    assert_eq!(used(), Decimal::from(5));
    // The disk is back; the sender retries the same write. Had the book
    // kept the refused step, the retry would be stale and 3 credits lost.
    switch.failing.store(false, Ordering::SeqCst);
    assert_eq!(post(line("18", 3)).0, 204);
    assert_eq!(used(), Decimal::from(8));
    assert_eq!(store.charges("p").unwrap().len(), 2);
    // And the next step continues from the stored state.
    assert_eq!(post(line("20", 4)).0, 204);
    assert_eq!(used(), Decimal::from(10));
    engine.shutdown();
}
