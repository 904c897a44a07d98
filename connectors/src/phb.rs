//! The health board's personal health budgets API (upstreams/phb.md).

use async_trait::async_trait;
use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;

use crate::config::ConnectorSettings;
use crate::connector::{Connector, Subject, required_secret};
use crate::error::ConnectorError;
use crate::http::{Answer, Partner, PartnerAuth, not_found};
use crate::identifiers::normalise_nhs_number;
use crate::model::{
    Award, AwardLine, Counting, Frequency, PersonRecords, Rejected, json_error, parse_pounds,
};
use crate::secrets::Secrets;

/// The personal health budget connector.
#[derive(Debug)]
pub struct Phb {
    settings: ConnectorSettings,
    partner: Partner,
}

impl Phb {
    /// Builds it; the bearer token comes from `token_env`.
    pub fn new(settings: ConnectorSettings, secrets: &Secrets) -> Result<Self, ConnectorError> {
        let token = required_secret(secrets, settings.token_env.as_ref(), "token_env")?;
        let partner = Partner::new(&settings, PartnerAuth::Bearer(token))?;
        Ok(Self { settings, partner })
    }
}

#[derive(Deserialize)]
struct Body {
    budgets: Vec<Value>,
}

#[derive(Deserialize)]
struct RawBudget {
    budget_id: String,
    #[serde(rename = "type")]
    kind: String,
    management: String,
    annual_amount: String,
    start_date: Option<NaiveDate>,
    end_date: Option<NaiveDate>,
    review_date: Option<NaiveDate>,
    care_plan: Vec<RawItem>,
}

#[derive(Deserialize)]
struct RawItem {
    item_id: String,
    description: Option<String>,
    annual_amount: String,
}

const TYPES: [&str; 5] = [
    "continuing_healthcare",
    "wheelchair",
    "mental_health_aftercare",
    "end_of_life",
    "other",
];
const MANAGEMENT: [&str; 3] = ["notional", "third_party", "direct_payment"];

/// Validates and normalises one budget.
pub fn parse_budget(raw: &Value) -> Result<Award, String> {
    let b: RawBudget = serde_json::from_value(raw.clone())
        .map_err(|e| format!("the budget does not match the API: {}", json_error(&e)))?;
    if !TYPES.contains(&b.kind.as_str()) {
        return Err(format!("unknown type '{}'", b.kind));
    }
    if !MANAGEMENT.contains(&b.management.as_str()) {
        return Err(format!("unknown management '{}'", b.management));
    }
    let amount =
        parse_pounds(&b.annual_amount).ok_or("annual_amount is not an amount in pounds")?;
    if let (Some(start), Some(end)) = (b.start_date, b.end_date)
        && end < start
    {
        return Err("end_date is before start_date".into());
    }
    let mut lines = Vec::with_capacity(b.care_plan.len());
    for item in &b.care_plan {
        lines.push(AwardLine {
            upstream_id: item.item_id.clone(),
            purpose: b.kind.clone(),
            delivery: Some(b.management.clone()),
            description: item.description.clone(),
            amount: parse_pounds(&item.annual_amount).ok_or_else(|| {
                format!(
                    "care-plan item {} annual_amount is not an amount in pounds",
                    item.item_id
                )
            })?,
        });
    }
    let sum: Decimal = lines.iter().map(|l| l.amount).sum();
    if sum != amount {
        return Err(format!(
            "care-plan lines sum to {sum:.2} but annual_amount is {amount:.2}"
        ));
    }
    Ok(Award {
        upstream_id: b.budget_id,
        version: None,
        purpose: b.kind,
        delivery: Some(b.management),
        frequency: Frequency::Annual,
        amount,
        contribution: None,
        start_date: b.start_date,
        end_date: b.end_date,
        review_date: b.review_date,
        payment_date: None,
        status: "active".into(),
        counting: Counting::Active,
        lines,
    })
}

