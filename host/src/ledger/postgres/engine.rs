//! What the billing engine writes and restores, on the engine's connection
//! (with replicas, the one that holds the leader's lock: a leader that lost
//! its session can never commit). Each table of a batch is one statement
//! over arrays.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::{PostgresLedger, QUEUE, lock, now_ns};
use crate::billing::{Account, Key, State};
use crate::ledger::{Batch, EngineStore, Floor, LedgerError};

/// Key states as columns, one array per column.
#[derive(Default)]
struct KeyColumns<'a> {
    project: Vec<&'a str>,
    location_id: Vec<&'a str>,
    metric: Vec<&'a str>,
    timestamp: Vec<i64>,
    value: Vec<&'a str>,
    charged: Vec<Decimal>,
    awaiting_baseline: Vec<bool>,
}

/// Charges as columns, one array per column.
#[derive(Default)]
struct ChargeColumns<'a> {
    project: Vec<&'a str>,
    location_id: Vec<&'a str>,
    metric: Vec<&'a str>,
    previous_timestamp: Vec<i64>,
    previous_value: Vec<&'a str>,
    timestamp: Vec<i64>,
    value: Vec<&'a str>,
    credits: Vec<Decimal>,
    charged_after: Vec<Decimal>,
    policy_name: Vec<&'a str>,
    policy_version: Vec<&'a str>,
    policy_sha256: Vec<&'a str>,
}

/// Stores key states (insert or replace), one statement.
fn upsert_keys(
    tx: &mut postgres::Transaction<'_>,
    states: &[(Key, Account)],
) -> Result<(), LedgerError> {
    if states.is_empty() {
        return Ok(());
    }
    // A later entry for the same key wins (as in the SQLite store).
    let mut last: BTreeMap<&Key, &Account> = BTreeMap::new();
    for (key, account) in states {
        last.insert(key, account);
    }
    let mut columns = KeyColumns::default();
    for (key, account) in last {
        columns.project.push(&key.project);
        columns.location_id.push(&key.location_id);
        columns.metric.push(&key.metric);
        columns.timestamp.push(account.state.timestamp);
        columns.value.push(&account.state.text);
        columns.charged.push(account.charged);
        columns.awaiting_baseline.push(account.awaiting_baseline);
    }
    tx.execute(
        "INSERT INTO keys (project, location_id, metric, timestamp, value, charged, awaiting_baseline)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[],
                              $6::numeric[], $7::boolean[])
         ON CONFLICT (project, location_id, metric) DO UPDATE SET
             timestamp = excluded.timestamp, value = excluded.value, charged = excluded.charged,
             awaiting_baseline = excluded.awaiting_baseline",
        &[
            &columns.project,
            &columns.location_id,
            &columns.metric,
            &columns.timestamp,
            &columns.value,
            &columns.charged,
            &columns.awaiting_baseline,
        ],
    )?;
    Ok(())
}

/// Sets projects' exact charged totals and queues them for publishing.
fn charged_totals(
    tx: &mut postgres::Transaction<'_>,
    totals: &BTreeMap<&str, Decimal>,
    now: i64,
) -> Result<(), LedgerError> {
    if totals.is_empty() {
        return Ok(());
    }
    let projects: Vec<&str> = totals.keys().copied().collect();
    let charged: Vec<Decimal> = totals.values().copied().collect();
    tx.execute(
        "INSERT INTO projects (project, charged, updated_at)
         SELECT project, charged, $3 FROM UNNEST($1::text[], $2::numeric[]) AS t(project, charged)
         ON CONFLICT (project) DO UPDATE SET charged = excluded.charged, updated_at = excluded.updated_at",
        &[&projects, &charged, &now],
    )?;
    tx.execute(
        "INSERT INTO outbox AS o (project, since) SELECT project, $2 FROM UNNEST($1::text[]) AS t(project)
         ON CONFLICT (project) DO UPDATE SET version = o.version + 1,
             since = CASE WHEN o.version = o.published_version THEN excluded.since ELSE o.since END",
        &[&projects, &now],
    )?;
    Ok(())
}

