//! The common record model: what leaves a connector, whatever the partner's format.
//!
//! Amounts are exact decimals in pounds, as the partner states them per their frequency; the
//! arithmetic of windows and rounding is the budget's, not the connector's.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// How often an award's amount is paid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frequency {
    /// Per week.
    Weekly,
    /// Per four weeks.
    FourWeekly,
    /// Per calendar month.
    Monthly,
    /// Per financial year.
    Annual,
    /// Once, on its payment date.
    OneOff,
}

impl Frequency {
    /// The wire name: weekly | four_weekly | monthly | annual | one_off.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Weekly => "weekly",
            Self::FourWeekly => "four_weekly",
            Self::Monthly => "monthly",
            Self::Annual => "annual",
            Self::OneOff => "one_off",
        }
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Weekly,
            Self::FourWeekly,
            Self::Monthly,
            Self::Annual,
            Self::OneOff,
        ]
        .into_iter()
        .find(|f| f.as_str() == text)
    }
}

/// What an award's status means for counting (BUDGET-RULES.md, Periods).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Counting {
    /// Counts every active day.
    Active,
    /// Ended or closed: counts its days up to its end date (nothing without one).
    Ended,
    /// Suspended or withdrawn: counts nothing in any window.
    Paused,
    /// An indicative estimate: listed, counts nothing.
    Indicative,
}

/// One line of an award (a council budget line, a care-plan item).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwardLine {
    /// The partner's line id.
    pub upstream_id: String,
    /// What it pays for.
    pub purpose: String,
    /// How it is delivered or managed, where the partner says.
    pub delivery: Option<String>,
    /// A description, where the partner gives one.
    pub description: Option<String>,
    /// Per the award's frequency.
    pub amount: Decimal,
}

/// One award: an upstream record with its own amount and frequency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Award {
    /// The partner's id for the record (an element is `award_ref/element`).
    pub upstream_id: String,
    /// The partner's version or change marker, if it publishes one.
    pub version: Option<String>,
    /// What it pays for.
    pub purpose: String,
    /// How it is delivered or managed.
    pub delivery: Option<String>,
    /// How often `amount` is paid.
    pub frequency: Frequency,
    /// The amount per `frequency`.
    pub amount: Decimal,
    /// The person's assessed contribution per `frequency`, where the stream charges one.
    pub contribution: Option<Decimal>,
    /// First active day.
    pub start_date: Option<NaiveDate>,
    /// Last active day (none: open-ended).
    pub end_date: Option<NaiveDate>,
    /// When the partner will review it.
    pub review_date: Option<NaiveDate>,
    /// For a one-off: the day it is paid.
    pub payment_date: Option<NaiveDate>,
    /// The partner's status word, as it says it.
    pub status: String,
    /// What that status means for counting.
    pub counting: Counting,
    /// Lines sharing the award, in the partner's order (empty when it has none).
    pub lines: Vec<AwardLine>,
}

/// Money a stream reports as already paid out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// The partner's id for the payment.
    pub upstream_id: String,
    /// The award it was paid against.
    pub award_upstream_id: String,
    /// What it paid for.
    pub purpose: String,
    /// How much.
    pub amount: Decimal,
    /// When.
    pub paid_on: NaiveDate,
}

/// A record that failed validation: kept aside with the reason, never silently dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The partner's id for the record, where it could be read.
    pub upstream_id: Option<String>,
    /// Whom it names, as `SCHEME:value`, where that could be read.
    pub subject_key: Option<String>,
    /// The line of a file it came from.
    pub line: Option<u64>,
    /// Why it was rejected, for a person to act on.
    pub reason: String,
    /// Enough of the raw record to find it upstream.
    pub raw: String,
}

/// Everything one connector returned about one person.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonRecords {
    /// Whom the partner was asked about, as `SCHEME:value`.
    pub subject_key: String,
    /// The partner's overall version marker, if any.
    pub version: Option<String>,
    /// The awards.
    pub awards: Vec<Award>,
    /// Payments made.
    pub payments: Vec<Payment>,
    /// Records rejected.
    pub rejected: Vec<Rejected>,
    /// Problems that are not one record's: e.g. two council clients matching one NHS number.
    pub ambiguities: Vec<String>,
}

/// Parses a partner's money text: pounds with at most two places, no sign, no other shape.
pub fn parse_pounds(text: &str) -> Option<Decimal> {
    let valid = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.matches('.').count() <= 1
        && text
            .split('.')
            .nth(1)
            .is_none_or(|p| !p.is_empty() && p.len() <= 2)
        && !text.starts_with('.');
    if valid { text.parse().ok() } else { None }
}

/// A JSON error as a reason a person can act on, without any value the partner sent: a field
/// holding a name or an identifier (quoted, or a bare number in backticks) must not reach a log
/// or a message. Missing and unknown field names are kept; they are the format's, not a person's.
pub fn json_error(error: &serde_json::Error) -> String {
    let text = error.to_string();
    if text.starts_with("missing field") || text.starts_with("unknown field") {
        return text
            .split(" at line")
            .next()
            .unwrap_or("a field is missing or unknown")
            .to_owned();
    }
    let kind = match error.classify() {
        serde_json::error::Category::Io => "the body could not be read",
        serde_json::error::Category::Syntax => "the body is not valid JSON",
        serde_json::error::Category::Data => "a value has the wrong type or shape",
        serde_json::error::Category::Eof => "the body ends too early",
    };
    format!("{kind} (line {}, column {})", error.line(), error.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_text_is_strict() {
        assert_eq!(parse_pounds("412.50"), Some(Decimal::new(41250, 2)));
        assert_eq!(parse_pounds("14200"), Some(Decimal::new(14200, 0)));
        for bad in [
            "", "-1.00", "1,250.00", "1.234", "12.", ".5", "1e3", "NaN", " 1.00",
        ] {
            assert_eq!(parse_pounds(bad), None, "{bad}");
        }
    }

    #[test]
    fn json_errors_never_repeat_the_values_sent() {
        let e = serde_json::from_str::<u32>("\"AB123456C\"").unwrap_err();
        let reason = json_error(&e);
        assert!(!reason.contains("AB123456C"), "{reason}");
        assert!(reason.contains("wrong type"), "{reason}");
        let e = serde_json::from_str::<String>("9434765919").unwrap_err();
        assert!(!json_error(&e).contains("9434765919"), "{}", json_error(&e));
        #[derive(Debug, serde::Deserialize)]
        #[expect(dead_code, reason = "only deserialised")]
        struct Needs {
            budget_id: String,
        }
        let e = serde_json::from_str::<Needs>("{}").unwrap_err();
        assert_eq!(json_error(&e), "missing field `budget_id`");
    }

    #[test]
    fn frequencies_round_trip() {
        for f in ["weekly", "four_weekly", "monthly", "annual", "one_off"] {
            assert_eq!(Frequency::parse(f).map(Frequency::as_str), Some(f));
        }
        assert_eq!(Frequency::parse("fortnightly"), None);
    }
}
