//! The Access to Work grants API (upstreams/access-to-work.md).

use async_trait::async_trait;
use chrono::NaiveDate;
use reqwest::header::HeaderName;
use serde::Deserialize;
use serde_json::Value;

use crate::config::ConnectorSettings;
use crate::connector::{Connector, Subject, required_secret};
use crate::error::ConnectorError;
use crate::http::{Answer, Partner, PartnerAuth, not_found, segment};
use crate::model::{
    Award, Counting, Frequency, Payment, PersonRecords, Rejected, json_error, parse_pounds,
};
use crate::secrets::Secrets;

/// The Access to Work connector.
#[derive(Debug)]
pub struct AccessToWork {
    settings: ConnectorSettings,
    partner: Partner,
}

impl AccessToWork {
    /// Builds it; the key comes from `api_key_env` and goes in `X-Api-Key`.
    pub fn new(settings: ConnectorSettings, secrets: &Secrets) -> Result<Self, ConnectorError> {
        let key = required_secret(secrets, settings.api_key_env.as_ref(), "api_key_env")?;
        let partner = Partner::new(
            &settings,
            PartnerAuth::Header(HeaderName::from_static("x-api-key"), key),
        )?;
        Ok(Self { settings, partner })
    }
}

#[derive(Deserialize)]
struct Body {
    awards: Vec<Value>,
    #[serde(default)]
    claims_paid: Vec<Value>,
}

#[derive(Deserialize)]
struct RawAward {
    award_ref: String,
    start_date: Option<NaiveDate>,
    end_date: Option<NaiveDate>,
    status: String,
    payment_route: Option<String>,
    elements: Vec<Value>,
}

#[derive(Deserialize)]
struct RawElement {
    element: String,
    annual_amount: Option<String>,
    one_off_amount: Option<String>,
    payment_date: Option<NaiveDate>,
}

#[derive(Deserialize)]
struct RawClaim {
    claim_ref: String,
    award_ref: String,
    element: String,
    amount: String,
    paid_on: NaiveDate,
}

const ELEMENTS: [&str; 7] = [
    "support_worker",
    "special_aids_and_equipment",
    "travel_to_work",
    "communication_support",
    "adaptations_to_vehicle",
    "mental_health_support",
    "other",
];

fn reject(subject_key: &str, upstream_id: Option<String>, reason: String, raw: &Value) -> Rejected {
    Rejected {
        upstream_id,
        subject_key: Some(subject_key.to_owned()),
        line: None,
        reason,
        raw: raw.to_string(),
    }
}

fn parse_element(award: &RawAward, raw: &Value, occurrence: usize) -> Result<Award, String> {
    let element: RawElement = serde_json::from_value(raw.clone())
        .map_err(|e| format!("the element does not match the API: {}", json_error(&e)))?;
    if !ELEMENTS.contains(&element.element.as_str()) {
        return Err(format!("unknown element '{}'", element.element));
    }
    let (frequency, amount, payment_date) = match (&element.annual_amount, &element.one_off_amount)
    {
        (Some(annual), None) => (
            Frequency::Annual,
            parse_pounds(annual).ok_or("annual_amount is not an amount in pounds")?,
            None,
        ),
        (None, Some(one_off)) => {
            let date = element
                .payment_date
                .ok_or("a one-off element needs a payment_date")?;
            (
                Frequency::OneOff,
                parse_pounds(one_off).ok_or("one_off_amount is not an amount in pounds")?,
                Some(date),
            )
        }
        (Some(_), Some(_)) => {
            return Err("the element carries both annual_amount and one_off_amount".into());
        }
        (None, None) => {
            return Err("the element carries neither annual_amount nor one_off_amount".into());
        }
    };
    let counting = match award.status.as_str() {
        "active" => Counting::Active,
        "ended" => Counting::Ended,
        "withdrawn" => Counting::Paused,
        other => return Err(format!("unknown status '{other}'")),
    };
    Ok(Award {
        // A second element of the same kind in one award gets its own id.
        upstream_id: if occurrence == 0 {
            format!("{}/{}", award.award_ref, element.element)
        } else {
            format!("{}/{}-{}", award.award_ref, element.element, occurrence + 1)
        },
        version: None,
        purpose: element.element,
        delivery: award.payment_route.clone(),
        frequency,
        amount,
        contribution: None,
        start_date: award.start_date,
        end_date: award.end_date,
        review_date: None,
        payment_date,
        status: award.status.clone(),
        counting,
        lines: Vec::new(),
    })
}

