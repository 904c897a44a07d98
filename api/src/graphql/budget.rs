//! The combined super personal budget over GraphQL: thin types over the pure assembly.

use async_graphql::{Context, Enum, ID, Object, SimpleObject};
use chrono::SecondsFormat;

use super::plan::PlanItem;
use super::scalars::{Date, Money};
use super::streams::FundingStream;
use super::{GqlResult, app, principal};
use crate::budget::assemble::{AwardView, BudgetView, SourceMeta, StreamView, Warning};
use crate::budget::period::to_pounds;

fn money(pence: i128) -> Money {
    Money::gbp(to_pounds(pence))
}

pub(super) fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Where a stream's figures came from this time.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(remote = "crate::budget::assemble::SourceStatus")]
pub enum SourceStatus {
    /// Fetched now, or from a snapshot young enough to serve without asking the partner.
    Fresh,
    /// The partner could not be reached; these are the figures it gave last time (see asOf).
    Stale,
    /// The partner could not be reached and nothing is stored from it: no figures.
    Unavailable,
}

/// A person's combined budget across every stream, in one window. Every total is the exact sum
/// of the rounded figures below it.
pub struct SuperBudget(pub BudgetView, pub String);

#[Object]
impl SuperBudget {
    /// First day of the window.
    async fn from(&self) -> Date {
        Date(self.0.window.from)
    }
    /// Last day of the window.
    async fn to(&self) -> Date {
        Date(self.0.window.to)
    }
    /// Sum of every stream's gross.
    async fn gross(&self) -> Money {
        money(self.0.gross)
    }
    /// Sum of every stream's contribution (the person's assessed charges).
    async fn contribution(&self) -> Money {
        money(self.0.contribution)
    }
    /// Sum of every stream's net (each stream's gross less its own contribution, never below 0).
    async fn net(&self) -> Money {
        money(self.0.net)
    }
    /// Sum of every stream's committed plan shares.
    async fn committed(&self) -> Money {
        money(self.0.committed)
    }
    /// Payments the streams report made in the window.
    async fn spent(&self) -> Money {
        money(self.0.spent)
    }
    /// net - committed.
    async fn remaining(&self) -> Money {
        money(self.0.remaining)
    }
    /// Each stream the person is known to, in configuration order.
    async fn streams(&self) -> Vec<StreamBudget> {
        self.0
            .streams
            .iter()
            .cloned()
            .map(|s| StreamBudget(s, self.1.clone()))
            .collect()
    }
    /// Gross by purpose; adds up to gross exactly.
    async fn purposes(&self) -> Vec<PurposeTotal> {
        self.0
            .purposes
            .iter()
            .map(|(purpose, pence)| PurposeTotal {
                purpose: purpose.clone(),
                gross: money(*pence),
            })
            .collect()
    }
    /// Everything that needs attention, never silently dropped.
    async fn warnings(&self) -> Vec<BudgetWarning> {
        self.0.warnings.iter().map(BudgetWarning::from).collect()
    }
}

/// Gross for one purpose.
#[derive(SimpleObject, Clone, Debug)]
pub struct PurposeTotal {
    /// e.g. personal_care, independent_living, support_worker.
    pub purpose: String,
    /// Its gross in the window.
    pub gross: Money,
}

/// A warning on the view.
#[derive(SimpleObject, Clone, Debug)]
pub struct BudgetWarning {
    /// OVER_COMMITTED, DOUBLE_FUNDED, REVIEW_DUE, CONTRIBUTION_EXCEEDS_GROSS, CAP_EXCEEDED,
    /// SOURCE_STALE, SOURCE_UNAVAILABLE, UPSTREAM_DATA_REJECTED or AMBIGUOUS_MATCH.
    pub code: String,
    /// What is wrong, for a person to act on.
    pub message: String,
    /// The stream it concerns.
    pub stream_id: Option<ID>,
    /// The plan item it concerns.
    pub item_id: Option<ID>,
}

impl From<&Warning> for BudgetWarning {
    fn from(w: &Warning) -> Self {
        Self {
            code: w.code.to_owned(),
            message: w.message.clone(),
            stream_id: w.stream_id.clone().map(ID),
            item_id: w.item_id.clone().map(ID),
        }
    }
}

/// One stream's part of the budget.
pub struct StreamBudget(StreamView, String);

#[Object]
impl StreamBudget {
    /// The stream.
    async fn stream(&self) -> FundingStream {
        FundingStream {
            id: ID(self.0.id.clone()),
            name: self.0.name.clone(),
            kind: self.0.kind.clone(),
        }
    }
    /// FRESH, STALE or UNAVAILABLE.
    async fn status(&self) -> SourceStatus {
        self.0.status.into()
    }
    /// When the data was fetched (RFC 3339); null when UNAVAILABLE.
    async fn as_of(&self) -> Option<String> {
        self.0.as_of.map(rfc3339)
    }
    /// Sum of its award entitlements.
    async fn gross(&self) -> Money {
        money(self.0.gross)
    }
    /// The person's assessed contribution to this stream.
    async fn contribution(&self) -> Money {
        money(self.0.contribution)
    }
    /// gross - contribution, never below 0.
    async fn net(&self) -> Money {
        money(self.0.net)
    }
    /// Plan shares drawn on this stream.
    async fn committed(&self) -> Money {
        money(self.0.committed)
    }
    /// Payments it reports made in the window.
    async fn spent(&self) -> Money {
        money(self.0.spent)
    }
    /// net - committed.
    async fn remaining(&self) -> Money {
        money(self.0.remaining)
    }
    /// Its awards.
    async fn awards(&self) -> Vec<Award> {
        self.0
            .awards
            .iter()
            .cloned()
            .map(|a| Award::new(a, self.1.clone()))
            .collect()
    }
}

