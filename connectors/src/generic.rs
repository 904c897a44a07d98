//! A stream added by configuration alone: any REST/JSON partner whose records can be found by
//! JSON Pointers (RFC 6901). No code changes: the `[[connector]]` table says where the person's
//! identifier goes in the URL and where each field is in the answer.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::NaiveDate;
use reqwest::header::HeaderName;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::ConnectorSettings;
use crate::connector::{Connector, Subject, required_secret};
use crate::error::ConnectorError;
use crate::http::{Answer, Partner, PartnerAuth};
use crate::identifiers::IdentifierScheme;
use crate::model::{Award, Counting, Frequency, PersonRecords, Rejected, json_error, parse_pounds};
use crate::secrets::Secrets;

/// Where each field is, as JSON Pointers into the partner's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// The array of awards ("" when the answer is the array).
    pub awards: String,
    /// Each award's id.
    pub id: String,
    /// Each award's amount (a decimal string in pounds).
    pub amount: String,
    /// Each award's frequency word (mapped through `frequency_map`, else read as
    /// weekly | four_weekly | monthly | annual | one_off).
    #[serde(default)]
    pub frequency: Option<String>,
    /// A frequency every award has, instead of `frequency`.
    #[serde(default)]
    pub fixed_frequency: Option<Frequency>,
    /// Partner frequency words to ours.
    #[serde(default)]
    pub frequency_map: BTreeMap<String, Frequency>,
    /// Start date (YYYY-MM-DD).
    #[serde(default)]
    pub start_date: Option<String>,
    /// End date.
    #[serde(default)]
    pub end_date: Option<String>,
    /// Review date.
    #[serde(default)]
    pub review_date: Option<String>,
    /// A one-off's payment date.
    #[serde(default)]
    pub payment_date: Option<String>,
    /// What it pays for.
    #[serde(default)]
    pub purpose: Option<String>,
    /// A purpose every award has, instead of `purpose`.
    #[serde(default)]
    pub fixed_purpose: Option<String>,
    /// How it is delivered.
    #[serde(default)]
    pub delivery: Option<String>,
    /// The status word.
    #[serde(default)]
    pub status: Option<String>,
    /// Partner status words to what they mean for counting (active | ended | paused |
    /// indicative). Without `status`, every award is active.
    #[serde(default)]
    pub status_map: BTreeMap<String, Counting>,
    /// A version marker.
    #[serde(default)]
    pub version: Option<String>,
}

impl Mapping {
    /// Checks the mapping can be used.
    pub fn validate(&self) -> Result<(), String> {
        let pointers = [
            Some(&self.id),
            Some(&self.amount),
            self.frequency.as_ref(),
            self.start_date.as_ref(),
            self.end_date.as_ref(),
            self.review_date.as_ref(),
            self.payment_date.as_ref(),
            self.purpose.as_ref(),
            self.delivery.as_ref(),
            self.status.as_ref(),
            self.version.as_ref(),
        ];
        if !(self.awards.is_empty() || self.awards.starts_with('/')) {
            return Err(
                "awards must be a JSON Pointer such as /grants (or \"\" for the whole answer)"
                    .into(),
            );
        }
        if pointers.into_iter().flatten().any(|p| !p.starts_with('/')) {
            return Err(
                "every field must be a JSON Pointer starting with '/', such as /amount".into(),
            );
        }
        if self.frequency.is_some() == self.fixed_frequency.is_some() {
            return Err("give exactly one of frequency and fixed_frequency".into());
        }
        if self.purpose.is_some() == self.fixed_purpose.is_some() {
            return Err("give exactly one of purpose and fixed_purpose".into());
        }
        if self.status.is_some() && self.status_map.is_empty() {
            return Err("status needs a status_map saying what each status word means".into());
        }
        Ok(())
    }

