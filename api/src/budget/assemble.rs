//! Assembling the combined view: every stream's awards in a window, rounded once per award,
//! every total the exact sum of the rounded figures below it, and every warning.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use connectors::{Award, AwardLine, PersonRecords, Rejected};
use rust_decimal::Decimal;

use super::period::{Schedule, Window, entitlement_pence, to_pence};
use super::split::largest_remainder;

/// Where a stream's data came from this time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceStatus {
    /// Fetched now, or from a snapshot young enough to serve without asking.
    Fresh,
    /// The partner failed; served from the last stored snapshot.
    Stale,
    /// The partner failed and there is no snapshot.
    Unavailable,
}

/// The snapshot a stream's records came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceMeta {
    /// The stream id.
    pub connector: String,
    /// The partner's version marker.
    pub version: Option<String>,
    /// When it was fetched.
    pub fetched_at: DateTime<Utc>,
    /// SHA-256 of the stored records.
    pub content_hash: String,
}

/// One stream's input to the view.
#[derive(Clone, Debug)]
pub struct StreamInput {
    /// Stream id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Connector kind.
    pub kind: String,
    /// Where the data came from.
    pub status: SourceStatus,
    /// The snapshot's metadata, when there is data.
    pub source: Option<SourceMeta>,
    /// The records, when there is data.
    pub records: Option<PersonRecords>,
    /// Rejected records about this person kept for the stream.
    pub rejected: Vec<Rejected>,
    /// The stream's own yearly cap.
    pub yearly_cap: Option<Decimal>,
    /// Why the stream is stale or unavailable, for the warning.
    pub problem: Option<String>,
}

/// A plan item's share drawn on a stream within the window.
#[derive(Clone, Debug)]
pub struct Commitment {
    /// The stream.
    pub stream_id: String,
    /// The plan item.
    pub item_id: String,
    /// The award it draws on, if tied to one.
    pub award_id: Option<String>,
    /// Pence in the window.
    pub pence: i128,
}

/// A warning the view reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// One of the documented codes.
    pub code: &'static str,
    /// For a person to act on.
    pub message: String,
    /// The stream it concerns.
    pub stream_id: Option<String>,
    /// The plan item it concerns.
    pub item_id: Option<String>,
}

/// One award in the window.
#[derive(Clone, Debug)]
pub struct AwardView {
    /// The hub's id for it: `stream:upstream id`.
    pub id: String,
    /// The award as normalised.
    pub award: Award,
    /// Its entitlement in the window, pence.
    pub entitlement: i128,
    /// Its contribution in the window, pence.
    pub contribution: i128,
    /// Its lines with their shares of the entitlement, pence.
    pub lines: Vec<(AwardLine, i128)>,
    /// The snapshot it came from.
    pub source: SourceMeta,
}

/// One stream in the window.
#[derive(Clone, Debug)]
pub struct StreamView {
    /// Stream id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Connector kind.
    pub kind: String,
    /// Where its data came from.
    pub status: SourceStatus,
    /// When its data was fetched.
    pub as_of: Option<DateTime<Utc>>,
    /// Sum of award entitlements.
    pub gross: i128,
    /// Sum of award contributions.
    pub contribution: i128,
    /// gross - contribution, never below zero.
    pub net: i128,
    /// Plan shares drawn on it.
    pub committed: i128,
    /// Payments reported made in the window.
    pub spent: i128,
    /// net - committed.
    pub remaining: i128,
    /// Its awards.
    pub awards: Vec<AwardView>,
}

/// The combined view.
#[derive(Clone, Debug)]
pub struct BudgetView {
    /// The window.
    pub window: Window,
    /// Sum of stream grosses.
    pub gross: i128,
    /// Sum of stream contributions.
    pub contribution: i128,
    /// Sum of stream nets.
    pub net: i128,
    /// Sum of stream commitments.
    pub committed: i128,
    /// Sum of stream spending.
    pub spent: i128,
    /// net - committed.
    pub remaining: i128,
    /// The streams, in configuration order.
    pub streams: Vec<StreamView>,
    /// Gross by purpose, in name order; adds up to `gross` exactly.
    pub purposes: Vec<(String, i128)>,
    /// Warnings, stream by stream.
    pub warnings: Vec<Warning>,
}

/// How near a review date must be to warn.
pub const REVIEW_WARNING_DAYS: i64 = 42;

