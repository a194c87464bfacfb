//! The SQLite ledger: one file (`ledger.sqlite3` in the data directory),
//! WAL journal, versioned migrations (`PRAGMA user_version`).
//!
//! Decimals are stored as text, exactly. One connection writes (the
//! engine's batches, the sync's and the notifier's records), another reads
//! (the APIs), so reads never wait for a commit's fsync. One file per role
//! of the ledger: `engine.rs`, `reads.rs`, `outbox.rs`, `notifications.rs`.

mod engine;
mod notifications;
mod outbox;
mod reads;

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::Connection;
use rust_decimal::Decimal;

use super::{LedgerError, ProjectRecord};

/// The ledger file's name inside the data directory.
pub const FILE_NAME: &str = "ledger.sqlite3";

/// Schema migrations; migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: keys, charges, projects, outbox
    "CREATE TABLE keys (
         project     TEXT NOT NULL,
         location_id TEXT NOT NULL,
         metric      TEXT NOT NULL,
         timestamp   INTEGER NOT NULL,
         value       TEXT NOT NULL,
         charged     TEXT NOT NULL,
         PRIMARY KEY (project, location_id, metric)
     ) WITHOUT ROWID;
     CREATE TABLE charges (
         id                 INTEGER PRIMARY KEY,
         project            TEXT NOT NULL,
         location_id        TEXT NOT NULL,
         metric             TEXT NOT NULL,
         previous_timestamp INTEGER NOT NULL,
         previous_value     TEXT NOT NULL,
         timestamp          INTEGER NOT NULL,
         value              TEXT NOT NULL,
         credits            TEXT NOT NULL,
         charged_after      TEXT NOT NULL,
         policy_name        TEXT NOT NULL,
         policy_version     TEXT NOT NULL,
         policy_sha256      TEXT NOT NULL,
         recorded_at        INTEGER NOT NULL
     );
     CREATE INDEX charges_by_project ON charges (project, id);
     CREATE TABLE projects (
         project    TEXT PRIMARY KEY,
         charged    TEXT NOT NULL DEFAULT '0',
         adopted    TEXT NOT NULL DEFAULT '0',
         granted    TEXT,
         updated_at INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE outbox (
         project TEXT PRIMARY KEY,
         since   INTEGER NOT NULL
     ) WITHOUT ROWID;",
    // 2: outbox bookkeeping for the Perun sync
    "ALTER TABLE outbox ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE outbox ADD COLUMN next_attempt INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE outbox ADD COLUMN last_error TEXT;",
    // 3: adoption of and adjustments from Perun's values
    "ALTER TABLE projects ADD COLUMN last_written TEXT;
     ALTER TABLE projects ADD COLUMN adopted_at INTEGER;
     CREATE TABLE adjustments (
         id                INTEGER PRIMARY KEY,
         project           TEXT NOT NULL,
         kind              TEXT NOT NULL,
         amount            TEXT NOT NULL,
         perun_modified_at TEXT,
         recorded_at       INTEGER NOT NULL
     );",
    // 4: timestamps adopted from Perun, reversed charges, maintainers
    "ALTER TABLE keys ADD COLUMN awaiting_baseline INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE charges ADD COLUMN reversed_at INTEGER;
     ALTER TABLE projects ADD COLUMN emails TEXT NOT NULL DEFAULT '[]';",
    // 5: threshold mails sent
    "CREATE TABLE notifications (
         project   TEXT NOT NULL,
         threshold INTEGER NOT NULL,
         granted   TEXT NOT NULL,
         sent_at   INTEGER NOT NULL,
         PRIMARY KEY (project, threshold)
     ) WITHOUT ROWID;",
    // 6: the values of credits used this service recognises in Perun:
    //    writes (intended before, confirmed after), adoptions, hand edits
    "CREATE TABLE perun_values (
         id           INTEGER PRIMARY KEY,
         project      TEXT NOT NULL,
         value        TEXT NOT NULL,
         source       TEXT NOT NULL,
         timestamps   TEXT,
         recorded_at  INTEGER NOT NULL,
         confirmed_at INTEGER
     );
     CREATE INDEX perun_values_by_project ON perun_values (project, id);
     INSERT INTO perun_values (project, value, source, recorded_at, confirmed_at)
         SELECT project, last_written, 'write', updated_at, updated_at
         FROM projects WHERE last_written IS NOT NULL;
     INSERT INTO perun_values (project, value, source, recorded_at, confirmed_at)
         SELECT project, adopted, 'adopted', adopted_at, adopted_at
         FROM projects WHERE adopted_at IS NOT NULL AND last_written IS NULL;
     -- outbox rows stay once published, so the interval holds for the next charge
     ALTER TABLE outbox ADD COLUMN published_version INTEGER NOT NULL DEFAULT 0;",
];

