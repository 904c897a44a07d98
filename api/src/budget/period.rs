//! Windows, financial years, and one award's entitlement in a window, rounded once.
//!
//! Entitlements are worked out as exact fractions of a penny (i128 numerator and
//! denominator) and rounded to pence once, half to even, so no intermediate rounding can move
//! a figure by a penny.

use chrono::{Datelike, Months, NaiveDate};
use connectors::{Counting, Frequency};
use rust_decimal::Decimal;

/// A closed date range `[from, to]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First day.
    pub from: NaiveDate,
    /// Last day.
    pub to: NaiveDate,
}

impl Window {
    /// A window; `None` when `to` is before `from`.
    pub fn new(from: NaiveDate, to: NaiveDate) -> Option<Self> {
        (from <= to).then_some(Self { from, to })
    }

    /// The financial year starting 1 April of `start_year`.
    pub fn financial_year(start_year: i32) -> Option<Self> {
        Some(Self {
            from: NaiveDate::from_ymd_opt(start_year, 4, 1)?,
            to: NaiveDate::from_ymd_opt(start_year + 1, 3, 31)?,
        })
    }

    /// Parses `"2026-27"`: the year, a dash, and the next year's last two digits.
    pub fn parse_financial_year(text: &str) -> Option<Self> {
        let (start, end) = text.split_once('-')?;
        if start.len() != 4 || end.len() != 2 {
            return None;
        }
        let start: i32 = start.parse().ok()?;
        let end: i32 = end.parse().ok()?;
        if (start + 1) % 100 != end {
            return None;
        }
        Self::financial_year(start)
    }

    /// The financial year holding `day`.
    pub fn financial_year_of(day: NaiveDate) -> Option<Self> {
        let start = if day.month() >= 4 {
            day.year()
        } else {
            day.year() - 1
        };
        Self::financial_year(start)
    }

    /// Days in the window.
    pub fn days(&self) -> i64 {
        (self.to - self.from).num_days() + 1
    }

    /// The overlap with `[start, end]` (open ends: unbounded).
    pub fn overlap(&self, start: Option<NaiveDate>, end: Option<NaiveDate>) -> Option<Self> {
        let from = start.map_or(self.from, |s| s.max(self.from));
        let to = end.map_or(self.to, |e| e.min(self.to));
        Self::new(from, to)
    }

    /// Whether `day` lies inside.
    pub fn contains(&self, day: NaiveDate) -> bool {
        self.from <= day && day <= self.to
    }
}

/// An exact fraction of a penny.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fraction {
    num: i128,
    den: i128,
}

impl Fraction {
    const ZERO: Self = Self { num: 0, den: 1 };

    fn add(self, other: Self) -> Self {
        let num = self.num * other.den + other.num * self.den;
        let den = self.den * other.den;
        let g = gcd(num.abs(), den);
        if g > 1 {
            Self {
                num: num / g,
                den: den / g,
            }
        } else {
            Self { num, den }
        }
    }

    /// Rounds to whole pence, half to even.
    fn round_half_even(self) -> i128 {
        let (q, r) = (self.num.div_euclid(self.den), self.num.rem_euclid(self.den));
        match (2 * r).cmp(&self.den) {
            std::cmp::Ordering::Less => q,
            std::cmp::Ordering::Greater => q + 1,
            std::cmp::Ordering::Equal => q + (q & 1),
        }
    }
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// Pounds to pence; amounts with more than two places are refused upstream, so this is exact.
pub fn to_pence(amount: Decimal) -> i128 {
    use rust_decimal::prelude::ToPrimitive;
    // Inputs are capped at twelve whole digits, so this cannot overflow; checked all the same.
    amount
        .checked_mul(Decimal::ONE_HUNDRED)
        .unwrap_or(Decimal::ZERO)
        .round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointNearestEven)
        .to_i128()
        .unwrap_or(0)
}

/// Pence to pounds with two places.
pub fn to_pounds(pence: i128) -> Decimal {
    let clamped = i64::try_from(pence).unwrap_or(if pence < 0 { i64::MIN } else { i64::MAX });
    Decimal::new(clamped, 2)
}

/// What an award (or a plan item) needs for its entitlement.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// How often `amount` is paid.
    pub frequency: Frequency,
    /// What its status means.
    pub counting: Counting,
    /// First active day.
    pub start: Option<NaiveDate>,
    /// Last active day.
    pub end: Option<NaiveDate>,
    /// A one-off's payment date.
    pub payment_date: Option<NaiveDate>,
}

fn days_in_month(first: NaiveDate) -> i64 {
    first
        .checked_add_months(Months::new(1))
        .map_or(31, |next| (next - first).num_days())
}

