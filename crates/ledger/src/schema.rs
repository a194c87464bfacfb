//! The ledger's schema and its migrations.
//!
//! Each database keeps the history it was created with: SQLite's six
//! migrations (`PRAGMA user_version`) and PostgreSQL's first, which is
//! SQLite's schema as of its sixth with names compared bytewise (`COLLATE
//! "C"`, as SQLite does), room for in-place updates (`fillfactor`) and a
//! BRIN index on charge time; then what only replicas need (the inbox, the
//! leader's lease). From here on a table is written once, in [`SHARED`],
//! with the few words the two spell differently as placeholders
//! ([`ddl`]); it is applied after each database's own history.

use super::LedgerError;
use super::sql::{Db, Dialect};

/// SQLite's migrations; migration `i` takes the schema from version `i` to `i + 1`.
pub const SQLITE: &[&str] = &[
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
/// PostgreSQL's migrations (`schema_version`), as [`SQLITE`]'s.
pub const POSTGRES: &[&str] = &[
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
    // 3: the leader's lease: who leads (its epoch, its session's backend),
    //    renewed by the leader; a follower may end a stale leader's session
    "CREATE TABLE leader (
         id          INTEGER PRIMARY KEY CHECK (id = 1),
         epoch       BIGINT NOT NULL,
         replica     TEXT NOT NULL,
         backend_pid INTEGER NOT NULL,
         renewed_at  TIMESTAMPTZ NOT NULL
     );",
];

/// Migrations written once for both databases, applied after each one's
/// own history (placeholders: see [`ddl`]). New tables go here.
pub const SHARED: &[&str] = &[
    // the price schedule: modules by content, entries append-only, and
    // the entry that priced each charge
    "CREATE TABLE policy_modules (
         sha256   {name} PRIMARY KEY,
         bytes    {bytes} NOT NULL,
         added_at {int} NOT NULL
     );
     CREATE TABLE schedule (
         id         {int} PRIMARY KEY,
         site       {name} NOT NULL,
         from_ns    {int} NOT NULL,
         kind       TEXT NOT NULL,
         file       TEXT NOT NULL,
         sha256     TEXT NOT NULL,
         config     TEXT NOT NULL,
         memory_mb  {int},
         timeout_ms {int},
         added_at   {int} NOT NULL,
         origin     TEXT NOT NULL
     );
     ALTER TABLE charges ADD COLUMN schedule_entry {int};",
    // the writer of an inbox entry and the sites it may bill (NULL: every
    // site). The inbox is a replica's; SQLite gets an empty one, so that
    // this is written once.
    "CREATE TABLE IF NOT EXISTS inbox (
         id        {id},
         kind      TEXT NOT NULL,
         body      {bytes} NOT NULL,
         precision TEXT NOT NULL,
         received  {int} NOT NULL,
         replica   TEXT NOT NULL
     );
     ALTER TABLE inbox ADD COLUMN writer TEXT;
     ALTER TABLE inbox ADD COLUMN sites TEXT;",
    // corrections: what was re-priced and why (one row each, its answer
    // kept for a repeated request), a line per corrected part of a charge,
    // the project's adjustment naming its correction; threshold mails
    // re-armed when credits used fall below again; each UTC day's usage
    // and credits per key and version, rolled up from the charges up to a
    // mark, for statements; charges found by usage time (PostgreSQL has
    // its BRIN index of that name already)
    "CREATE TABLE corrections (
         seq            {id},
         id             TEXT NOT NULL UNIQUE,
         reason         TEXT NOT NULL,
         from_ns        {int} NOT NULL,
         to_ns          {int} NOT NULL,
         site           TEXT,
         projects       TEXT,
         sha256         TEXT NOT NULL,
         config         TEXT NOT NULL,
         policy_name    TEXT NOT NULL,
         policy_version TEXT NOT NULL,
         total          {money} NOT NULL,
         answer         TEXT NOT NULL,
         booked_at      {int} NOT NULL
     );
     CREATE TABLE correction_lines (
         id          {id},
         correction  TEXT NOT NULL,
         charge      {int} NOT NULL,
         project     {name} NOT NULL,
         location_id {name} NOT NULL,
         metric      {name} NOT NULL,
         start_ns    {int} NOT NULL,
         end_ns      {int} NOT NULL,
         before      {money} NOT NULL,
         after       {money} NOT NULL,
         difference  {money} NOT NULL
     );
     CREATE INDEX correction_lines_by_charge ON correction_lines (charge);
     CREATE INDEX correction_lines_by_time ON correction_lines (end_ns);
     ALTER TABLE adjustments ADD COLUMN correction TEXT;
     ALTER TABLE notifications ADD COLUMN rearmed {int} NOT NULL DEFAULT 0;
     ALTER TABLE schedule ADD COLUMN correction_reason TEXT;
     CREATE TABLE usage_days (
         project        {name} NOT NULL,
         location_id    {name} NOT NULL,
         metric         {name} NOT NULL,
         version        TEXT NOT NULL,
         day            {int} NOT NULL,
         credits        {money} NOT NULL,
         quantity       {money} NOT NULL,
         policy_name    TEXT NOT NULL,
         policy_version TEXT NOT NULL,
         policy_sha256  TEXT NOT NULL,
         PRIMARY KEY (project, location_id, metric, version, day)
     );
     CREATE INDEX usage_days_by_day ON usage_days (day);
     CREATE TABLE rollup (
         id           {int} PRIMARY KEY,
         charges_upto {int} NOT NULL
     );
     INSERT INTO rollup (id, charges_upto) VALUES (1, 0);
     CREATE INDEX IF NOT EXISTS charges_by_time ON charges (timestamp);",
    // forecasts and alerts: when a project ends (from Perun); a project's
    // charges found by time (instead of by id: still one index to keep up
    // per charge, and reading a project's charges in billing order sorts
    // them); the webhooks' outbox (each event once, under its id, until
    // the receiver took it)
    "ALTER TABLE projects ADD COLUMN ends_at {int};
     DROP INDEX charges_by_project;
     CREATE INDEX charges_by_project_time ON charges (project, timestamp);
     CREATE TABLE webhooks (
         seq          {id},
         id           TEXT NOT NULL UNIQUE,
         kind         TEXT NOT NULL,
         body         TEXT NOT NULL,
         created_at   {int} NOT NULL,
         attempts     {int} NOT NULL DEFAULT 0,
         next_attempt {int} NOT NULL DEFAULT 0,
         delivered_at {int},
         last_error   TEXT
     );
     CREATE INDEX webhooks_pending ON webhooks (next_attempt) WHERE delivered_at IS NULL;",
];

