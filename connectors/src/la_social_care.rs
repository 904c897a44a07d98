//! The council's adult social care personal budgets API (upstreams/la-social-care.md).

use async_trait::async_trait;
use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;

use crate::config::ConnectorSettings;
use crate::connector::{Connector, Subject, required_secret};
use crate::error::ConnectorError;
use crate::http::{Answer, Partner, PartnerAuth, not_found, segment};
use crate::identifiers::IdentifierScheme;
use crate::model::{
    Award, AwardLine, Counting, Frequency, PersonRecords, Rejected, json_error, parse_pounds,
};
use crate::secrets::Secrets;

/// The council connector.
#[derive(Debug)]
pub struct LaSocialCare {
    settings: ConnectorSettings,
    partner: Partner,
}

impl LaSocialCare {
    /// Builds it; the bearer token comes from `token_env`.
    pub fn new(settings: ConnectorSettings, secrets: &Secrets) -> Result<Self, ConnectorError> {
        let token = required_secret(secrets, settings.token_env.as_ref(), "token_env")?;
        let partner = Partner::new(&settings, PartnerAuth::Bearer(token))?;
        Ok(Self { settings, partner })
    }
}

#[derive(Deserialize)]
struct ClientList {
    clients: Vec<Value>,
}

#[derive(Deserialize)]
struct ClientRef {
    client_id: String,
}

#[derive(Deserialize)]
struct BudgetsBody {
    personal_budgets: Vec<Value>,
}

#[derive(Deserialize)]
struct RawBudget {
    budget_id: String,
    status: String,
    start_date: Option<NaiveDate>,
    end_date: Option<NaiveDate>,
    review_date: Option<NaiveDate>,
    frequency: String,
    gross_amount: String,
    client_contribution: String,
    lines: Vec<RawLine>,
    version: Option<i64>,
}

#[derive(Deserialize)]
struct RawLine {
    line_id: String,
    support_type: String,
    amount: String,
    delivery: Option<String>,
}

const STATUSES: [&str; 4] = ["indicative", "agreed", "suspended", "ended"];
const SUPPORT_TYPES: [&str; 6] = [
    "personal_care",
    "social_inclusion",
    "respite",
    "day_activity",
    "equipment",
    "other",
];
const DELIVERIES: [&str; 4] = [
    "direct_payment",
    "council_managed",
    "individual_service_fund",
    "commissioned",
];

fn money(field: &str, text: &str) -> Result<Decimal, String> {
    if text.trim_start().starts_with('-') {
        return Err(format!("{field} is negative"));
    }
    parse_pounds(text)
        .ok_or_else(|| format!("{field} is not an amount in pounds with two decimal places"))
}

/// Validates and normalises one budget record.
pub fn parse_budget(raw: &Value) -> Result<Award, String> {
    let budget: RawBudget = serde_json::from_value(raw.clone()).map_err(|e| {
        format!(
            "the budget record does not match the API: {}",
            json_error(&e)
        )
    })?;
    if !STATUSES.contains(&budget.status.as_str()) {
        return Err(format!("unknown status '{}'", budget.status));
    }
    let frequency = match budget.frequency.as_str() {
        "weekly" => Frequency::Weekly,
        "four_weekly" => Frequency::FourWeekly,
        other => return Err(format!("unknown frequency '{other}'")),
    };
    let gross = money("gross_amount", &budget.gross_amount)?;
    let contribution = money("client_contribution", &budget.client_contribution)?;
    if let (Some(start), Some(end)) = (budget.start_date, budget.end_date)
        && end < start
    {
        return Err("end_date is before start_date".into());
    }
    let mut lines = Vec::with_capacity(budget.lines.len());
    for line in &budget.lines {
        if !SUPPORT_TYPES.contains(&line.support_type.as_str()) {
            return Err(format!(
                "line {} has unknown support_type '{}'",
                line.line_id, line.support_type
            ));
        }
        if let Some(delivery) = &line.delivery
            && !DELIVERIES.contains(&delivery.as_str())
        {
            return Err(format!(
                "line {} has unknown delivery '{delivery}'",
                line.line_id
            ));
        }
        lines.push(AwardLine {
            upstream_id: line.line_id.clone(),
            purpose: line.support_type.clone(),
            delivery: line.delivery.clone(),
            description: None,
            amount: money(&format!("line {} amount", line.line_id), &line.amount)?,
        });
    }
    let line_sum: Decimal = lines.iter().map(|l| l.amount).sum();
    if !lines.is_empty() && line_sum != gross {
        return Err(format!(
            "lines sum to {line_sum:.2} but gross_amount is {gross:.2}"
        ));
    }
    let counting = match budget.status.as_str() {
        "agreed" => Counting::Active,
        "indicative" => Counting::Indicative,
        "suspended" => Counting::Paused,
        _ => Counting::Ended,
    };
    let delivery = lines
        .first()
        .and_then(|first| first.delivery.clone())
        .filter(|d| lines.iter().all(|l| l.delivery.as_ref() == Some(d)));
    Ok(Award {
        upstream_id: budget.budget_id,
        version: budget.version.map(|v| v.to_string()),
        purpose: "social_care".into(),
        delivery,
        frequency,
        amount: gross,
        contribution: Some(contribution),
        start_date: budget.start_date,
        end_date: budget.end_date,
        review_date: budget.review_date,
        payment_date: None,
        status: budget.status,
        counting,
        lines,
    })
}

