//! The ledger's store: SQLite (one file in the data directory, the
//! default) or PostgreSQL (replicas), behind one type whose roles are
//! written once (`engine.rs`, `reads.rs`, `outbox.rs`, `notifications.rs`).
//!
//! Connections: the engine's (the billing thread's transactions; with
//! replicas the session that holds the leader's lock), one for reads (the
//! APIs never wait for a commit), and, on PostgreSQL, one for the Perun
//! sync's and the mails' records (on SQLite those share the engine's: one
//! writer per file).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rust_decimal::Decimal;

use super::sql::{Db, Dialect, Keepalive};
use super::{LedgerError, ProjectRecord, schema};

use os_credits_core::sync::Locked;

/// The SQLite ledger's file name inside the data directory.
pub const FILE_NAME: &str = "ledger.sqlite3";

/// How hard a SQLite commit is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync on every commit: survives a power cut (the default).
    #[default]
    Full,
    /// fsync at checkpoints only: survives a crash of the process, not of the machine.
    Normal,
}

/// The ledger's store.
pub struct Store {
    writer: Mutex<Db>,
    reader: Mutex<Db>,
    side: Option<Mutex<Db>>,
    /// With replicas: the leader's epoch, checked inside every billing
    /// transaction once set (see [`super::replication`]).
    pub(super) fence: Mutex<Option<i64>>,
    /// Where it lives, for messages (no password).
    place: String,
    /// When the billing engine last committed (Unix ns; 0: never).
    pub(super) last_commit: std::sync::atomic::AtomicI64,
}

fn sqlite_connection(path: &Path, read_only: bool) -> Result<rusqlite::Connection, LedgerError> {
    let connection = if read_only {
        rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?
    } else {
        rusqlite::Connection::open(path)?
    };
    connection.pragma_update(None, "busy_timeout", 5000)?;
    add_decimal_function(&connection)?;
    Ok(connection)
}

/// `decimal_add(a, b)`: the exact sum of two decimals kept as text (SQLite
/// would add them as floats), so that a total is updated in one statement
/// (PostgreSQL adds its `NUMERIC`s itself).
fn add_decimal_function(connection: &rusqlite::Connection) -> Result<(), LedgerError> {
    use rusqlite::functions::FunctionFlags;
    use rusqlite::types::ValueRef;
    connection.create_scalar_function(
        "decimal_add",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |context| {
            let mut sum = Decimal::ZERO;
            for index in 0..2 {
                let value = match context.get_raw(index) {
                    ValueRef::Integer(n) => Decimal::from(n),
                    ValueRef::Text(text) => std::str::from_utf8(text)
                        .ok()
                        .and_then(|t| pricing_sdk::parse_decimal(t).ok())
                        .ok_or_else(|| {
                            rusqlite::Error::UserFunctionError("decimal_add: not a decimal".into())
                        })?,
                    _ => {
                        return Err(rusqlite::Error::UserFunctionError(
                            "decimal_add: not a decimal".into(),
                        ));
                    }
                };
                sum = sum.checked_add(value).ok_or_else(|| {
                    rusqlite::Error::UserFunctionError("decimal_add: overflow".into())
                })?;
            }
            Ok(sum.to_string())
        },
    )?;
    Ok(())
}

impl Store {
    /// Opens (creating and migrating as needed) the SQLite ledger in `data_dir`.
    pub fn sqlite(data_dir: &Path, durability: Durability) -> Result<Self, LedgerError> {
        std::fs::create_dir_all(data_dir).map_err(|source| LedgerError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(FILE_NAME);
        let writer = sqlite_connection(&path, false)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        let synchronous = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        writer.pragma_update(None, "synchronous", synchronous)?;
        let mut writer = Db::sqlite(writer);
        schema::migrate(&mut writer)?;
        Ok(Store {
            writer: Mutex::new(writer),
            reader: Mutex::new(Db::sqlite(sqlite_connection(&path, false)?)),
            side: None,
            fence: Mutex::new(None),
            last_commit: Default::default(),
            place: path.display().to_string(),
        })
    }

    /// Opens an existing SQLite ledger read-only (audits and re-rating
    /// while the service runs); never creates or migrates anything.
    pub fn sqlite_read_only(data_dir: &Path) -> Result<Self, LedgerError> {
        let path = data_dir.join(FILE_NAME);
        if !path.is_file() {
            return Err(LedgerError::Missing(path));
        }
        let mut reader = Db::sqlite(sqlite_connection(&path, true)?);
        schema::check(&mut reader)?;
        Ok(Store {
            writer: Mutex::new(Db::sqlite(sqlite_connection(&path, true)?)),
            reader: Mutex::new(reader),
            side: None,
            fence: Mutex::new(None),
            last_commit: Default::default(),
            place: path.display().to_string(),
        })
    }

    /// Connects to the PostgreSQL ledger at `url`
    /// (`postgres://user:password@host/database`), creating and migrating
    /// the schema as needed; every connection with `keepalive`, its session
    /// named `session` (a follower deposing this process as a hung leader
    /// ends every session of that name).
    pub fn postgres(url: &str, keepalive: Keepalive, session: &str) -> Result<Self, LedgerError> {
        let mut writer = Db::postgres(url, keepalive, session)?;
        schema::migrate(&mut writer)?;
        Ok(Store {
            writer: Mutex::new(writer),
            reader: Mutex::new(Db::postgres(url, keepalive, session)?),
            side: Some(Mutex::new(Db::postgres(url, keepalive, session)?)),
            fence: Mutex::new(None),
            last_commit: Default::default(),
            place: url.split('@').next_back().unwrap_or_default().to_owned(),
        })
    }

    /// Which database holds the ledger.
    pub fn dialect(&self) -> Dialect {
        self.reader.locked().dialect()
    }

    /// Where the ledger lives (a file, or PostgreSQL's host and database).
    pub fn place(&self) -> &str {
        &self.place
    }

    /// The engine's connection (with replicas: the leader's session).
    pub(super) fn writer(&self) -> MutexGuard<'_, Db> {
        self.writer.locked()
    }