fn first_of_month(day: NaiveDate) -> NaiveDate {
    day.with_day(1).unwrap_or(day)
}

/// The entitlement in pence of `amount` on `schedule` in `window`, rounded once, half to even.
pub fn entitlement_pence(amount: Decimal, schedule: &Schedule, window: &Window) -> i128 {
    let pence = to_pence(amount);
    if matches!(schedule.counting, Counting::Paused | Counting::Indicative) {
        return 0;
    }
    if schedule.counting == Counting::Ended && schedule.end.is_none() {
        return 0;
    }
    if schedule.frequency == Frequency::OneOff {
        return match schedule.payment_date {
            Some(day) if window.contains(day) => pence,
            _ => 0,
        };
    }
    let Some(active) = window.overlap(schedule.start, schedule.end) else {
        return 0;
    };
    let days = i128::from(active.days());
    let fraction = match schedule.frequency {
        Frequency::Weekly => Fraction {
            num: pence * days,
            den: 7,
        },
        Frequency::FourWeekly => Fraction {
            num: pence * days,
            den: 28,
        },
        Frequency::Monthly => {
            let mut total = Fraction::ZERO;
            let mut month = first_of_month(active.from);
            while month <= active.to {
                let length = days_in_month(month);
                let end_of_month = month + chrono::Duration::days(length - 1);
                if let Some(part) = active.overlap(Some(month), Some(end_of_month)) {
                    total = total.add(Fraction {
                        num: pence * i128::from(part.days()),
                        den: i128::from(length),
                    });
                }
                month = match month.checked_add_months(Months::new(1)) {
                    Some(next) => next,
                    None => break,
                };
            }
            total
        }
        Frequency::Annual => {
            let mut total = Fraction::ZERO;
            let mut year = Window::financial_year_of(active.from);
            while let Some(fy) = year {
                if fy.from > active.to {
                    break;
                }
                if let Some(part) = active.overlap(Some(fy.from), Some(fy.to)) {
                    total = total.add(Fraction {
                        num: pence * i128::from(part.days()),
                        den: i128::from(fy.days()),
                    });
                }
                year = Window::financial_year(fy.to.year());
            }
            total
        }
        Frequency::OneOff => Fraction::ZERO,
    };
    fraction.round_half_even()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn money(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn fy(s: &str) -> Window {
        Window::parse_financial_year(s).unwrap()
    }

    fn schedule(frequency: Frequency, start: Option<&str>, end: Option<&str>) -> Schedule {
        Schedule {
            frequency,
            counting: Counting::Active,
            start: start.map(d),
            end: end.map(d),
            payment_date: None,
        }
    }

    fn ent(amount: &str, s: &Schedule, w: &Window) -> Decimal {
        to_pounds(entitlement_pence(money(amount), s, w))
    }

    #[test]
    fn financial_years_parse_and_count_their_days() {
        assert_eq!(fy("2026-27").days(), 365);
        assert_eq!(fy("2027-28").days(), 366, "holds 29 February 2028");
        assert_eq!(fy("2026-27").from, d("2026-04-01"));
        assert_eq!(fy("1999-00").to, d("2000-03-31"));
        for bad in ["2026-28", "2026", "26-27", "2026-2027", "abcd-ef"] {
            assert_eq!(Window::parse_financial_year(bad), None, "{bad}");
        }
        assert_eq!(
            Window::financial_year_of(d("2027-03-31")),
            Some(fy("2026-27"))
        );
        assert_eq!(
            Window::financial_year_of(d("2027-04-01")),
            Some(fy("2027-28"))
        );
    }

    #[test]
    fn the_worked_examples_of_budget_rules() {
        let year = fy("2026-27");
        let all_year = schedule(Frequency::Weekly, Some("2026-04-01"), None);
        assert_eq!(ent("412.50", &all_year, &year), money("21508.93"));
        assert_eq!(ent("35.20", &all_year, &year), money("1835.43"));
        let four = schedule(Frequency::FourWeekly, Some("2024-04-01"), None);
        assert_eq!(ent("1100.00", &four, &year), money("14339.29"));
        let part = schedule(Frequency::Weekly, Some("2026-10-01"), None);
        assert_eq!(ent("100.00", &part, &year), money("2600.00"));
        let annual = schedule(Frequency::Annual, Some("2025-09-01"), Some("2028-08-31"));
        assert_eq!(ent("14200.00", &annual, &year), money("14200.00"));
        let mut one_off = schedule(Frequency::OneOff, None, None);
        one_off.payment_date = Some(d("2025-10-10"));
        assert_eq!(ent("2400.00", &one_off, &year), money("0.00"));
        assert_eq!(ent("2400.00", &one_off, &fy("2025-26")), money("2400.00"));
    }

    #[test]
    fn a_leap_year_counts_366_days() {
        // Annual 3660.00 over 2027-28 (366 days), active from 1 March 2028: 31 days -> 310.00.
        let s = schedule(Frequency::Annual, Some("2028-03-01"), None);
        assert_eq!(ent("3660.00", &s, &fy("2027-28")), money("310.00"));
        // Weekly across the whole leap year: 70 x 366 / 7 = 3660.00.
        let w = schedule(Frequency::Weekly, None, None);
        assert_eq!(ent("70.00", &w, &fy("2027-28")), money("3660.00"));
    }

    #[test]
    fn an_award_ending_mid_month_counts_the_month_by_its_days() {
        // Monthly 310.00 from 1 April to 15 May 2026: April whole (310.00) + 15/31 of May (150.00).
        let s = schedule(Frequency::Monthly, Some("2026-04-01"), Some("2026-05-15"));
        assert_eq!(ent("310.00", &s, &fy("2026-27")), money("460.00"));
        // Monthly 100.00 for 10 days of February 2027 (28 days): 35.714... -> 35.71.
        let f = schedule(Frequency::Monthly, Some("2027-02-01"), Some("2027-02-10"));
        assert_eq!(ent("100.00", &f, &fy("2026-27")), money("35.71"));
    }

    #[test]
    fn a_four_weekly_award_across_two_financial_years_splits_by_days() {
        // 1 Jan 2027 to 30 Jun 2027: 90 days in 2026-27, 91 in 2027-28.
        let s = schedule(
            Frequency::FourWeekly,
            Some("2027-01-01"),
            Some("2027-06-30"),
        );
        assert_eq!(ent("280.00", &s, &fy("2026-27")), money("900.00"));
        assert_eq!(ent("280.00", &s, &fy("2027-28")), money("910.00"));
    }

    #[test]
    fn an_annual_award_across_two_years_counts_each_years_share() {
        // Annual 3650.00 from 1 Jan 2027 to 31 Dec 2027, asked for 2026-01-01..2027-12-31:
        // 90 days of 2026-27 (365) = 900.00, 275 days of 2027-28 (366) = 2742.486... -> total
        // rounded once: 3642.49.
        let s = schedule(Frequency::Annual, Some("2027-01-01"), Some("2027-12-31"));
        let w = Window::new(d("2026-01-01"), d("2027-12-31")).unwrap();
        assert_eq!(ent("3650.00", &s, &w), money("3642.49"));
    }

    #[test]
    fn a_one_off_on_each_side_of_a_window_edge() {
        let w = Window::new(d("2026-04-01"), d("2026-09-30")).unwrap();
        let mut s = schedule(Frequency::OneOff, None, None);
        for (day, expected) in [
            ("2026-03-31", "0.00"),
            ("2026-04-01", "500.00"),
            ("2026-09-30", "500.00"),
            ("2026-10-01", "0.00"),
        ] {
            s.payment_date = Some(d(day));
            assert_eq!(ent("500.00", &s, &w), money(expected), "{day}");
        }
    }

    #[test]
    fn status_decides_what_counts() {
        let year = fy("2026-27");
        let mut s = schedule(Frequency::Weekly, Some("2026-04-01"), Some("2026-04-14"));
        s.counting = Counting::Paused;
        assert_eq!(ent("100.00", &s, &year), money("0.00"));
        s.counting = Counting::Indicative;
        assert_eq!(ent("100.00", &s, &year), money("0.00"));
        s.counting = Counting::Ended;
        assert_eq!(ent("100.00", &s, &year), money("200.00"));
        s.end = None;
        assert_eq!(
            ent("100.00", &s, &year),
            money("0.00"),
            "ended with no end date counts nothing"
        );
    }

    #[test]
    fn rounding_is_half_to_even_at_the_penny() {
        // 0.07 weekly for 5 days = 0.05 exactly; 0.01 weekly for 3.5 days cannot occur, so use
        // monthly: 0.01 x 15/30 = 0.005 -> 0.00 (even); 0.03 x 15/30 = 0.015 -> 0.02 (even).
        let s = schedule(Frequency::Monthly, Some("2026-04-01"), Some("2026-04-15"));
        let year = fy("2026-27");
        assert_eq!(ent("0.01", &s, &year), money("0.00"));
        assert_eq!(ent("0.03", &s, &year), money("0.02"));
        assert_eq!(ent("0.05", &s, &year), money("0.02"));
        assert_eq!(ent("0.07", &s, &year), money("0.04"));
    }

    #[test]
    fn an_award_outside_the_window_counts_nothing() {
        let s = schedule(Frequency::Weekly, Some("2025-04-01"), Some("2026-03-31"));
        assert_eq!(ent("100.00", &s, &fy("2026-27")), money("0.00"));
    }
}