/// A shared migration in `dialect`: `{id}` an auto-increment key, `{name}`
/// a name compared bytewise, `{money}` an exact decimal, `{int}` a 64-bit
/// integer, `{bool}` a boolean, `{bytes}` a byte string.
pub fn ddl(template: &str, dialect: Dialect) -> String {
    let words: [(&str, &str); 6] = match dialect {
        Dialect::Sqlite => [
            ("{id}", "INTEGER PRIMARY KEY"),
            ("{name}", "TEXT"),
            ("{money}", "TEXT"),
            ("{int}", "INTEGER"),
            ("{bool}", "INTEGER"),
            ("{bytes}", "BLOB"),
        ],
        Dialect::Postgres => [
            ("{id}", "BIGSERIAL PRIMARY KEY"),
            ("{name}", "TEXT COLLATE \"C\""),
            ("{money}", "NUMERIC"),
            ("{int}", "BIGINT"),
            ("{bool}", "BOOLEAN"),
            ("{bytes}", "BYTEA"),
        ],
    };
    words
        .iter()
        .fold(template.to_owned(), |sql, (word, spelled)| {
            sql.replace(word, spelled)
        })
}

/// Every migration of `dialect`, in order.
fn migrations(dialect: Dialect) -> Vec<String> {
    let own = match dialect {
        Dialect::Sqlite => SQLITE,
        Dialect::Postgres => POSTGRES,
    };
    own.iter()
        .map(|sql| (*sql).to_owned())
        .chain(SHARED.iter().map(|sql| ddl(sql, dialect)))
        .collect()
}

/// The newest schema version this binary knows for `dialect`.
pub fn supported(dialect: Dialect) -> i64 {
    migrations(dialect).len() as i64
}

/// The schema version of the database behind `db` (0: none yet).
pub fn version(db: &mut Db) -> Result<i64, LedgerError> {
    match db.dialect() {
        Dialect::Sqlite => db.query_one("PRAGMA user_version", &[])?.int(0),
        Dialect::Postgres => {
            let exists = db
                .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])?
                .bool(0)?;
            if !exists {
                return Ok(0);
            }
            Ok(db
                .query_opt("SELECT version FROM schema_version", &[])?
                .map(|row| row.int(0))
                .transpose()?
                .unwrap_or(0))
        }
    }
}

/// Refuses a schema newer than this binary's, or older (for read-only use).
pub fn check(db: &mut Db) -> Result<(), LedgerError> {
    let (found, supported) = (version(db)?, supported(db.dialect()));
    if found > supported {
        return Err(LedgerError::TooNew { found, supported });
    }
    if found < supported {
        return Err(LedgerError::Corrupt(format!(
            "ledger schema version {found} is older than {supported}: start the service once to migrate it"
        )));
    }
    Ok(())
}

/// Creates or migrates the schema, in one transaction (PostgreSQL: one
/// replica at a time, whatever the number starting).
pub fn migrate(db: &mut Db) -> Result<(), LedgerError> {
    let dialect = db.dialect();
    let all = migrations(dialect);
    db.transaction(|db| {
        if dialect == Dialect::Postgres {
            db.execute("SELECT pg_advisory_xact_lock(7401001)", &[])?;
            db.batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
        }
        let found = version(db)?;
        let supported = all.len() as i64;
        if found > supported {
            return Err(LedgerError::TooNew { found, supported });
        }
        for (index, migration) in all.iter().enumerate().skip(found as usize) {
            db.batch(migration)?;
            tracing::info!(version = index + 1, ?dialect, "ledger schema migrated");
        }
        if found < supported {
            match dialect {
                Dialect::Sqlite => db.batch(&format!("PRAGMA user_version = {supported}"))?,
                Dialect::Postgres => {
                    db.execute("DELETE FROM schema_version", &[])?;
                    db.execute(
                        "INSERT INTO schema_version (version) VALUES (?1)",
                        super::sql::params![supported],
                    )?;
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_table_is_spelled_for_each_database() {
        let template = "CREATE TABLE t (id {id}, project {name} NOT NULL, amount {money})";
        assert_eq!(
            ddl(template, Dialect::Sqlite),
            "CREATE TABLE t (id INTEGER PRIMARY KEY, project TEXT NOT NULL, amount TEXT)"
        );
        assert_eq!(
            ddl(template, Dialect::Postgres),
            "CREATE TABLE t (id BIGSERIAL PRIMARY KEY, project TEXT COLLATE \"C\" NOT NULL, amount NUMERIC)"
        );
    }
}
