//! The Independent Living Fund's nightly award extract (upstreams/ilf.md): a CSV file over HTTP
//! with an ETag. It is downloaded to a temporary file as a stream, then parsed row by row, so
//! memory stays flat however large the file grows.

use std::io::Read;

use async_trait::async_trait;
use chrono::NaiveDate;
use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_NONE_MATCH};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::breaker::Breaker;
use crate::config::ConnectorSettings;
use crate::connector::{Connector, Extract, Shape, Subject};
use crate::error::ConnectorError;
use crate::identifiers::{IdentifierScheme, normalise_nino};
use crate::model::{Award, Counting, Frequency, PersonRecords, Rejected, parse_pounds};

/// The extract's columns, in order.
pub const HEADER: [&str; 10] = [
    "ilf_reference",
    "nino",
    "family_name",
    "date_of_birth",
    "award_amount",
    "award_period",
    "start_date",
    "end_date",
    "next_review",
    "status",
];

/// The ILF connector (a bulk source).
#[derive(Debug)]
pub struct Ilf {
    settings: ConnectorSettings,
    client: reqwest::Client,
    breaker: Breaker,
}

impl Ilf {
    /// Builds it.
    pub fn new(settings: ConnectorSettings) -> Result<Self, ConnectorError> {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_millis(settings.timeout_ms))
            .build()
            .map_err(|e| ConnectorError::Misconfigured(format!("HTTP client: {e}")))?;
        let breaker = Breaker::new(
            settings.breaker_threshold,
            std::time::Duration::from_millis(settings.breaker_cool_down_ms),
        );
        Ok(Self {
            settings,
            client,
            breaker,
        })
    }

    async fn download_inner(&self, etag: Option<&str>) -> Result<Extract, ConnectorError> {
        let url = format!(
            "{}/extracts/awards.csv",
            self.settings.base_url.trim_end_matches('/')
        );
        let mut request = self.client.get(&url);
        if let Some(tag) = etag {
            request = request.header(IF_NONE_MATCH, tag);
        }
        let response = request.send().await.map_err(|e| {
            ConnectorError::Unavailable(if e.is_connect() {
                "connection refused or failed".into()
            } else {
                "the request failed".into()
            })
        })?;
        match response.status() {
            StatusCode::NOT_MODIFIED => return Ok(Extract::NotModified),
            StatusCode::OK => {}
            s if s.is_server_error() => {
                return Err(ConnectorError::Unavailable(format!("HTTP {}", s.as_u16())));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                return Err(ConnectorError::RateLimited { retry_after: None });
            }
            s => {
                return Err(ConnectorError::Malformed(format!(
                    "unexpected HTTP status {}",
                    s.as_u16()
                )));
            }
        }
        let new_etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let temp = tempfile::NamedTempFile::new().map_err(|e| {
            ConnectorError::Misconfigured(format!("no temporary file for the extract: {e}"))
        })?;
        let (file, path) = temp.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let mut hasher = Sha256::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|_| ConnectorError::Unavailable("the extract was cut off".into()))?;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| ConnectorError::Misconfigured(format!("writing the extract: {e}")))?;
        }
        file.flush()
            .await
            .map_err(|e| ConnectorError::Misconfigured(format!("writing the extract: {e}")))?;
        Ok(Extract::File {
            file: path,
            etag: new_etag,
            content_hash: hex::encode(hasher.finalize()),
        })
    }
}

#[async_trait]
impl Connector for Ilf {
    fn settings(&self) -> &ConnectorSettings {
        &self.settings
    }

    fn shape(&self) -> Shape {
        Shape::Bulk
    }

    async fn fetch(&self, _subject: &Subject) -> Result<PersonRecords, ConnectorError> {
        Err(ConnectorError::Misconfigured(
            "the ILF publishes an extract; person look-ups read the hub's store".into(),
        ))
    }

    async fn download(&self, etag: Option<&str>) -> Result<Extract, ConnectorError> {
        if !self.breaker.allow() {
            return Err(ConnectorError::CircuitOpen);
        }
        // A large file takes time: the bound is the retry budget, not one request's timeout.
        let budget = std::time::Duration::from_millis(
            self.settings.retry_budget_ms.max(self.settings.timeout_ms),
        );
        let result = match tokio::time::timeout(budget, self.download_inner(etag)).await {
            Ok(result) => result,
            Err(_) => Err(ConnectorError::Timeout(budget)),
        };
        match &result {
            Ok(_) => self.breaker.success(),
            Err(_) => self.breaker.failure(),
        }
        result
    }
}

