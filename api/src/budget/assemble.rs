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
    for mut stream in streams {
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
        // The records move into the view (each award into its AwardView), not copied.
        let records = stream.records.take();
        if let (Some(records), Some(source)) = (records, &stream.source) {
            for ambiguity in &records.ambiguities {
                warnings.push(Warning {
                    code: "AMBIGUOUS_MATCH",
                    message: format!("{}: {ambiguity}", stream.name),
                    stream_id: stream_id.clone(),
                    item_id: None,
                });
            }
            // The cap's warnings follow the awards' own; worked out first, before the awards
            // move.
            let mut caps = Vec::new();
            if let Some(cap) = stream.yearly_cap {
                cap_warnings(&window, &stream, &records, to_pence(cap), &mut caps);
            }
            view.spent = records
                .payments
                .iter()
                .filter(|p| window.contains(p.paid_on))
                .map(|p| to_pence(p.amount))
                .sum();
            for award in records.awards {
                let sched = schedule(&award);
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
                    award,
                    entitlement,
                    contribution,
                    lines,
                    source: source.clone(),
                });
            }
            warnings.extend(caps);
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use connectors::{Counting, Frequency};
    use proptest::prelude::*;

    fn day(offset: i64) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 4, 1).unwrap_or(NaiveDate::MIN) + Duration::days(offset)
    }

    prop_compose! {
        fn award()(
            frequency in prop_oneof![
                Just(Frequency::Weekly), Just(Frequency::FourWeekly), Just(Frequency::Monthly),
                Just(Frequency::Annual), Just(Frequency::OneOff)
            ],
            counting in prop_oneof![Just(Counting::Active), Just(Counting::Ended), Just(Counting::Paused), Just(Counting::Indicative)],
            lines in proptest::collection::vec(1i64..2_000_000, 0..4),
            single in 0i64..5_000_000,
            contribution in proptest::option::of(0i64..500_000),
            start in proptest::option::of(-800i64..800),
            length in proptest::option::of(0i64..900),
            paid in -800i64..800,
            review in proptest::option::of(-100i64..400),
        ) -> Award {
            let amount = if lines.is_empty() { single } else { lines.iter().sum() };
            let start_date = start.map(day);
            Award {
                upstream_id: format!("A{amount}-{paid}"),
                version: None,
                purpose: format!("p{}", amount % 3),
                delivery: None,
                frequency,
                amount: Decimal::new(amount, 2),
                contribution: contribution.map(|c| Decimal::new(c, 2)),
                start_date,
                end_date: start_date.zip(length).map(|(s, l)| s + Duration::days(l)),
                review_date: review.map(day),
                payment_date: Some(day(paid)),
                status: "x".into(),
                counting,
                lines: lines
                    .iter()
                    .enumerate()
                    .map(|(i, pence)| AwardLine {
                        upstream_id: format!("L{i}"),
                        purpose: format!("line{}", i % 2),
                        delivery: None,
                        description: None,
                        amount: Decimal::new(*pence, 2),
                    })
                    .collect(),
            }
        }
    }

    fn stream(id: &str, awards: Vec<Award>) -> StreamInput {
        StreamInput {
            id: id.into(),
            name: id.into(),
            kind: "test".into(),
            status: SourceStatus::Fresh,
            source: Some(SourceMeta {
                connector: id.into(),
                version: None,
                fetched_at: Utc::now(),
                content_hash: "h".into(),
            }),
            records: Some(PersonRecords {
                subject_key: "K".into(),
                awards,
                ..PersonRecords::default()
            }),
            rejected: Vec::new(),
            yearly_cap: None,
            problem: None,
        }
    }

    proptest! {
        #[test]
        fn every_total_is_the_exact_sum_of_its_parts(
            a in proptest::collection::vec(award(), 0..6),
            b in proptest::collection::vec(award(), 0..6),
            from in -400i64..400,
            length in 0i64..800,
            committed in 0i128..3_000_000,
        ) {
            let window = Window::new(day(from), day(from + length)).unwrap_or(Window { from: day(0), to: day(0) });
            let commitments = [Commitment { stream_id: "a".into(), item_id: "i".into(), award_id: None, pence: committed }];
            let view = assemble(window, day(0), vec![stream("a", a), stream("b", b)], &commitments);
            let streams_gross: i128 = view.streams.iter().map(|s| s.gross).sum();
            let purposes: i128 = view.purposes.iter().map(|(_, p)| p).sum();
            prop_assert_eq!(view.gross, streams_gross);
            prop_assert_eq!(view.gross, purposes);
            prop_assert_eq!(view.net, view.streams.iter().map(|s| s.net).sum::<i128>());
            prop_assert_eq!(view.remaining, view.net - view.committed);
            prop_assert_eq!(view.committed, committed);
            for s in &view.streams {
                prop_assert_eq!(s.gross, s.awards.iter().map(|a| a.entitlement).sum::<i128>());
                prop_assert_eq!(s.contribution, s.awards.iter().map(|a| a.contribution).sum::<i128>());
                prop_assert_eq!(s.net, (s.gross - s.contribution).max(0));
                prop_assert_eq!(s.remaining, s.net - s.committed);
                for award in &s.awards {
                    prop_assert!(award.entitlement >= 0);
                    if !award.lines.is_empty() {
                        prop_assert_eq!(award.lines.iter().map(|(_, p)| p).sum::<i128>(), award.entitlement);
                    }
                    if matches!(award.award.counting, Counting::Paused | Counting::Indicative) {
                        prop_assert_eq!(award.entitlement, 0);
                    }
                }
            }
        }
    }

    #[test]
    fn a_streams_warnings_come_ambiguities_awards_then_its_cap() {
        let award = |id: &str, pounds: i64| Award {
            upstream_id: id.into(),
            version: None,
            purpose: "support".into(),
            delivery: None,
            frequency: Frequency::Annual,
            amount: Decimal::new(pounds * 100, 2),
            contribution: None,
            start_date: Some(day(0)),
            end_date: None,
            review_date: Some(day(10)),
            payment_date: None,
            status: "agreed".into(),
            counting: Counting::Active,
            lines: Vec::new(),
        };
        let mut capped = stream("atw", vec![award("A-1", 40_000), award("A-2", 30_000)]);
        capped.yearly_cap = Some(Decimal::new(50_000, 0));
        if let Some(records) = &mut capped.records {
            records.ambiguities.push("two claimants match".into());
        }
        let window = Window::parse_financial_year("2026-27").unwrap_or(Window {
            from: day(0),
            to: day(0),
        });
        let view = assemble(window, day(0), vec![capped], &[]);
        let codes: Vec<&str> = view.warnings.iter().map(|w| w.code).collect();
        assert_eq!(
            codes,
            [
                "AMBIGUOUS_MATCH",
                "REVIEW_DUE",
                "REVIEW_DUE",
                "CAP_EXCEEDED"
            ]
        );
        assert!(
            view.warnings[3].message.contains("70000.00"),
            "{}",
            view.warnings[3].message
        );
        let ids: Vec<&str> = view.streams[0]
            .awards
            .iter()
            .map(|a| a.award.upstream_id.as_str())
            .collect();
        assert_eq!(ids, ["A-1", "A-2"]);
        assert_eq!(view.streams[0].gross, 7_000_000);
    }

    #[test]
    fn a_contribution_above_gross_nets_to_zero_for_its_own_stream_only() {
        let mut council = Award {
            upstream_id: "PB".into(),
            version: None,
            purpose: "social_care".into(),
            delivery: None,
            frequency: Frequency::Weekly,
            amount: Decimal::new(6000, 2),
            contribution: Some(Decimal::new(7500, 2)),
            start_date: Some(day(0)),
            end_date: None,
            review_date: None,
            payment_date: None,
            status: "agreed".into(),
            counting: Counting::Active,
            lines: Vec::new(),
        };
        let mut other = council.clone();
        other.contribution = None;
        council.upstream_id = "PB-1".into();
        let window = Window::parse_financial_year("2026-27").unwrap_or(Window {
            from: day(0),
            to: day(0),
        });
        let view = assemble(
            window,
            day(0),
            vec![stream("council", vec![council]), stream("ilf", vec![other])],
            &[],
        );
        // 60.00 x 365 / 7 = 3128.57; contribution 75.00 x 365 / 7 = 3910.71.
        assert_eq!(view.streams[0].net, 0);
        assert_eq!(view.streams[1].net, 312_857);
        assert_eq!(
            view.net, 312_857,
            "the person's net is more than gross minus contribution"
        );
        assert_eq!(view.gross - view.contribution, 625_714 - 391_071);
        assert!(
            view.warnings
                .iter()
                .any(|w| w.code == "CONTRIBUTION_EXCEEDS_GROSS"
                    && w.stream_id.as_deref() == Some("council"))
        );
    }
}