fn schedule(award: &Award) -> Schedule {
    Schedule {
        frequency: award.frequency,
        counting: award.counting,
        start: award.start_date,
        end: award.end_date,
        payment_date: award.payment_date,
    }
}

fn pounds(pence: i128) -> String {
    crate::graphql::scalars::format_pounds(super::period::to_pounds(pence))
}

/// Works out the view. Pure: the same inputs always give the same figures.
pub fn assemble(
    window: Window,
    today: NaiveDate,
    streams: Vec<StreamInput>,
    commitments: &[Commitment],
) -> BudgetView {
    let mut warnings = Vec::new();
    let mut purposes: BTreeMap<String, i128> = BTreeMap::new();
    let mut views = Vec::with_capacity(streams.len());
    for stream in streams {
        let stream_id = Some(stream.id.clone());
        match stream.status {
            SourceStatus::Stale => warnings.push(Warning {
                code: "SOURCE_STALE",
                message: format!(
                    "{} could not be reached ({}); showing what it said at {}",
                    stream.name,
                    stream.problem.as_deref().unwrap_or("no answer"),
                    stream
                        .source
                        .as_ref()
                        .map_or_else(|| "an earlier time".to_owned(), |s| s.fetched_at.to_rfc3339())
                ),
                stream_id: stream_id.clone(),
                item_id: None,
            }),
            SourceStatus::Unavailable => warnings.push(Warning {
                code: "SOURCE_UNAVAILABLE",
                message: format!(
                    "{} could not be reached ({}) and nothing is stored from it yet; its figures are missing from the totals",
                    stream.name,
                    stream.problem.as_deref().unwrap_or("no answer")
                ),
                stream_id: stream_id.clone(),
                item_id: None,
            }),
            SourceStatus::Fresh => {}
        }
        for rejected in &stream.rejected {
            warnings.push(Warning {
                code: "UPSTREAM_DATA_REJECTED",
                message: format!(
                    "{} sent a record{} that failed validation and is left out: {}",
                    stream.name,
                    rejected
                        .upstream_id
                        .as_deref()
                        .map_or_else(String::new, |id| format!(" ({id})")),
                    rejected.reason
                ),
                stream_id: stream_id.clone(),
                item_id: None,
            });
        }
        let mut view = StreamView {
            id: stream.id.clone(),
            name: stream.name.clone(),
            kind: stream.kind.clone(),
            status: stream.status,
            as_of: stream.source.as_ref().map(|s| s.fetched_at),
            gross: 0,
            contribution: 0,
            net: 0,
            committed: 0,
            spent: 0,
            remaining: 0,
            awards: Vec::new(),
        };
        if let (Some(records), Some(source)) = (&stream.records, &stream.source) {
            for ambiguity in &records.ambiguities {
                warnings.push(Warning {
                    code: "AMBIGUOUS_MATCH",
                    message: format!("{}: {ambiguity}", stream.name),
                    stream_id: stream_id.clone(),
                    item_id: None,
                });
            }
            for award in &records.awards {
                let sched = schedule(award);
                let entitlement = entitlement_pence(award.amount, &sched, &window);
                let contribution = award
                    .contribution
                    .map_or(0, |c| entitlement_pence(c, &sched, &window));
                let weights: Vec<i128> = award.lines.iter().map(|l| to_pence(l.amount)).collect();
                let shares = largest_remainder(entitlement, &weights);
                let lines: Vec<(AwardLine, i128)> =
                    award.lines.iter().cloned().zip(shares).collect();
                if lines.is_empty() {
                    *purposes.entry(award.purpose.clone()).or_default() += entitlement;
                } else {
                    for (line, share) in &lines {
                        *purposes.entry(line.purpose.clone()).or_default() += share;
                    }
                }
                if let Some(review) = award.review_date
                    && (review - today).num_days() <= REVIEW_WARNING_DAYS
                {
                    warnings.push(Warning {
                        code: "REVIEW_DUE",
                        message: if review < today {
                            format!(
                                "{} award {} was due for review on {review}",
                                stream.name, award.upstream_id
                            )
                        } else {
                            format!(
                                "{} award {} is due for review on {review}",
                                stream.name, award.upstream_id
                            )
                        },
                        stream_id: stream_id.clone(),
                        item_id: None,
                    });
                }
                view.gross += entitlement;
                view.contribution += contribution;
                view.awards.push(AwardView {
                    id: format!("{}:{}", stream.id, award.upstream_id),
                    award: award.clone(),
                    entitlement,
                    contribution,
                    lines,
                    source: source.clone(),
                });
            }
            view.spent = records
                .payments
                .iter()
                .filter(|p| window.contains(p.paid_on))
                .map(|p| to_pence(p.amount))
                .sum();
            if let Some(cap) = stream.yearly_cap {
                cap_warnings(&window, &stream, records, to_pence(cap), &mut warnings);
            }
        }
        if view.contribution > view.gross {
            warnings.push(Warning {
                code: "CONTRIBUTION_EXCEEDS_GROSS",
                message: format!(
                    "{}: the assessed contribution {} is more than the budget {}; net is shown as 0.00",
                    stream.name,
                    pounds(view.contribution),
                    pounds(view.gross)
                ),
                stream_id: stream_id.clone(),
                item_id: None,
            });
        }
        view.net = (view.gross - view.contribution).max(0);
        view.committed = commitments
            .iter()
            .filter(|c| c.stream_id == stream.id)
            .map(|c| c.pence)
            .sum();
        view.remaining = view.net - view.committed;
        if view.remaining < 0 {
            warnings.push(Warning {
                code: "OVER_COMMITTED",
                message: format!(
                    "{}: plan items commit {} against a net budget of {}, {} more than it holds",
                    stream.name,
                    pounds(view.committed),
                    pounds(view.net),
                    pounds(-view.remaining)
                ),
                stream_id: stream_id.clone(),
                item_id: None,
            });
        }
        views.push(view);
    }
    double_funding(&views, commitments, &mut warnings);
    let total = |f: fn(&StreamView) -> i128| views.iter().map(f).sum::<i128>();
    let gross = total(|s| s.gross);
    let net = total(|s| s.net);
    let committed = total(|s| s.committed);
    BudgetView {
        window,
        gross,
        contribution: total(|s| s.contribution),
        net,
        committed,
        spent: total(|s| s.spent),
        remaining: net - committed,
        purposes: purposes.into_iter().collect(),
        streams: views,
        warnings,
    }
}

