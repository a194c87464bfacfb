//! `os-credits ledger copy`: a SQLite ledger into an empty PostgreSQL one,
//! table by table in one transaction (an operator moving to replicas).
//! Exact: decimals go as text to `NUMERIC`, ids are kept (and the
//! sequences set past them), reversed charges and adjustments included;
//! before it commits, every table's row count and the exact sum of every
//! numeric column are checked against what was read.

use std::path::Path;

use postgres::types::ToSql;
use rust_decimal::Decimal;

use super::LedgerError;
use super::postgres::PostgresLedger;
use super::sqlite::SqliteLedger;

/// A column's type in PostgreSQL.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Int,
    Int4,
    Numeric,
    Bool,
}
use Kind::{Bool, Int, Int4, Numeric, Text};

/// A table: its name, its columns, and whether it has an `id` sequence.
type Table = (&'static str, &'static [(&'static str, Kind)], bool);

/// The tables, in an order that keeps references valid.
const TABLES: &[Table] = &[
    (
        "keys",
        &[
            ("project", Text),
            ("location_id", Text),
            ("metric", Text),
            ("timestamp", Int),
            ("value", Text),
            ("charged", Numeric),
            ("awaiting_baseline", Bool),
        ],
        false,
    ),
    (
        "charges",
        &[
            ("id", Int),
            ("project", Text),
            ("location_id", Text),
            ("metric", Text),
            ("previous_timestamp", Int),
            ("previous_value", Text),
            ("timestamp", Int),
            ("value", Text),
            ("credits", Numeric),
            ("charged_after", Numeric),
            ("policy_name", Text),
            ("policy_version", Text),
            ("policy_sha256", Text),
            ("recorded_at", Int),
            ("reversed_at", Int),
        ],
        true,
    ),
    (
        "projects",
        &[
            ("project", Text),
            ("charged", Numeric),
            ("adopted", Numeric),
            ("granted", Numeric),
            ("emails", Text),
            ("adopted_at", Int),
            ("updated_at", Int),
        ],
        false,
    ),
    (
        "outbox",
        &[
            ("project", Text),
            ("since", Int),
            ("version", Int),
            ("published_version", Int),
            ("next_attempt", Int),
            ("attempts", Int),
            ("last_error", Text),
        ],
        false,
    ),
    (
        "adjustments",
        &[
            ("id", Int),
            ("project", Text),
            ("kind", Text),
            ("amount", Numeric),
            ("perun_modified_at", Text),
            ("recorded_at", Int),
        ],
        true,
    ),
    (
        "notifications",
        &[
            ("project", Text),
            ("threshold", Int4),
            ("granted", Numeric),
            ("sent_at", Int),
        ],
        false,
    ),
    (
        "perun_values",
        &[
            ("id", Int),
            ("project", Text),
            ("value", Numeric),
            ("source", Text),
            ("timestamps", Text),
            ("recorded_at", Int),
            ("confirmed_at", Int),
        ],
        true,
    ),
];

/// One value, read from SQLite as its column's PostgreSQL type.
fn value(
    row: &rusqlite::Row<'_>,
    index: usize,
    kind: Kind,
) -> Result<Box<dyn ToSql + Sync>, LedgerError> {
    Ok(match kind {
        Text => Box::new(row.get::<_, Option<String>>(index)?),
        Int => Box::new(row.get::<_, Option<i64>>(index)?),
        Int4 => Box::new(row.get::<_, Option<i64>>(index)?.map(|v| v as i32)),
        Bool => Box::new(row.get::<_, bool>(index)?),
        Numeric => Box::new(
            row.get::<_, Option<String>>(index)?
                .map(|text| {
                    pricing_sdk::parse_decimal(&text)
                        .map_err(|e| LedgerError::Corrupt(e.to_string()))
                })
                .transpose()?
                .map(|d: Decimal| d),
        ),
    })
}

/// Copies the SQLite ledger in `data_dir` into the empty PostgreSQL ledger
/// at `url`; returns the rows copied per table.
pub fn sqlite_to_postgres(
    data_dir: &Path,
    url: &str,
) -> Result<Vec<(&'static str, u64)>, LedgerError> {
    let source = SqliteLedger::open_read_only(data_dir)?;
    let target = PostgresLedger::open(url)?;
    if !target.is_empty()? {
        return Err(LedgerError::Corrupt(
            "the target PostgreSQL ledger is not empty: copy into a new database".into(),
        ));
    }
    let connection = source.connection();
    target.transaction(|tx| {
        let mut copied = Vec::new();
        for (table, columns, sequence) in TABLES {
            let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
            let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
            let insert = tx.prepare(&format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                names.join(", "),
                placeholders.join(", ")
            ))?;
            let mut select =
                connection.prepare(&format!("SELECT {} FROM {table}", names.join(", ")))?;
            let mut rows = select.query([])?;
            let mut count: u64 = 0;
            // Per numeric column, the exact sum of what was read.
            let mut sums = vec![Decimal::ZERO; columns.len()];
            while let Some(row) = rows.next()? {
                let values = columns
                    .iter()
                    .enumerate()
                    .map(|(index, (_, kind))| value(row, index, *kind))
                    .collect::<Result<Vec<_>, _>>()?;
                for (index, (_, kind)) in columns.iter().enumerate() {
                    if let Numeric = kind
                        && let Some(text) = row.get::<_, Option<String>>(index)?
                    {
                        sums[index] += pricing_sdk::parse_decimal(&text)
                            .map_err(|e| LedgerError::Corrupt(e.to_string()))?;
                    }
                }
                let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(AsRef::as_ref).collect();
                tx.execute(&insert, &params)?;
                count += 1;
            }
            // What the target holds now must be what was read, exactly.
            let stored: i64 = tx
                .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?
                .get(0);
            if stored as u64 != count {
                return Err(LedgerError::Corrupt(format!(
                    "{table}: read {count} rows, the target holds {stored}"
                )));
            }
            for (index, (column, kind)) in columns.iter().enumerate() {
                if let Numeric = kind {
                    let total: Decimal = tx
                        .query_one(
                            &format!("SELECT COALESCE(SUM({column}), 0) FROM {table}"),
                            &[],
                        )?
                        .get(0);
                    if total != sums[index] {
                        return Err(LedgerError::Corrupt(format!(
                            "{table}.{column}: the source sums to {}, the target to {total}",
                            sums[index]
                        )));
                    }
                }
            }
            if *sequence {
                tx.execute(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                             COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
                    ),
                    &[],
                )?;
            }
            copied.push((*table, count));
        }
        Ok(copied)
    })
}
