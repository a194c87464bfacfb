//! What the threshold mails read and record.

use std::collections::BTreeMap;

use rusqlite::params;
use rust_decimal::Decimal;

use super::{ProjectRow, SqliteLedger, decimal, lock, now_ns, project_record};
use crate::ledger::{LedgerError, Notifiable, Notifications};

impl Notifications for SqliteLedger {
    fn notifiable(&self) -> Result<Vec<Notifiable>, LedgerError> {
        let connection = lock(&self.reader);
        let mut mailed: BTreeMap<String, Vec<(u32, Decimal)>> = BTreeMap::new();
        {
            let mut statement = connection
                .prepare_cached("SELECT project, threshold, granted FROM notifications")?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, u32>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })?;
            for row in rows {
                let (project, threshold, granted) = row?;
                mailed
                    .entry(project)
                    .or_default()
                    .push((threshold, decimal(&granted)?));
            }
        }
        let mut statement = connection.prepare_cached(
            "SELECT project, charged, adopted, granted, emails FROM projects WHERE granted IS NOT NULL",
        )?;
        let rows = statement.query_map([], |row| {
            let figures: ProjectRow = (row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?);
            Ok((row.get::<_, String>(0)?, figures))
        })?;
        rows.map(|row| {
            let (project, figures) = row?;
            let record = project_record(project, figures)?;
            let mailed = mailed.remove(&record.project).unwrap_or_default();
            Ok(Notifiable {
                project: record,
                mailed,
            })
        })
        .collect()
    }

    fn record_notification(
        &self,
        project: &str,
        threshold: u32,
        granted: Decimal,
    ) -> Result<(), LedgerError> {
        lock(&self.writer).execute(
            "INSERT INTO notifications (project, threshold, granted, sent_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (project, threshold) DO UPDATE SET granted = excluded.granted, sent_at = excluded.sent_at",
            params![project, threshold, granted.to_string(), now_ns()],
        )?;
        Ok(())
    }
}
