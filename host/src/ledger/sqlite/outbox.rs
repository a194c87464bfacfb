//! What the Perun sync reads and records: the outbox, what to publish,
//! granted credits and maintainers, and the values of credits used this
//! service recognises in Perun (intents, confirmed writes, adjustments).

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};
use rust_decimal::Decimal;

use super::{SqliteLedger, WAITING, decimal, lock, now_ns};
use crate::ledger::{
    Adjustment, KnownValue, LedgerError, Outbox, OutboxEntry, PerunRecord, Publishable, Reads,
    ValueSource,
};

impl Outbox for SqliteLedger {
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
}
