//! Corrections and what statements read: charges found by the time their
//! usage happened, the lines of corrections beside them, and the booking
//! of a correction in one transaction (lines, one adjustment per project,
//! the outbox). A charge is never changed.

use std::collections::HashMap;

use rust_decimal::Decimal;

use super::reads::{ADJUSTMENT_COLUMNS, CHARGE_COLUMNS, adjustment, charge};
use super::sql::{Db, Dialect, Param, Row, params};
use super::store::{QUEUE_HEAD, QUEUE_TAIL, Store, add_to_adopted};
use super::{
    AdjustmentKind, BilledCharge, Booking, ChargeRecord, CorrectionBasis, CorrectionLine,
    CorrectionRecord, CorrectionScope, Corrections, DayTotal, LedgerError, PolicyStamp,
    StatementBasis, StatementCorrection, WebhookEvent, version_of,
};
use os_credits_core::account::Key;
use os_credits_core::period::{DAY, day_of, days, share};
use os_credits_core::time::now_ns;

/// The advisory lock that serialises bookings on PostgreSQL (the schema's
/// migrations take 7 401 001, the leader 7 401 002).
const BOOKING_LOCK: i64 = 7_401_003;

/// The columns [`line`] reads.
const LINE_COLUMNS: &str = "l.correction, l.charge, l.project, l.location_id, l.metric,
     l.start_ns, l.end_ns, l.before, l.after, l.difference";

/// A correction line from [`LINE_COLUMNS`].
fn line(row: &Row) -> Result<CorrectionLine, LedgerError> {
    Ok(CorrectionLine {
        correction: row.text(0)?,
        charge: row.int(1)?,
        key: Key {
            project: row.text(2)?.into(),
            location_id: row.text(3)?.into(),
            metric: row.text(4)?.into(),
        },
        start: row.int(5)?,
        end: row.int(6)?,
        before: row.decimal(7)?,
        after: row.decimal(8)?,
        difference: row.decimal(9)?,
    })
}

/// The newest correction's sequence number (0: none).
fn head(db: &mut Db) -> Result<i64, LedgerError> {
    db.query_one("SELECT COALESCE(MAX(seq), 0) FROM corrections", &[])?
        .int(0)
}