/// One award claimed by two or more plan items past its entitlement in the window.
fn double_funding(views: &[StreamView], commitments: &[Commitment], warnings: &mut Vec<Warning>) {
    let mut by_award: BTreeMap<&str, Vec<&Commitment>> = BTreeMap::new();
    for c in commitments {
        if let Some(award) = c.award_id.as_deref() {
            by_award.entry(award).or_default().push(c);
        }
    }
    for (award_id, claims) in by_award {
        let items: std::collections::BTreeSet<&str> =
            claims.iter().map(|c| c.item_id.as_str()).collect();
        if items.len() < 2 {
            continue;
        }
        let claimed: i128 = claims.iter().map(|c| c.pence).sum();
        let Some(award) = views
            .iter()
            .flat_map(|s| &s.awards)
            .find(|a| a.id == award_id)
        else {
            continue;
        };
        if claimed > award.entitlement {
            for item in items {
                warnings.push(Warning {
                    code: "DOUBLE_FUNDED",
                    message: format!(
                        "award {award_id} is claimed by {} plan items for {} in the window, but holds {}",
                        claims.len(),
                        pounds(claimed),
                        pounds(award.entitlement)
                    ),
                    stream_id: award_id.split(':').next().map(str::to_owned),
                    item_id: Some(item.to_owned()),
                });
            }
        }
    }
}

fn cap_warnings(
    window: &Window,
    stream: &StreamInput,
    records: &PersonRecords,
    cap: i128,
    warnings: &mut Vec<Warning>,
) {
    let mut year = Window::financial_year_of(window.from);
    while let Some(fy) = year {
        if fy.from > window.to {
            break;
        }
        let in_year: i128 = records
            .awards
            .iter()
            .map(|a| entitlement_pence(a.amount, &schedule(a), &fy))
            .sum();
        if in_year > cap {
            warnings.push(Warning {
                code: "CAP_EXCEEDED",
                message: format!(
                    "{}: awards in {}-{:02} come to {}, past the scheme's yearly cap of {}",
                    stream.name,
                    fy.from.year(),
                    (fy.from.year() + 1) % 100,
                    pounds(in_year),
                    pounds(cap)
                ),
                stream_id: Some(stream.id.clone()),
                item_id: None,
            });
        }
        year = Window::financial_year(fy.to.year());
    }
}
