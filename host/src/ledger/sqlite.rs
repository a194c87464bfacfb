//! The SQLite ledger: one file (`ledger.sqlite3` in the data directory),
//! WAL journal, versioned migrations (`PRAGMA user_version`).
//!
//! Decimals are stored as text, exactly. One connection writes (the
//! engine's batches), another reads (the APIs), so reads never wait for a
//! commit's fsync.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, OptionalExtension, params};
use rust_decimal::Decimal;

use std::collections::BTreeMap;

use super::{
    Adjustment, AdjustmentKind, AdjustmentRecord, Batch, ChargeRecord, Counts, Floor, HistoryRow,
    KnownValue, Ledger, LedgerError, Notifiable, OutboxEntry, PerunRecord, PolicyStamp,
    ProjectRecord, Publishable, ValueSource,
};
use crate::billing::{Account, Key, State};

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

/// The columns of a charge, in the order [`charge_row`] reads them.
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

/// The charges a floor reverses (?1 project, ?2 site, ?3 metric, ?4 floor):
/// not yet reversed, their step started before the floor.
const REVERSIBLE: &str = "project = ?1 AND location_id = ?2 AND metric = ?3
     AND previous_timestamp < ?4 AND reversed_at IS NULL";

/// Stores key states (insert or replace).
fn upsert_keys(
    tx: &rusqlite::Transaction<'_>,
    states: &[(Key, Account)],
) -> Result<(), LedgerError> {
    let mut upsert_key = tx.prepare_cached(
        "INSERT INTO keys (project, location_id, metric, timestamp, value, charged, awaiting_baseline)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (project, location_id, metric) DO UPDATE SET
             timestamp = excluded.timestamp, value = excluded.value, charged = excluded.charged,
             awaiting_baseline = excluded.awaiting_baseline",
    )?;
    for (key, account) in states {
        upsert_key.execute(params![
            &*key.project,
            &*key.location_id,
            &*key.metric,
            account.state.timestamp,
            &*account.state.text,
            account.charged.to_string(),
            account.awaiting_baseline,
        ])?;
    }
    Ok(())
}

const CHARGE_COLUMNS: &str =
    "project, location_id, metric, previous_timestamp, previous_value, timestamp,
     value, credits, charged_after, policy_name, policy_version, policy_sha256,
     reversed_at IS NOT NULL";

