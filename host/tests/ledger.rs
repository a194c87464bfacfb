//! The ledger's conformance suite: every role of the one [`Store`] against
//! SQLite and against a real PostgreSQL (started in a temp dir), the same
//! assertions on both. What only one database has is tested beside it: the
//! SQLite migrations kept from before, a newer schema refused by both, and
//! the replicas' role (inbox, lock, lease and fencing) on PostgreSQL.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use os_credits::account::{Account, Key, State};
use os_credits::ledger::replication::{InboxBody, InboxRow, InboxWriter, Replication};
use os_credits::ledger::sql::Keepalive;
use os_credits::ledger::{
    Adjustment, AdjustmentKind, Batch, Booking, ChargeRecord, CorrectionLine, CorrectionRecord,
    CorrectionScope, Corrections, Durability, EngineStore, Floor, Forecasts, LedgerError,
    Notifications, PerunRecord, PerunStore, PolicyStamp, Reads, Schedules, Store, ValueSource,
    WebhookEvent, Webhooks,
};
use os_credits::schedule::{BEGINNING, Entry, Kind};
use rust_decimal::Decimal;

fn server() -> &'static common::postgres::Postgres {
    static SERVER: OnceLock<common::postgres::Postgres> = OnceLock::new();
    SERVER.get_or_init(common::postgres::Postgres::start)
}

/// A fresh database on the test server; its URL.
fn database() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    server().database(&format!("conformance_{}_{n}", std::process::id()))
}

/// Runs `check` on a fresh SQLite store, then (with the feature
/// `programs`, as `make test` runs) on a fresh PostgreSQL one; a failure
/// names the store it failed on.
fn on_both(check: impl Fn(&Store)) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::sqlite(dir.path(), Durability::Normal).unwrap();
    on("SQLite", &sqlite, &check);
    if cfg!(feature = "programs") {
        let postgres = Store::postgres(&database(), Keepalive::default(), "conformance").unwrap();
        on("PostgreSQL", &postgres, &check);
    }
}

/// Runs `check` on `store`, saying which store failed if it panics.
fn on(name: &str, store: &Store, check: &impl Fn(&Store)) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(store)));
    if let Err(panic) = outcome {
        eprintln!("the conformance check failed on {name}");
        std::panic::resume_unwind(panic);
    }
}

fn d(text: &str) -> Decimal {
    text.parse().unwrap()
}

fn key(project: &str) -> Key {
    Key {
        project: project.into(),
        location_id: "8676".into(),
        metric: "project_vcpu_usage".into(),
    }
}

fn account(timestamp: i64, text: &str, charged: &str) -> Account {
    Account {
        state: State {
            timestamp,
            value: d(text),
            text: text.into(),
        },
        charged: d(charged),
        awaiting_baseline: false,
        pending: false,
    }
}

fn charge(project: &str, credits: &str, after: &str) -> ChargeRecord {
    ChargeRecord {
        key: key(project),
        previous: (1, "10".into()),
        current: (2, "15.5".into()),
        credits: d(credits),
        charged_after: d(after),
        policy: PolicyStamp {
            name: "denbi".into(),
            version: "1.0.0".into(),
            sha256: "ab".repeat(32),
        },
        reversed: false,
        schedule_entry: None,
    }
}

#[test]
fn a_batch_is_stored_exactly_and_restored() {
    on_both(|ledger| {
        let tiny = "0.0000000000000000000000001";
        let batch = Batch {
            states: vec![
                (key("a"), account(1, "10", "0")),
                (key("a"), account(2, "15.5", tiny)),
                (key("b"), account(7, "1e3", "0")),
            ],
            charges: vec![charge("a", tiny, tiny)],
            ..Batch::default()
        };
        ledger.commit(&batch).unwrap();
        let mut accounts = ledger.accounts().unwrap();
        accounts.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(accounts.len(), 2);
        assert_eq!(accounts[0].1.state.text.as_ref(), "15.5");
        assert_eq!(accounts[0].1.charged.to_string(), tiny);
        assert_eq!(accounts[1].1.state.text.as_ref(), "1e3");
        assert_eq!(accounts[1].1.state.value, Decimal::from(1000));
        let a = ledger.project("a").unwrap().unwrap();
        assert_eq!(a.used().to_string(), tiny);
        // b has a key but no charge: known, used 0
        assert_eq!(ledger.project("b").unwrap().unwrap().used(), Decimal::ZERO);
        assert_eq!(ledger.project("nobody").unwrap(), None);
        assert_eq!(ledger.charges("a").unwrap(), vec![charge("a", tiny, tiny)]);
        let counts = ledger.counts().unwrap();
        assert_eq!(
            (counts.projects, counts.keys, counts.charges, counts.outbox),
            (2, 2, 1, 1)
        );
        assert!(counts.oldest_outbox.is_some());
    });
}

