//! What the billing engine writes and restores: key states, charges,
//! project totals and outbox versions, in one transaction per batch; the
//! reversal of charges for adopted floors.

use rusqlite::params;
use rust_decimal::Decimal;

use super::{QUEUE, SqliteLedger, decimal, lock, now_ns};
use crate::billing::{Account, Key, State};
use crate::ledger::{Batch, EngineStore, Floor, LedgerError};

/// The charges a floor reverses (?1 project, ?2 site, ?3 metric, ?4 floor):
/// not yet reversed, their step started before the floor.
const REVERSIBLE: &str = "project = ?1 AND location_id = ?2 AND metric = ?3
     AND previous_timestamp < ?4 AND reversed_at IS NULL";

/// Stores key states (insert or replace).
fn upsert_keys(
    tx: &rusqlite::Transaction<'_>,
    states: &[(Key, Account)],
) -> Result<(), LedgerError> {
    let mut upsert_key = tx.prepare_cached(
        "INSERT INTO keys (project, location_id, metric, timestamp, value, charged, awaiting_baseline)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (project, location_id, metric) DO UPDATE SET
             timestamp = excluded.timestamp, value = excluded.value, charged = excluded.charged,
             awaiting_baseline = excluded.awaiting_baseline",
    )?;
    for (key, account) in states {
        upsert_key.execute(params![
            &*key.project,
            &*key.location_id,
            &*key.metric,
            account.state.timestamp,
            &*account.state.text,
            account.charged.to_string(),
            account.awaiting_baseline,
        ])?;
    }
    Ok(())
}

impl EngineStore for SqliteLedger {
    fn accounts(&self) -> Result<Vec<(Key, Account)>, LedgerError> {
        let connection = lock(&self.reader);
        let mut statement = connection.prepare(
            "SELECT project, location_id, metric, timestamp, value, charged, awaiting_baseline FROM keys",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                (
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ),
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, bool>(6)?,
            ))
        })?;
        let mut accounts = Vec::new();
        for row in rows {
            let ((project, location_id, metric), timestamp, text, charged, awaiting_baseline) =
                row?;
            let state = State {
                timestamp,
                value: decimal(&text)?,
                text: text.into(),
            };
            let key = Key {
                project: project.into(),
                location_id: location_id.into(),
                metric: metric.into(),
            };
            let account = Account {
                state,
                charged: decimal(&charged)?,
                awaiting_baseline,
                pending: false,
            };
            accounts.push((key, account));
        }
        Ok(accounts)
    }

    fn commit(&self, batch: &Batch) -> Result<(), LedgerError> {
        if batch.is_empty() {
            return Ok(());
        }
        if !batch.inbox.is_empty() {
            return Err(LedgerError::Corrupt(
                "the SQLite ledger has no inbox (replicas need PostgreSQL)".into(),
            ));
        }
        let mut connection = lock(&self.writer);
        let tx = connection.transaction()?;
        let now = now_ns();
        {
            upsert_keys(&tx, &batch.states)?;
            let mut insert_charge = tx.prepare_cached(
                "INSERT INTO charges (project, location_id, metric, previous_timestamp, previous_value,
                     timestamp, value, credits, charged_after, policy_name, policy_version,
                     policy_sha256, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            let mut upsert_project = tx.prepare_cached(
                "INSERT INTO projects (project, charged, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (project) DO UPDATE SET charged = excluded.charged, updated_at = excluded.updated_at",
            )?;
            let mut queue = tx.prepare_cached(QUEUE)?;
            for charge in &batch.charges {
                insert_charge.execute(params![
                    &*charge.key.project,
                    &*charge.key.location_id,
                    &*charge.key.metric,
                    charge.previous.0,
                    charge.previous.1,
                    charge.current.0,
                    charge.current.1,
                    charge.credits.to_string(),
                    charge.charged_after.to_string(),
                    charge.policy.name,
                    charge.policy.version,
                    charge.policy.sha256,
                    now,
                ])?;
                upsert_project.execute(params![
                    &*charge.key.project,
                    charge.charged_after.to_string(),
                    now
                ])?;
                queue.execute(params![&*charge.key.project, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn reversible(&self, project: &str, floors: &[Floor]) -> Result<Vec<Decimal>, LedgerError> {
        let connection = lock(&self.reader);
        let mut statement = connection
            .prepare_cached(&format!("SELECT credits FROM charges WHERE {REVERSIBLE}"))?;
        floors
            .iter()
            .map(|floor| {
                let credits = statement.query_map(
                    params![project, floor.location_id, floor.metric, floor.timestamp],
                    |row| row.get::<_, String>(0),
                )?;
                credits.map(|text| decimal(&text?)).sum()
            })
            .collect()
    }

    fn rebase(
        &self,
        project: &str,
        floors: &[Floor],
        states: &[(Key, Account)],
        charged: Decimal,
    ) -> Result<usize, LedgerError> {
        let mut connection = lock(&self.writer);
        let tx = connection.transaction()?;
        let now = now_ns();
        let mut reversed = 0;
        for floor in floors {
            reversed += tx.execute(
                "UPDATE charges SET reversed_at = ?5 WHERE project = ?1 AND location_id = ?2
                     AND metric = ?3 AND previous_timestamp < ?4 AND reversed_at IS NULL",
                params![
                    project,
                    floor.location_id,
                    floor.metric,
                    floor.timestamp,
                    now
                ],
            )?;
        }
        upsert_keys(&tx, states)?;
        tx.execute(
            "INSERT INTO projects (project, charged, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (project) DO UPDATE SET charged = excluded.charged, updated_at = excluded.updated_at",
            params![project, charged.to_string(), now],
        )?;
        if reversed > 0 {
            // The history's running totals, without the reversed charges.
            let rows: Vec<(i64, String)> = {
                let mut statement = tx.prepare(
                    "SELECT id, credits FROM charges WHERE project = ?1 AND reversed_at IS NULL ORDER BY id",
                )?;
                let rows = statement.query_map([project], |row| Ok((row.get(0)?, row.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut update =
                tx.prepare_cached("UPDATE charges SET charged_after = ?2 WHERE id = ?1")?;
            let mut running = Decimal::ZERO;
            for (id, credits) in rows {
                running += decimal(&credits)?;
                update.execute(params![id, running.to_string()])?;
            }
            tx.execute(QUEUE, params![project, now])?;
        }
        tx.commit()?;
        Ok(reversed)
    }
}