/// Parses an awards body: one bad award, element or claim is rejected on its own.
pub fn parse_awards(subject_key: &str, body: &[u8]) -> Result<PersonRecords, ConnectorError> {
    let parsed: Body = serde_json::from_slice(body)
        .map_err(|e| ConnectorError::Malformed(format!("awards body: {}", json_error(&e))))?;
    let mut records = PersonRecords {
        subject_key: subject_key.to_owned(),
        ..PersonRecords::default()
    };
    for raw in &parsed.awards {
        let award: RawAward = match serde_json::from_value(raw.clone()) {
            Ok(award) => award,
            Err(e) => {
                let id = raw
                    .get("award_ref")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                records.rejected.push(reject(
                    subject_key,
                    id,
                    format!("the award does not match the API: {}", json_error(&e)),
                    raw,
                ));
                continue;
            }
        };
        if let (Some(start), Some(end)) = (award.start_date, award.end_date)
            && end < start
        {
            records.rejected.push(reject(
                subject_key,
                Some(award.award_ref.clone()),
                "end_date is before start_date".into(),
                raw,
            ));
            continue;
        }
        let mut seen: Vec<&str> = Vec::new();
        for element in &award.elements {
            let kind = element.get("element").and_then(Value::as_str).unwrap_or("");
            let occurrence = seen.iter().filter(|k| **k == kind).count();
            seen.push(kind);
            match parse_element(&award, element, occurrence) {
                Ok(a) => records.awards.push(a),
                Err(reason) => {
                    let name = element
                        .get("element")
                        .and_then(Value::as_str)
                        .unwrap_or("?");
                    records.rejected.push(reject(
                        subject_key,
                        Some(format!("{}/{name}", award.award_ref)),
                        reason,
                        element,
                    ));
                }
            }
        }
    }
    for raw in &parsed.claims_paid {
        let claim = serde_json::from_value::<RawClaim>(raw.clone())
            .map_err(|e| format!("the claim does not match the API: {}", json_error(&e)))
            .and_then(|c| match parse_pounds(&c.amount) {
                Some(amount) => Ok(Payment {
                    upstream_id: c.claim_ref,
                    award_upstream_id: format!("{}/{}", c.award_ref, c.element),
                    purpose: c.element,
                    amount,
                    paid_on: c.paid_on,
                }),
                None => Err("the claim amount is not an amount in pounds".into()),
            });
        match claim {
            Ok(payment) => records.payments.push(payment),
            Err(reason) => {
                let id = raw
                    .get("claim_ref")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                records.rejected.push(reject(subject_key, id, reason, raw));
            }
        }
    }
    Ok(records)
}

#[async_trait]
impl Connector for AccessToWork {
    fn settings(&self) -> &ConnectorSettings {
        &self.settings
    }

