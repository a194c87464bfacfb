//! What the APIs and the audit read: projects, history, charges, sizes,
//! adjustments. Through the read connection: never waits for a commit.

use rusqlite::OptionalExtension;

use super::{SqliteLedger, WAITING, decimal, lock, project_record};
use crate::billing::Key;
use crate::ledger::{
    Adjustment, AdjustmentKind, AdjustmentRecord, ChargeRecord, Counts, HistoryRow, LedgerError,
    PolicyStamp, ProjectRecord, Reads,
};

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

impl Reads for SqliteLedger {
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
}