/// One parsed row of the extract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// A valid award, with whom it names (`NINO:...`).
    Award {
        /// `NINO:AB123456C`.
        subject_key: String,
        /// The award.
        award: Award,
    },
    /// A row that broke the rules, with its line number and reason.
    Rejected(Rejected),
}

/// Counts from one parse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseCounts {
    /// Valid rows.
    pub accepted: u64,
    /// Rejected rows.
    pub rejected: u64,
}

/// A `DD/MM/YYYY` date: exactly two, two and four digits, a real day of a real month. Read by
/// hand, not through chrono's format parser, which reads the format string again for every
/// field: with four dates a row that was over half the extract's parse time.
fn uk_date(field: &str, text: &str) -> Result<NaiveDate, String> {
    let digits = |range: std::ops::Range<usize>| {
        text.as_bytes()[range].iter().try_fold(0u32, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
        })
    };
    let bytes = text.as_bytes();
    let ok_shape = bytes.len() == 10 && bytes[2] == b'/' && bytes[5] == b'/';
    ok_shape
        .then(|| {
            let (day, month, year) = (digits(0..2)?, digits(3..5)?, digits(6..10)?);
            NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)
        })
        .flatten()
        .ok_or_else(|| format!("{field} is not a date in DD/MM/YYYY"))
}

/// Pounds with two places, allowing a thousands comma (`1,250.00`) only where commas group
/// thousands correctly.
fn ilf_amount(text: &str) -> Option<Decimal> {
    if text.contains(',') {
        let (whole, frac) = text.split_once('.')?;
        let groups: Vec<&str> = whole.split(',').collect();
        let first_ok = groups.first().is_some_and(|g| (1..=3).contains(&g.len()));
        let rest_ok = groups.iter().skip(1).all(|g| g.len() == 3);
        if !(first_ok && rest_ok) {
            return None;
        }
        return parse_pounds(&format!("{}.{frac}", groups.concat()));
    }
    parse_pounds(text)
}

/// Why a row was rejected, with what of it could be read.
struct RowError {
    upstream_id: Option<String>,
    subject_key: Option<String>,
    reason: String,
}

fn parse_row(record: &csv::StringRecord) -> Result<(String, Award), RowError> {
    let field = |i: usize| record.get(i).unwrap_or("").trim();
    let reference = field(0);
    // Only a rejected row needs its reference apart from the award.
    let id = || (!reference.is_empty()).then(|| reference.to_owned());
    if record.len() != HEADER.len() {
        return Err(RowError {
            upstream_id: id(),
            // Shown on the budget of the person it names, when the NINO can still be read.
            subject_key: normalise_nino(field(1))
                .ok()
                .map(|nino| format!("{}:{nino}", IdentifierScheme::Nino.as_str())),
            reason: format!("the row has {} fields, not {}", record.len(), HEADER.len()),
        });
    }
    let nino = normalise_nino(field(1)).map_err(|e| RowError {
        upstream_id: id(),
        subject_key: None,
        reason: format!("nino: {e}"),
    })?;
    let subject_key = format!("{}:{nino}", IdentifierScheme::Nino.as_str());
    let fail = |reason: String| RowError {
        upstream_id: id(),
        subject_key: Some(subject_key.clone()),
        reason,
    };
    if reference.is_empty() {
        return Err(fail("ilf_reference is empty".into()));
    }
    uk_date("date_of_birth", field(3)).map_err(fail)?;
    let amount = ilf_amount(field(4)).ok_or_else(|| {
        fail("award_amount is not an amount in pounds with two decimal places".into())
    })?;
    if field(5) != "4-weekly" {
        return Err(fail(format!("award_period '{}' is not 4-weekly", field(5))));
    }
    let start = uk_date("start_date", field(6)).map_err(fail)?;
    let end = match field(7) {
        "" => None,
        text => Some(uk_date("end_date", text).map_err(fail)?),
    };
    if end.is_some_and(|end| end < start) {
        return Err(fail("end_date is before start_date".into()));
    }
    let review = match field(8) {
        "" => None,
        text => Some(uk_date("next_review", text).map_err(fail)?),
    };
    let counting = match field(9) {
        "active" => Counting::Active,
        "suspended" => Counting::Paused,
        "closed" => Counting::Ended,
        other => return Err(fail(format!("unknown status '{other}'"))),
    };
    Ok((
        subject_key,
        Award {
            upstream_id: reference.to_owned(),
            version: None,
            purpose: "independent_living".into(),
            delivery: None,
            frequency: Frequency::FourWeekly,
            amount,
            contribution: None,
            start_date: Some(start),
            end_date: end,
            review_date: review,
            payment_date: None,
            status: field(9).to_owned(),
            counting,
            lines: Vec::new(),
        },
    ))
}

