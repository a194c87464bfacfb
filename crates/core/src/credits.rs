//! Credits as people see them. Totals stay exact inside the service; they
//! are rounded half-even to the configured precision only when shown or
//! written, here, so the APIs, Perun and the mails show the same figure.

use rust_decimal::{Decimal, RoundingStrategy};

/// Rounds an exact total half-even to `precision` places, always showing
/// that many places (`5` -> `5.00`).
pub fn round(total: Decimal, precision: u32) -> Decimal {
    let mut rounded =
        total.round_dp_with_strategy(precision, RoundingStrategy::MidpointNearestEven);
    rounded.rescale(precision);
    rounded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_even_with_fixed_places() {
        assert_eq!(round("0.125".parse().unwrap(), 2).to_string(), "0.12");
        assert_eq!(round("0.135".parse().unwrap(), 2).to_string(), "0.14");
        assert_eq!(round(Decimal::from(5), 2).to_string(), "5.00");
    }
}