fn charge_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ChargeRecord, LedgerError>> {
    let (credits, after): (String, String) = (row.get(7)?, row.get(8)?);
    let key = Key {
        project: row.get::<_, String>(0)?.into(),
        location_id: row.get::<_, String>(1)?.into(),
        metric: row.get::<_, String>(2)?.into(),
    };
    let previous = (row.get(3)?, row.get(4)?);
    let current = (row.get(5)?, row.get(6)?);
    let policy = PolicyStamp {
        name: row.get(9)?,
        version: row.get(10)?,
        sha256: row.get(11)?,
    };
    let reversed = row.get(12)?;
    Ok((|| {
        Ok(ChargeRecord {
            key,
            previous,
            current,
            credits: decimal(&credits)?,
            charged_after: decimal(&after)?,
            policy,
            reversed,
        })
    })())
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

impl Ledger for SqliteLedger {
    fn accounts(&self) -> Result<Vec<(Key, Account)>, LedgerError> {
        let connection = lock(&self.reader);
        let mut statement = connection.prepare(
            "SELECT project, location_id, metric, timestamp, value, charged, awaiting_baseline FROM keys",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                (
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ),
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, bool>(6)?,
            ))
        })?;
        let mut accounts = Vec::new();
        for row in rows {
            let ((project, location_id, metric), timestamp, text, charged, awaiting_baseline) =
                row?;
            let state = State {
                timestamp,
                value: decimal(&text)?,
                text: text.into(),
            };
            let key = Key {
                project: project.into(),
                location_id: location_id.into(),
                metric: metric.into(),
            };
            let account = Account {
                state,
                charged: decimal(&charged)?,
                awaiting_baseline,
                pending: false,
            };
            accounts.push((key, account));
        }
        Ok(accounts)
    }

    fn commit(&self, batch: &Batch) -> Result<(), LedgerError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut connection = lock(&self.writer);
        let tx = connection.transaction()?;
        let now = now_ns();
        {
            upsert_keys(&tx, &batch.states)?;
            let mut insert_charge = tx.prepare_cached(
                "INSERT INTO charges (project, location_id, metric, previous_timestamp, previous_value,
                     timestamp, value, credits, charged_after, policy_name, policy_version,
                     policy_sha256, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            let mut upsert_project = tx.prepare_cached(
                "INSERT INTO projects (project, charged, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (project) DO UPDATE SET charged = excluded.charged, updated_at = excluded.updated_at",
            )?;
            let mut queue = tx.prepare_cached(QUEUE)?;
            for charge in &batch.charges {
                insert_charge.execute(params![
                    &*charge.key.project,
                    &*charge.key.location_id,
                    &*charge.key.metric,
                    charge.previous.0,
                    charge.previous.1,
                    charge.current.0,
                    charge.current.1,
                    charge.credits.to_string(),
                    charge.charged_after.to_string(),
                    charge.policy.name,
                    charge.policy.version,
                    charge.policy.sha256,
                    now,
                ])?;
                upsert_project.execute(params![
                    &*charge.key.project,
                    charge.charged_after.to_string(),
                    now
                ])?;
                queue.execute(params![&*charge.key.project, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn project(&self, project: &str) -> Result<Option<ProjectRecord>, LedgerError> {
        let connection = lock(&self.reader);
        let row = connection
            .query_row(
                "SELECT charged, adopted, granted, emails FROM projects WHERE project = ?1",
                [project],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()?;
        let known = match row {
            Some(row) => Some(row),
            None => {
                // A project with keys but no charge yet: used 0.
                let has_keys: bool = connection.query_row(
                    "SELECT EXISTS (SELECT 1 FROM keys WHERE project = ?1)",
                    [project],
                    |row| row.get(0),
                )?;
                has_keys.then(|| ("0".to_owned(), "0".to_owned(), None, "[]".to_owned()))
            }
        };
        known
            .map(|row| project_record(project.to_owned(), row))
            .transpose()
    }

    fn history(&self, project: &str) -> Result<Vec<HistoryRow>, LedgerError> {
        let connection = lock(&self.reader);
        let mut statement = connection.prepare_cached(
            "SELECT timestamp, metric, charged_after FROM charges
             WHERE project = ?1 AND reversed_at IS NULL ORDER BY id",
        )?;
        let rows = statement.query_map([project], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (timestamp, metric, charged_after) = row?;
            Ok(HistoryRow {
                timestamp,
                metric,
                charged_after: decimal(&charged_after)?,
            })
        })
        .collect()
    }

    fn charges(&self, project: &str) -> Result<Vec<ChargeRecord>, LedgerError> {
        let connection = lock(&self.reader);
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {CHARGE_COLUMNS} FROM charges WHERE project = ?1 ORDER BY id"
        ))?;
        let rows = statement.query_map([project], charge_row)?;
        rows.map(|row| row?).collect()
    }

    fn charges_between(&self, from: i64, to: i64) -> Result<Vec<ChargeRecord>, LedgerError> {
        let connection = lock(&self.reader);
        let mut statement = connection.prepare_cached(&format!(
            "SELECT {CHARGE_COLUMNS} FROM charges
             WHERE timestamp >= ?1 AND timestamp < ?2 AND reversed_at IS NULL ORDER BY id"
        ))?;
        let rows = statement.query_map([from, to], charge_row)?;
        rows.map(|row| row?).collect()
    }

    fn due(&self, now: i64, limit: usize) -> Result<Vec<OutboxEntry>, LedgerError> {
        let connection = lock(&self.reader);
        let mut statement = connection.prepare_cached(&format!(
            "SELECT project, version, attempts FROM outbox WHERE {WAITING} AND next_attempt <= ?1
             ORDER BY next_attempt, since LIMIT ?2"
        ))?;
        let rows = statement.query_map(params![now, limit as i64], |row| {
            Ok(OutboxEntry {
                project: row.get(0)?,
                version: row.get(1)?,
                attempts: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn synced(&self, entry: &OutboxEntry, next_attempt: i64) -> Result<(), LedgerError> {
        // Charged again meanwhile: still waiting. Either way not published
        // again before the interval.
        lock(&self.writer).execute(
            "UPDATE outbox SET published_version = MAX(published_version, ?2), next_attempt = ?3,
                 attempts = 0, last_error = NULL WHERE project = ?1",
            params![entry.project, entry.version, next_attempt],
        )?;
        Ok(())
    }

    fn sync_failed(
        &self,
        project: &str,
        next_attempt: i64,
        error: &str,
    ) -> Result<(), LedgerError> {
        lock(&self.writer).execute(
            "UPDATE outbox SET next_attempt = ?2, attempts = attempts + 1, last_error = ?3 WHERE project = ?1",
            params![project, next_attempt, error],
        )?;
        Ok(())
    }

    fn publishable(&self, project: &str) -> Result<Option<Publishable>, LedgerError> {
        let Some(record) = self.project(project)? else {
            return Ok(None);
        };
        let connection = lock(&self.reader);
        let mut statement = connection.prepare_cached(
            "SELECT location_id, metric, timestamp FROM keys WHERE project = ?1 ORDER BY location_id, metric",
        )?;
        let rows = statement.query_map([project], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        let mut sites: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for row in rows {
            let (site, metric, timestamp) = row?;
            sites.entry(site).or_default().insert(metric, timestamp);
        }
        Ok(Some(Publishable {
            used: record.used(),
            sites,
        }))
    }

    fn set_contacts(
        &self,
        project: &str,
        granted: Option<Decimal>,
        emails: &[String],
    ) -> Result<(), LedgerError> {
        let emails = serde_json::to_string(emails)
            .map_err(|e| LedgerError::Corrupt(format!("mail addresses: {e}")))?;
        lock(&self.writer).execute(
            "INSERT INTO projects (project, granted, emails, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (project) DO UPDATE SET granted = excluded.granted, emails = excluded.emails",
            params![project, granted.map(|g| g.to_string()), emails, now_ns()],
        )?;
        Ok(())
    }

    fn notifiable(&self) -> Result<Vec<Notifiable>, LedgerError> {
        let connection = lock(&self.reader);
        let mut mailed: BTreeMap<String, Vec<(u32, Decimal)>> = BTreeMap::new();
        {
            let mut statement = connection
                .prepare_cached("SELECT project, threshold, granted FROM notifications")?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, u32>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })?;
            for row in rows {
                let (project, threshold, granted) = row?;
                mailed
                    .entry(project)
                    .or_default()
                    .push((threshold, decimal(&granted)?));
            }
        }
        let mut statement = connection.prepare_cached(
            "SELECT project, charged, adopted, granted, emails FROM projects WHERE granted IS NOT NULL",
        )?;
        let rows = statement.query_map([], |row| {
            let figures: ProjectRow = (row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?);
            Ok((row.get::<_, String>(0)?, figures))
        })?;
        rows.map(|row| {
            let (project, figures) = row?;
            let record = project_record(project, figures)?;
            let mailed = mailed.remove(&record.project).unwrap_or_default();
            Ok(Notifiable {
                project: record,
                mailed,
            })
        })
        .collect()
    }

    fn record_notification(
        &self,
        project: &str,
        threshold: u32,
        granted: Decimal,
    ) -> Result<(), LedgerError> {
        lock(&self.writer).execute(
            "INSERT INTO notifications (project, threshold, granted, sent_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (project, threshold) DO UPDATE SET granted = excluded.granted, sent_at = excluded.sent_at",
            params![project, threshold, granted.to_string(), now_ns()],
        )?;
        Ok(())
    }

    fn reversible(&self, project: &str, floors: &[Floor]) -> Result<Vec<Decimal>, LedgerError> {
        let connection = lock(&self.reader);
        let mut statement = connection
            .prepare_cached(&format!("SELECT credits FROM charges WHERE {REVERSIBLE}"))?;
        floors
            .iter()
            .map(|floor| {
                let credits = statement.query_map(
                    params![project, floor.location_id, floor.metric, floor.timestamp],
                    |row| row.get::<_, String>(0),
                )?;
                credits.map(|text| decimal(&text?)).sum()
            })
            .collect()
    }

    fn rebase(
        &self,
        project: &str,
        floors: &[Floor],
        states: &[(Key, Account)],
        charged: Decimal,
    ) -> Result<usize, LedgerError> {
        let mut connection = lock(&self.writer);
        let tx = connection.transaction()?;
        let now = now_ns();
        let mut reversed = 0;
        for floor in floors {
            reversed += tx.execute(
                "UPDATE charges SET reversed_at = ?5 WHERE project = ?1 AND location_id = ?2
                     AND metric = ?3 AND previous_timestamp < ?4 AND reversed_at IS NULL",
                params![
                    project,
                    floor.location_id,
                    floor.metric,
                    floor.timestamp,
                    now
                ],
            )?;
        }
        upsert_keys(&tx, states)?;
        tx.execute(
            "INSERT INTO projects (project, charged, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (project) DO UPDATE SET charged = excluded.charged, updated_at = excluded.updated_at",
            params![project, charged.to_string(), now],
        )?;
        if reversed > 0 {
            // The history's running totals, without the reversed charges.
            let rows: Vec<(i64, String)> = {
                let mut statement = tx.prepare(
                    "SELECT id, credits FROM charges WHERE project = ?1 AND reversed_at IS NULL ORDER BY id",
                )?;
                let rows = statement.query_map([project], |row| Ok((row.get(0)?, row.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut update =
                tx.prepare_cached("UPDATE charges SET charged_after = ?2 WHERE id = ?1")?;
            let mut running = Decimal::ZERO;
            for (id, credits) in rows {
                running += decimal(&credits)?;
                update.execute(params![id, running.to_string()])?;
            }
            tx.execute(QUEUE, params![project, now])?;
        }
        tx.commit()?;
        Ok(reversed)
    }

    fn perun_record(&self, project: &str) -> Result<PerunRecord, LedgerError> {
        let connection = lock(&self.reader);
        let adopted_at = connection
            .query_row(
                "SELECT adopted_at FROM projects WHERE project = ?1",
                [project],
                |row| row.get::<_, Option<i64>>(0),
            )
            .optional()?
            .flatten();
        let mut statement = connection.prepare_cached(
            "SELECT id, value, source, confirmed_at IS NOT NULL FROM perun_values
             WHERE project = ?1 ORDER BY id",
        )?;
        let rows = statement.query_map([project], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, bool>(3)?,
            ))
        })?;
        let mut known = Vec::new();
        for row in rows {
            let (id, value, source, confirmed) = row?;
            let source = match source.as_str() {
                "write" => ValueSource::Write,
                "adopted" => ValueSource::Adopted,
                "manual edit" => ValueSource::ManualEdit,
                other => {
                    return Err(LedgerError::Corrupt(format!(
                        "unknown source {other:?} of a Perun value of {project}"
                    )));
                }
            };
            known.push(KnownValue {
                id,
                value: decimal(&value)?,
                source,
                confirmed,
            });
        }
        Ok(PerunRecord { adopted_at, known })
    }

    fn adjust(
        &self,
        project: &str,
        adjustment: Adjustment,
        perun_value: Decimal,
        modified_at: Option<&str>,
    ) -> Result<(), LedgerError> {
        let mut connection = lock(&self.writer);
        let tx = connection.transaction()?;
        let now = now_ns();
        tx.execute(
            "INSERT INTO projects (project, updated_at) VALUES (?1, ?2) ON CONFLICT (project) DO NOTHING",
            params![project, now],
        )?;
        let adopted: String = tx.query_row(
            "SELECT adopted FROM projects WHERE project = ?1",
            [project],
            |row| row.get(0),
        )?;
        let adopted = decimal(&adopted)? + adjustment.amount;
        tx.execute(
            "UPDATE projects SET adopted = ?2, adopted_at = COALESCE(adopted_at, ?3), updated_at = ?3
             WHERE project = ?1",
            params![project, adopted.to_string(), now],
        )?;
        tx.execute(
            "INSERT INTO adjustments (project, kind, amount, perun_modified_at, recorded_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                project,
                adjustment.kind.as_str(),
                adjustment.amount.to_string(),
                modified_at,
                now
            ],
        )?;
        tx.execute(
            "INSERT INTO perun_values (project, value, source, recorded_at, confirmed_at)
             VALUES (?1, ?2, ?3, ?4, ?4)",
            params![
                project,
                perun_value.to_string(),
                adjustment.kind.as_str(),
                now
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn record_intent(
        &self,
        project: &str,
        value: Decimal,
        timestamps: &str,
    ) -> Result<i64, LedgerError> {
        let connection = lock(&self.writer);
        connection.execute(
            "INSERT INTO perun_values (project, value, source, timestamps, recorded_at)
             VALUES (?1, ?2, 'write', ?3, ?4)",
            params![project, value.to_string(), timestamps, now_ns()],
        )?;
        Ok(connection.last_insert_rowid())
    }

    fn confirm_write(&self, project: &str, id: i64, forget_before: i64) -> Result<(), LedgerError> {
        let mut connection = lock(&self.writer);
        let tx = connection.transaction()?;
        tx.execute(
            "UPDATE perun_values SET confirmed_at = ?3
             WHERE project = ?1 AND id = ?2 AND confirmed_at IS NULL",
            params![project, id, now_ns()],
        )?;
        tx.execute(
            "DELETE FROM perun_values WHERE project = ?1 AND recorded_at < ?2
                 AND id < (SELECT MAX(id) FROM perun_values
                           WHERE project = ?1 AND confirmed_at IS NOT NULL)",
            params![project, forget_before],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn adjustments(&self) -> Result<Vec<AdjustmentRecord>, LedgerError> {
        let connection = lock(&self.reader);
        let mut statement = connection.prepare_cached(
            "SELECT project, kind, amount, perun_modified_at, recorded_at FROM adjustments ORDER BY id",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, i64>(4)?,
            ))
        })?;
        rows.map(|row| {
            let (project, kind, amount, perun_modified_at, recorded_at) = row?;
            let kind = match kind.as_str() {
                "adopted" => AdjustmentKind::Adopted,
                "manual edit" => AdjustmentKind::ManualEdit,
                other => {
                    return Err(LedgerError::Corrupt(format!(
                        "unknown adjustment kind {other:?} of {project}"
                    )));
                }
            };
            Ok(AdjustmentRecord {
                project,
                adjustment: Adjustment {
                    kind,
                    amount: decimal(&amount)?,
                },
                perun_modified_at,
                recorded_at,
            })
        })
        .collect()
    }

    fn counts(&self) -> Result<Counts, LedgerError> {
        let connection = lock(&self.reader);
        let count = |sql: &str| -> Result<u64, LedgerError> {
            Ok(connection.query_row(sql, [], |row| row.get::<_, i64>(0))? as u64)
        };
        Ok(Counts {
            projects: count("SELECT COUNT(DISTINCT project) FROM keys")?,
            keys: count("SELECT COUNT(*) FROM keys")?,
            charges: count("SELECT COUNT(*) FROM charges")?,
            outbox: count(&format!("SELECT COUNT(*) FROM outbox WHERE {WAITING}"))?,
            oldest_outbox: connection.query_row(
                &format!("SELECT MIN(since) FROM outbox WHERE {WAITING}"),
                [],
                |row| row.get(0),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
