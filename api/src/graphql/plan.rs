//! The support plan over GraphQL: items with split funding, and the trace from an item to the
//! upstream records that fund it.

use async_graphql::{Context, ID, InputObject, Object};

use super::budget::{Award, SourceRecord};
use super::scalars::{Date, Decimal2, Money};
use super::streams::FundingStream;
use super::{GqlResult, app, principal};
use crate::budget::period::{Window, to_pounds};
use crate::error::ApiError;
use crate::services::plan::{self as service, Item, ItemSpec, Share, ShareSpec};
use crate::services::{access, persons, sources};

/// One stream's share of an item: a percentage or a fixed amount, never both in one item.
#[derive(InputObject, Clone, Debug)]
pub struct ShareInput {
    /// The stream.
    pub stream_id: ID,
    /// A percentage, up to two places; an item's percentages sum to exactly 100.
    pub percent: Option<Decimal2>,
    /// A fixed amount; an item's amounts sum to exactly its cost.
    pub amount: Option<Decimal2>,
    /// The award it draws on (an Award id), for the trace.
    pub award_id: Option<ID>,
}

/// A plan item to add.
#[derive(InputObject, Clone, Debug)]
pub struct PlanItemInput {
    /// Whose plan.
    pub person_id: ID,
    /// What it is.
    pub description: String,
    /// What it is for.
    pub purpose: String,
    /// Its cost per frequency.
    pub cost: Decimal2,
    /// weekly | four_weekly | monthly | annual | one_off.
    pub frequency: String,
    /// First day (a one-off's payment date).
    pub start_date: Date,
    /// Last day.
    pub end_date: Option<Date>,
    /// Its funding.
    pub shares: Vec<ShareInput>,
    /// Send the same key when retrying, so the item is added once.
    pub idempotency_key: Option<String>,
}

/// New contents for a plan item, applied only if it is still at `expectedVersion`.
#[derive(InputObject, Clone, Debug)]
pub struct UpdatePlanItemInput {
    /// The item.
    pub id: ID,
    /// The version you read; a newer one means someone else changed it (CONFLICT).
    pub expected_version: i32,
    /// What it is.
    pub description: String,
    /// What it is for.
    pub purpose: String,
    /// Its cost per frequency.
    pub cost: Decimal2,
    /// How often.
    pub frequency: String,
    /// First day.
    pub start_date: Date,
    /// Last day.
    pub end_date: Option<Date>,
    /// Its funding, replacing the old shares.
    pub shares: Vec<ShareInput>,
}

/// The service's view of an item's fields, as either input gives them.
fn item_spec(
    description: String,
    purpose: String,
    cost: Decimal2,
    frequency: String,
    start_date: Date,
    end_date: Option<Date>,
    input_shares: Vec<ShareInput>,
) -> ItemSpec {
    ItemSpec {
        description,
        purpose,
        cost: cost.0,
        frequency,
        start_date: start_date.0,
        end_date: end_date.map(|d| d.0),
        shares: shares(input_shares),
    }
}

fn shares(input: Vec<ShareInput>) -> Vec<ShareSpec> {
    input
        .into_iter()
        .map(|s| ShareSpec {
            stream_id: s.stream_id.0,
            percent: s.percent.map(|p| p.0),
            amount: s.amount.map(|a| a.0),
            award_id: s.award_id.map(|a| a.0),
        })
        .collect()
}

/// An item in a person's support plan.
pub struct PlanItem(pub Item);

#[Object]
impl PlanItem {
    /// Its id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// What it is.
    async fn description(&self) -> &str {
        &self.0.description
    }
    /// What it is for.
    async fn purpose(&self) -> &str {
        &self.0.purpose
    }
    /// Its cost per frequency.
    async fn cost(&self) -> Money {
        Money::gbp(to_pounds(i128::from(self.0.cost_pence)))
    }
    /// weekly | four_weekly | monthly | annual | one_off.
    async fn frequency(&self) -> &str {
        self.0.frequency.as_str()
    }
    /// First day.
    async fn start_date(&self) -> Date {
        Date(self.0.start_date)
    }
    /// Last day.
    async fn end_date(&self) -> Option<Date> {
        self.0.end_date.map(Date)
    }
    /// Bumped by every change; send it back when updating or removing.
    async fn version(&self) -> i32 {
        self.0.version
    }
    /// Its funding shares, in the order given; their amounts sum to the cost exactly.
    async fn shares(&self) -> Vec<FundingShare> {
        self.0
            .shares
            .iter()
            .cloned()
            .map(|share| FundingShare {
                share,
                person_id: self.0.person_id.clone(),
            })
            .collect()
    }
}

/// One stream's share of an item, traced to the award and upstream record it draws on.
pub struct FundingShare {
    share: Share,
    person_id: String,
}