/// Queues a project for publishing (?1 project, ?2 now): bumps its version;
/// a project that was up to date starts waiting now, but not before the
/// next attempt its last publishing set.
const QUEUE: &str = "INSERT INTO outbox (project, since) VALUES (?1, ?2)
     ON CONFLICT (project) DO UPDATE SET version = version + 1,
         since = CASE WHEN version = published_version THEN excluded.since ELSE since END";

/// Outbox rows waiting to be published.
const WAITING: &str = "version > published_version";

/// How hard a commit is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync on every commit: survives a power cut (the default).
    #[default]
    Full,
    /// fsync at checkpoints only: survives a crash of the process, not of the machine.
    Normal,
}

/// The SQLite ledger.
pub struct SqliteLedger {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

fn lock(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    connection.lock().unwrap_or_else(PoisonError::into_inner)
}

fn decimal(text: &str) -> Result<Decimal, LedgerError> {
    pricing_sdk::parse_decimal(text).map_err(|e| LedgerError::Corrupt(e.to_string()))
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

impl SqliteLedger {
    /// Opens (creating and migrating as needed) the ledger in `data_dir`.
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Self, LedgerError> {
        std::fs::create_dir_all(data_dir).map_err(|source| LedgerError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(FILE_NAME);
        let writer = Connection::open(&path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(None, "busy_timeout", 5000)?;
        let synchronous = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        writer.pragma_update(None, "synchronous", synchronous)?;
        migrate(&writer)?;
        let reader = Connection::open(&path)?;
        reader.pragma_update(None, "busy_timeout", 5000)?;
        Ok(SqliteLedger {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }
}

impl SqliteLedger {
    /// The read connection, for tools that copy the ledger elsewhere.
    pub(crate) fn connection(&self) -> MutexGuard<'_, Connection> {
        lock(&self.reader)
    }

    /// Opens an existing ledger read-only (for audits and re-rating while
    /// the service runs); never creates or migrates anything.
    pub fn open_read_only(data_dir: &Path) -> Result<Self, LedgerError> {
        let path = data_dir.join(FILE_NAME);
        if !path.is_file() {
            return Err(LedgerError::Missing(path));
        }
        let open = || -> Result<Connection, LedgerError> {
            let connection = Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            connection.pragma_update(None, "busy_timeout", 5000)?;
            Ok(connection)
        };
        let reader = open()?;
        let version: i64 = reader.pragma_query_value(None, "user_version", |row| row.get(0))?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(LedgerError::TooNew {
                found: version,
                supported,
            });
        }
        if version < supported {
            return Err(LedgerError::Corrupt(format!(
                "ledger schema version {version} is older than {supported}: start the service once to migrate it"
            )));
        }
        Ok(SqliteLedger {
            writer: Mutex::new(open()?),
            reader: Mutex::new(reader),
        })
    }
}

/// The text columns of a `projects` row: charged, adopted, granted, emails.
type ProjectRow = (String, String, Option<String>, String);

/// A project's figures from its `projects` row.
fn project_record(project: String, row: ProjectRow) -> Result<ProjectRecord, LedgerError> {
    let (charged, adopted, granted, emails) = row;
    Ok(ProjectRecord {
        charged: decimal(&charged)?,
        adopted: decimal(&adopted)?,
        granted: granted.as_deref().map(decimal).transpose()?,
        emails: serde_json::from_str(&emails)
            .map_err(|e| LedgerError::Corrupt(format!("mail addresses of {project}: {e}")))?,
        project,
    })
}

fn migrate(connection: &Connection) -> Result<(), LedgerError> {
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(LedgerError::TooNew {
            found: version,
            supported,
        });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = connection.unchecked_transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "ledger schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::{Account, Key, State};
    use crate::ledger::{
        Adjustment, AdjustmentKind, Batch, ChargeRecord, EngineStore, Floor, Outbox, PerunRecord,
        PolicyStamp, Reads, ValueSource,
    };
    use rust_decimal::Decimal;

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
                value: text.parse().unwrap(),
                text: text.into(),
            },
            charged: charged.parse().unwrap(),
            awaiting_baseline: false,
            pending: false,
        }
    }

    fn charge(project: &str, credits: &str, after: &str) -> ChargeRecord {
        ChargeRecord {
            key: key(project),
            previous: (1, "10".into()),
            current: (2, "15.5".into()),
            credits: credits.parse().unwrap(),
            charged_after: after.parse().unwrap(),
            policy: PolicyStamp {
                name: "denbi".into(),
                version: "1.0.0".into(),
                sha256: "ab".repeat(32),
            },
            reversed: false,
        }
    }

    #[test]
    fn a_rebase_reverses_old_steps_rewrites_the_history_and_persists_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(dir.path(), Durability::Normal).unwrap();
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
        let history = ledger.history("a").unwrap();
        let running: Vec<Decimal> = history.iter().map(|h| h.charged_after).collect();
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
        // Nothing left to reverse: applying the same floor again changes nothing.
        assert_eq!(
            ledger.reversible("a", &floors).unwrap(),
            vec![Decimal::ZERO]
        );
    }

