//! What the billing engine writes and restores: key states, charges,
//! project totals and outbox versions, in one transaction per batch, each
//! table in as few multi-row statements as the parameter limits allow; the
//! reversal of charges for adopted floors.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::sql::{Db, Param, params};
use super::store::{QUEUE_HEAD, QUEUE_TAIL, Store};
use super::{Batch, EngineStore, Floor, LedgerError, replication};
use os_credits_core::account::{Account, Key, State};
use os_credits_core::schedule::Entry;
use os_credits_core::sync::Locked;
use os_credits_core::time::now_ns;

/// Stores key states (insert or replace; a later entry for a key wins).
fn upsert_keys(db: &mut Db, states: &[(Key, Account)]) -> Result<(), LedgerError> {
    // One row per key (PostgreSQL refuses to update a row twice in one
    // statement): the last entry of each, found from the end with a hash
    // set (this runs on the billing thread for every commit), then in key
    // order, so that the database walks its primary key's index in order
    // rather than at random (PostgreSQL spends ~10 % less on a batch).
    let mut seen = hashbrown::HashSet::with_capacity(states.len());
    let mut last: Vec<&(Key, Account)> = states
        .iter()
        .rev()
        .filter(|(key, _)| seen.insert(key))
        .collect();
    last.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut values = Vec::with_capacity(last.len() * 7);
    for (key, account) in last {
        values.extend([
            Param::text(&key.project),
            Param::text(&key.location_id),
            Param::text(&key.metric),
            Param::Int(account.state.timestamp),
            Param::text(&account.state.text),
            Param::Decimal(account.charged),
            Param::Bool(account.awaiting_baseline),
        ]);
    }
    db.upsert(
        "INSERT INTO keys (project, location_id, metric, timestamp, value, charged, awaiting_baseline)",
        7,
        "ON CONFLICT (project, location_id, metric) DO UPDATE SET
             timestamp = excluded.timestamp, value = excluded.value, charged = excluded.charged,
             awaiting_baseline = excluded.awaiting_baseline",
        &values,
    )
}

/// Sets projects' exact charged totals and queues them for publishing.
fn charged_totals(
    db: &mut Db,
    totals: &BTreeMap<&str, Decimal>,
    now: i64,
) -> Result<(), LedgerError> {
    let mut values = Vec::with_capacity(totals.len() * 3);
    let mut queued = Vec::with_capacity(totals.len() * 2);
    for (project, charged) in totals {
        values.extend([
            Param::text(project),
            Param::Decimal(*charged),
            Param::Int(now),
        ]);
        queued.extend([Param::text(project), Param::Int(now)]);
    }
    db.upsert(
        "INSERT INTO projects (project, charged, updated_at)",
        3,
        "ON CONFLICT (project) DO UPDATE SET charged = excluded.charged,
             updated_at = excluded.updated_at",
        &values,
    )?;
    db.upsert(QUEUE_HEAD, 2, QUEUE_TAIL, &queued)
}

/// Writes a batch in `db`'s open transaction.
fn write_batch(db: &mut Db, batch: &Batch) -> Result<(), LedgerError> {
    let now = now_ns();
    upsert_keys(db, &batch.states)?;
    write_schedule(db, &batch.schedule)?;
    let mut values = Vec::with_capacity(batch.charges.len() * 14);
    let mut totals: BTreeMap<&str, Decimal> = BTreeMap::new();
    for charge in &batch.charges {
        values.extend([
            Param::text(&charge.key.project),
            Param::text(&charge.key.location_id),
            Param::text(&charge.key.metric),
            Param::Int(charge.previous.0),
            Param::text(&charge.previous.1),
            Param::Int(charge.current.0),
            Param::text(&charge.current.1),
            Param::Decimal(charge.credits),
            Param::Decimal(charge.charged_after),
            Param::text(&charge.policy.name),
            Param::text(&charge.policy.version),
            Param::text(&charge.policy.sha256),
            Param::Int(now),
            charge.schedule_entry.map_or(Param::NullInt, Param::Int),
        ]);
        totals.insert(&charge.key.project, charge.charged_after);
    }
    db.insert(
        "INSERT INTO charges (project, location_id, metric, previous_timestamp, previous_value,
             timestamp, value, credits, charged_after, policy_name, policy_version,
             policy_sha256, recorded_at, schedule_entry)",
        14,
        &values,
    )?;
    charged_totals(db, &totals, now)
}