/// Charges (not reversed) whose usage `(previous, current]` overlaps
/// `[from, to)`, in billing order. Steps are short (a stale gap bills
/// nothing), so the time index on the measurement finds them.
fn overlapping(
    db: &mut Db,
    from: i64,
    to: i64,
    filter: &str,
    extra: &[Param<'_>],
    mut each: impl FnMut(i64, super::ChargeRecord) -> Result<(), LedgerError>,
) -> Result<(), LedgerError> {
    let mut values = vec![Param::Int(from), Param::Int(to)];
    values.extend_from_slice(extra);
    db.for_each(
        &format!(
            "SELECT {CHARGE_COLUMNS}, id FROM charges
             WHERE timestamp > ?1 AND previous_timestamp < ?2 AND reversed_at IS NULL {filter}
             ORDER BY id"
        ),
        &values,
        |row| {
            let record = charge(&row)?;
            each(row.int(14)?, record)
        },
    )
}

impl Corrections for Store {
    fn correction_basis(&self, scope: &CorrectionScope) -> Result<CorrectionBasis, LedgerError> {
        let mut db = self.reader();
        let head = head(&mut db)?;
        let (filter, extra): (&str, Vec<Param<'_>>) = match &scope.site {
            Some(site) => ("AND location_id = ?3", vec![Param::text(site)]),
            None => ("", Vec::new()),
        };
        let mut charges = Vec::new();
        overlapping(
            &mut db,
            scope.from,
            scope.to,
            filter,
            &extra,
            |id, charge| {
                if scope.covers(&charge.key) {
                    charges.push(BilledCharge { id, charge });
                }
                Ok(())
            },
        )?;
        let ids: std::collections::HashSet<i64> = charges.iter().map(|c| c.id).collect();
        let mut earlier = Vec::new();
        db.for_each(
            &format!(
                "SELECT {LINE_COLUMNS} FROM correction_lines l
                 WHERE l.end_ns > ?1 AND l.start_ns < ?2 ORDER BY l.id"
            ),
            params![scope.from, scope.to],
            |row| {
                let line = line(&row)?;
                if ids.contains(&line.charge) {
                    earlier.push(line);
                }
                Ok(())
            },
        )?;
        Ok(CorrectionBasis {
            charges,
            earlier,
            head,
        })
    }

    fn book_correction(
        &self,
        record: &CorrectionRecord,
        lines: &[CorrectionLine],
        expected_head: i64,
        webhook: Option<&WebhookEvent>,
    ) -> Result<Booking, LedgerError> {
        let mut db = self.side();
        let dialect = db.dialect();
        db.transaction(|db| {
            if dialect == Dialect::Postgres {
                // One booking at a time, whichever replica books it.
                db.execute("SELECT pg_advisory_xact_lock(?1)", params![BOOKING_LOCK])?;
            }
            if let Some(row) = db.query_opt(
                "SELECT answer FROM corrections WHERE id = ?1",
                params![&record.id],
            )? {
                return Ok(Booking::Already(row.text(0)?));
            }
            if head(db)? != expected_head {
                return Ok(Booking::Stale);
            }
            let projects = record
                .scope
                .projects
                .as_ref()
                .map(|p| serde_json::to_string(p).unwrap_or_default());
            let now = record.booked_at;
            db.execute(
                "INSERT INTO corrections (id, reason, from_ns, to_ns, site, projects, sha256,
                     config, policy_name, policy_version, total, answer, booked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                &[
                    Param::text(&record.id),
                    Param::text(&record.reason),
                    Param::Int(record.scope.from),
                    Param::Int(record.scope.to),
                    record
                        .scope
                        .site
                        .as_deref()
                        .map_or(Param::Null, Param::text),
                    projects.as_deref().map_or(Param::Null, Param::text),
                    Param::text(&record.policy.sha256),
                    Param::text(&record.config),
                    Param::text(&record.policy.name),
                    Param::text(&record.policy.version),
                    Param::Decimal(record.total),
                    Param::text(&record.answer),
                    Param::Int(now),
                ],
            )?;
            let mut values = Vec::with_capacity(lines.len() * 11);
            let mut totals: std::collections::BTreeMap<&str, Decimal> = Default::default();
            for line in lines {
                values.extend([
                    Param::text(&line.correction),
                    Param::Int(line.charge),
                    Param::text(&line.key.project),
                    Param::text(&line.key.location_id),
                    Param::text(&line.key.metric),
                    Param::Int(line.start),
                    Param::Int(line.end),
                    Param::Decimal(line.before),
                    Param::Decimal(line.after),
                    Param::Decimal(line.difference),
                ]);
                *totals.entry(&line.key.project).or_default() += line.difference;
            }
            db.insert(
                "INSERT INTO correction_lines (correction, charge, project, location_id, metric,
                     start_ns, end_ns, before, after, difference)",
                10,
                &values,
            )?;
            for (project, amount) in totals {
                if amount.is_zero() {
                    continue;
                }
                add_to_adopted(db, project, amount, now)?;
                db.execute(
                    "INSERT INTO adjustments (project, kind, amount, recorded_at, correction)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        project,
                        AdjustmentKind::Correction.as_str(),
                        amount,
                        now,
                        &record.id
                    ],
                )?;
                db.upsert(QUEUE_HEAD, 2, QUEUE_TAIL, params![project, now_ns()])?;
            }
            if let Some(event) = webhook {
                super::alerts::queue(db, event)?;
            }
            Ok(Booking::Booked)
        })
    }

    fn corrections(&self) -> Result<Vec<CorrectionRecord>, LedgerError> {
        self.reader().map(
            "SELECT id, reason, from_ns, to_ns, site, projects, sha256, config, policy_name,
                 policy_version, total, answer, booked_at
             FROM corrections ORDER BY seq",
            &[],
            |row| {
                let projects = row
                    .opt_text(5)?
                    .map(|text| {
                        serde_json::from_str::<Vec<String>>(&text).map_err(|e| {
                            LedgerError::Corrupt(format!("projects of a correction: {e}"))
                        })
                    })
                    .transpose()?;
                Ok(CorrectionRecord {
                    id: row.text(0)?,
                    reason: row.text(1)?,
                    scope: CorrectionScope {
                        from: row.int(2)?,
                        to: row.int(3)?,
                        site: row.opt_text(4)?,
                        projects,
                    },
                    policy: PolicyStamp {
                        sha256: row.text(6)?,
                        name: row.text(8)?,
                        version: row.text(9)?,
                    },
                    config: row.text(7)?,
                    total: row.decimal(10)?,
                    answer: row.text(11)?,
                    booked_at: row.int(12)?,
                })
            },
        )
    }

    fn roll_up(&self, limit: usize) -> Result<usize, LedgerError> {
        let mut db = self.side();
        db.transaction(|db| {
            let mark = rollup_mark(db, true)?;
            let mut charges = Vec::new();
            let (mut last, mut count) = (mark, 0);
            db.for_each(
                &format!(
                    "SELECT {CHARGE_COLUMNS}, id FROM charges WHERE id > ?1 ORDER BY id LIMIT ?2"
                ),
                params![mark, i64::try_from(limit).unwrap_or(i64::MAX)],
                |row| {
                    last = row.int(14)?;
                    count += 1;
                    let charge = charge(&row)?;
                    if !charge.reversed {
                        charges.push(charge);
                    }
                    Ok(())
                },
            )?;
            if count == 0 {
                return Ok(0);
            }
            add_days(db, &charges)?;
            db.execute(
                "UPDATE rollup SET charges_upto = ?1 WHERE id = 1",
                params![last],
            )?;
            Ok(count)
        })
    }

    fn quiet_for(&self) -> i64 {
        now_ns() - self.last_commit.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn statement_basis(
        &self,
        from: i64,
        to: i64,
        project: Option<&str>,
    ) -> Result<StatementBasis, LedgerError> {
        let mut db = self.reader();
        let (filter, extra): (&str, Vec<Param<'_>>) = match project {
            Some(project) => ("AND project = ?3", vec![Param::text(project)]),
            None => ("", Vec::new()),
        };
        // Whole days from the roll-up; the rest from the charges.
        let first_day = if day_of(from) == from {
            from
        } else {
            day_of(from) + DAY
        };
        let last_day = day_of(to).max(first_day);
        let mut charges = Vec::new();
        let mut windows = vec![(from, first_day.min(to)), (last_day.max(from), to)];
        let mut rolled = Vec::new();
        if first_day < last_day {
            let mark = rollup_mark(&mut db, false)?;
            rolled = day_totals(&mut db, (first_day, last_day), filter, &extra)?;
            // Billed since the mark: counted from the charges. (`+timestamp`:
            // found by id, the newest few, not by time.)
            let mut values = vec![Param::Int(first_day), Param::Int(last_day)];
            values.extend_from_slice(&extra);
            values.push(Param::Int(mark));
            let mark_at = values.len();
            db.for_each(
                &format!(
                    "SELECT {CHARGE_COLUMNS} FROM charges
                     WHERE id > ?{mark_at} AND +timestamp > ?1 AND previous_timestamp < ?2
                         AND reversed_at IS NULL {filter}
                     ORDER BY id"
                ),
                &values,
                |row| {
                    charges.push((charge(&row)?, (first_day, last_day)));
                    Ok(())
                },
            )?;
        } else {
            windows = vec![(from, to)];
        }
        for window in windows.into_iter().filter(|(a, b)| a < b) {
            overlapping(&mut db, window.0, window.1, filter, &extra, |_, charge| {
                charges.push((charge, window));
                Ok(())
            })?;
        }
        let mut values = vec![Param::Int(from), Param::Int(to)];
        values.extend_from_slice(&extra);
        let corrections = db.map(
            &format!(
                "SELECT {LINE_COLUMNS}, c.reason, c.policy_name, c.policy_version, c.sha256
                 FROM correction_lines l JOIN corrections c ON c.id = l.correction
                 WHERE l.end_ns > ?1 AND l.start_ns < ?2 {}
                 ORDER BY l.id",
                filter.replace("project", "l.project")
            ),
            &values,
            |row| {
                Ok(StatementCorrection {
                    line: line(row)?,
                    reason: row.text(10)?,
                    policy: PolicyStamp {
                        name: row.text(11)?,
                        version: row.text(12)?,
                        sha256: row.text(13)?,
                    },
                })
            },
        )?;
        let adjustments = db.map(
            &format!(
                "SELECT {ADJUSTMENT_COLUMNS} FROM adjustments
                 WHERE recorded_at >= ?1 AND recorded_at < ?2 AND kind <> 'correction' {filter}
                 ORDER BY id"
            ),
            &values,
            adjustment,
        )?;
        Ok(StatementBasis {
            rolled,
            charges,
            corrections,
            adjustments,
        })
    }
}