/// One upstream record that carries its own amount and frequency.
pub struct Award(AwardView, String);

impl Award {
    /// An award of `person_id`'s budget.
    pub fn new(view: AwardView, person_id: String) -> Self {
        Self(view, person_id)
    }
}

#[Object]
impl Award {
    /// The plan items that draw on this award: the trace from an award to what it funds.
    async fn plan_items(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<PlanItem>> {
        use crate::services::sources::StoreReader;
        let principal = principal(ctx)?;
        let app = app(ctx)?;
        let result = async {
            let loaders = super::loaders(ctx)?;
            let scope = crate::services::access::budget_scope(&app.db, principal, &self.1).await?;
            let items = crate::services::plan::within_scope(
                loaders.plan_items(&self.1).await?,
                scope.as_deref(),
            );
            Ok::<_, crate::error::ApiError>(
                items
                    .into_iter()
                    .filter(|item| {
                        item.shares
                            .iter()
                            .any(|s| s.award_id.as_deref() == Some(self.0.id.as_str()))
                    })
                    .map(PlanItem)
                    .collect(),
            )
        }
        .await;
        result.gql(principal)
    }
    /// The hub's id: `stream:upstreamId`.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The partner's id for the record.
    async fn upstream_id(&self) -> &str {
        &self.0.award.upstream_id
    }
    /// What it pays for.
    async fn purpose(&self) -> &str {
        &self.0.award.purpose
    }
    /// How it is delivered or managed (direct_payment, council_managed, notional, ...).
    async fn delivery(&self) -> Option<&str> {
        self.0.award.delivery.as_deref()
    }
    /// weekly | four_weekly | monthly | annual | one_off.
    async fn frequency(&self) -> &str {
        self.0.award.frequency.as_str()
    }
    /// The amount as the stream states it, per frequency.
    async fn amount(&self) -> Money {
        Money::gbp(self.0.award.amount)
    }
    /// Counted in the window by BUDGET-RULES.md, rounded once.
    async fn entitlement(&self) -> Money {
        money(self.0.entitlement)
    }
    /// The person's contribution to this award in the window.
    async fn contribution(&self) -> Money {
        money(self.0.contribution)
    }
    /// First active day.
    async fn start_date(&self) -> Option<Date> {
        self.0.award.start_date.map(Date)
    }
    /// Last active day.
    async fn end_date(&self) -> Option<Date> {
        self.0.award.end_date.map(Date)
    }
    /// When the stream will review it.
    async fn review_date(&self) -> Option<Date> {
        self.0.award.review_date.map(Date)
    }
    /// A one-off's payment date.
    async fn payment_date(&self) -> Option<Date> {
        self.0.award.payment_date.map(Date)
    }
    /// The stream's own status word.
    async fn status(&self) -> &str {
        &self.0.award.status
    }
    /// Its lines; their entitlements add up to the award's exactly. Empty when it has none.
    async fn lines(&self) -> Vec<AwardLine> {
        self.0
            .lines
            .iter()
            .map(|(line, pence)| AwardLine {
                upstream_id: line.upstream_id.clone(),
                purpose: line.purpose.clone(),
                delivery: line.delivery.clone(),
                description: line.description.clone(),
                amount: Money::gbp(line.amount),
                entitlement: money(*pence),
            })
            .collect()
    }
    /// The upstream record this came from.
    async fn source(&self) -> SourceRecord {
        SourceRecord::for_award(&self.0)
    }
}

/// One line of an award.
#[derive(SimpleObject, Clone, Debug)]
pub struct AwardLine {
    /// The partner's line id.
    pub upstream_id: String,
    /// What it pays for.
    pub purpose: String,
    /// How it is delivered.
    pub delivery: Option<String>,
    /// A description, where the partner gives one.
    pub description: Option<String>,
    /// Per the award's frequency.
    pub amount: Money,
    /// Its share of the award's entitlement (largest remainder).
    pub entitlement: Money,
}

/// Where a figure came from: the connector, the upstream record, its version, when it was
/// fetched, and the hash of the stored snapshot.
#[derive(SimpleObject, Clone, Debug)]
pub struct SourceRecord {
    /// The stream id.
    pub connector: String,
    /// The partner's record id.
    pub upstream_id: String,
    /// The partner's version marker.
    pub version: Option<String>,
    /// When it was fetched (RFC 3339).
    pub fetched_at: String,
    /// SHA-256 of the stored snapshot.
    pub content_hash: String,
}

impl SourceRecord {
    /// The upstream record behind an award: its own version where the partner versions records,
    /// else the snapshot's.
    pub fn for_award(view: &AwardView) -> Self {
        let mut record = Self::new(&view.source, &view.award.upstream_id);
        record.version = Self::award_version(view).map(str::to_owned);
        record
    }

    /// The version of the record behind an award: its own where the partner versions
    /// records, else the snapshot's.
    pub fn award_version(view: &AwardView) -> Option<&str> {
        view.award
            .version
            .as_deref()
            .or(view.source.version.as_deref())
    }

    /// The record `upstream_id` of the snapshot `meta` describes.
    pub fn new(meta: &SourceMeta, upstream_id: &str) -> Self {
        Self {
            connector: meta.connector.clone(),
            upstream_id: upstream_id.to_owned(),
            version: meta.version.clone(),
            fetched_at: rfc3339(meta.fetched_at),
            content_hash: meta.content_hash.clone(),
        }
    }
}
