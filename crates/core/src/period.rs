//! Usage by when it happened: the share of a step's amount that falls in a
//! period, and UTC days. A leaf: corrections, statements and the ledger's
//! daily roll-up all share by time the same way, so their shares add up.

use rust_decimal::{Decimal, RoundingStrategy};

/// The decimal places credits are kept to: a module's charge and a share
/// of one are rounded half-even to these, so that any sum of them below
/// 10^10 credits is exact in a `Decimal` (28 significant digits) and the
/// lines of a statement add up to the ledger's totals to the last digit.
pub const PLACES: u32 = 18;

/// `x` rounded half-even to [`PLACES`].
pub fn kept(x: Decimal) -> Decimal {
    x.round_dp_with_strategy(PLACES, RoundingStrategy::MidpointNearestEven)
}

/// A UTC day, in ns.
pub const DAY: i64 = 86_400_000_000_000;

/// The start (ns) of the UTC day holding `t`.
pub fn day_of(t: i64) -> i64 {
    t.div_euclid(DAY) * DAY
}

/// `x`'s share for `[a, b)` of a span `[t0, t1)` it was spread over, as
/// `F(b) - F(a)` with `F(t0) = 0`, `F(t1) = x` exactly and `F` inside kept
/// to [`PLACES`]: the shares of adjacent pieces add up to `x` without a
/// remainder.
pub fn share(x: Decimal, (t0, t1): (i64, i64), (a, b): (i64, i64)) -> Decimal {
    let cumulative = |t: i64| -> Decimal {
        if t <= t0 {
            return Decimal::ZERO;
        }
        if t >= t1 {
            return x;
        }
        let elapsed = Decimal::from(i128::from(t) - i128::from(t0));
        let span = Decimal::from(i128::from(t1) - i128::from(t0));
        kept(match x.checked_mul(elapsed) {
            Some(product) => product / span,
            None => x * (elapsed / span),
        })
    };
    if b <= a {
        return Decimal::ZERO;
    }
    cumulative(b) - cumulative(a)
}

/// The UTC days `[t0, t1)` touches, each with the part of it inside.
pub fn days(t0: i64, t1: i64) -> impl Iterator<Item = (i64, (i64, i64))> {
    let mut day = day_of(t0);
    std::iter::from_fn(move || {
        if day >= t1 {
            return None;
        }
        let part = (day.max(t0), (day + DAY).min(t1));
        let this = day;
        day += DAY;
        Some((this, part))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_adjacent_pieces_add_up_exactly() {
        let x = Decimal::ONE / Decimal::from(3);
        let whole = (0, 7);
        let pieces: Decimal = [(0, 2), (2, 3), (3, 7)]
            .iter()
            .map(|piece| share(x, whole, *piece))
            .sum();
        assert_eq!(pieces, x);
        assert_eq!(share(x, whole, (-5, 100)), x);
        assert_eq!(share(x, whole, (7, 9)), Decimal::ZERO);
        let kept_x = kept(x);
        assert_eq!(kept_x.scale(), PLACES);
        let halves = share(kept_x, whole, (0, 3)) + share(kept_x, whole, (3, 7));
        assert_eq!(halves, kept_x);
        assert!(share(kept_x, whole, (0, 3)).scale() <= PLACES);
    }

    #[test]
    fn kept_rounds_half_even() {
        let half = Decimal::new(5, PLACES + 1);
        assert_eq!(kept(half), Decimal::ZERO);
        assert_eq!(kept(Decimal::new(15, PLACES + 1)), Decimal::new(2, PLACES));
    }

    #[test]
    fn a_span_is_cut_at_midnight() {
        let parts: Vec<_> = days(DAY - 5, 2 * DAY + 3).collect();
        assert_eq!(
            parts,
            vec![
                (0, (DAY - 5, DAY)),
                (DAY, (DAY, 2 * DAY)),
                (2 * DAY, (2 * DAY, 2 * DAY + 3))
            ]
        );
        assert_eq!(day_of(-1), -DAY);
    }
}