/// Parses a personal-budgets body: one bad budget is rejected on its own.
pub fn parse_budgets(subject_key: &str, body: &[u8]) -> Result<PersonRecords, ConnectorError> {
    let parsed: BudgetsBody = serde_json::from_slice(body).map_err(|e| {
        ConnectorError::Malformed(format!("personal-budgets body: {}", json_error(&e)))
    })?;
    let mut records = PersonRecords {
        subject_key: subject_key.to_owned(),
        ..PersonRecords::default()
    };
    for raw in &parsed.personal_budgets {
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
    // The newest change marker, compared as numbers ("12" is after "7").
    records.version = records
        .awards
        .iter()
        .filter_map(|a| a.version.as_deref()?.parse::<i64>().ok())
        .max()
        .map(|v| v.to_string());
    Ok(records)
}

#[async_trait]
impl Connector for LaSocialCare {
    fn settings(&self) -> &ConnectorSettings {
        &self.settings
    }

    async fn fetch(&self, subject: &Subject) -> Result<PersonRecords, ConnectorError> {
        let client_id = match subject.scheme {
            IdentifierScheme::CouncilClientId => subject.value.clone(),
            IdentifierScheme::NhsNumber => {
                let path = format!("/api/v1/clients?nhs_number={}", segment(&subject.value));
                let body = match self.partner.get(&path, None).await? {
                    Answer::Body { bytes, .. } => bytes,
                    _ => {
                        return Err(ConnectorError::Malformed(
                            "client search did not answer 200".into(),
                        ));
                    }
                };
                let list: ClientList = serde_json::from_slice(&body).map_err(|e| {
                    ConnectorError::Malformed(format!("client search body: {}", json_error(&e)))
                })?;
                match list.clients.as_slice() {
                    [] => {
                        return Ok(PersonRecords {
                            subject_key: subject.key(),
                            ..PersonRecords::default()
                        });
                    }
                    [one] => {
                        serde_json::from_value::<ClientRef>(one.clone())
                            .map_err(|e| {
                                ConnectorError::Malformed(format!(
                                    "client record: {}",
                                    json_error(&e)
                                ))
                            })?
                            .client_id
                    }
                    many => {
                        return Ok(PersonRecords {
                            subject_key: subject.key(),
                            ambiguities: vec![format!(
                                "{} council client records match this person's NHS number; link the right COUNCIL_CLIENT_ID to choose one",
                                many.len()
                            )],
                            ..PersonRecords::default()
                        });
                    }
                }
            }
            other => {
                return Err(ConnectorError::Misconfigured(format!(
                    "the council cannot find a person by {other}"
                )));
            }
        };
        let path = format!("/api/v1/clients/{}/personal-budgets", segment(&client_id));
        match self.partner.get(&path, None).await? {
            Answer::Body { bytes, .. } => parse_budgets(&subject.key(), &bytes),
            Answer::NotFound(body) => not_found(subject.key(), &body, "client_not_found"),
            Answer::NotModified => Err(ConnectorError::Malformed("unexpected 304".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
  "client_id": "CL-104233",
  "council_code": "E08000026",
  "personal_budgets": [
    {
      "budget_id": "PB-2026-0042",
      "status": "agreed",
      "ras": {"points": 74, "price_per_point": "250.00", "indicative_annual": "18500.00"},
      "start_date": "2026-04-01",
      "end_date": null,
      "review_date": "2027-01-15",
      "frequency": "weekly",
      "gross_amount": "412.50",
      "client_contribution": "35.20",
      "lines": [
        {"line_id": "L1", "support_type": "personal_care", "amount": "300.00", "delivery": "direct_payment"},
        {"line_id": "L2", "support_type": "social_inclusion", "amount": "112.50", "delivery": "council_managed"}
      ],
      "version": 7,
      "updated_at": "2026-10-02T09:12:00Z"
    }
  ]
}"#;

    #[test]
    fn the_documented_example_parses_into_one_award_with_two_lines() {
        let records = parse_budgets("COUNCIL_CLIENT_ID:CL-104233", EXAMPLE.as_bytes()).unwrap();
        assert!(records.rejected.is_empty());
        let award = &records.awards[0];
        assert_eq!(award.upstream_id, "PB-2026-0042");
        assert_eq!(award.version.as_deref(), Some("7"));
        assert_eq!(award.frequency, Frequency::Weekly);
        assert_eq!(award.amount, Decimal::new(41250, 2));
        assert_eq!(award.contribution, Some(Decimal::new(3520, 2)));
        assert_eq!(award.counting, Counting::Active);
        assert_eq!(award.delivery, None, "mixed delivery is left to the lines");
        assert_eq!(award.lines.len(), 2);
        assert_eq!(award.lines[1].purpose, "social_inclusion");
        assert_eq!(award.lines[1].delivery.as_deref(), Some("council_managed"));
        assert_eq!(award.review_date, NaiveDate::from_ymd_opt(2027, 1, 15));
    }

    fn with(field: &str, value: Value) -> Value {
        let mut body: Value = serde_json::from_str(EXAMPLE).unwrap();
        body["personal_budgets"][0][field] = value;
        body
    }

    #[test]
    fn each_data_quality_failure_rejects_that_budget_with_its_reason() {
        let cases = [
            (with("gross_amount", "400.00".into()), "lines sum to 412.50"),
            (with("client_contribution", "-1.00".into()), "negative"),
            (with("end_date", "2026-03-01".into()), "before start_date"),
            (with("gross_amount", "412.505".into()), "two decimal places"),
            (with("gross_amount", 412.5.into()), "does not match"),
            (with("frequency", "monthly".into()), "unknown frequency"),
            (with("status", "paused".into()), "unknown status"),
        ];
        for (body, reason) in cases {
            let mut body = body;
            // A second, good budget must survive its neighbour's rejection.
            let good =
                serde_json::from_str::<Value>(EXAMPLE).unwrap()["personal_budgets"][0].clone();
            let mut good = good;
            good["budget_id"] = "PB-GOOD".into();
            body["personal_budgets"].as_array_mut().unwrap().push(good);
            let records = parse_budgets("K", body.to_string().as_bytes()).unwrap();
            assert_eq!(records.rejected.len(), 1, "{reason}");
            assert!(
                records.rejected[0].reason.contains(reason),
                "{} / {reason}",
                records.rejected[0].reason
            );
            assert_eq!(
                records.rejected[0].upstream_id.as_deref(),
                Some("PB-2026-0042")
            );
            assert_eq!(records.awards.len(), 1);
            assert_eq!(records.awards[0].upstream_id, "PB-GOOD");
        }
    }

    #[test]
    fn statuses_map_to_counting() {
        for (status, counting) in [
            ("indicative", Counting::Indicative),
            ("suspended", Counting::Paused),
            ("ended", Counting::Ended),
        ] {
            let body = with("status", status.into());
            let records = parse_budgets("K", body.to_string().as_bytes()).unwrap();
            assert_eq!(records.awards[0].counting, counting);
        }
    }

    #[test]
    fn a_body_that_is_not_the_api_is_malformed() {
        assert!(matches!(
            parse_budgets("K", b"{\"personal_budgets\": 3"),
            Err(ConnectorError::Malformed(_))
        ));
        assert!(matches!(
            parse_budgets("K", b"<html>"),
            Err(ConnectorError::Malformed(_))
        ));
    }
}
