//! What the threshold mails read and record.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::sql::params;
use super::store::{Store, now_ns, project_record};
use super::{LedgerError, Notifiable, Notifications};

impl Notifications for Store {
    fn notifiable(&self) -> Result<Vec<Notifiable>, LedgerError> {
        let mut db = self.reader();
        let mut mailed: BTreeMap<String, Vec<(u32, Decimal)>> = BTreeMap::new();
        db.for_each(
            "SELECT project, threshold, granted FROM notifications",
            &[],
            |row| {
                let threshold = u32::try_from(row.int(1)?)
                    .map_err(|e| LedgerError::Corrupt(format!("a threshold: {e}")))?;
                mailed
                    .entry(row.text(0)?)
                    .or_default()
                    .push((threshold, row.decimal(2)?));
                Ok(())
            },
        )?;
        db.map(
            "SELECT project, charged, adopted, granted, emails FROM projects
             WHERE granted IS NOT NULL",
            &[],
            |row| {
                let project = project_record(row.text(0)?, row, 1)?;
                let mailed = mailed.remove(&project.project).unwrap_or_default();
                Ok(Notifiable { project, mailed })
            },
        )
    }

    fn record_notification(
        &self,
        project: &str,
        threshold: u32,
        granted: Decimal,
    ) -> Result<(), LedgerError> {
        self.side().execute(
            "INSERT INTO notifications (project, threshold, granted, sent_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (project, threshold) DO UPDATE SET granted = excluded.granted,
                 sent_at = excluded.sent_at",
            params![project, threshold, granted, now_ns()],
        )?;
        Ok(())
    }
}