/// Writes a batch in `tx` (the engine's connection).
pub(super) fn write_batch(
    tx: &mut postgres::Transaction<'_>,
    batch: &Batch,
) -> Result<(), LedgerError> {
    let now = now_ns();
    if !batch.inbox.is_empty() {
        tx.execute("DELETE FROM inbox WHERE id = ANY($1)", &[&batch.inbox])?;
    }
    upsert_keys(tx, &batch.states)?;
    if batch.charges.is_empty() {
        return Ok(());
    }
    let mut c = ChargeColumns::default();
    let mut totals: BTreeMap<&str, Decimal> = BTreeMap::new();
    for charge in &batch.charges {
        c.project.push(&charge.key.project);
        c.location_id.push(&charge.key.location_id);
        c.metric.push(&charge.key.metric);
        c.previous_timestamp.push(charge.previous.0);
        c.previous_value.push(&charge.previous.1);
        c.timestamp.push(charge.current.0);
        c.value.push(&charge.current.1);
        c.credits.push(charge.credits);
        c.charged_after.push(charge.charged_after);
        c.policy_name.push(&charge.policy.name);
        c.policy_version.push(&charge.policy.version);
        c.policy_sha256.push(&charge.policy.sha256);
        totals.insert(&charge.key.project, charge.charged_after);
    }
    // WITH ORDINALITY keeps the ids in billing order.
    tx.execute(
        "INSERT INTO charges (project, location_id, metric, previous_timestamp, previous_value,
             timestamp, value, credits, charged_after, policy_name, policy_version, policy_sha256,
             recorded_at)
         SELECT p, l, m, pt, pv, t, v, c, a, n, ver, sha, $13
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[],
                     $7::text[], $8::numeric[], $9::numeric[], $10::text[], $11::text[], $12::text[])
              WITH ORDINALITY AS u(p, l, m, pt, pv, t, v, c, a, n, ver, sha, i)
         ORDER BY i",
        &[
            &c.project,
            &c.location_id,
            &c.metric,
            &c.previous_timestamp,
            &c.previous_value,
            &c.timestamp,
            &c.value,
            &c.credits,
            &c.charged_after,
            &c.policy_name,
            &c.policy_version,
            &c.policy_sha256,
            &now,
        ],
    )?;
    charged_totals(tx, &totals, now)
}

impl EngineStore for PostgresLedger {
    fn accounts(&self) -> Result<Vec<(Key, Account)>, LedgerError> {
        let mut client = lock(&self.reader);
        let rows = client.query(
            "SELECT project, location_id, metric, timestamp, value, charged, awaiting_baseline FROM keys",
            &[],
        )?;
        rows.iter()
            .map(|row| {
                let text: String = row.get(4);
                let state = State {
                    timestamp: row.get(3),
                    value: pricing_sdk::parse_decimal(&text)
                        .map_err(|e| LedgerError::Corrupt(e.to_string()))?,
                    text: text.into(),
                };
                let key = Key {
                    project: row.get::<_, String>(0).into(),
                    location_id: row.get::<_, String>(1).into(),
                    metric: row.get::<_, String>(2).into(),
                };
                let account = Account {
                    state,
                    charged: row.get(5),
                    awaiting_baseline: row.get(6),
                    pending: false,
                };
                Ok((key, account))
            })
            .collect()
    }

    fn commit(&self, batch: &Batch) -> Result<(), LedgerError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.transaction(|tx| write_batch(tx, batch))
    }

    fn reversible(&self, project: &str, floors: &[Floor]) -> Result<Vec<Decimal>, LedgerError> {
        let mut client = lock(&self.reader);
        floors
            .iter()
            .map(|floor| {
                let row = client.query_one(
                    "SELECT COALESCE(SUM(credits), 0) FROM charges WHERE project = $1
                         AND location_id = $2 AND metric = $3 AND previous_timestamp < $4
                         AND reversed_at IS NULL",
                    &[
                        &project,
                        &floor.location_id,
                        &floor.metric,
                        &floor.timestamp,
                    ],
                )?;
                Ok(row.get(0))
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
        self.transaction(|tx| {
            let now = now_ns();
            let mut reversed = 0;
            for floor in floors {
                reversed += tx.execute(
                    "UPDATE charges SET reversed_at = $5 WHERE project = $1 AND location_id = $2
                         AND metric = $3 AND previous_timestamp < $4 AND reversed_at IS NULL",
                    &[&project, &floor.location_id, &floor.metric, &floor.timestamp, &now],
                )?;
            }
            upsert_keys(tx, states)?;
            tx.execute(
                "INSERT INTO projects (project, charged, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (project) DO UPDATE SET charged = excluded.charged, updated_at = excluded.updated_at",
                &[&project, &charged, &now],
            )?;
            if reversed > 0 {
                // The history's running totals, without the reversed charges.
                tx.execute(
                    "UPDATE charges AS c SET charged_after = r.running FROM (
                         SELECT id, SUM(credits) OVER (ORDER BY id) AS running FROM charges
                         WHERE project = $1 AND reversed_at IS NULL) AS r
                     WHERE c.id = r.id",
                    &[&project],
                )?;
                tx.execute(QUEUE, &[&project, &now])?;
            }
            Ok(reversed as usize)
        })
    }
}