/// Parses the extract as a stream, handing each row to `each`. A wrong header refuses the
/// whole file; a bad row is handed over as rejected, with its line number, and the rest goes on.
pub fn parse_extract<R: Read, E>(
    reader: R,
    mut each: impl FnMut(Row) -> Result<(), E>,
) -> Result<Result<ParseCounts, E>, ConnectorError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(reader);
    let header = csv
        .headers()
        .map_err(|e| ConnectorError::ExtractRefused(format!("the header cannot be read: {e}")))?;
    let found: Vec<&str> = header.iter().map(str::trim).collect();
    if found != HEADER {
        return Err(ConnectorError::ExtractRefused(format!(
            "the header is not the published one (expected {}); the previous extract stays in use",
            HEADER.join(",")
        )));
    }
    let mut counts = ParseCounts::default();
    let mut record = csv::StringRecord::new();
    loop {
        let line = csv.position().line();
        let row = match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => match parse_row(&record) {
                Ok((subject_key, award)) => Row::Award { subject_key, award },
                Err(RowError {
                    upstream_id,
                    subject_key,
                    reason,
                }) => Row::Rejected(Rejected {
                    raw: format!(
                        "line {line}, ilf_reference {}",
                        upstream_id.as_deref().unwrap_or("(none)")
                    ),
                    upstream_id,
                    subject_key,
                    line: Some(line),
                    reason: format!("line {line}: {reason}"),
                }),
            },
            Err(e) => Row::Rejected(Rejected {
                upstream_id: None,
                subject_key: None,
                line: Some(line),
                reason: format!(
                    "line {line}: the row cannot be read as CSV ({})",
                    csv_error_kind(&e)
                ),
                raw: format!("line {line}"),
            }),
        };
        match &row {
            Row::Award { .. } => counts.accepted += 1,
            Row::Rejected(_) => counts.rejected += 1,
        }
        if let Err(e) = each(row) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(counts))
}