    #[test]
    fn a_batch_survives_reopening_exactly() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ledger = SqliteLedger::open(dir.path(), Durability::Full).unwrap();
            let batch = Batch {
                states: vec![
                    (key("a"), account(1, "10", "0")),
                    (key("a"), account(2, "15.5", "0.0000000000000000000000001")),
                    (key("b"), account(7, "1e3", "0")),
                ],
                charges: vec![charge(
                    "a",
                    "0.0000000000000000000000001",
                    "0.0000000000000000000000001",
                )],
                ..Batch::default()
            };
            ledger.commit(&batch).unwrap();
        }
        let ledger = SqliteLedger::open(dir.path(), Durability::Normal).unwrap();
        let mut accounts = ledger.accounts().unwrap();
        accounts.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(accounts.len(), 2);
        assert_eq!(accounts[0].1.state.text.as_ref(), "15.5");
        assert_eq!(
            accounts[0].1.charged.to_string(),
            "0.0000000000000000000000001"
        );
        assert_eq!(accounts[1].1.state.value, Decimal::from(1000));
        let a = ledger.project("a").unwrap().unwrap();
        assert_eq!(a.used().to_string(), "0.0000000000000000000000001");
        // b has a key but no charge: known, used 0
        assert_eq!(ledger.project("b").unwrap().unwrap().used(), Decimal::ZERO);
        assert_eq!(ledger.project("nobody").unwrap(), None);
        let charges = ledger.charges("a").unwrap();
        assert_eq!(
            charges,
            vec![charge(
                "a",
                "0.0000000000000000000000001",
                "0.0000000000000000000000001"
            )]
        );
        let counts = ledger.counts().unwrap();
        assert_eq!(
            (counts.projects, counts.keys, counts.charges, counts.outbox),
            (2, 2, 1, 1)
        );
    }

    #[test]
    fn adjustments_intents_and_confirmed_writes_are_kept_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(dir.path(), Durability::Normal).unwrap();
        ledger
            .commit(&Batch {
                states: vec![(key("a"), account(2, "15.5", "5.5"))],
                charges: vec![charge("a", "5.5", "5.5")],
                ..Batch::default()
            })
            .unwrap();
        let d = |s: &str| s.parse::<Decimal>().unwrap();
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
    }

    #[test]
    fn a_published_project_waits_out_the_interval_even_after_a_new_charge() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(dir.path(), Durability::Normal).unwrap();
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
    }

    #[test]
    fn migration_6_keeps_the_last_written_value_as_ours() {
        let dir = tempfile::tempdir().unwrap();
        {
            let connection = Connection::open(dir.path().join(FILE_NAME)).unwrap();
            for (version, migration) in MIGRATIONS.iter().take(5).enumerate() {
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
        let ledger = SqliteLedger::open(dir.path(), Durability::Normal).unwrap();
        let known = |p: &str| -> Vec<(Decimal, ValueSource)> {
            let record = ledger.perun_record(p).unwrap();
            record.known.iter().map(|k| (k.value, k.source)).collect()
        };
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(known("a"), vec![(d("120.00"), ValueSource::Write)]);
        assert_eq!(known("b"), vec![(d("7"), ValueSource::Adopted)]);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteLedger::open(dir.path(), Durability::Full).unwrap());
        let connection = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        connection.pragma_update(None, "user_version", 99).unwrap();
        drop(connection);
        let err = SqliteLedger::open(dir.path(), Durability::Full)
            .err()
            .unwrap();
        assert!(
            matches!(err, LedgerError::TooNew { found: 99, .. }),
            "{err}"
        );
    }
}