/// Appends schedule entries.
fn write_schedule(db: &mut Db, entries: &[Entry]) -> Result<(), LedgerError> {
    for entry in entries {
        db.execute(
            "INSERT INTO schedule (id, site, from_ns, kind, file, sha256, config, memory_mb,
                 timeout_ms, added_at, origin, correction_reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            &[
                Param::Int(entry.id),
                Param::text(&entry.site),
                Param::Int(entry.from),
                Param::text(entry.kind.as_str()),
                Param::text(&entry.file),
                Param::text(&entry.sha256),
                Param::text(&entry.config),
                limit(entry.memory_mb),
                limit(entry.timeout_ms),
                Param::Int(entry.added_at),
                Param::text(&entry.origin),
                entry
                    .correction_reason
                    .as_deref()
                    .map_or(Param::Null, Param::text),
            ],
        )?;
    }
    Ok(())
}

fn limit(value: Option<u64>) -> Param<'static> {
    value
        .and_then(|v| i64::try_from(v).ok())
        .map_or(Param::Null, Param::Int)
}

/// Runs `work` in one transaction on the engine's connection; with
/// replicas, the leader's fencing check first (see [`replication`]).
fn billing_transaction<T>(
    store: &Store,
    work: impl FnOnce(&mut Db) -> Result<T, LedgerError>,
) -> Result<T, LedgerError> {
    let fence = *store.fence.locked();
    store.writer().transaction(|db| {
        if let Some(epoch) = fence {
            replication::check_fence(db, epoch)?;
        }
        work(db)
    })
}

impl EngineStore for Store {
    fn accounts(&self) -> Result<Vec<(Key, Account)>, LedgerError> {
        self.reader().map(
            "SELECT project, location_id, metric, timestamp, value, charged, awaiting_baseline
             FROM keys",
            &[],
            |row| {
                let text = row.text(4)?;
                let key = Key {
                    project: row.text(0)?.into(),
                    location_id: row.text(1)?.into(),
                    metric: row.text(2)?.into(),
                };
                let state = State {
                    timestamp: row.int(3)?,
                    value: pricing_sdk::parse_decimal(&text)
                        .map_err(|e| LedgerError::Corrupt(e.to_string()))?,
                    text: text.into(),
                };
                Ok((
                    key,
                    Account {
                        state,
                        charged: row.decimal(5)?,
                        awaiting_baseline: row.bool(6)?,
                        pending: false,
                    },
                ))
            },
        )
    }

    fn commit(&self, batch: &Batch) -> Result<(), LedgerError> {
        if batch.is_empty() {
            return Ok(());
        }
        billing_transaction(self, |db| write_batch(db, batch))?;
        self.last_commit
            .store(now_ns(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn reversible(&self, project: &str, floors: &[Floor]) -> Result<Vec<Decimal>, LedgerError> {
        let mut db = self.reader();
        floors
            .iter()
            .map(|floor| {
                let mut total = Decimal::ZERO;
                db.for_each(
                    "SELECT credits FROM charges WHERE project = ?1 AND location_id = ?2
                         AND metric = ?3 AND previous_timestamp < ?4 AND reversed_at IS NULL",
                    params![project, &floor.location_id, &floor.metric, floor.timestamp],
                    |row| {
                        total += row.decimal(0)?;
                        Ok(())
                    },
                )?;
                Ok(total)
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
        billing_transaction(self, |db| {
            let now = now_ns();
            let mut reversed = 0;
            for floor in floors {
                reversed += db.execute(
                    "UPDATE charges SET reversed_at = ?5 WHERE project = ?1 AND location_id = ?2
                         AND metric = ?3 AND previous_timestamp < ?4 AND reversed_at IS NULL",
                    params![
                        project,
                        &floor.location_id,
                        &floor.metric,
                        floor.timestamp,
                        now
                    ],
                )?;
            }
            upsert_keys(db, states)?;
            db.execute(
                "INSERT INTO projects (project, charged, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (project) DO UPDATE SET charged = excluded.charged,
                     updated_at = excluded.updated_at",
                params![project, charged, now],
            )?;
            if reversed > 0 {
                // The history's running totals, without the reversed charges.
                let rows = db.query(
                    "SELECT id, credits FROM charges WHERE project = ?1 AND reversed_at IS NULL
                     ORDER BY id",
                    params![project],
                )?;
                let mut running = Decimal::ZERO;
                for row in rows {
                    running += row.decimal(1)?;
                    db.execute(
                        "UPDATE charges SET charged_after = ?2 WHERE id = ?1",
                        params![row.int(0)?, running],
                    )?;
                }
                db.upsert(QUEUE_HEAD, 2, QUEUE_TAIL, params![project, now])?;
                super::corrections::roll_up_again(db, project)?;
            }
            Ok(reversed as usize)
        })
    }
}
