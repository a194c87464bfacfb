//! What the Perun sync reads and records: the outbox, what to publish,
//! granted credits and maintainers, and the values of credits used this
//! service recognises in Perun (intents, confirmed writes, adjustments).

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::sql::params;
use super::store::{Store, WAITING, add_to_adopted};
use super::{
    Adjustment, KnownValue, LedgerError, OutboxEntry, PerunRecord, PerunStore, Publishable, Reads,
    ValueSource,
};
use os_credits_core::time::now_ns;

impl PerunStore for Store {
    fn due(&self, now: i64, limit: usize) -> Result<Vec<OutboxEntry>, LedgerError> {
        self.reader().map(
            &format!(
                "SELECT project, version, attempts FROM outbox
                 WHERE {WAITING} AND next_attempt <= ?1 ORDER BY next_attempt, since LIMIT ?2"
            ),
            params![now, limit as i64],
            |row| {
                Ok(OutboxEntry {
                    project: row.text(0)?,
                    version: row.int(1)?,
                    attempts: row.int(2)?,
                })
            },
        )
    }

    fn synced(&self, entry: &OutboxEntry, next_attempt: i64) -> Result<(), LedgerError> {
        // Charged again meanwhile: still waiting. Either way not published
        // again before the interval.
        self.side().execute(
            "UPDATE outbox SET
                 published_version = CASE WHEN published_version > ?2 THEN published_version
                                           ELSE ?2 END,
                 next_attempt = ?3, attempts = 0, last_error = NULL
             WHERE project = ?1",
            params![&entry.project, entry.version, next_attempt],
        )?;
        Ok(())
    }

    fn sync_failed(
        &self,
        project: &str,
        next_attempt: i64,
        error: &str,
    ) -> Result<(), LedgerError> {
        self.side().execute(
            "UPDATE outbox SET next_attempt = ?2, attempts = attempts + 1, last_error = ?3
             WHERE project = ?1",
            params![project, next_attempt, error],
        )?;
        Ok(())
    }

    fn publishable(&self, project: &str) -> Result<Option<Publishable>, LedgerError> {
        let Some(record) = self.project(project)? else {
            return Ok(None);
        };
        let mut sites: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        self.reader().for_each(
            "SELECT location_id, metric, timestamp FROM keys WHERE project = ?1
             ORDER BY location_id, metric",
            params![project],
            |row| {
                sites
                    .entry(row.text(0)?)
                    .or_default()
                    .insert(row.text(1)?, row.int(2)?);
                Ok(())
            },
        )?;
        Ok(Some(Publishable {
            used: record.used(),
            sites,
        }))
    }

    fn set_contacts(
        &self,
        project: &str,
        granted: Option<Decimal>,
        ends_at: Option<i64>,
        emails: &[String],
    ) -> Result<(), LedgerError> {
        let emails = serde_json::to_string(emails)
            .map_err(|e| LedgerError::Corrupt(format!("mail addresses: {e}")))?;
        self.side().execute(
            "INSERT INTO projects (project, granted, emails, updated_at, ends_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (project) DO UPDATE SET granted = excluded.granted,
                 emails = excluded.emails, ends_at = excluded.ends_at",
            params![project, granted, &emails, now_ns(), ends_at],
        )?;
        Ok(())
    }

    fn perun_record(&self, project: &str) -> Result<PerunRecord, LedgerError> {
        let mut db = self.reader();
        let adopted_at = db
            .query_opt(
                "SELECT adopted_at FROM projects WHERE project = ?1",
                params![project],
            )?
            .map(|row| row.opt_int(0))
            .transpose()?
            .flatten();
        let known = db.map(
            "SELECT id, value, source, confirmed_at IS NOT NULL FROM perun_values
             WHERE project = ?1 ORDER BY id",
            params![project],
            |row| {
                Ok(KnownValue {
                    id: row.int(0)?,
                    value: row.decimal(1)?,
                    source: ValueSource::parse(&row.text(2)?, project)?,
                    confirmed: row.bool(3)?,
                })
            },
        )?;
        Ok(PerunRecord { adopted_at, known })
    }

    fn adjust(
        &self,
        project: &str,
        adjustment: Adjustment,
        perun_value: Decimal,
        modified_at: Option<&str>,
    ) -> Result<(), LedgerError> {
        self.side().transaction(|db| {
            let now = now_ns();
            add_to_adopted(db, project, adjustment.amount, now)?;
            db.execute(
                "UPDATE projects SET adopted_at = COALESCE(adopted_at, ?2) WHERE project = ?1",
                params![project, now],
            )?;
            db.execute(
                "INSERT INTO adjustments (project, kind, amount, perun_modified_at, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    project,
                    adjustment.kind.as_str(),
                    adjustment.amount,
                    modified_at,
                    now
                ],
            )?;
            db.execute(
                "INSERT INTO perun_values (project, value, source, recorded_at, confirmed_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
                params![project, perun_value, adjustment.kind.as_str(), now],
            )?;
            Ok(())
        })
    }

    fn record_intent(
        &self,
        project: &str,
        value: Decimal,
        timestamps: &str,
    ) -> Result<i64, LedgerError> {
        self.side()
            .query_one(
                "INSERT INTO perun_values (project, value, source, timestamps, recorded_at)
                 VALUES (?1, ?2, 'write', ?3, ?4) RETURNING id",
                params![project, value, timestamps, now_ns()],
            )?
            .int(0)
    }

    fn confirm_write(&self, project: &str, id: i64, forget_before: i64) -> Result<(), LedgerError> {
        self.side().transaction(|db| {
            db.execute(
                "UPDATE perun_values SET confirmed_at = ?3
                 WHERE project = ?1 AND id = ?2 AND confirmed_at IS NULL",
                params![project, id, now_ns()],
            )?;
            db.execute(
                "DELETE FROM perun_values WHERE project = ?1 AND recorded_at < ?2
                     AND id < (SELECT MAX(id) FROM perun_values
                               WHERE project = ?1 AND confirmed_at IS NOT NULL)",
                params![project, forget_before],
            )?;
            Ok(())
        })
    }
}