    fn text<'a>(&self, record: &'a Value, pointer: Option<&String>) -> Option<&'a str> {
        pointer
            .and_then(|p| record.pointer(p))
            .and_then(Value::as_str)
    }

    fn date(
        &self,
        record: &Value,
        name: &str,
        pointer: Option<&String>,
    ) -> Result<Option<NaiveDate>, String> {
        match pointer.and_then(|p| record.pointer(p)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(Some)
                .map_err(|_| format!("{name} is not a date in YYYY-MM-DD")),
            Some(_) => Err(format!("{name} is not a date string")),
        }
    }

    /// Reads one award.
    pub fn award(&self, record: &Value) -> Result<Award, String> {
        let id = match record.pointer(&self.id) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err("the id is missing".into()),
        };
        let amount = match record.pointer(&self.amount) {
            Some(Value::String(s)) => parse_pounds(s)
                .ok_or("the amount is not an amount in pounds with two decimal places")?,
            Some(_) => return Err("the amount is not a decimal string such as \"412.50\"".into()),
            None => return Err("the amount is missing".into()),
        };
        let frequency = match (
            &self.fixed_frequency,
            self.text(record, self.frequency.as_ref()),
        ) {
            (Some(fixed), _) => *fixed,
            (None, Some(word)) => self
                .frequency_map
                .get(word)
                .copied()
                .or_else(|| Frequency::parse(word))
                .ok_or_else(|| format!("unknown frequency '{word}'"))?,
            (None, None) => return Err("the frequency is missing".into()),
        };
        let purpose = match (
            &self.fixed_purpose,
            self.text(record, self.purpose.as_ref()),
        ) {
            (Some(fixed), _) => fixed.clone(),
            (None, Some(p)) if !p.is_empty() => p.to_owned(),
            _ => return Err("the purpose is missing".into()),
        };
        let (status, counting) = match self.text(record, self.status.as_ref()) {
            None if self.status.is_none() => ("active".to_owned(), Counting::Active),
            None => return Err("the status is missing".into()),
            Some(word) => (
                word.to_owned(),
                *self
                    .status_map
                    .get(word)
                    .ok_or_else(|| format!("unknown status '{word}'"))?,
            ),
        };
        let start_date = self.date(record, "start_date", self.start_date.as_ref())?;
        let end_date = self.date(record, "end_date", self.end_date.as_ref())?;
        if let (Some(start), Some(end)) = (start_date, end_date)
            && end < start
        {
            return Err("end_date is before start_date".into());
        }
        let payment_date = self.date(record, "payment_date", self.payment_date.as_ref())?;
        if frequency == Frequency::OneOff && payment_date.is_none() {
            return Err("a one-off award needs a payment_date".into());
        }
        Ok(Award {
            upstream_id: id,
            version: match self.version.as_ref().and_then(|p| record.pointer(p)) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            },
            purpose,
            delivery: self.text(record, self.delivery.as_ref()).map(str::to_owned),
            frequency,
            amount,
            contribution: None,
            start_date,
            end_date,
            review_date: self.date(record, "review_date", self.review_date.as_ref())?,
            payment_date,
            status,
            counting,
            lines: Vec::new(),
        })
    }

    /// Reads every award of an answer: one bad record is rejected on its own.
    pub fn parse(&self, subject_key: &str, body: &[u8]) -> Result<PersonRecords, ConnectorError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ConnectorError::Malformed(format!("the answer is not JSON: {}", json_error(&e)))
        })?;
        let list = value
            .pointer(&self.awards)
            .and_then(Value::as_array)
            .ok_or_else(|| {
                ConnectorError::Malformed(format!("no array of awards at '{}'", self.awards))
            })?;
        let mut records = PersonRecords {
            subject_key: subject_key.to_owned(),
            ..PersonRecords::default()
        };
        for record in list {
            match self.award(record) {
                Ok(award) => records.awards.push(award),
                Err(reason) => records.rejected.push(Rejected {
                    upstream_id: record
                        .pointer(&self.id)
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)),
                    subject_key: Some(subject_key.to_owned()),
                    line: None,
                    reason,
                    raw: record.to_string(),
                }),
            }
        }
        Ok(records)
    }
}

/// The generic REST connector.
#[derive(Debug)]
pub struct GenericRest {
    settings: ConnectorSettings,
    partner: Partner,
    mapping: Mapping,
    scheme: IdentifierScheme,
    path: String,
}

