//! What the APIs and the audit read: projects, history, charges, sizes,
//! adjustments. Through the read connection: never waits for a commit.

use super::sql::{Row, params};
use super::store::{Store, WAITING, project_record, unbilled};
use super::{
    Adjustment, AdjustmentKind, AdjustmentRecord, ChargeRecord, Counts, HistoryCorrection,
    HistoryRow, LedgerError, PolicyStamp, ProjectRecord, Reads,
};
use os_credits_core::account::Key;

/// The columns [`charge`] reads.
pub(super) const CHARGE_COLUMNS: &str =
    "project, location_id, metric, previous_timestamp, previous_value, timestamp,
     value, credits, charged_after, policy_name, policy_version, policy_sha256,
     reversed_at IS NOT NULL, schedule_entry";

/// An adjustment from [`ADJUSTMENT_COLUMNS`].
pub(super) fn adjustment(row: &Row) -> Result<AdjustmentRecord, LedgerError> {
    let project = row.text(0)?;
    Ok(AdjustmentRecord {
        adjustment: Adjustment {
            kind: AdjustmentKind::parse(&row.text(1)?, &project)?,
            amount: row.decimal(2)?,
        },
        perun_modified_at: row.opt_text(3)?,
        recorded_at: row.int(4)?,
        correction: row.opt_text(5)?,
        project,
    })
}

/// The columns [`adjustment`] reads.
pub(super) const ADJUSTMENT_COLUMNS: &str =
    "project, kind, amount, perun_modified_at, recorded_at, correction";

/// A charge from [`CHARGE_COLUMNS`].
pub(super) fn charge(row: &Row) -> Result<ChargeRecord, LedgerError> {
    Ok(ChargeRecord {
        key: Key {
            project: row.text(0)?.into(),
            location_id: row.text(1)?.into(),
            metric: row.text(2)?.into(),
        },
        previous: (row.int(3)?, row.text(4)?),
        current: (row.int(5)?, row.text(6)?),
        credits: row.decimal(7)?,
        charged_after: row.decimal(8)?,
        policy: PolicyStamp {
            name: row.text(9)?,
            version: row.text(10)?,
            sha256: row.text(11)?,
        },
        reversed: row.bool(12)?,
        schedule_entry: row.opt_int(13)?,
    })
}

impl Reads for Store {
    fn project(&self, project: &str) -> Result<Option<ProjectRecord>, LedgerError> {
        let mut db = self.reader();
        let row = db.query_opt(
            "SELECT charged, adopted, granted, emails, ends_at FROM projects WHERE project = ?1",
            params![project],
        )?;
        if let Some(row) = row {
            return project_record(project.to_owned(), &row, 0).map(Some);
        }
        // A project with keys but no charge yet: used 0.
        let has_keys = db
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM keys WHERE project = ?1)",
                params![project],
            )?
            .bool(0)?;
        Ok(has_keys.then(|| unbilled(project)))
    }

    fn history(&self, project: &str) -> Result<Vec<HistoryRow>, LedgerError> {
        self.reader().map(
            "SELECT timestamp, metric, charged_after, recorded_at FROM charges
             WHERE project = ?1 AND reversed_at IS NULL ORDER BY id",
            params![project],
            |row| {
                Ok(HistoryRow {
                    timestamp: row.int(0)?,
                    metric: row.text(1)?,
                    charged_after: row.decimal(2)?,
                    recorded_at: row.int(3)?,
                })
            },
        )
    }

    fn history_corrections(&self, project: &str) -> Result<Vec<HistoryCorrection>, LedgerError> {
        self.reader().map(
            "SELECT a.recorded_at, a.amount, a.correction, c.reason
             FROM adjustments a JOIN corrections c ON c.id = a.correction
             WHERE a.project = ?1 AND a.kind = 'correction' ORDER BY a.id",
            params![project],
            |row| {
                Ok(HistoryCorrection {
                    recorded_at: row.int(0)?,
                    amount: row.decimal(1)?,
                    correction: row.text(2)?,
                    reason: row.text(3)?,
                })
            },
        )
    }

    fn charges(&self, project: &str) -> Result<Vec<ChargeRecord>, LedgerError> {
        self.reader().map(
            &format!("SELECT {CHARGE_COLUMNS} FROM charges WHERE project = ?1 ORDER BY id"),
            params![project],
            charge,
        )
    }

    fn charges_between(&self, from: i64, to: i64) -> Result<Vec<ChargeRecord>, LedgerError> {
        self.reader().map(
            &format!(
                "SELECT {CHARGE_COLUMNS} FROM charges
                 WHERE timestamp >= ?1 AND timestamp < ?2 AND reversed_at IS NULL ORDER BY id"
            ),
            params![from, to],
            charge,
        )
    }

    fn counts(&self) -> Result<Counts, LedgerError> {
        let row = self.reader().query_one(
            &format!(
                "SELECT (SELECT COUNT(DISTINCT project) FROM keys), (SELECT COUNT(*) FROM keys),
                        (SELECT COUNT(*) FROM charges),
                        (SELECT COUNT(*) FROM outbox WHERE {WAITING}),
                        (SELECT MIN(since) FROM outbox WHERE {WAITING})"
            ),
            &[],
        )?;
        let count = |i: usize| row.int(i).map(|n| n.max(0) as u64);
        Ok(Counts {
            projects: count(0)?,
            keys: count(1)?,
            charges: count(2)?,
            outbox: count(3)?,
            oldest_outbox: row.opt_int(4)?,
        })
    }

    fn adjustments(&self) -> Result<Vec<AdjustmentRecord>, LedgerError> {
        self.reader().map(
            &format!("SELECT {ADJUSTMENT_COLUMNS} FROM adjustments ORDER BY id"),
            &[],
            adjustment,
        )
    }
}