/// The roll-up's mark: charges up to this id are in `usage_days`
/// (`lock`: held until the transaction ends, on PostgreSQL).
fn rollup_mark(db: &mut Db, lock: bool) -> Result<i64, LedgerError> {
    let lock = match (lock, db.dialect()) {
        (true, Dialect::Postgres) => " FOR UPDATE",
        _ => "",
    };
    db.query_one(
        &format!("SELECT charges_upto FROM rollup WHERE id = 1{lock}"),
        &[],
    )?
    .int(0)
}

/// What a day's group is keyed by.
type DayKey = (Key, String, i64);

/// Adds `charges` to their days' totals (one upsert, the sums made by the database).
fn add_days(db: &mut Db, charges: &[ChargeRecord]) -> Result<(), LedgerError> {
    let mut added: HashMap<DayKey, (PolicyStamp, Decimal, Decimal)> = HashMap::new();
    for charge in charges {
        let used = charge.usage()?;
        let span = (charge.previous.0, charge.current.0);
        let version = version_of(charge);
        for (day, part) in days(span.0, span.1) {
            let entry = added
                .entry((charge.key.clone(), version.clone(), day))
                .or_insert_with(|| (charge.policy.clone(), Decimal::ZERO, Decimal::ZERO));
            entry.1 += share(charge.credits, span, part);
            entry.2 += share(used, span, part);
        }
    }
    let mut values = Vec::with_capacity(added.len() * 10);
    for ((key, version, day), (policy, credits, quantity)) in &added {
        values.extend([
            Param::text(&key.project),
            Param::text(&key.location_id),
            Param::text(&key.metric),
            Param::text(version),
            Param::Int(*day),
            Param::Decimal(*credits),
            Param::Decimal(*quantity),
            Param::text(&policy.name),
            Param::text(&policy.version),
            Param::text(&policy.sha256),
        ]);
    }
    // Added to the day's totals where they exist, in the statement.
    let conflict = match db.dialect() {
        Dialect::Sqlite => {
            "ON CONFLICT (project, location_id, metric, version, day) DO UPDATE SET
                 credits = decimal_add(usage_days.credits, excluded.credits),
                 quantity = decimal_add(usage_days.quantity, excluded.quantity)"
        }
        Dialect::Postgres => {
            "ON CONFLICT (project, location_id, metric, version, day) DO UPDATE SET
                 credits = usage_days.credits + excluded.credits,
                 quantity = usage_days.quantity + excluded.quantity"
        }
    };
    db.upsert(
        "INSERT INTO usage_days (project, location_id, metric, version, day, credits, quantity,
             policy_name, policy_version, policy_sha256)",
        10,
        conflict,
        &values,
    )
}