/// Parses a budgets body: one bad budget is rejected on its own.
pub fn parse_budgets(subject_key: &str, body: &[u8]) -> Result<PersonRecords, ConnectorError> {
    let parsed: Body = serde_json::from_slice(body)
        .map_err(|e| ConnectorError::Malformed(format!("budgets body: {}", json_error(&e))))?;
    let mut records = PersonRecords {
        subject_key: subject_key.to_owned(),
        ..PersonRecords::default()
    };
    for raw in &parsed.budgets {
        match parse_budget(raw) {
            Ok(award) => records.awards.push(award),
            Err(reason) => records.rejected.push(Rejected {
                upstream_id: raw
                    .get("budget_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                subject_key: Some(subject_key.to_owned()),
                line: None,
                reason,
                raw: raw.to_string(),
            }),
        }
    }
    Ok(records)
}

#[async_trait]
impl Connector for Phb {
    fn settings(&self) -> &ConnectorSettings {
        &self.settings
    }

    async fn fetch(&self, subject: &Subject) -> Result<PersonRecords, ConnectorError> {
        // The board answers 400 for an invalid NHS number; the hub never sends one.
        let nhs = normalise_nhs_number(&subject.value)
            .map_err(|e| ConnectorError::Misconfigured(e.to_string()))?;
        match self
            .partner
            .get(&format!("/phb/v1/patients/{nhs}/budgets"), None)
            .await?
        {
            Answer::Body { bytes, .. } => parse_budgets(&subject.key(), &bytes),
            Answer::NotFound(body) => not_found(subject.key(), &body, "patient_not_found"),
            Answer::NotModified => Err(ConnectorError::Malformed("unexpected 304".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
  "nhs_number": "9434765919",
  "board_code": "QWU",
  "budgets": [
    {
      "budget_id": "PHB-55",
      "type": "continuing_healthcare",
      "management": "third_party",
      "annual_amount": "26000.00",
      "start_date": "2026-04-01",
      "end_date": "2027-03-31",
      "review_date": "2026-10-01",
      "care_plan": [
        {"item_id": "CP-1", "description": "Personal assistant for health tasks", "annual_amount": "20000.00"},
        {"item_id": "CP-2", "description": "Physiotherapy", "annual_amount": "6000.00"}
      ]
    }
  ]
}"#;

    #[test]
    fn the_documented_example_parses() {
        let r = parse_budgets("NHS_NUMBER:9434765919", EXAMPLE.as_bytes()).unwrap();
        assert!(r.rejected.is_empty());
        let a = &r.awards[0];
        assert_eq!(a.upstream_id, "PHB-55");
        assert_eq!(a.purpose, "continuing_healthcare");
        assert_eq!(a.delivery.as_deref(), Some("third_party"));
        assert_eq!(a.frequency, Frequency::Annual);
        assert_eq!(a.amount, Decimal::new(2_600_000, 2));
        assert_eq!(a.lines.len(), 2);
        assert_eq!(a.lines[1].description.as_deref(), Some("Physiotherapy"));
    }

    #[test]
    fn care_plan_lines_that_do_not_sum_reject_the_budget_with_the_sums() {
        let mut body: Value = serde_json::from_str(EXAMPLE).unwrap();
        body["budgets"][0]["care_plan"][1]["annual_amount"] = "5000.00".into();
        let r = parse_budgets("K", body.to_string().as_bytes()).unwrap();
        assert!(r.awards.is_empty());
        assert_eq!(r.rejected[0].upstream_id.as_deref(), Some("PHB-55"));
        assert!(
            r.rejected[0].reason.contains("25000.00") && r.rejected[0].reason.contains("26000.00")
        );
    }

    #[test]
    fn unknown_management_is_rejected() {
        let mut body: Value = serde_json::from_str(EXAMPLE).unwrap();
        body["budgets"][0]["management"] = "cash".into();
        let r = parse_budgets("K", body.to_string().as_bytes()).unwrap();
        assert!(r.rejected[0].reason.contains("management"));
    }
}