    /// The read connection.
    pub(super) fn reader(&self) -> MutexGuard<'_, Db> {
        self.reader.locked()
    }

    /// The Perun sync's and the mails' connection.
    pub(super) fn side(&self) -> MutexGuard<'_, Db> {
        self.side.as_ref().unwrap_or(&self.writer).locked()
    }

    /// Whether the ledger holds nothing yet (a copy's target must not).
    pub fn is_empty(&self) -> Result<bool, LedgerError> {
        self.reader()
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM keys) AND NOT EXISTS (SELECT 1 FROM charges)
                 AND NOT EXISTS (SELECT 1 FROM projects)",
                &[],
            )?
            .bool(0)
    }

    /// Runs `work` in one transaction on the engine's connection (tools
    /// that fill a ledger, such as `ledger copy`).
    pub fn transaction<T>(
        &self,
        work: impl FnOnce(&mut Db) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        self.writer().transaction(work)
    }

    /// Runs `work` on the read connection.
    pub fn read<T>(
        &self,
        work: impl FnOnce(&mut Db) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        work(&mut self.reader())
    }
}

/// A project's figures from the columns charged, adopted, granted, emails
/// of `row`, starting at `at`.
pub(super) fn project_record(
    project: String,
    row: &super::sql::Row,
    at: usize,
) -> Result<ProjectRecord, LedgerError> {
    let emails = row.text(at + 3)?;
    Ok(ProjectRecord {
        charged: row.decimal(at)?,
        adopted: row.decimal(at + 1)?,
        granted: row.opt_decimal(at + 2)?,
        emails: serde_json::from_str(&emails)
            .map_err(|e| LedgerError::Corrupt(format!("mail addresses of {project}: {e}")))?,
        ends_at: row.opt_int(at + 4)?,
        project,
    })
}

/// Adds `amount` to a project's adjusted credits (`adopted`: adoption,
/// hand edits, corrections) in `db`'s open transaction; the row is locked
/// on PostgreSQL, where the Perun sync and a correction may both write it.
pub(super) fn add_to_adopted(
    db: &mut Db,
    project: &str,
    amount: Decimal,
    now: i64,
) -> Result<(), LedgerError> {
    db.execute(
        "INSERT INTO projects (project, updated_at) VALUES (?1, ?2)
         ON CONFLICT (project) DO NOTHING",
        super::sql::params![project, now],
    )?;
    let lock = match db.dialect() {
        Dialect::Postgres => " FOR UPDATE",
        Dialect::Sqlite => "",
    };
    let adopted = db
        .query_one(
            &format!("SELECT adopted FROM projects WHERE project = ?1{lock}"),
            super::sql::params![project],
        )?
        .decimal(0)?;
    db.execute(
        "UPDATE projects SET adopted = ?2, updated_at = ?3 WHERE project = ?1",
        super::sql::params![project, adopted + amount, now],
    )?;
    Ok(())
}

/// A project known only by its keys: used 0.
pub(super) fn unbilled(project: &str) -> ProjectRecord {
    ProjectRecord {
        project: project.to_owned(),
        charged: Decimal::ZERO,
        adopted: Decimal::ZERO,
        granted: None,
        emails: Vec::new(),
        ends_at: None,
    }
}

/// Queues a project for publishing (?1 project, ?2 now): bumps its
/// version; a project that was up to date starts waiting now (but is not
/// published before the next attempt its last publishing set).
pub(super) const QUEUE_HEAD: &str = "INSERT INTO outbox (project, since)";
/// The conflict clause of [`QUEUE_HEAD`].
pub(super) const QUEUE_TAIL: &str = "ON CONFLICT (project) DO UPDATE SET
     version = outbox.version + 1,
     since = CASE WHEN outbox.version = outbox.published_version THEN excluded.since
                  ELSE outbox.since END";

/// Outbox rows waiting to be published.
pub(super) const WAITING: &str = "version > published_version";
