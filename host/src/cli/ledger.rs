//! `os-credits ledger charges|adjustments|copy`: the audit trail, and the
//! move of a SQLite ledger to PostgreSQL.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use chrono::DateTime;

use super::policy::table;
use super::{Format, LedgerLocation};

fn date(ns: i64) -> String {
    DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%d %H:%M:%S%.3f")
        .to_string()
}

/// Prints a project's charges with the policy that priced each.
pub fn charges(
    project: &str,
    location: &LedgerLocation,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let ledger = location.open()?;
    let charges = ledger.charges(project)?;
    if charges.is_empty() {
        anyhow::bail!(
            "no charges for project {project:?} in {}",
            location.describe()
        );
    }
    match format {
        Format::Json => {
            let rows: Vec<_> = charges
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "project": &*c.key.project, "location_id": &*c.key.location_id,
                        "metric": &*c.key.metric,
                        "previous": {"timestamp": c.previous.0, "value": c.previous.1},
                        "current": {"timestamp": c.current.0, "value": c.current.1},
                        "credits": c.credits, "charged_after": c.charged_after,
                        "reversed": c.reversed,
                        "policy": {"name": c.policy.name, "version": c.policy.version, "sha256": c.policy.sha256},
                        "schedule_entry": c.schedule_entry,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Format::Table => {
            let rows = charges
                .iter()
                .map(|c| {
                    vec![
                        date(c.current.0),
                        c.key.location_id.to_string(),
                        c.key.metric.to_string(),
                        format!("{} -> {}", c.previous.1, c.current.1),
                        if c.reversed {
                            format!("{} (reversed)", c.credits)
                        } else {
                            c.credits.to_string()
                        },
                        format!("{} {}", c.policy.name, c.policy.version),
                        c.policy.sha256.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "MEASURED (UTC)",
                        "SITE",
                        "METRIC",
                        "VALUES",
                        "CREDITS",
                        "POLICY",
                        "SHA256"
                    ],
                    rows
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the adjustments (adopted values, hand edits), oldest first.
pub fn adjustments(
    project: Option<&str>,
    location: &LedgerLocation,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let ledger = location.open()?;
    let adjustments: Vec<_> = ledger
        .adjustments()?
        .into_iter()
        .filter(|a| project.is_none_or(|p| a.project == p))
        .collect();
    match format {
        Format::Json => {
            let rows: Vec<_> = adjustments
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "project": a.project, "kind": a.adjustment.kind.as_str(),
                        "amount": a.adjustment.amount, "perun_modified_at": a.perun_modified_at,
                        "recorded_at": a.recorded_at,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Format::Table => {
            let rows = adjustments
                .iter()
                .map(|a| {
                    vec![
                        date(a.recorded_at),
                        a.project.clone(),
                        a.adjustment.kind.as_str().to_owned(),
                        a.adjustment.amount.to_string(),
                        a.perun_modified_at.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "RECORDED (UTC)",
                        "PROJECT",
                        "KIND",
                        "AMOUNT",
                        "PERUN MODIFIED AT"
                    ],
                    rows
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ledger copy`: the SQLite ledger of `data_dir` into an empty PostgreSQL one.
pub fn copy(data_dir: &Path, to: &str) -> anyhow::Result<ExitCode> {
    let copied = os_credits::ledger::copy::sqlite_to_postgres(data_dir, to)
        .with_context(|| format!("cannot copy the ledger of {}", data_dir.display()))?;
    for (table, rows) in &copied {
        println!("{table}: {rows} rows");
    }
    println!("copied; start the replicas with OS_CREDITS_DATABASE_URL set to the target");
    Ok(ExitCode::SUCCESS)
}
