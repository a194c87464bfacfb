//! What the Perun sync reads and records, on the side connection (reads
//! of the outbox on the read connection).

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::{PostgresLedger, WAITING, lock, now_ns};
use crate::ledger::{
    Adjustment, KnownValue, LedgerError, Outbox, OutboxEntry, PerunRecord, Publishable, Reads,
    ValueSource,
};

impl Outbox for PostgresLedger {
    fn due(&self, now: i64, limit: usize) -> Result<Vec<OutboxEntry>, LedgerError> {
        let rows = lock(&self.reader).query(
            &format!(
                "SELECT project, version, attempts FROM outbox WHERE {WAITING} AND next_attempt <= $1
                 ORDER BY next_attempt, since LIMIT $2"
            ),
            &[&now, &(limit as i64)],
        )?;
        Ok(rows
            .iter()
            .map(|row| OutboxEntry {
                project: row.get(0),
                version: row.get(1),
                attempts: row.get(2),
            })
            .collect())
    }

    fn synced(&self, entry: &OutboxEntry, next_attempt: i64) -> Result<(), LedgerError> {
        lock(&self.side).execute(
            "UPDATE outbox SET published_version = GREATEST(published_version, $2), next_attempt = $3,
                 attempts = 0, last_error = NULL WHERE project = $1",
            &[&entry.project, &entry.version, &next_attempt],
        )?;
        Ok(())
    }

    fn sync_failed(
        &self,
        project: &str,
        next_attempt: i64,
        error: &str,
    ) -> Result<(), LedgerError> {
        lock(&self.side).execute(
            "UPDATE outbox SET next_attempt = $2, attempts = attempts + 1, last_error = $3 WHERE project = $1",
            &[&project, &next_attempt, &error],
        )?;
        Ok(())
    }

    fn publishable(&self, project: &str) -> Result<Option<Publishable>, LedgerError> {
        let Some(record) = self.project(project)? else {
            return Ok(None);
        };
        let rows = lock(&self.reader).query(
            "SELECT location_id, metric, timestamp FROM keys WHERE project = $1 ORDER BY location_id, metric",
            &[&project],
        )?;
        let mut sites: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for row in rows {
            sites
                .entry(row.get(0))
                .or_default()
                .insert(row.get(1), row.get(2));
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
        lock(&self.side).execute(
            "INSERT INTO projects (project, granted, emails, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (project) DO UPDATE SET granted = excluded.granted, emails = excluded.emails",
            &[&project, &granted, &emails, &now_ns()],
        )?;
        Ok(())
    }

    fn perun_record(&self, project: &str) -> Result<PerunRecord, LedgerError> {
        let mut client = lock(&self.reader);
        let adopted_at = client
            .query_opt(
                "SELECT adopted_at FROM projects WHERE project = $1",
                &[&project],
            )?
            .and_then(|row| row.get::<_, Option<i64>>(0));
        let rows = client.query(
            "SELECT id, value, source, confirmed_at IS NOT NULL FROM perun_values
             WHERE project = $1 ORDER BY id",
            &[&project],
        )?;
        let known = rows
            .iter()
            .map(|row| {
                let source = match row.get::<_, &str>(2) {
                    "write" => ValueSource::Write,
                    "adopted" => ValueSource::Adopted,
                    "manual edit" => ValueSource::ManualEdit,
                    other => {
                        return Err(LedgerError::Corrupt(format!(
                            "unknown source {other:?} of a Perun value of {project}"
                        )));
                    }
                };
                Ok(KnownValue {
                    id: row.get(0),
                    value: row.get(1),
                    source,
                    confirmed: row.get(3),
                })
            })
            .collect::<Result<_, LedgerError>>()?;
        Ok(PerunRecord { adopted_at, known })
    }

    fn adjust(
        &self,
        project: &str,
        adjustment: Adjustment,
        perun_value: Decimal,
        modified_at: Option<&str>,
    ) -> Result<(), LedgerError> {
        let mut client = lock(&self.side);
        let mut tx = client.transaction()?;
        let now = now_ns();
        tx.execute(
            "INSERT INTO projects (project, adopted, adopted_at, updated_at) VALUES ($1, $2, $3, $3)
             ON CONFLICT (project) DO UPDATE SET adopted = projects.adopted + excluded.adopted,
                 adopted_at = COALESCE(projects.adopted_at, excluded.adopted_at),
                 updated_at = excluded.updated_at",
            &[&project, &adjustment.amount, &now],
        )?;
        tx.execute(
            "INSERT INTO adjustments (project, kind, amount, perun_modified_at, recorded_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &project,
                &adjustment.kind.as_str(),
                &adjustment.amount,
                &modified_at,
                &now,
            ],
        )?;
        tx.execute(
            "INSERT INTO perun_values (project, value, source, recorded_at, confirmed_at)
             VALUES ($1, $2, $3, $4, $4)",
            &[&project, &perun_value, &adjustment.kind.as_str(), &now],
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
        let row = lock(&self.side).query_one(
            "INSERT INTO perun_values (project, value, source, timestamps, recorded_at)
             VALUES ($1, $2, 'write', $3, $4) RETURNING id",
            &[&project, &value, &timestamps, &now_ns()],
        )?;
        Ok(row.get(0))
    }

    fn confirm_write(&self, project: &str, id: i64, forget_before: i64) -> Result<(), LedgerError> {
        let mut client = lock(&self.side);
        let mut tx = client.transaction()?;
        tx.execute(
            "UPDATE perun_values SET confirmed_at = $3
             WHERE project = $1 AND id = $2 AND confirmed_at IS NULL",
            &[&project, &id, &now_ns()],
        )?;
        tx.execute(
            "DELETE FROM perun_values WHERE project = $1 AND recorded_at < $2
                 AND id < (SELECT MAX(id) FROM perun_values
                           WHERE project = $1 AND confirmed_at IS NOT NULL)",
            &[&project, &forget_before],
        )?;
        tx.commit()?;
        Ok(())
    }
}
