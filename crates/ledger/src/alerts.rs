//! What forecasts read (a project's pace by the time usage happened) and
//! the webhooks' durable outbox.

use rust_decimal::Decimal;

use super::sql::{Db, params};
use super::store::{Store, project_record};
use super::{Forecasts, LedgerError, Pace, PendingWebhook, ProjectRecord, WebhookEvent, Webhooks};
use os_credits_core::period::share;
use os_credits_core::time::now_ns;

/// The columns [`project_record`] reads, after the project's name.
const PROJECT_COLUMNS: &str = "project, charged, adopted, granted, emails, ends_at";

/// `project`'s pace over the `window` (ns) ending at its latest charge.
fn pace_of(db: &mut Db, project: ProjectRecord, window: i64) -> Result<Pace, LedgerError> {
    let name = project.project.clone();
    let latest = db
        .query_one(
            "SELECT MAX(timestamp) FROM charges WHERE project = ?1 AND reversed_at IS NULL",
            params![&name],
        )?
        .opt_int(0)?;
    let Some(latest) = latest else {
        return Ok(Pace {
            project,
            latest: None,
            measured_from: 0,
            credits: Decimal::ZERO,
        });
    };
    let start = latest.saturating_sub(window);
    let mut credits = Decimal::ZERO;
    // Every charge ending after the window's start; when none ends at or
    // before it, these are all the project's charges, and the earliest
    // start among them is its first measurement.
    let mut first = i64::MAX;
    db.for_each(
        "SELECT previous_timestamp, timestamp, credits FROM charges
         WHERE project = ?1 AND timestamp > ?2 AND reversed_at IS NULL",
        params![&name, start],
        |row| {
            let (t0, t1) = (row.int(0)?, row.int(1)?);
            first = first.min(t0);
            credits += share(row.decimal(2)?, (t0, t1), (start, latest));
            Ok(())
        },
    )?;
    db.for_each(
        "SELECT start_ns, end_ns, difference FROM correction_lines
         WHERE project = ?1 AND end_ns > ?2",
        params![&name, start],
        |row| {
            let (t0, t1) = (row.int(0)?, row.int(1)?);
            credits += share(row.decimal(2)?, (t0, t1), (start, latest));
            Ok(())
        },
    )?;
    let earlier = db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM charges
                 WHERE project = ?1 AND timestamp <= ?2 AND reversed_at IS NULL)",
            params![&name, start],
        )?
        .bool(0)?;
    let measured_from = if earlier { start } else { first.max(start) };
    Ok(Pace {
        project,
        latest: Some(latest),
        measured_from,
        credits,
    })
}

impl Forecasts for Store {
    fn pace(&self, project: &str, window: i64) -> Result<Option<Pace>, LedgerError> {
        let mut db = self.reader();
        let record = db
            .query_opt(
                &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE project = ?1"),
                params![project],
            )?
            .map(|row| project_record(project.to_owned(), &row, 1))
            .transpose()?;
        let record = match record {
            Some(record) => record,
            None => {
                let known = db
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM keys WHERE project = ?1)",
                        params![project],
                    )?
                    .bool(0)?;
                if !known {
                    return Ok(None);
                }
                super::store::unbilled(project)
            }
        };
        pace_of(&mut db, record, window).map(Some)
    }

    fn paces(&self, window: i64) -> Result<Vec<Pace>, LedgerError> {
        let mut db = self.reader();
        let projects = db.map(
            &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE granted IS NOT NULL"),
            &[],
            |row| project_record(row.text(0)?, row, 1),
        )?;
        projects
            .into_iter()
            .map(|project| pace_of(&mut db, project, window))
            .collect()
    }
}

/// Queues `event` in `db`'s open transaction unless its id is known.
pub(super) fn queue(db: &mut Db, event: &WebhookEvent) -> Result<bool, LedgerError> {
    let queued = db.execute(
        "INSERT INTO webhooks (id, kind, body, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO NOTHING",
        params![&event.id, &event.kind, &event.body, now_ns()],
    )?;
    Ok(queued > 0)
}

impl Webhooks for Store {
    fn queue_webhook(&self, event: &WebhookEvent) -> Result<bool, LedgerError> {
        queue(&mut self.side(), event)
    }

    fn webhooks_due(&self, now: i64, limit: usize) -> Result<Vec<PendingWebhook>, LedgerError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.side().map(
            "SELECT id, kind, body, attempts FROM webhooks
             WHERE delivered_at IS NULL AND next_attempt <= ?1 ORDER BY seq LIMIT ?2",
            params![now, limit],
            |row| {
                Ok(PendingWebhook {
                    event: WebhookEvent {
                        id: row.text(0)?,
                        kind: row.text(1)?,
                        body: row.text(2)?,
                    },
                    attempts: u32::try_from(row.int(3)?).unwrap_or(u32::MAX),
                })
            },
        )
    }

    fn webhook_delivered(&self, id: &str) -> Result<(), LedgerError> {
        self.side().execute(
            "UPDATE webhooks SET delivered_at = ?2 WHERE id = ?1 AND delivered_at IS NULL",
            params![id, now_ns()],
        )?;
        Ok(())
    }

    fn webhook_failed(&self, id: &str, next_attempt: i64, error: &str) -> Result<(), LedgerError> {
        self.side().execute(
            "UPDATE webhooks SET attempts = attempts + 1, next_attempt = ?2, last_error = ?3
             WHERE id = ?1 AND delivered_at IS NULL",
            params![id, next_attempt, error],
        )?;
        Ok(())
    }

    fn webhook_depth(&self) -> Result<(u64, u64), LedgerError> {
        let row = self.reader().query_one(
            "SELECT COUNT(*), COUNT(CASE WHEN attempts > 0 THEN 1 END) FROM webhooks
             WHERE delivered_at IS NULL",
            &[],
        )?;
        let count = |i| row.int(i).map(|n| u64::try_from(n).unwrap_or(0));
        Ok((count(0)?, count(1)?))
    }
}
