//! `os-credits ledger copy`: a SQLite ledger into an empty PostgreSQL one,
//! table by table in one transaction (an operator moving to replicas).
//! Exact: decimals go as text to `NUMERIC`, ids are kept (and the
//! sequences set past them), reversed charges and adjustments included;
//! before it commits, every table's row count and the exact sum of every
//! numeric column are checked against what was read.

use std::path::Path;

use rust_decimal::Decimal;

use super::sql::{Keepalive, Param};
use super::{LedgerError, Store};

/// A column's type.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Int,
    Numeric,
    Bool,
    Bytes,
}
use Kind::{Bool, Bytes, Int, Numeric, Text};

/// A table: its name, its columns, and whether it has a sequence (on its
/// first column, `id` or `seq`).
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
            ("schedule_entry", Int),
        ],
        true,
    ),
    (
        "policy_modules",
        &[("sha256", Text), ("bytes", Bytes), ("added_at", Int)],
        false,
    ),
    (
        "schedule",
        &[
            ("id", Int),
            ("site", Text),
            ("from_ns", Int),
            ("kind", Text),
            ("file", Text),
            ("sha256", Text),
            ("config", Text),
            ("memory_mb", Int),
            ("timeout_ms", Int),
            ("added_at", Int),
            ("origin", Text),
            ("correction_reason", Text),
        ],
        false,
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
            ("ends_at", Int),
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
            ("correction", Text),
        ],
        true,
    ),
    (
        "notifications",
        &[
            ("project", Text),
            ("threshold", Int),
            ("granted", Numeric),
            ("sent_at", Int),
            ("rearmed", Int),
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
    (
        "corrections",
        &[
            ("seq", Int),
            ("id", Text),
            ("reason", Text),
            ("from_ns", Int),
            ("to_ns", Int),
            ("site", Text),
            ("projects", Text),
            ("sha256", Text),
            ("config", Text),
            ("policy_name", Text),
            ("policy_version", Text),
            ("total", Numeric),
            ("answer", Text),
            ("booked_at", Int),
        ],
        true,
    ),
    (
        "correction_lines",
        &[
            ("id", Int),
            ("correction", Text),
            ("charge", Int),
            ("project", Text),
            ("location_id", Text),
            ("metric", Text),
            ("start_ns", Int),
            ("end_ns", Int),
            ("before", Numeric),
            ("after", Numeric),
            ("difference", Numeric),
        ],
        true,
    ),
    (
        "webhooks",
        &[
            ("seq", Int),
            ("id", Text),
            ("kind", Text),
            ("body", Text),
            ("created_at", Int),
            ("attempts", Int),
            ("next_attempt", Int),
            ("delivered_at", Int),
            ("last_error", Text),
        ],
        true,
    ),
];

/// Copies the SQLite ledger in `data_dir` into the empty PostgreSQL ledger
/// at `url`; returns the rows copied per table.
pub fn sqlite_to_postgres(
    data_dir: &Path,
    url: &str,
) -> Result<Vec<(&'static str, u64)>, LedgerError> {
    let source = Store::sqlite_read_only(data_dir)?;
    let target = Store::postgres(url, Keepalive::default(), "os-credits ledger copy")?;
    if !target.is_empty()? {
        return Err(LedgerError::Corrupt(
            "the target PostgreSQL ledger is not empty: copy into a new database".into(),
        ));
    }
    source.read(|from| {
        target.transaction(|to| {
            let mut copied = Vec::new();
            for (table, columns, sequence) in TABLES {
                let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
                let placeholders: Vec<String> =
                    (1..=columns.len()).map(|i| format!("?{i}")).collect();
                let insert = format!(
                    "INSERT INTO {table} ({}) VALUES ({})",
                    names.join(", "),
                    placeholders.join(", ")
                );
                let mut count: u64 = 0;
                // Per numeric column, the exact sum of what was read.
                let mut sums = vec![Decimal::ZERO; columns.len()];
                from.for_each(
                    &format!("SELECT {} FROM {table}", names.join(", ")),
                    &[],
                    |row| {
                        // Each value read, owned until it is bound.
                        let mut values: Vec<Param<'static>> = Vec::with_capacity(columns.len());
                        for (index, (_, kind)) in columns.iter().enumerate() {
                            values.push(match kind {
                                Text => row.opt_text(index)?.into(),
                                Int => row.opt_int(index)?.into(),
                                Bool => Param::Bool(row.bool(index)?),
                                Bytes => row.bytes(index)?.into(),
                                Numeric => {
                                    let value = row.opt_decimal(index)?;
                                    sums[index] += value.unwrap_or_default();
                                    value.into()
                                }
                            });
                        }
                        to.execute(&insert, &values)?;
                        count += 1;
                        Ok(())
                    },
                )?;
                // What the target holds now must be what was read, exactly.
                let stored = to
                    .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?
                    .int(0)?;
                if stored as u64 != count {
                    return Err(LedgerError::Corrupt(format!(
                        "{table}: read {count} rows, the target holds {stored}"
                    )));
                }
                for (index, (column, kind)) in columns.iter().enumerate() {
                    if let Numeric = kind {
                        let total = to
                            .query_one(
                                &format!("SELECT COALESCE(SUM({column}), 0) FROM {table}"),
                                &[],
                            )?
                            .decimal(0)?;
                        if total != sums[index] {
                            return Err(LedgerError::Corrupt(format!(
                                "{table}.{column}: the source sums to {}, the target to {total}",
                                sums[index]
                            )));
                        }
                    }
                }
                if *sequence {
                    let id = columns[0].0;
                    to.batch(&format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', '{id}'),
                             COALESCE((SELECT MAX({id}) FROM {table}), 0) + 1, false)"
                    ))?;
                }
                copied.push((*table, count));
            }
            Ok(copied)
        })
    })
}