#[test]
fn a_large_batch_keeps_billing_order_and_the_last_state_of_each_key() {
    on_both(|ledger| {
        // More rows than one statement writes, in an uneven number.
        let charges: Vec<ChargeRecord> = (1..=700)
            .map(|i| ChargeRecord {
                current: (i, i.to_string()),
                ..charge(&format!("p{}", i % 7), &i.to_string(), &i.to_string())
            })
            .collect();
        let states: Vec<(Key, Account)> = (1..=700)
            .map(|i| (key(&format!("p{}", i % 7)), account(i, &i.to_string(), "1")))
            .collect();
        ledger
            .commit(&Batch {
                states,
                charges,
                ..Batch::default()
            })
            .unwrap();
        let all = ledger.charges_between(0, 1_000).unwrap();
        let order: Vec<i64> = all.iter().map(|c| c.current.0).collect();
        assert_eq!(order, (1..=700).collect::<Vec<_>>());
        for (key, account) in ledger.accounts().unwrap() {
            let last = (694..=700)
                .find(|i| format!("p{}", i % 7) == *key.project)
                .unwrap();
            assert_eq!(account.state.timestamp, last, "{key:?}");
        }
        // The project's total is its last charge's running total.
        let p0 = ledger.project("p0").unwrap().unwrap();
        assert_eq!(p0.charged, Decimal::from(700));
        assert_eq!(ledger.history("p0").unwrap().len(), 100);
    });
}

#[test]
fn a_rebase_reverses_old_steps_rewrites_the_history_and_persists_the_floor() {
    on_both(|ledger| {
        // Three steps of one key: 1 -> 2 (2 credits), 2 -> 3 (3), 3 -> 4 (4).
        let step = |from: i64, credits: &str, after: &str| ChargeRecord {
            previous: (from, from.to_string()),
            current: (from + 1, (from + 1).to_string()),
            ..charge("a", credits, after)
        };
        let batch = Batch {
            states: vec![(key("a"), account(4, "4", "9"))],
            charges: vec![step(1, "2", "2"), step(2, "3", "5"), step(3, "4", "9")],
            ..Batch::default()
        };
        ledger.commit(&batch).unwrap();
        // Two of the three in the statements' daily totals already.
        assert_eq!(ledger.roll_up(2).unwrap(), 2);
        let floors = [Floor {
            location_id: "8676".into(),
            metric: "project_vcpu_usage".into(),
            timestamp: 2,
        }];
        // The old service billed up to t=2: the step starting at 1 is its.
        assert_eq!(
            ledger.reversible("a", &floors).unwrap(),
            vec![Decimal::from(2)]
        );
        let mut floored = account(4, "4", "7");
        floored.awaiting_baseline = true;
        let reversed = ledger
            .rebase("a", &floors, &[(key("a"), floored)], Decimal::from(7))
            .unwrap();
        assert_eq!(reversed, 1);
        let running: Vec<Decimal> = ledger
            .history("a")
            .unwrap()
            .iter()
            .map(|h| h.charged_after)
            .collect();
        assert_eq!(running, vec![Decimal::from(3), Decimal::from(7)]);
        assert_eq!(
            ledger.project("a").unwrap().unwrap().charged,
            Decimal::from(7)
        );
        assert_eq!(ledger.charges_between(0, 10).unwrap().len(), 2);
        let audit = ledger.charges("a").unwrap();
        assert_eq!(
            audit.iter().map(|c| c.reversed).collect::<Vec<_>>(),
            vec![true, false, false]
        );
        assert!(ledger.accounts().unwrap()[0].1.awaiting_baseline);
        // The daily totals lost the reversed step too.
        let two_days = 2 * os_credits::period::DAY;
        let credits = |ledger: &Store| -> Decimal {
            statement_of(ledger, 0, two_days).iter().map(|l| l.2).sum()
        };
        assert_eq!(credits(ledger), Decimal::from(7));
        assert_eq!(ledger.roll_up(10).unwrap(), 1);
        assert_eq!(credits(ledger), Decimal::from(7));
        // Nothing left to reverse: applying the same floor again changes nothing.
        assert_eq!(
            ledger.reversible("a", &floors).unwrap(),
            vec![Decimal::ZERO]
        );
    });
}