impl GenericRest {
    /// Builds it from its table.
    pub fn new(settings: ConnectorSettings, secrets: &Secrets) -> Result<Self, ConnectorError> {
        settings
            .validate()
            .map_err(|e| ConnectorError::Misconfigured(e.to_string()))?;
        let (Some(mapping), Some(scheme), Some(path)) = (
            settings.mapping.clone(),
            settings.identifier_scheme,
            settings.path.clone(),
        ) else {
            return Err(ConnectorError::Misconfigured(
                "generic_rest needs path, identifier_scheme and mapping".into(),
            ));
        };
        let auth = match (&settings.auth_header, &settings.token_env) {
            (Some(header), _) => PartnerAuth::Header(
                HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    ConnectorError::Misconfigured(format!(
                        "auth_header '{header}' is not a header name"
                    ))
                })?,
                required_secret(secrets, settings.api_key_env.as_ref(), "api_key_env")?,
            ),
            (None, Some(_)) => PartnerAuth::Bearer(required_secret(
                secrets,
                settings.token_env.as_ref(),
                "token_env",
            )?),
            (None, None) => PartnerAuth::None,
        };
        let partner = Partner::new(&settings, auth)?;
        Ok(Self {
            settings,
            partner,
            mapping,
            scheme,
            path,
        })
    }
}

#[async_trait]
impl Connector for GenericRest {
    fn settings(&self) -> &ConnectorSettings {
        &self.settings
    }

    fn schemes(&self) -> Vec<IdentifierScheme> {
        vec![self.scheme]
    }

    async fn fetch(&self, subject: &Subject) -> Result<PersonRecords, ConnectorError> {
        let path = self
            .path
            .replace("{value}", &crate::http::segment(&subject.value));
        match self.partner.get(&path, None).await? {
            Answer::Body { bytes, .. } => self.mapping.parse(&subject.key(), &bytes),
            Answer::NotFound(_) => Ok(PersonRecords {
                subject_key: subject.key(),
                ..PersonRecords::default()
            }),
            Answer::NotModified => Err(ConnectorError::Malformed("unexpected 304".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn mapping() -> Mapping {
        Mapping {
            awards: "/data/grants".into(),
            id: "/ref".into(),
            amount: "/value/amount".into(),
            frequency: None,
            fixed_frequency: Some(Frequency::OneOff),
            frequency_map: BTreeMap::new(),
            start_date: None,
            end_date: None,
            review_date: None,
            payment_date: Some("/paid".into()),
            purpose: None,
            fixed_purpose: Some("home_adaptation".into()),
            delivery: None,
            status: Some("/state".into()),
            status_map: BTreeMap::from([
                ("approved".to_owned(), Counting::Active),
                ("cancelled".to_owned(), Counting::Paused),
            ]),
            version: None,
        }
    }

    #[test]
    fn fields_are_read_through_pointers_and_statuses_mapped() {
        let body = br#"{"data": {"grants": [
            {"ref": "DFG-1", "value": {"amount": "8500.00"}, "paid": "2026-06-01", "state": "approved"},
            {"ref": "DFG-2", "value": {"amount": "100.00"}, "paid": "2026-07-01", "state": "cancelled"},
            {"ref": "DFG-3", "value": {"amount": 5}, "paid": "2026-07-01", "state": "approved"},
            {"ref": "DFG-4", "value": {"amount": "1.00"}, "paid": "2026-07-01", "state": "lost"}
        ]}}"#;
        let r = mapping().parse("NINO:AB123456C", body).unwrap();
        assert_eq!(r.awards.len(), 2);
        assert_eq!(r.awards[0].amount, Decimal::new(850_000, 2));
        assert_eq!(r.awards[0].purpose, "home_adaptation");
        assert_eq!(r.awards[0].frequency, Frequency::OneOff);
        assert_eq!(r.awards[1].counting, Counting::Paused);
        assert_eq!(r.rejected.len(), 2);
        assert!(r.rejected[0].reason.contains("decimal string"));
        assert!(r.rejected[1].reason.contains("unknown status 'lost'"));
    }

    #[test]
    fn an_unusable_mapping_is_refused() {
        let mut m = mapping();
        m.frequency = Some("/f".into());
        assert!(
            m.validate()
                .unwrap_err()
                .contains("exactly one of frequency")
        );
        let mut m = mapping();
        m.id = "ref".into();
        assert!(m.validate().unwrap_err().contains("JSON Pointer"));
        assert!(mapping().validate().is_ok());
    }
}
