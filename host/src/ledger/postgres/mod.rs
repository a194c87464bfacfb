//! The PostgreSQL ledger, for sites that run replicas on the PostgreSQL
//! they operate (`OS_CREDITS_DATABASE_URL=postgres://…`). The same role
//! traits as the SQLite store, the same behaviour; money as `NUMERIC`.
//!
//! Connections (the synchronous `postgres` client: every role trait is
//! called off the async threads, and the billing thread is a plain thread):
//! one for the engine's transactions, one for reads, one for the sync's and
//! the mails' records. A commit writes each table with one statement over
//! arrays (`UNNEST`), whatever the size of the batch. One file per role:
//! `engine.rs`, `reads.rs`, `outbox.rs`, `notifications.rs`.

mod engine;
mod notifications;
mod outbox;
mod reads;

use std::sync::{Mutex, MutexGuard, PoisonError};

use postgres::{Client, NoTls};

use super::LedgerError;

/// Schema migrations; migration `i` takes the schema from version `i` to
/// `i + 1`. The first is the SQLite ledger's schema as of its version 6,
/// with names compared bytewise as SQLite does (`COLLATE "C"`, whatever the
/// database's locale), room on each page for in-place updates of the rows
/// every commit rewrites (`fillfactor`), and a BRIN index for the charges'
/// time (their timestamps grow with their ids: nearly free to keep).
const MIGRATIONS: &[&str] = &[
    r#"CREATE TABLE keys (
         project           TEXT COLLATE "C" NOT NULL,
         location_id       TEXT COLLATE "C" NOT NULL,
         metric            TEXT COLLATE "C" NOT NULL,
         timestamp         BIGINT NOT NULL,
         value             TEXT NOT NULL,
         charged           NUMERIC NOT NULL,
         awaiting_baseline BOOLEAN NOT NULL DEFAULT FALSE,
         PRIMARY KEY (project, location_id, metric)
     ) WITH (fillfactor = 50);
     CREATE TABLE charges (
         id                 BIGSERIAL PRIMARY KEY,
         project            TEXT COLLATE "C" NOT NULL,
         location_id        TEXT COLLATE "C" NOT NULL,
         metric             TEXT COLLATE "C" NOT NULL,
         previous_timestamp BIGINT NOT NULL,
         previous_value     TEXT NOT NULL,
         timestamp          BIGINT NOT NULL,
         value              TEXT NOT NULL,
         credits            NUMERIC NOT NULL,
         charged_after      NUMERIC NOT NULL,
         policy_name        TEXT NOT NULL,
         policy_version     TEXT NOT NULL,
         policy_sha256      TEXT NOT NULL,
         recorded_at        BIGINT NOT NULL,
         reversed_at        BIGINT
     );
     CREATE INDEX charges_by_project ON charges (project, id);
     CREATE INDEX charges_by_time ON charges USING brin (timestamp);
     CREATE TABLE projects (
         project    TEXT COLLATE "C" PRIMARY KEY,
         charged    NUMERIC NOT NULL DEFAULT 0,
         adopted    NUMERIC NOT NULL DEFAULT 0,
         granted    NUMERIC,
         emails     TEXT NOT NULL DEFAULT '[]',
         adopted_at BIGINT,
         updated_at BIGINT NOT NULL
     ) WITH (fillfactor = 50);
     CREATE TABLE outbox (
         project           TEXT COLLATE "C" PRIMARY KEY,
         since             BIGINT NOT NULL,
         version           BIGINT NOT NULL DEFAULT 1,
         published_version BIGINT NOT NULL DEFAULT 0,
         next_attempt      BIGINT NOT NULL DEFAULT 0,
         attempts          BIGINT NOT NULL DEFAULT 0,
         last_error        TEXT
     ) WITH (fillfactor = 50);
     CREATE TABLE adjustments (
         id                BIGSERIAL PRIMARY KEY,
         project           TEXT COLLATE "C" NOT NULL,
         kind              TEXT NOT NULL,
         amount            NUMERIC NOT NULL,
         perun_modified_at TEXT,
         recorded_at       BIGINT NOT NULL
     );
     CREATE TABLE notifications (
         project   TEXT COLLATE "C" NOT NULL,
         threshold INTEGER NOT NULL,
         granted   NUMERIC NOT NULL,
         sent_at   BIGINT NOT NULL,
         PRIMARY KEY (project, threshold)
     );
     CREATE TABLE perun_values (
         id           BIGSERIAL PRIMARY KEY,
         project      TEXT COLLATE "C" NOT NULL,
         value        NUMERIC NOT NULL,
         source       TEXT NOT NULL,
         timestamps   TEXT,
         recorded_at  BIGINT NOT NULL,
         confirmed_at BIGINT
     );
     CREATE INDEX perun_values_by_project ON perun_values (project, id);"#,
    // 2: what replicas received, waiting for the leader to bill it
    "CREATE TABLE inbox (
         id        BIGSERIAL PRIMARY KEY,
         kind      TEXT NOT NULL,
         body      BYTEA NOT NULL,
         precision TEXT NOT NULL,
         received  BIGINT NOT NULL,
         replica   TEXT NOT NULL
     );",
];

/// The session advisory lock the leader holds, on the engine's connection.
const LEADER_LOCK: i64 = 7_401_002;

/// A write a replica stored for the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    /// Its id: the order of arrival.
    pub id: i64,
    /// `lines` (line protocol) or `remote_write` (snappy protobuf).
    pub kind: String,
    /// The body as received.
    pub body: Vec<u8>,
    /// The line protocol's precision (`n`, `s`, ...).
    pub precision: String,
    /// When it was received (ns).
    pub received: i64,
    /// The replica that stored it.
    pub replica: String,
}

