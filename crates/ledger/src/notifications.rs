//! What the threshold mails read and record.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::sql::params;
use super::store::{Store, project_record};
use super::{LedgerError, Notifiable, Notifications};
use os_credits_core::time::now_ns;

impl Notifications for Store {
    fn notifiable(&self) -> Result<Vec<Notifiable>, LedgerError> {
        let mut db = self.reader();
        let mut mailed: BTreeMap<String, Vec<(u32, Decimal)>> = BTreeMap::new();
        let mut rearmed: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
        db.for_each(
            "SELECT project, threshold, granted, rearmed FROM notifications",
            &[],
            |row| {
                let corrupt = |e: std::num::TryFromIntError| {
                    LedgerError::Corrupt(format!("a threshold mail: {e}"))
                };
                let threshold = u32::try_from(row.int(1)?).map_err(corrupt)?;
                let project = row.text(0)?;
                let times = u32::try_from(row.int(3)?).map_err(corrupt)?;
                if times > 0 {
                    rearmed
                        .entry(project.clone())
                        .or_default()
                        .push((threshold, times));
                }
                mailed
                    .entry(project)
                    .or_default()
                    .push((threshold, row.decimal(2)?));
                Ok(())
            },
        )?;
        db.map(
            "SELECT project, charged, adopted, granted, emails, ends_at FROM projects
             WHERE granted IS NOT NULL",
            &[],
            |row| {
                let project = project_record(row.text(0)?, row, 1)?;
                let mailed = mailed.remove(&project.project).unwrap_or_default();
                let rearmed = rearmed.remove(&project.project).unwrap_or_default();
                Ok(Notifiable {
                    project,
                    mailed,
                    rearmed,
                })
            },
        )
    }

    fn rearm(&self, project: &str, threshold: u32) -> Result<(), LedgerError> {
        self.side().execute(
            "UPDATE notifications SET granted = ?3, rearmed = rearmed + 1
             WHERE project = ?1 AND threshold = ?2",
            params![project, threshold, Decimal::ZERO],
        )?;
        Ok(())
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
