//! The contract's scalars: `Date` ("2026-04-01") and `Decimal` ("1835.43", exactly two places),
//! and the `Money` type.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, SimpleObject, Value};
use chrono::NaiveDate;
use rust_decimal::Decimal;

/// A calendar date, `YYYY-MM-DD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date(pub NaiveDate);

/// A calendar date as `YYYY-MM-DD`, e.g. "2026-04-01".
#[Scalar(name = "Date")]
impl ScalarType for Date {
    fn parse(value: Value) -> InputValueResult<Self> {
        let Value::String(text) = &value else {
            return Err(InputValueError::custom(
                "a Date is a string of the form YYYY-MM-DD, e.g. \"2026-04-01\"",
            ));
        };
        let valid_shape = text.len() == 10
            && text.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                _ => b.is_ascii_digit(),
            });
        let parsed = valid_shape
            .then(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
            .flatten();
        parsed.map(Date).ok_or_else(|| {
            InputValueError::custom(
                "not a real date: a Date is YYYY-MM-DD with a month 01-12 and a day that month has, e.g. \"2026-04-01\"",
            )
        })
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.format("%Y-%m-%d").to_string())
    }
}

/// An exact amount in pounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Decimal2(pub Decimal);

/// An exact decimal amount, sent and received as a string with two decimal places, e.g.
/// "1835.43". Never a floating-point number.
#[Scalar(name = "Decimal")]
impl ScalarType for Decimal2 {
    fn parse(value: Value) -> InputValueResult<Self> {
        let Value::String(text) = &value else {
            return Err(InputValueError::custom(
                "a Decimal is a string such as \"412.50\", never a JSON number (numbers lose pennies)",
            ));
        };
        let trimmed = text.trim();
        let whole_digits = trimmed
            .trim_start_matches('-')
            .split('.')
            .next()
            .map_or(0, str::len);
        let well_formed = !trimmed.is_empty()
            && whole_digits <= 12
            && trimmed
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
            && trimmed.matches('.').count() <= 1
            && trimmed
                .split('.')
                .nth(1)
                .is_none_or(|places| !places.is_empty() && places.len() <= 2);
        let parsed = well_formed
            .then(|| trimmed.parse::<Decimal>().ok())
            .flatten();
        parsed.map(Decimal2).ok_or_else(|| {
            InputValueError::custom(
                "a Decimal is a string of at most 12 digits before the point and at most two after, e.g. \"412.50\"",
            )
        })
    }

    fn to_value(&self) -> Value {
        Value::String(format_pounds(self.0))
    }
}

/// Formats an amount with exactly two decimal places, rounding half-to-even if it has more.
pub fn format_pounds(amount: Decimal) -> String {
    let mut out = Vec::with_capacity(16);
    write_pounds(&mut out, amount);
    String::from_utf8(out).unwrap_or_default()
}

/// Writes an amount as [`format_pounds`] formats it (as rust_decimal displays it once rounded
/// to two places): a minus sign for a negative amount (a negative zero too), the whole pounds,
/// a point and two digits. A budget answer writes about fifty amounts, and rust_decimal's
/// `Display` through `core::fmt` was most of the cost of writing each.
pub fn write_pounds(out: &mut Vec<u8>, amount: Decimal) {
    let rounded =
        amount.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointNearestEven);
    // Two places or fewer now: in pence, exactly.
    let scale = rounded.scale().min(2);
    let pence = rounded.mantissa().unsigned_abs() * 10u128.pow(2 - scale);
    if rounded.is_sign_negative() {
        out.push(b'-');
    }
    let (whole, cents) = (pence / 100, (pence % 100) as u8);
    match u64::try_from(whole) {
        Ok(mut rest) => {
            let mut digits = [0u8; 20];
            let mut at = digits.len();
            loop {
                at -= 1;
                digits[at] = b'0' + (rest % 10) as u8;
                rest /= 10;
                if rest == 0 {
                    break;
                }
            }
            out.extend_from_slice(&digits[at..]);
        }
        // Past 18 million million million pounds: not a budget, but written all the same.
        Err(_) => out.extend_from_slice(whole.to_string().as_bytes()),
    }
    out.extend_from_slice(&[b'.', b'0' + cents / 10, b'0' + cents % 10]);
}

