//! What the APIs and the audit read, on the read connection.

use postgres::Row;
use rust_decimal::Decimal;

use super::{PostgresLedger, WAITING, lock};
use crate::billing::Key;
use crate::ledger::{
    Adjustment, AdjustmentKind, AdjustmentRecord, ChargeRecord, Counts, HistoryRow, LedgerError,
    PolicyStamp, ProjectRecord, Reads,
};

pub(super) const CHARGE_COLUMNS: &str =
    "project, location_id, metric, previous_timestamp, previous_value, timestamp,
     value, credits, charged_after, policy_name, policy_version, policy_sha256,
     reversed_at IS NOT NULL";

pub(super) fn charge_row(row: &Row) -> ChargeRecord {
    ChargeRecord {
        key: Key {
            project: row.get::<_, String>(0).into(),
            location_id: row.get::<_, String>(1).into(),
            metric: row.get::<_, String>(2).into(),
        },
        previous: (row.get(3), row.get(4)),
        current: (row.get(5), row.get(6)),
        credits: row.get(7),
        charged_after: row.get(8),
        policy: PolicyStamp {
            name: row.get(9),
            version: row.get(10),
            sha256: row.get(11),
        },
        reversed: row.get(12),
    }
}

/// A project's figures from its row (charged, adopted, granted, emails at
/// `offset`..).
pub(super) fn project_record(
    project: String,
    row: &Row,
    offset: usize,
) -> Result<ProjectRecord, LedgerError> {
    let emails: String = row.get(offset + 3);
    Ok(ProjectRecord {
        charged: row.get(offset),
        adopted: row.get(offset + 1),
        granted: row.get::<_, Option<Decimal>>(offset + 2),
        emails: serde_json::from_str(&emails)
            .map_err(|e| LedgerError::Corrupt(format!("mail addresses of {project}: {e}")))?,
        project,
    })
}

pub(super) fn kind(text: &str, project: &str) -> Result<AdjustmentKind, LedgerError> {
    match text {
        "adopted" => Ok(AdjustmentKind::Adopted),
        "manual edit" => Ok(AdjustmentKind::ManualEdit),
        other => Err(LedgerError::Corrupt(format!(
            "unknown adjustment kind {other:?} of {project}"
        ))),
    }
}

impl Reads for PostgresLedger {
    fn project(&self, project: &str) -> Result<Option<ProjectRecord>, LedgerError> {
        let mut client = lock(&self.reader);
        let row = client.query_opt(
            "SELECT charged, adopted, granted, emails FROM projects WHERE project = $1",
            &[&project],
        )?;
        if let Some(row) = row {
            return project_record(project.to_owned(), &row, 0).map(Some);
        }
        // A project with keys but no charge yet: used 0.
        let has_keys: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM keys WHERE project = $1)",
                &[&project],
            )?
            .get(0);
        Ok(has_keys.then(|| ProjectRecord {
            project: project.to_owned(),
            charged: Decimal::ZERO,
            adopted: Decimal::ZERO,
            granted: None,
            emails: Vec::new(),
        }))
    }

    fn history(&self, project: &str) -> Result<Vec<HistoryRow>, LedgerError> {
        let rows = lock(&self.reader).query(
            "SELECT timestamp, metric, charged_after FROM charges
             WHERE project = $1 AND reversed_at IS NULL ORDER BY id",
            &[&project],
        )?;
        Ok(rows
            .iter()
            .map(|row| HistoryRow {
                timestamp: row.get(0),
                metric: row.get(1),
                charged_after: row.get(2),
            })
            .collect())
    }

    fn charges(&self, project: &str) -> Result<Vec<ChargeRecord>, LedgerError> {
        let rows = lock(&self.reader).query(
            &format!("SELECT {CHARGE_COLUMNS} FROM charges WHERE project = $1 ORDER BY id"),
            &[&project],
        )?;
        Ok(rows.iter().map(charge_row).collect())
    }

    fn charges_between(&self, from: i64, to: i64) -> Result<Vec<ChargeRecord>, LedgerError> {
        let rows = lock(&self.reader).query(
            &format!(
                "SELECT {CHARGE_COLUMNS} FROM charges
                 WHERE timestamp >= $1 AND timestamp < $2 AND reversed_at IS NULL ORDER BY id"
            ),
            &[&from, &to],
        )?;
        Ok(rows.iter().map(charge_row).collect())
    }

    fn counts(&self) -> Result<Counts, LedgerError> {
        let row = lock(&self.reader).query_one(
            &format!(
                "SELECT (SELECT COUNT(DISTINCT project) FROM keys), (SELECT COUNT(*) FROM keys),
                        (SELECT COUNT(*) FROM charges),
                        (SELECT COUNT(*) FROM outbox WHERE {WAITING}),
                        (SELECT MIN(since) FROM outbox WHERE {WAITING})"
            ),
            &[],
        )?;
        let count = |i: usize| row.get::<_, i64>(i) as u64;
        Ok(Counts {
            projects: count(0),
            keys: count(1),
            charges: count(2),
            outbox: count(3),
            oldest_outbox: row.get(4),
        })
    }

    fn adjustments(&self) -> Result<Vec<AdjustmentRecord>, LedgerError> {
        let rows = lock(&self.reader).query(
            "SELECT project, kind, amount, perun_modified_at, recorded_at FROM adjustments ORDER BY id",
            &[],
        )?;
        rows.iter()
            .map(|row| {
                let project: String = row.get(0);
                Ok(AdjustmentRecord {
                    adjustment: Adjustment {
                        kind: kind(row.get(1), &project)?,
                        amount: row.get(2),
                    },
                    perun_modified_at: row.get(3),
                    recorded_at: row.get(4),
                    project,
                })
            })
            .collect()
    }
}
