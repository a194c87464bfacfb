//! What the threshold mails read and record.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::reads::project_record;
use super::{PostgresLedger, lock, now_ns};
use crate::ledger::{LedgerError, Notifiable, Notifications};

impl Notifications for PostgresLedger {
    fn notifiable(&self) -> Result<Vec<Notifiable>, LedgerError> {
        let mut client = lock(&self.reader);
        let mut mailed: BTreeMap<String, Vec<(u32, Decimal)>> = BTreeMap::new();
        for row in client.query("SELECT project, threshold, granted FROM notifications", &[])? {
            mailed
                .entry(row.get(0))
                .or_default()
                .push((row.get::<_, i32>(1) as u32, row.get(2)));
        }
        let rows = client.query(
            "SELECT project, charged, adopted, granted, emails FROM projects WHERE granted IS NOT NULL",
            &[],
        )?;
        rows.iter()
            .map(|row| {
                let record = project_record(row.get(0), row, 1)?;
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
        lock(&self.side).execute(
            "INSERT INTO notifications (project, threshold, granted, sent_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (project, threshold) DO UPDATE SET granted = excluded.granted, sent_at = excluded.sent_at",
            &[&project, &(threshold as i32), &granted, &now_ns()],
        )?;
        Ok(())
    }
}