/// The one currency the hub's figures are in.
pub const GBP: &str = "GBP";

/// An amount of money.
#[derive(Clone, Debug, SimpleObject)]
pub struct Money {
    /// The amount, exactly two decimal places.
    pub amount: Decimal2,
    /// Always "GBP".
    pub currency: String,
}

impl Money {
    /// Pounds sterling.
    pub fn gbp(amount: Decimal) -> Self {
        Self {
            amount: Decimal2(amount),
            currency: GBP.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::prelude::FromStr;

    fn parse_date(s: &str) -> Option<NaiveDate> {
        <Date as ScalarType>::parse(Value::String(s.into()))
            .ok()
            .map(|d| d.0)
    }

    proptest::proptest! {
        #[test]
        fn amounts_are_written_as_rust_decimal_displays_them_rounded(
            // Every amount that can carry two places (up to 10^26 pounds).
            mantissa in -100_000_000_000_000_000_000_000_000i128..100_000_000_000_000_000_000_000_000,
            scale in 0u32..=28,
        ) {
            let amount = Decimal::from_i128_with_scale(mantissa, scale);
            let mut rounded = amount.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointNearestEven);
            rounded.rescale(2);
            proptest::prop_assert_eq!(format_pounds(amount), rounded.to_string());
        }
    }

    #[test]
    fn small_large_and_negative_zero_amounts_are_written_as_rust_decimal_displays_them() {
        for text in [
            "0",
            "-0",
            "-0.001",
            "0.005",
            "0.015",
            "-7.5",
            "12.3456",
            "-79228162514264337593543950.335",
            "184467440737095516.16",
            "184467440737095516.1649",
        ] {
            let amount = Decimal::from_str(text).unwrap();
            let mut rounded = amount
                .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointNearestEven);
            rounded.rescale(2);
            assert_eq!(format_pounds(amount), rounded.to_string(), "{text}");
        }
        // Too large to carry two places as a Decimal: written with them all the same.
        assert_eq!(
            format_pounds(Decimal::MAX),
            "79228162514264337593543950335.00"
        );
    }

    #[test]
    fn dates_parse_strictly() {
        assert_eq!(
            parse_date("2026-04-01"),
            NaiveDate::from_ymd_opt(2026, 4, 1)
        );
        assert_eq!(
            parse_date("2024-02-29"),
            NaiveDate::from_ymd_opt(2024, 2, 29)
        );
        for bad in [
            "2026-4-1",
            "2026-02-30",
            "2025-02-29",
            "01/04/2026",
            "2026-13-01",
            "20260401",
            " 2026-04-01",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn decimals_always_show_two_places() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        assert_eq!(format_pounds(d("1835.4")), "1835.40");
        assert_eq!(format_pounds(d("0")), "0.00");
        assert_eq!(format_pounds(d("21508.925")), "21508.92");
        assert_eq!(format_pounds(d("21508.935")), "21508.94");
    }

    #[test]
    fn decimal_input_refuses_numbers_and_extra_places() {
        let parse = |v: Value| {
            <Decimal2 as ScalarType>::parse(v)
                .ok()
                .map(|d| d.0.to_string())
        };
        assert_eq!(
            parse(Value::String("412.50".into())).as_deref(),
            Some("412.50")
        );
        assert_eq!(parse(Value::String("12".into())).as_deref(), Some("12"));
        assert_eq!(parse(Value::String("1.234".into())), None);
        assert_eq!(parse(Value::String("1,250.00".into())), None);
        assert_eq!(parse(Value::String("1.".into())), None);
        assert_eq!(parse(Value::Number(12.into())), None);
    }
}