#[test]
fn adjustments_intents_and_confirmed_writes_are_kept_and_pruned() {
    on_both(|ledger| {
        ledger
            .commit(&Batch {
                states: vec![(key("a"), account(2, "15.5", "5.5"))],
                charges: vec![charge("a", "5.5", "5.5")],
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(ledger.perun_record("a").unwrap(), PerunRecord::default());
        let adopted = Adjustment {
            kind: AdjustmentKind::Adopted,
            amount: d("100"),
        };
        ledger.adjust("a", adopted, d("100"), None).unwrap();
        assert_eq!(ledger.project("a").unwrap().unwrap().used(), d("105.5"));
        let first = ledger.record_intent("a", d("105.50"), "{}").unwrap();
        ledger.confirm_write("a", first, 0).unwrap();
        let second = ledger.record_intent("a", d("110.00"), "{}").unwrap();
        let record = ledger.perun_record("a").unwrap();
        assert!(record.adopted_at.is_some());
        let values: Vec<_> = record
            .known
            .iter()
            .map(|k| (k.value, k.source, k.confirmed))
            .collect();
        assert_eq!(
            values,
            vec![
                (d("100"), ValueSource::Adopted, true),
                (d("105.50"), ValueSource::Write, true),
                (d("110.00"), ValueSource::Write, false),
            ]
        );
        // A hand edit moves `adopted` and is recognised from then on.
        let edit = Adjustment {
            kind: AdjustmentKind::ManualEdit,
            amount: d("-60"),
        };
        ledger
            .adjust("a", edit, d("50"), Some("2026-11-28 08:00:00.0"))
            .unwrap();
        assert_eq!(ledger.project("a").unwrap().unwrap().used(), d("45.5"));
        let audit = ledger.adjustments().unwrap();
        assert_eq!(audit.len(), 2);
        assert_eq!(audit[1].adjustment, edit);
        assert_eq!(
            audit[1].perun_modified_at.as_deref(),
            Some("2026-11-28 08:00:00.0")
        );
        // Confirming the newest forgets what was recorded before it (and
        // before the in-flight limit), never the newest itself.
        let third = ledger.record_intent("a", d("45.50"), "{}").unwrap();
        ledger.confirm_write("a", third, i64::MAX).unwrap();
        let known = ledger.perun_record("a").unwrap().known;
        assert_eq!(known.len(), 1);
        assert_eq!((known[0].id, known[0].confirmed), (third, true));
        assert!(second < third);
    });
}

#[test]
fn a_published_project_waits_out_the_interval_even_after_a_new_charge() {
    on_both(|ledger| {
        let charged = |after: &str| Batch {
            states: vec![(key("a"), account(2, "15.5", after))],
            charges: vec![charge("a", "1", after)],
            ..Batch::default()
        };
        ledger.commit(&charged("1")).unwrap();
        let due = ledger.due(100, 10).unwrap();
        assert_eq!(due.len(), 1);
        ledger.synced(&due[0], 1_000).unwrap();
        // Published and nothing new: nothing due, nothing pending.
        assert!(ledger.due(5_000, 10).unwrap().is_empty());
        assert_eq!(ledger.counts().unwrap().outbox, 0);
        // A new charge waits for the interval, then is due once.
        ledger.commit(&charged("2")).unwrap();
        assert_eq!(ledger.counts().unwrap().outbox, 1);
        assert!(ledger.due(999, 10).unwrap().is_empty());
        let due = ledger.due(1_000, 10).unwrap();
        assert_eq!(due.len(), 1);
        // Charged again while being published: still due after the interval.
        ledger.commit(&charged("3")).unwrap();
        ledger.synced(&due[0], 2_000).unwrap();
        assert!(ledger.due(1_999, 10).unwrap().is_empty());
        assert_eq!(ledger.due(2_000, 10).unwrap().len(), 1);
        // A failure is counted and retried at its time.
        ledger.sync_failed("a", 3_000, "Perun down").unwrap();
        assert!(ledger.due(2_999, 10).unwrap().is_empty());
        assert_eq!(ledger.due(3_000, 10).unwrap()[0].attempts, 1);
        let publishable = ledger.publishable("a").unwrap().unwrap();
        assert_eq!(publishable.used, d("3"));
        assert_eq!(publishable.sites["8676"]["project_vcpu_usage"], 2);
        assert_eq!(ledger.publishable("nobody").unwrap(), None);
    });
}

#[test]
fn contacts_and_mailed_thresholds_are_kept() {
    on_both(|ledger| {
        ledger
            .commit(&Batch {
                states: vec![(key("a"), account(2, "15.5", "60"))],
                charges: vec![charge("a", "60", "60")],
                ..Batch::default()
            })
            .unwrap();
        // No granted credits known: nothing to check.
        assert!(ledger.notifiable().unwrap().is_empty());
        let emails = vec!["pi@example.org".to_owned(), "it@example.org".to_owned()];
        ledger
            .set_contacts("a", Some(d("100")), Some(42), &emails)
            .unwrap();
        ledger.set_contacts("b", Some(d("7.5")), None, &[]).unwrap();
        ledger.record_notification("a", 50, d("100")).unwrap();
        let mut notifiable = ledger.notifiable().unwrap();
        notifiable.sort_by(|x, y| x.project.project.cmp(&y.project.project));
        assert_eq!(notifiable.len(), 2);
        assert_eq!(notifiable[0].project.emails, emails);
        assert_eq!(notifiable[0].project.ends_at, Some(42));
        assert_eq!(notifiable[0].project.used(), d("60"));
        assert_eq!(notifiable[0].mailed, vec![(50, d("100"))]);
        assert_eq!(notifiable[1].project.granted, Some(d("7.5")));
        assert!(notifiable[1].mailed.is_empty());
        // Granted credits raised: the threshold's record follows.
        ledger.record_notification("a", 50, d("200")).unwrap();
        let again = ledger.notifiable().unwrap();
        let a = again.iter().find(|n| n.project.project == "a").unwrap();
        assert_eq!(a.mailed, vec![(50, d("200"))]);
    });
}

/// A charge of `credits` for the step `[t0, t1)` (ns).
fn step(project: &str, (t0, t1): (i64, i64), credits: &str) -> ChargeRecord {
    ChargeRecord {
        previous: (t0, "0".into()),
        current: (t1, credits.into()),
        ..charge(project, credits, "0")
    }
}

#[test]
fn a_pace_counts_the_window_by_when_usage_happened() {
    const H: i64 = 3_600_000_000_000;
    on_both(|ledger| {
        ledger
            .commit(&Batch {
                states: vec![(key("a"), account(30 * H, "1", "0"))],
                charges: vec![
                    // Before the window (ends at its start): not counted.
                    step("a", (0, 4 * H), "8"),
                    // Spans the window's start (6 h of 24 h): 12 h of it in.
                    step("a", (4 * H, 28 * H), "24"),
                    step("a", (28 * H, 30 * H), "3"),
                    // Only one charge, inside any window: its start bounds it.
                    step("b", (20 * H, 22 * H), "5"),
                ],
                ..Batch::default()
            })
            .unwrap();
        let pace = ledger.pace("a", 14 * H).unwrap().unwrap();
        assert_eq!(pace.latest, Some(30 * H));
        assert_eq!(pace.measured_from, 16 * H);
        // 24 x 12/24 + 3.
        assert_eq!(pace.credits, d("15"));
        let pace = ledger.pace("b", 14 * H).unwrap().unwrap();
        assert_eq!((pace.latest, pace.measured_from), (Some(22 * H), 20 * H));
        assert_eq!(pace.credits, d("5"));
        // A project known only by a key: no pace; an unknown one: none.
        ledger
            .commit(&Batch {
                states: vec![(key("c"), account(1, "1", "0"))],
                ..Batch::default()
            })
            .unwrap();
        let pace = ledger.pace("c", H).unwrap().unwrap();
        assert_eq!((pace.latest, pace.credits), (None, Decimal::ZERO));
        assert_eq!(ledger.pace("nobody", H).unwrap(), None);
        // Every project with granted credits, with its end.
        ledger
            .set_contacts("a", Some(d("100")), Some(99 * H), &[])
            .unwrap();
        let paces = ledger.paces(14 * H).unwrap();
        assert_eq!(paces.len(), 1);
        assert_eq!(paces[0].project.ends_at, Some(99 * H));
        assert_eq!(paces[0].credits, d("15"));
    });
}

#[test]
fn webhook_events_are_queued_once_and_kept_until_delivered() {
    on_both(|ledger| {
        let event = |id: &str| WebhookEvent {
            id: id.into(),
            kind: "credits.threshold_crossed".into(),
            body: format!("{{\"id\": \"{id}\"}}"),
        };
        assert!(ledger.queue_webhook(&event("e1")).unwrap());
        assert!(
            !ledger.queue_webhook(&event("e1")).unwrap(),
            "known: not again"
        );
        assert!(ledger.queue_webhook(&event("e2")).unwrap());
        let due = ledger.webhooks_due(i64::MAX, 10).unwrap();
        let ids: Vec<&str> = due.iter().map(|p| p.event.id.as_str()).collect();
        assert_eq!(ids, ["e1", "e2"], "oldest first");
        assert_eq!(due[0].event, event("e1"));
        assert_eq!(ledger.webhook_depth().unwrap(), (2, 0));
        ledger.webhook_failed("e1", 1_000, "answered 500").unwrap();
        assert_eq!(ledger.webhook_depth().unwrap(), (2, 1));
        let due = ledger.webhooks_due(999, 10).unwrap();
        assert_eq!(due.len(), 1, "e1 waits for its next attempt");
        let due = ledger.webhooks_due(1_000, 10).unwrap();
        assert_eq!((due[0].event.id.as_str(), due[0].attempts), ("e1", 1));
        ledger.webhook_delivered("e1").unwrap();
        assert_eq!(ledger.webhook_depth().unwrap(), (1, 0));
        // Delivered: never queued again under its id.
        assert!(!ledger.queue_webhook(&event("e1")).unwrap());
        assert_eq!(ledger.webhooks_due(i64::MAX, 10).unwrap().len(), 1);
    });
}

#[test]
fn names_compare_bytewise_on_both() {
    on_both(|ledger| {
        let names = ["a", "B", "a-b", "a_b", "é", "Z"];
        let states = names
            .iter()
            .map(|n| (key(n), account(1, "1", "0")))
            .collect();
        ledger
            .commit(&Batch {
                states,
                charges: Vec::new(),
                ..Batch::default()
            })
            .unwrap();
        let mut stored: Vec<String> = ledger
            .accounts()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k.project.to_string())
            .collect();
        stored.sort();
        let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        expected.sort();
        assert_eq!(stored, expected);
        for name in names {
            assert!(ledger.project(name).unwrap().is_some(), "{name}");
        }
        assert!(ledger.project("A").unwrap().is_none());
    });
}

#[test]
fn the_schedule_keeps_its_entries_in_order_and_modules_by_content() {
    on_both(|ledger| {
        assert_eq!(ledger.schedule().unwrap(), vec![]);
        assert_eq!(ledger.schedule_head().unwrap(), 0);
        let bytes = b"\0asm module bytes".to_vec();
        let sha = "ab".repeat(32);
        ledger.put_module(&sha, &bytes).unwrap();
        ledger.put_module(&sha, &bytes).unwrap(); // once
        assert_eq!(ledger.module(&sha).unwrap(), Some(bytes));
        assert_eq!(ledger.module(&"cd".repeat(32)).unwrap(), None);
        let entry = |id: i64, from: i64, kind: Kind| Entry {
            id,
            site: if id == 2 {
                "8677".into()
            } else {
                "default".into()
            },
            from,
            kind,
            file: "denbi.wasm".into(),
            sha256: if kind == Kind::Module {
                sha.clone()
            } else {
                String::new()
            },
            config: format!("cpu_price = \"{id}\"\n"),
            memory_mb: (id == 1).then_some(256),
            timeout_ms: (id == 3).then_some(1000),
            added_at: 1_700_000_000_000_000_000 + id,
            origin: "folder".into(),
            correction_reason: None,
        };
        let entries = vec![
            entry(1, BEGINNING, Kind::Module),
            entry(2, 1_800_000_000_000_000_000, Kind::Inherit),
            entry(3, i64::MAX, Kind::Withdrawn),
        ];
        // Appended with a billing batch, with the charge that names one.
        let mut priced = charge("p", "1.5", "1.5");
        priced.schedule_entry = Some(1);
        ledger
            .commit(&Batch {
                states: vec![(key("p"), account(2, "5", "1.5"))],
                charges: vec![priced.clone()],
                schedule: entries.clone(),
            })
            .unwrap();
        assert_eq!(ledger.schedule().unwrap(), entries);
        assert_eq!(ledger.schedule_head().unwrap(), 3);
        assert_eq!(ledger.charges("p").unwrap(), vec![priced]);
        // An entry's id is its place: the same id twice is refused.
        let again = Batch {
            schedule: vec![entry(3, 5, Kind::Module)],
            ..Batch::default()
        };
        assert!(ledger.commit(&again).is_err());
        assert_eq!(ledger.schedule().unwrap(), entries);
    });
}

/// The statement of `[from, to)` as lines (project, version, credits, quantity).
fn statement_of(
    ledger: &Store,
    from: i64,
    to: i64,
) -> Vec<(String, String, Decimal, Option<Decimal>)> {
    let basis = ledger.statement_basis(from, to, None).unwrap();
    os_credits::billing::correction::statement(&basis, (from, to))
        .unwrap()
        .into_iter()
        .map(|l| {
            (
                l.project,
                l.correction_id.unwrap_or_default(),
                l.credits,
                l.quantity,
            )
        })
        .collect()
}

#[test]
fn statements_read_the_days_rolled_up_as_the_charges_and_corrections_are_booked_once() {
    const DAY: i64 = os_credits::period::DAY;
    on_both(|ledger| {
        // Hourly steps over three days, 1 unit and 2 credits an hour, and
        // one step spanning midnight.
        let step = |hour: i64| ChargeRecord {
            previous: (hour * 3_600_000_000_000, hour.to_string()),
            current: ((hour + 1) * 3_600_000_000_000, (hour + 1).to_string()),
            ..charge("a", "2", &(2 * (hour + 1)).to_string())
        };
        let charges: Vec<ChargeRecord> = (0..72).map(step).collect();
        ledger
            .commit(&Batch {
                charges,
                ..Batch::default()
            })
            .unwrap();
        // Not rolled up, half rolled up, all rolled up: the same statements.
        let periods = [(0, 3 * DAY), (DAY / 2, 2 * DAY + 1), (DAY, 2 * DAY)];
        let before: Vec<_> = periods
            .iter()
            .map(|p| statement_of(ledger, p.0, p.1))
            .collect();
        assert_eq!(
            before[0],
            vec![("a".into(), String::new(), d("144"), Some(d("72")))]
        );
        assert_eq!(before[2][0].2, d("48"));
        assert_eq!(ledger.roll_up(30).unwrap(), 30);
        let half: Vec<_> = periods
            .iter()
            .map(|p| statement_of(ledger, p.0, p.1))
            .collect();
        assert_eq!(half, before);
        assert_eq!(ledger.roll_up(1000).unwrap(), 42);
        assert_eq!(ledger.roll_up(1000).unwrap(), 0);
        let all: Vec<_> = periods
            .iter()
            .map(|p| statement_of(ledger, p.0, p.1))
            .collect();
        assert_eq!(all, before);

        // A correction of the second day: +1 credit an hour, booked once.
        let scope = CorrectionScope {
            from: DAY,
            to: 2 * DAY,
            site: None,
            projects: None,
        };
        let basis = ledger.correction_basis(&scope).unwrap();
        assert_eq!(basis.charges.len(), 24);
        let lines: Vec<CorrectionLine> = basis
            .charges
            .iter()
            .map(|c| CorrectionLine {
                correction: "c1".into(),
                charge: c.id,
                key: c.charge.key.clone(),
                start: c.charge.previous.0,
                end: c.charge.current.0,
                before: d("2"),
                after: d("3"),
                difference: d("1"),
            })
            .collect();
        let record = CorrectionRecord {
            id: "c1".into(),
            reason: "new price".into(),
            scope,
            policy: charge("a", "0", "0").policy,
            config: String::new(),
            total: d("24"),
            answer: "{\"applied\": true}".into(),
            booked_at: 5,
        };
        assert_eq!(
            ledger.book_correction(&record, &lines, 1, None).unwrap(),
            Booking::Stale
        );
        assert_eq!(
            ledger
                .book_correction(&record, &lines, basis.head, None)
                .unwrap(),
            Booking::Booked
        );
        assert_eq!(
            ledger
                .book_correction(&record, &lines, basis.head, None)
                .unwrap(),
            Booking::Already("{\"applied\": true}".into())
        );
        assert_eq!(ledger.project("a").unwrap().unwrap().used(), d("168"));
        assert_eq!(ledger.corrections().unwrap(), vec![record]);
        let again = ledger
            .correction_basis(&CorrectionScope {
                from: DAY,
                to: 2 * DAY,
                site: None,
                projects: None,
            })
            .unwrap();
        assert_eq!(again.earlier.len(), 24);
        // The correction's lines fall in the day they re-priced.
        let day = statement_of(ledger, DAY, 2 * DAY);
        assert_eq!(day.len(), 2);
        assert_eq!(day[1], ("a".into(), "c1".into(), d("24"), None));
        let whole: Decimal = statement_of(ledger, 0, 3 * DAY).iter().map(|l| l.2).sum();
        assert_eq!(whole, d("168"));
        assert!(statement_of(ledger, 0, DAY).iter().all(|l| l.1.is_empty()));
        let adjustments = ledger.adjustments().unwrap();
        assert_eq!(adjustments.len(), 1);
        assert_eq!(adjustments[0].adjustment.kind, AdjustmentKind::Correction);
        assert_eq!(adjustments[0].correction.as_deref(), Some("c1"));
    });
}

#[test]
#[cfg_attr(not(feature = "programs"), ignore = "needs PostgreSQL: make test")]
fn a_newer_schema_is_refused_by_both() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::sqlite(dir.path(), Durability::Full).unwrap());
    let connection =
        rusqlite::Connection::open(dir.path().join(os_credits::ledger::FILE_NAME)).unwrap();
    connection.pragma_update(None, "user_version", 99).unwrap();
    drop(connection);
    let err = Store::sqlite(dir.path(), Durability::Full).err().unwrap();
    assert!(
        matches!(err, LedgerError::TooNew { found: 99, .. }),
        "{err}"
    );
    let url = database();
    drop(Store::postgres(&url, Keepalive::default(), "conformance").unwrap());
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .batch_execute("UPDATE schema_version SET version = 99")
        .unwrap();
    let err = Store::postgres(&url, Keepalive::default(), "conformance")
        .err()
        .unwrap();
    assert!(
        matches!(err, LedgerError::TooNew { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn sqlite_migration_6_keeps_the_last_written_value_as_ours() {
    let dir = tempfile::tempdir().unwrap();
    {
        let connection =
            rusqlite::Connection::open(dir.path().join(os_credits::ledger::FILE_NAME)).unwrap();
        for (version, migration) in os_credits::ledger::schema::SQLITE
            .iter()
            .take(5)
            .enumerate()
        {
            connection.execute_batch(migration).unwrap();
            connection
                .pragma_update(None, "user_version", version as i64 + 1)
                .unwrap();
        }
        connection
            .execute_batch(
                "INSERT INTO projects (project, adopted, adopted_at, last_written, updated_at)
                     VALUES ('a', '100', 5, '120.00', 6), ('b', '7', 5, NULL, 6);",
            )
            .unwrap();
    }
    let ledger = Store::sqlite(dir.path(), Durability::Normal).unwrap();
    let known = |p: &str| -> Vec<(Decimal, ValueSource)> {
        let record = ledger.perun_record(p).unwrap();
        record.known.iter().map(|k| (k.value, k.source)).collect()
    };
    assert_eq!(known("a"), vec![(d("120.00"), ValueSource::Write)]);
    assert_eq!(known("b"), vec![(d("7"), ValueSource::Adopted)]);
}

/// A replication role on a fresh database, its sessions named `session`.
fn replication(url: &str, session: &str) -> Replication {
    let store = Arc::new(Store::postgres(url, Keepalive::default(), session).unwrap());
    Replication::open(store, url, Keepalive::default(), session).unwrap()
}

#[test]
#[cfg_attr(not(feature = "programs"), ignore = "needs PostgreSQL: make test")]
fn one_leader_at_a_time_and_a_stale_one_is_deposed_and_fenced() {
    let url = database();
    let first = replication(&url, "conformance first");
    let second = replication(&url, "conformance second");
    let epoch = first.try_lead("first").unwrap().expect("the lock is free");
    assert_eq!(second.try_lead("second").unwrap(), None);
    assert!(first.renew(epoch, Duration::ZERO).unwrap());
    // Renewed just now: a check within the freshness writes nothing, and
    // still says it leads.
    assert!(first.renew(epoch, Duration::from_secs(60)).unwrap());
    let lease = first.lease().unwrap().unwrap();
    assert_eq!((lease.epoch, lease.replica.as_str()), (epoch, "first"));
    // Fresh: nobody is deposed.
    assert_eq!(second.depose_stale(Duration::from_secs(60)).unwrap(), None);
    // The leader's commits renew the lease.
    let batch = Batch {
        states: vec![(key("a"), account(2, "15.5", "1"))],
        charges: vec![charge("a", "1", "1")],
        ..Batch::default()
    };
    first.store().commit(&batch).unwrap();
    // Stale (timeout 0): every session of the first replica is ended.
    std::thread::sleep(Duration::from_millis(20));
    let (deposed, sessions) = second.depose_stale(Duration::ZERO).unwrap().unwrap();
    assert_eq!(deposed, "first");
    assert_eq!(sessions, 4, "engine, reads, sync and inbox connections");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let new_epoch = loop {
        if let Some(epoch) = second.try_lead("second").unwrap() {
            break epoch;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lock was not freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(new_epoch, epoch + 1);
    // The old leader, awake: its session is gone; it commits nothing.
    assert!(first.store().commit(&batch).is_err());
    assert!(first.renew(epoch, Duration::ZERO).is_err());
    assert!(first.store_inbox(&lines_row("x", "n", 1), "first").is_err());
    assert_eq!(second.store().charges("a").unwrap().len(), 1);
    // The new leader commits, and its fence holds.
    second.store().commit(&batch).unwrap();
    assert!(second.renew(new_epoch, Duration::ZERO).unwrap());
    assert_eq!(second.lease().unwrap().unwrap().epoch, new_epoch);
}

#[test]
#[cfg_attr(not(feature = "programs"), ignore = "needs PostgreSQL: make test")]
fn a_leader_whose_epoch_was_taken_commits_nothing() {
    let url = database();
    let leader = replication(&url, "conformance fenced");
    let epoch = leader.try_lead("leader").unwrap().unwrap();
    // Another epoch written by hand (as a new leader would).
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .batch_execute("UPDATE leader SET epoch = epoch + 1")
        .unwrap();
    let batch = Batch {
        states: vec![(key("a"), account(2, "15.5", "1"))],
        charges: vec![charge("a", "1", "1")],
        ..Batch::default()
    };
    let err = leader.store().commit(&batch).unwrap_err();
    assert!(matches!(err, LedgerError::Fenced(e) if e == epoch), "{err}");
    assert!(!leader.renew(epoch, Duration::from_secs(60)).unwrap());
    assert!(leader.store().charges("a").unwrap().is_empty());
    assert!(leader.store().accounts().unwrap().is_empty());
}

/// A line-protocol inbox row of a writer of every site.
fn lines_row(text: &str, precision: &str, received: i64) -> InboxRow {
    InboxRow {
        body: InboxBody::Lines {
            text: text.as_bytes().to_vec(),
            precision: precision.into(),
        },
        received,
        writer: None,
    }
}

#[test]
#[cfg_attr(not(feature = "programs"), ignore = "needs PostgreSQL: make test")]
fn the_inbox_keeps_arrival_order_and_settles_what_was_billed() {
    let url = database();
    let replica = replication(&url, "conformance inbox");
    let ids: Vec<i64> = (0..5)
        .map(|i| {
            replica
                .store_inbox(&lines_row(&format!("m v={i}"), "s", i), "r")
                .unwrap()
        })
        .collect();
    assert_eq!(replica.inbox_depth().unwrap(), 5);
    let entries = replica.inbox_entries(ids[1], 2).unwrap();
    assert_eq!(
        entries.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[2], ids[3]]
    );
    assert_eq!(entries[0].row, lines_row("m v=2", "s", 2));
    assert_eq!(entries[0].replica, "r");
    // Every kind reads back as it was stored, its writer too.
    let others = [
        InboxRow {
            body: InboxBody::RemoteWrite {
                snappy: vec![0, 1, 2],
            },
            received: 7,
            writer: Some(InboxWriter {
                name: "site-a".into(),
                sites: "8676".into(),
            }),
        },
        InboxRow {
            body: InboxBody::Schedule {
                json: b"{}".to_vec(),
            },
            received: 8,
            writer: None,
        },
    ];
    let stored: Vec<i64> = others
        .iter()
        .map(|row| replica.store_inbox(row, "r").unwrap())
        .collect();
    let read = replica.inbox_entries(ids[4], 10).unwrap();
    assert_eq!(
        read.iter()
            .map(|e| (e.id, e.row.clone()))
            .collect::<Vec<_>>(),
        stored
            .iter()
            .copied()
            .zip(others.clone())
            .collect::<Vec<_>>()
    );
    replica.settle(&stored).unwrap();
    replica.settle(&ids[..3]).unwrap();
    assert_eq!(replica.inbox_depth().unwrap(), 2);
    let left = replica.inbox_entries(0, 10).unwrap();
    assert_eq!(
        left.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[3], ids[4]]
    );
}