#[Object]
impl FundingShare {
    /// The stream.
    async fn stream(&self, ctx: &Context<'_>) -> async_graphql::Result<FundingStream> {
        let app = app(ctx)?;
        Ok(app
            .connectors
            .iter()
            .find(|c| c.id.as_str() == self.share.stream_id)
            .map(|c| FundingStream {
                id: ID(c.id.0.clone()),
                name: c.display_name().to_owned(),
                kind: c.kind.as_str().to_owned(),
            })
            .unwrap_or_else(|| FundingStream {
                id: ID(self.share.stream_id.clone()),
                name: self.share.stream_id.clone(),
                kind: "unconfigured".into(),
            }))
    }
    /// The percentage given, if the share was given as one.
    async fn percent(&self) -> Option<Decimal2> {
        self.share
            .percent_hundredths
            .map(|h| Decimal2(to_pounds(i128::from(h))))
    }
    /// Its amount per the item's frequency (percentages worked into pence by largest remainder).
    async fn amount(&self) -> Money {
        Money::gbp(to_pounds(i128::from(self.share.amount_pence)))
    }
    /// The award it draws on, as last stored (entitlement in the current financial year).
    async fn award(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Award>> {
        Ok(self
            .stored_award(ctx)
            .await?
            .map(|view| Award::new(view, self.person_id.clone())))
    }
    /// The upstream record behind the award, if the share is tied to one.
    async fn source(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<SourceRecord>> {
        Ok(self
            .stored_award(ctx)
            .await?
            .map(|view| SourceRecord::for_award(&view)))
    }
}

impl FundingShare {
    /// The award this share is tied to, from the snapshot that holds it (never the partner).
    async fn stored_award(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<crate::budget::assemble::AwardView>> {
        let principal = principal(ctx)?;
        let app = app(ctx)?;
        let Some(award_id) = &self.share.award_id else {
            return Ok(None);
        };
        let result = async {
            let person = persons::get(&app.db, &self.person_id).await?;
            let window =
                Window::financial_year_of(chrono::Utc::now().date_naive()).ok_or_else(|| {
                    ApiError::Internal(anyhow::anyhow!("no financial year for today"))
                })?;
            sources::stored_award(
                &app.db,
                &app.registry,
                &person.identifier_pairs(),
                award_id,
                &window,
            )
            .await
        }
        .await;
        result.gql(principal)
    }
}

fn stale() -> ApiError {
    ApiError::Conflict(
        "this plan item was changed by someone else since you read it; read it again and reapply your change".into(),
    )
}

/// An item by id; for a caller scoped to some people, a missing item reads as not allowed.
async fn existing_item(
    db: &sea_orm::DatabaseConnection,
    principal: &crate::auth::Principal,
    id: &str,
) -> Result<Item, ApiError> {
    let found = service::load_items(db, &[id.to_owned()]).await?.pop();
    match (found, principal.role) {
        (Some(item), _) => Ok(item),
        (None, crate::auth::Role::Auditor | crate::auth::Role::Admin) => {
            Err(ApiError::NotFound("no plan item has this id".into()))
        }
        (None, _) => Err(ApiError::Forbidden(
            "you are not allowed to change this plan item, or there is none".into(),
        )),
    }
}

/// Plan mutations.
#[derive(Default)]
pub struct PlanMutation;

fn stream_ids(ctx: &Context<'_>) -> async_graphql::Result<Vec<String>> {
    Ok(app(ctx)?
        .connectors
        .iter()
        .map(|c| c.id.0.clone())
        .collect())
}

#[Object]
impl PlanMutation {
    /// Adds an item to a person's support plan, funded by one or more streams in exact shares.
    async fn add_plan_item(
        &self,
        ctx: &Context<'_>,
        input: PlanItemInput,
    ) -> async_graphql::Result<PlanItem> {
        let principal = principal(ctx)?;
        let app = app(ctx)?;
        let streams = stream_ids(ctx)?;
        let result = async {
            // Access first, so a caller learns nothing about ids it may not see.
            access::can_read_person(&app.db, principal, &input.person_id).await?;
            let person = persons::get(&app.db, &input.person_id).await?;
            let spec = item_spec(
                input.description,
                input.purpose,
                input.cost,
                input.frequency,
                input.start_date,
                input.end_date,
                input.shares,
            );
            access::can_edit_plan(&app.db, principal, &person.id, &spec).await?;
            service::add(
                &app.db,
                principal,
                &person.id,
                spec,
                input.idempotency_key,
                &streams,
            )
            .await
        }
        .await;
        result.map(PlanItem).gql(principal)
    }

    /// Replaces an item's contents and shares, if nobody changed it since `expectedVersion`.
    async fn update_plan_item(
        &self,
        ctx: &Context<'_>,
        input: UpdatePlanItemInput,
    ) -> async_graphql::Result<PlanItem> {
        let principal = principal(ctx)?;
        let app = app(ctx)?;
        let streams = stream_ids(ctx)?;
        let result = async {
            let existing = existing_item(&app.db, principal, &input.id).await?;
            access::can_touch_item(&app.db, principal, &existing).await?;
            // The write is conditional on this version, so it changes exactly what was checked.
            if existing.version != input.expected_version {
                return Err(stale());
            }
            let person_id = existing.person_id.clone();
            let spec = item_spec(
                input.description,
                input.purpose,
                input.cost,
                input.frequency,
                input.start_date,
                input.end_date,
                input.shares,
            );
            access::can_edit_plan(&app.db, principal, &person_id, &spec).await?;
            service::update(
                &app.db,
                principal,
                &input.id,
                input.expected_version,
                spec,
                &streams,
            )
            .await
        }
        .await;
        result.map(PlanItem).gql(principal)
    }

    /// Removes an item, if nobody changed it since `expectedVersion`. Returns its id.
    async fn remove_plan_item(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: i32,
    ) -> async_graphql::Result<ID> {
        let principal = principal(ctx)?;
        let app = app(ctx)?;
        let result = async {
            let existing = existing_item(&app.db, principal, &id).await?;
            access::can_touch_item(&app.db, principal, &existing).await?;
            if existing.version != expected_version {
                return Err(stale());
            }
            service::remove(&app.db, principal, &id, expected_version).await
        }
        .await;
        result.map(|()| id).gql(principal)
    }
}