fn csv_error_kind(error: &csv::Error) -> &'static str {
    match error.kind() {
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8",
        csv::ErrorKind::UnequalLengths { .. } => "wrong number of fields",
        _ => "malformed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "ilf_reference,nino,family_name,date_of_birth,award_amount,award_period,start_date,end_date,next_review,status
ILF-000317,AB123456C,Okafor,14/03/1979,1100.00,4-weekly,01/04/2024,,05/06/2026,active
ILF-000318,CE654321A,\"O'Neill, Jr\",02/11/1990,\"1,250.00\",4-weekly,01/10/2025,31/03/2027,01/10/2026,suspended
";

    fn parse(text: &str) -> Result<Vec<Row>, ConnectorError> {
        let mut rows = Vec::new();
        parse_extract(text.as_bytes(), |row| {
            rows.push(row);
            Ok::<(), ()>(())
        })?
        .unwrap();
        Ok(rows)
    }

    #[test]
    fn a_uk_date_is_read_as_chrono_reads_dd_mm_yyyy_and_nothing_looser() {
        let chrono = |text: &str| NaiveDate::parse_from_str(text, "%d/%m/%Y").ok();
        // Every day of two centuries, and every impossible day and month of a leap year and
        // a common one.
        let mut day = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap();
        while chrono::Datelike::year(&day) < 2100 {
            let text = day.format("%d/%m/%Y").to_string();
            assert_eq!(uk_date("d", &text).ok(), Some(day), "{text}");
            day = day.succ_opt().unwrap();
        }
        for year in [2023, 2024] {
            for month in 0..=13 {
                for d in 0..=32 {
                    let text = format!("{d:02}/{month:02}/{year}");
                    assert_eq!(uk_date("d", &text).ok(), chrono(&text), "{text}");
                }
            }
        }
        for text in [
            "1/01/2024",
            "01/1/2024",
            "01-01-2024",
            "2024-01-01",
            "01/01/24",
            " 1/01/2024",
            "+1/01/2024",
            "01/+1/2024",
            "01/01/+024",
            "0a/01/2024",
            "01/01/2024 ",
            "",
        ] {
            assert!(uk_date("d", text).is_err(), "{text:?}");
        }
        assert_eq!(
            uk_date("start_date", "31/02/2024").unwrap_err(),
            "start_date is not a date in DD/MM/YYYY"
        );
    }

    #[test]
    fn the_documented_example_parses_with_quotes_and_thousands_commas() {
        let rows = parse(EXAMPLE).unwrap();
        assert_eq!(rows.len(), 2);
        let Row::Award { subject_key, award } = &rows[1] else {
            panic!("{rows:?}")
        };
        assert_eq!(subject_key, "NINO:CE654321A");
        assert_eq!(award.upstream_id, "ILF-000318");
        assert_eq!(award.amount, Decimal::new(125_000, 2));
        assert_eq!(award.frequency, Frequency::FourWeekly);
        assert_eq!(award.counting, Counting::Paused);
        assert_eq!(award.end_date, NaiveDate::from_ymd_opt(2027, 3, 31));
        let Row::Award { award, .. } = &rows[0] else {
            panic!()
        };
        assert_eq!(award.end_date, None);
        assert_eq!(award.review_date, NaiveDate::from_ymd_opt(2026, 6, 5));
        assert_eq!(award.purpose, "independent_living");
    }

    #[test]
    fn bad_rows_are_rejected_with_their_line_numbers_and_the_rest_loads() {
        let text = format!(
            "{EXAMPLE}ILF-1,ZZ123456A,X,01/01/1980,10.00,4-weekly,01/04/2024,,,active
ILF-2,AB123456C,X,31/02/1980,10.00,4-weekly,01/04/2024,,,active
ILF-3,AB123456C,X,01/01/1980,ten,4-weekly,01/04/2024,,,active
ILF-4,AB123456C,X,01/01/1980,10.00,weekly,01/04/2024,,,active
ILF-5,AB123456C,X,01/01/1980,\"12,50.00\",4-weekly,01/04/2024,,,active
ILF-6,AB123456C,X,01/01/1980,10.00,4-weekly,2024-04-01,,,active
ILF-7,AB123456C,X
ILF-8,ab 12 34 56 c,X,01/01/1980,10.00,4-weekly,01/04/2024,,,active
"
        );
        let rows = parse(&text).unwrap();
        let rejected: Vec<&Rejected> = rows
            .iter()
            .filter_map(|r| match r {
                Row::Rejected(r) => Some(r),
                Row::Award { .. } => None,
            })
            .collect();
        let lines: Vec<u64> = rejected.iter().map(|r| r.line.unwrap()).collect();
        assert_eq!(lines, [4, 5, 6, 7, 8, 9, 10]);
        assert!(rejected[0].reason.contains("nino"));
        assert!(rejected[1].reason.contains("date_of_birth"));
        assert!(rejected[2].reason.contains("award_amount"));
        assert!(rejected[3].reason.contains("award_period"));
        assert!(rejected[4].reason.contains("award_amount"));
        assert!(rejected[5].reason.contains("start_date"));
        assert!(rejected[6].reason.contains("fields"));
        assert_eq!(rejected[6].subject_key.as_deref(), Some("NINO:AB123456C"));
        assert_eq!(rejected[1].subject_key.as_deref(), Some("NINO:AB123456C"));
        // Raw keeps enough to find the row upstream, and no name or date of birth.
        assert!(!rejected.iter().any(|r| r.raw.contains("01/01/1980")));
        let accepted = rows
            .iter()
            .filter(|r| matches!(r, Row::Award { .. }))
            .count();
        assert_eq!(
            accepted, 3,
            "the last row's lower-case spaced NINO is folded and accepted"
        );
    }

    #[test]
    fn a_wrong_header_refuses_the_whole_file() {
        let text = EXAMPLE.replacen("award_amount", "amount", 1);
        assert!(matches!(
            parse(&text),
            Err(ConnectorError::ExtractRefused(_))
        ));
    }
}