/// Queues a project for publishing ($1 project, $2 now); see the SQLite
/// store's `QUEUE`.
const QUEUE: &str = "INSERT INTO outbox AS o (project, since) VALUES ($1, $2)
     ON CONFLICT (project) DO UPDATE SET version = o.version + 1,
         since = CASE WHEN o.version = o.published_version THEN excluded.since ELSE o.since END";

/// Outbox rows waiting to be published.
const WAITING: &str = "version > published_version";

/// The PostgreSQL ledger.
pub struct PostgresLedger {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    side: Mutex<Connection>,
    inbox: Mutex<Connection>,
}

/// A client that may be dropped anywhere: the synchronous client blocks on
/// its own runtime when closed, which must not happen on an async thread,
/// so it is closed on a thread of its own.
struct Connection(Option<Client>);

impl std::ops::Deref for Connection {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.0.as_ref().expect("a client until dropped")
    }
}

impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Client {
        self.0.as_mut().expect("a client until dropped")
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            let _ = std::thread::Builder::new()
                .name("postgres-close".into())
                .spawn(move || drop(client));
        }
    }
}

fn lock(client: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    client.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

fn connect(url: &str) -> Result<Connection, LedgerError> {
    Ok(Connection(Some(Client::connect(url, NoTls)?)))
}

impl PostgresLedger {
    /// Connects to `url` (`postgres://user:password@host/database`),
    /// creating and migrating the schema as needed.
    pub fn open(url: &str) -> Result<Self, LedgerError> {
        let mut writer = connect(url)?;
        migrate(&mut writer)?;
        Ok(PostgresLedger {
            writer: Mutex::new(writer),
            reader: Mutex::new(connect(url)?),
            side: Mutex::new(connect(url)?),
            inbox: Mutex::new(connect(url)?),
        })
    }

    /// Tries to become the leader: the session advisory lock, on the
    /// engine's connection, so that every billing transaction runs in the
    /// session that holds it (a leader that lost it can never commit).
    pub fn try_lead(&self) -> Result<bool, LedgerError> {
        let row =
            lock(&self.writer).query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])?;
        Ok(row.get(0))
    }

    /// Whether this session still holds the leader's lock (an error: the
    /// session is gone, and the lock with it).
    pub fn still_leading(&self) -> Result<bool, LedgerError> {
        let row = lock(&self.writer).query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'
                 AND pid = pg_backend_pid() AND granted
                 AND ((classid::bigint << 32) | objid::bigint) = $1)",
            &[&LEADER_LOCK],
        )?;
        Ok(row.get(0))
    }

    /// Stores a write for the leader; durable once this returns.
    pub fn store_inbox(
        &self,
        kind: &str,
        body: &[u8],
        precision: &str,
        received: i64,
        replica: &str,
    ) -> Result<i64, LedgerError> {
        let row = lock(&self.inbox).query_one(
            "INSERT INTO inbox (kind, body, precision, received, replica)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[&kind, &body, &precision, &received, &replica],
        )?;
        Ok(row.get(0))
    }

    /// The oldest `limit` writes waiting in the inbox after id `after`, in
    /// arrival order.
    pub fn inbox_entries(&self, after: i64, limit: i64) -> Result<Vec<InboxEntry>, LedgerError> {
        let rows = lock(&self.reader).query(
            "SELECT id, kind, body, precision, received, replica FROM inbox WHERE id > $1
             ORDER BY id LIMIT $2",
            &[&after, &limit],
        )?;
        Ok(rows
            .iter()
            .map(|row| InboxEntry {
                id: row.get(0),
                kind: row.get(1),
                body: row.get(2),
                precision: row.get(3),
                received: row.get(4),
                replica: row.get(5),
            })
            .collect())
    }

    /// How many writes wait in the inbox.
    pub fn inbox_depth(&self) -> Result<u64, LedgerError> {
        let row = lock(&self.inbox).query_one("SELECT COUNT(*) FROM inbox", &[])?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Whether the ledger holds nothing yet (a copy's target must not).
    pub fn is_empty(&self) -> Result<bool, LedgerError> {
        let mut client = lock(&self.reader);
        let row = client.query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM keys) AND NOT EXISTS (SELECT 1 FROM charges)
                 AND NOT EXISTS (SELECT 1 FROM projects)",
            &[],
        )?;
        Ok(row.get(0))
    }

    /// Runs `work` in one transaction on the engine's connection.
    pub fn transaction<T>(
        &self,
        work: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut client = lock(&self.writer);
        let mut tx = client.transaction()?;
        let result = work(&mut tx)?;
        tx.commit()?;
        Ok(result)
    }
}

fn migrate(client: &mut Client) -> Result<(), LedgerError> {
    let mut tx = client.transaction()?;
    // One migration at a time, whatever the number of replicas starting.
    tx.execute("SELECT pg_advisory_xact_lock(7401001)", &[])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let version: i32 = tx
        .query_opt("SELECT version FROM schema_version", &[])?
        .map_or(0, |row| row.get(0));
    let supported = MIGRATIONS.len() as i32;
    if version > supported {
        return Err(LedgerError::TooNew {
            found: i64::from(version),
            supported: i64::from(supported),
        });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(migration)?;
        tracing::info!(version = index + 1, "ledger schema migrated (PostgreSQL)");
    }
    if version == 0 {
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&supported],
        )?;
    } else if version < supported {
        tx.execute("UPDATE schema_version SET version = $1", &[&supported])?;
    }
    tx.commit()?;
    Ok(())
}