    async fn fetch(&self, subject: &Subject) -> Result<PersonRecords, ConnectorError> {
        let path = format!("/atw/v2/claimants/{}/awards", segment(&subject.value));
        match self.partner.get(&path, None).await? {
            Answer::Body { bytes, .. } => parse_awards(&subject.key(), &bytes),
            Answer::NotFound(body) => not_found(subject.key(), &body, "claimant_not_found"),
            Answer::NotModified => Err(ConnectorError::Malformed("unexpected 304".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    pub(crate) const EXAMPLE: &str = r#"{
  "nino": "AB123456C",
  "awards": [
    {
      "award_ref": "ATW-7788-01",
      "employer": "Acme Ltd",
      "start_date": "2025-09-01",
      "end_date": "2028-08-31",
      "status": "active",
      "payment_route": "reimbursement",
      "elements": [
        {"element": "support_worker", "annual_amount": "14200.00", "hours_per_week": "12.5", "hourly_rate": "21.85"},
        {"element": "special_aids_and_equipment", "one_off_amount": "2400.00", "payment_date": "2025-10-10",
         "description": "Powered wheelchair, used at work and at home"},
        {"element": "travel_to_work", "annual_amount": "3100.00"}
      ]
    }
  ],
  "claims_paid": [
    {"claim_ref": "C-91", "award_ref": "ATW-7788-01", "element": "support_worker",
     "period_start": "2026-04-01", "period_end": "2026-04-30", "amount": "1183.45", "paid_on": "2026-05-09"}
  ]
}"#;

    #[test]
    fn the_documented_example_gives_three_elements_and_one_payment() {
        let r = parse_awards("NINO:AB123456C", EXAMPLE.as_bytes()).unwrap();
        assert!(r.rejected.is_empty());
        let ids: Vec<_> = r.awards.iter().map(|a| a.upstream_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "ATW-7788-01/support_worker",
                "ATW-7788-01/special_aids_and_equipment",
                "ATW-7788-01/travel_to_work"
            ]
        );
        assert_eq!(r.awards[0].frequency, Frequency::Annual);
        assert_eq!(r.awards[0].amount, Decimal::new(1_420_000, 2));
        assert_eq!(r.awards[1].frequency, Frequency::OneOff);
        assert_eq!(
            r.awards[1].payment_date,
            NaiveDate::from_ymd_opt(2025, 10, 10)
        );
        assert_eq!(r.awards[1].delivery.as_deref(), Some("reimbursement"));
        assert_eq!(r.payments.len(), 1);
        assert_eq!(r.payments[0].amount, Decimal::new(118_345, 2));
        assert_eq!(
            r.payments[0].award_upstream_id,
            "ATW-7788-01/support_worker"
        );
    }

    #[test]
    fn an_element_with_both_amounts_or_neither_is_rejected_alone() {
        let mut body: Value = serde_json::from_str(EXAMPLE).unwrap();
        body["awards"][0]["elements"][0]["one_off_amount"] = "10.00".into();
        body["awards"][0]["elements"][2] = serde_json::json!({"element": "travel_to_work"});
        let r = parse_awards("K", body.to_string().as_bytes()).unwrap();
        assert_eq!(r.awards.len(), 1);
        assert_eq!(r.rejected.len(), 2);
        assert!(r.rejected[0].reason.contains("both"));
        assert!(r.rejected[1].reason.contains("neither"));
        assert_eq!(
            r.rejected[1].upstream_id.as_deref(),
            Some("ATW-7788-01/travel_to_work")
        );
    }

    #[test]
    fn two_elements_of_one_kind_get_their_own_ids() {
        let mut body: Value = serde_json::from_str(EXAMPLE).unwrap();
        body["awards"][0]["elements"][2]["element"] = "support_worker".into();
        let r = parse_awards("K", body.to_string().as_bytes()).unwrap();
        assert_eq!(r.awards[0].upstream_id, "ATW-7788-01/support_worker");
        assert_eq!(r.awards[2].upstream_id, "ATW-7788-01/support_worker-2");
    }

    #[test]
    fn withdrawn_counts_nothing_and_a_bad_claim_is_rejected() {
        let mut body: Value = serde_json::from_str(EXAMPLE).unwrap();
        body["awards"][0]["status"] = "withdrawn".into();
        body["claims_paid"][0]["amount"] = "lots".into();
        let r = parse_awards("K", body.to_string().as_bytes()).unwrap();
        assert!(r.awards.iter().all(|a| a.counting == Counting::Paused));
        assert!(r.payments.is_empty());
        assert_eq!(r.rejected[0].upstream_id.as_deref(), Some("C-91"));
    }
}