/// Rolls a project's days up again from its charges (not reversed) up to
/// the mark: after a rebase reversed some of them.
pub(super) fn roll_up_again(db: &mut Db, project: &str) -> Result<(), LedgerError> {
    let mark = rollup_mark(db, true)?;
    db.execute(
        "DELETE FROM usage_days WHERE project = ?1",
        params![project],
    )?;
    let charges = db.map(
        &format!(
            "SELECT {CHARGE_COLUMNS} FROM charges
             WHERE project = ?1 AND id <= ?2 AND reversed_at IS NULL ORDER BY id"
        ),
        params![project, mark],
        charge,
    )?;
    add_days(db, &charges)
}

/// Whole days' totals in `[first, last)`, summed per key and version.
fn day_totals(
    db: &mut Db,
    (first, last): (i64, i64),
    filter: &str,
    extra: &[Param<'_>],
) -> Result<Vec<DayTotal>, LedgerError> {
    let mut values = vec![Param::Int(first), Param::Int(last)];
    values.extend_from_slice(extra);
    let mut totals: HashMap<(Key, String), DayTotal> = HashMap::new();
    db.for_each(
        &format!(
            "SELECT project, location_id, metric, version, credits, quantity, policy_name,
                 policy_version, policy_sha256
             FROM usage_days WHERE day >= ?1 AND day < ?2 {filter}"
        ),
        &values,
        |row| {
            let key = Key {
                project: row.text(0)?.into(),
                location_id: row.text(1)?.into(),
                metric: row.text(2)?.into(),
            };
            let version = row.text(3)?;
            let (credits, quantity) = (row.decimal(4)?, row.decimal(5)?);
            match totals.get_mut(&(key.clone(), version.clone())) {
                Some(total) => {
                    total.credits += credits;
                    total.quantity += quantity;
                }
                None => {
                    let policy = PolicyStamp {
                        name: row.text(6)?,
                        version: row.text(7)?,
                        sha256: row.text(8)?,
                    };
                    totals.insert(
                        (key.clone(), version.clone()),
                        DayTotal {
                            key,
                            version,
                            policy,
                            credits,
                            quantity,
                        },
                    );
                }
            }
            Ok(())
        },
    )?;
    Ok(totals.into_values().collect())
}
