//! The price schedule's role: entries (appended with a billing batch, see
//! `engine.rs`) and the modules' bytes they name, by SHA-256.

use super::sql::{Param, Row, params};
use super::store::Store;
use super::{LedgerError, Schedules};
use os_credits_core::schedule::{Entry, Kind};
use os_credits_core::time::now_ns;

fn limit(row: &Row, index: usize) -> Result<Option<u64>, LedgerError> {
    Ok(row.opt_int(index)?.and_then(|v| u64::try_from(v).ok()))
}

impl Schedules for Store {
    fn schedule(&self) -> Result<Vec<Entry>, LedgerError> {
        self.reader().map(
            "SELECT id, site, from_ns, kind, file, sha256, config, memory_mb, timeout_ms,
                 added_at, origin, correction_reason
             FROM schedule ORDER BY id",
            &[],
            |row| {
                let kind = row.text(3)?;
                Ok(Entry {
                    id: row.int(0)?,
                    site: row.text(1)?,
                    from: row.int(2)?,
                    kind: Kind::parse(&kind).ok_or_else(|| {
                        LedgerError::Corrupt(format!("schedule entry of unknown kind {kind:?}"))
                    })?,
                    file: row.text(4)?,
                    sha256: row.text(5)?,
                    config: row.text(6)?,
                    memory_mb: limit(row, 7)?,
                    timeout_ms: limit(row, 8)?,
                    added_at: row.int(9)?,
                    origin: row.text(10)?,
                    correction_reason: row.opt_text(11)?,
                })
            },
        )
    }

    fn schedule_head(&self) -> Result<i64, LedgerError> {
        self.reader()
            .query_one("SELECT COALESCE(MAX(id), 0) FROM schedule", &[])?
            .int(0)
    }

    fn put_module(&self, sha256: &str, bytes: &[u8]) -> Result<(), LedgerError> {
        self.side().execute(
            "INSERT INTO policy_modules (sha256, bytes, added_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (sha256) DO NOTHING",
            &[
                Param::text(sha256),
                Param::bytes(bytes),
                Param::Int(now_ns()),
            ],
        )?;
        Ok(())
    }

    fn module(&self, sha256: &str) -> Result<Option<Vec<u8>>, LedgerError> {
        self.reader()
            .query_opt(
                "SELECT bytes FROM policy_modules WHERE sha256 = ?1",
                params![sha256],
            )?
            .map(|row| row.bytes(0))
            .transpose()
    }
}
