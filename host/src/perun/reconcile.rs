//! The reconciliation rule: what Perun's `denbiCreditsCurrent` says about
//! the project's credits used, given what this service wrote there.
//!
//! - First contact: Perun's value is adopted as the start (migration from
//!   the service we replace); unset or empty starts at 0; a value that does
//!   not read as a decimal is not guessed at: the project waits, loudly.
//! - Later: a value this service wrote, was about to write (an intent whose
//!   answer never came, e.g. it died right after the write), adopted or
//!   accepted before is its own. An unset, empty or unreadable value is not
//!   a hand edit: the ledger's value stands and is published again. Only a
//!   readable value unlike every one of those is a hand edit; the
//!   difference to the newest known value becomes an adjustment.
//!
//! Pure: the ledger supplies the facts, [`super::sync`] acts on the verdict.

use rust_decimal::Decimal;
use serde_json::Value;

use crate::ledger::{Adjustment, AdjustmentKind, PerunRecord};

/// What Perun holds in `denbiCreditsCurrent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// No value, `null` or an empty string.
    Unset,
    /// Something that is not a decimal in a string (shown as it came).
    Unreadable(String),
    /// A decimal.
    Value(Decimal),
}

impl Reading {
    /// Reads an attribute's JSON value (`java.lang.String`).
    pub fn of(value: Option<&Value>) -> Reading {
        match value {
            None | Some(Value::Null) => Reading::Unset,
            Some(Value::String(text)) if text.trim().is_empty() => Reading::Unset,
            Some(Value::String(text)) => match pricing_sdk::parse_decimal(text.trim()) {
                Ok(value) => Reading::Value(value),
                Err(_) => Reading::Unreadable(text.clone()),
            },
            Some(other) => Reading::Unreadable(other.to_string()),
        }
    }
}

/// What to do about a reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// First contact: adopt this (record it as an adjustment).
    Adopt(Adjustment, Decimal),
    /// First contact with a value that cannot be read: adopt nothing, retry
    /// later (publishing would overwrite what the old service left).
    CannotAdopt(String),
    /// Perun holds a value of ours; `landed` is an intent whose answer never
    /// arrived but whose value is in Perun (confirm it).
    Ours {
        /// The intent to confirm, if any.
        landed: Option<i64>,
    },
    /// Unset, empty or unreadable after first contact: not a hand edit;
    /// keep the ledger's value and publish it again.
    Missing,
    /// Someone changed the value by hand: record the adjustment and
    /// continue from Perun's value.
    HandEdit(Adjustment, Decimal),
}

/// Judges `reading` against what the ledger knows.
pub fn judge(reading: &Reading, record: &PerunRecord) -> Verdict {
    if record.adopted_at.is_none() {
        let adopt = |amount| {
            let adjustment = Adjustment {
                kind: AdjustmentKind::Adopted,
                amount,
            };
            Verdict::Adopt(adjustment, amount)
        };
        return match reading {
            Reading::Unset => adopt(Decimal::ZERO),
            Reading::Value(value) => adopt(*value),
            Reading::Unreadable(text) => Verdict::CannotAdopt(text.clone()),
        };
    }
    let Reading::Value(value) = reading else {
        return Verdict::Missing;
    };
    if let Some(known) = record.known.iter().rev().find(|k| k.value == *value) {
        let landed = (!known.confirmed).then_some(known.id);
        return Verdict::Ours { landed };
    }
    // Adopted before this ledger kept values: nothing to compare with.
    let Some(newest) = record.known.last() else {
        return Verdict::Ours { landed: None };
    };
    let adjustment = Adjustment {
        kind: AdjustmentKind::ManualEdit,
        amount: *value - newest.value,
    };
    Verdict::HandEdit(adjustment, *value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{KnownValue, ValueSource};
    use serde_json::json;

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    fn known(id: i64, value: &str, source: ValueSource, confirmed: bool) -> KnownValue {
        KnownValue {
            id,
            value: d(value),
            source,
            confirmed,
        }
    }

    fn record(known: Vec<KnownValue>) -> PerunRecord {
        PerunRecord {
            adopted_at: Some(1),
            known,
        }
    }

    #[test]
    fn perun_values_are_read_as_decimals_unset_or_unreadable() {
        assert_eq!(Reading::of(None), Reading::Unset);
        assert_eq!(Reading::of(Some(&Value::Null)), Reading::Unset);
        assert_eq!(Reading::of(Some(&json!(" "))), Reading::Unset);
        assert_eq!(
            Reading::of(Some(&json!("12.50"))),
            Reading::Value(d("12.5"))
        );
        assert_eq!(
            Reading::of(Some(&json!("1,234.5"))),
            Reading::Unreadable("1,234.5".into())
        );
        assert_eq!(
            Reading::of(Some(&json!(12))),
            Reading::Unreadable("12".into())
        );
    }

    #[test]
    fn first_contact_adopts_a_value_or_zero_and_refuses_to_guess() {
        let fresh = PerunRecord::default();
        let Verdict::Adopt(adjustment, value) = judge(&Reading::Value(d("100")), &fresh) else {
            panic!("not adopted")
        };
        assert_eq!(
            (adjustment.kind, adjustment.amount, value),
            (AdjustmentKind::Adopted, d("100"), d("100"))
        );
        assert!(matches!(
            judge(&Reading::Unset, &fresh),
            Verdict::Adopt(Adjustment { amount, .. }, _) if amount.is_zero()
        ));
        assert_eq!(
            judge(&Reading::Unreadable("n/a".into()), &fresh),
            Verdict::CannotAdopt("n/a".into())
        );
    }

    #[test]
    fn an_unset_or_unreadable_value_later_is_not_a_hand_edit() {
        let known = record(vec![known(1, "50", ValueSource::Write, true)]);
        assert_eq!(judge(&Reading::Unset, &known), Verdict::Missing);
        assert_eq!(
            judge(&Reading::Unreadable("x".into()), &known),
            Verdict::Missing
        );
    }

    #[test]
    fn a_value_we_wrote_or_meant_to_write_is_ours() {
        let known = record(vec![
            known(1, "10", ValueSource::Adopted, true),
            known(2, "20.00", ValueSource::Write, true),
            known(3, "30", ValueSource::Write, false),
        ]);
        assert_eq!(
            judge(&Reading::Value(d("20")), &known),
            Verdict::Ours { landed: None }
        );
        // The write answered by a dropped connection (or a crash) landed.
        assert_eq!(
            judge(&Reading::Value(d("30.00")), &known),
            Verdict::Ours { landed: Some(3) }
        );
        assert_eq!(
            judge(&Reading::Value(d("10")), &known),
            Verdict::Ours { landed: None }
        );
    }

    #[test]
    fn a_readable_value_unlike_all_of_ours_is_a_hand_edit_from_the_newest() {
        let known = record(vec![
            known(1, "20", ValueSource::Write, true),
            known(2, "30", ValueSource::Write, false),
        ]);
        let Verdict::HandEdit(adjustment, value) = judge(&Reading::Value(d("5")), &known) else {
            panic!("not a hand edit")
        };
        assert_eq!(
            (adjustment.kind, adjustment.amount, value),
            (AdjustmentKind::ManualEdit, d("-25"), d("5"))
        );
    }
}
