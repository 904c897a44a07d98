//! The support plan: items the person plans to buy, each funded by one or more streams in exact
//! shares (BUDGET-RULES.md, Splitting an item across streams). Edits are optimistic: a stale
//! version is refused with CONFLICT; an idempotency key makes a retried add harmless.

use std::collections::HashMap;

use chrono::{NaiveDate, Utc};
use connectors::Frequency;
use entities::{funding_share, plan_item};
use rust_decimal::Decimal;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, QueryFilter, QueryOrder,
};
use serde_json::json;

use crate::audit::{self, NewEvent};
use crate::auth::Principal;
use crate::budget::period::{Schedule, Window, entitlement_pence, to_pence, to_pounds};
use crate::budget::split::largest_remainder;
use crate::error::{ApiError, ApiResult};
use crate::graphql::scalars::format_pounds;

/// A share as given: a percentage or a fixed amount, optionally tied to one award.
#[derive(Clone, Debug)]
pub struct ShareSpec {
    /// The stream.
    pub stream_id: String,
    /// Percent, up to two places.
    pub percent: Option<Decimal>,
    /// A fixed amount in pounds.
    pub amount: Option<Decimal>,
    /// The award (`stream:upstream id`) it draws on.
    pub award_id: Option<String>,
}

/// A plan item as given.
#[derive(Clone, Debug)]
pub struct ItemSpec {
    /// What it is.
    pub description: String,
    /// What it is for.
    pub purpose: String,
    /// Its cost per frequency, in pounds.
    pub cost: Decimal,
    /// weekly | four_weekly | monthly | annual | one_off.
    pub frequency: String,
    /// First day (a one-off's payment date).
    pub start_date: NaiveDate,
    /// Last day.
    pub end_date: Option<NaiveDate>,
    /// Its funding.
    pub shares: Vec<ShareSpec>,
}

/// A stored share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// The stream.
    pub stream_id: String,
    /// Hundredths of a percent, when given as a percentage.
    pub percent_hundredths: Option<i64>,
    /// Its pence per the item's frequency.
    pub amount_pence: i64,
    /// The award it draws on.
    pub award_id: Option<String>,
}

/// A stored plan item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Its id.
    pub id: String,
    /// Whose plan.
    pub person_id: String,
    /// What it is.
    pub description: String,
    /// What it is for.
    pub purpose: String,
    /// Cost in pence per frequency.
    pub cost_pence: i64,
    /// How often.
    pub frequency: Frequency,
    /// First day.
    pub start_date: NaiveDate,
    /// Last day.
    pub end_date: Option<NaiveDate>,
    /// Bumped by every change.
    pub version: i32,
    /// Its shares, in the order given.
    pub shares: Vec<Share>,
}

impl Item {
    /// Its cost in the window (rounded once), shared across its streams by largest remainder:
    /// `(share, pence)` in share order.
    pub fn in_window(&self, window: &Window) -> Vec<(&Share, i128)> {
        let schedule = Schedule {
            frequency: self.frequency,
            counting: connectors::Counting::Active,
            start: Some(self.start_date),
            end: self.end_date,
            payment_date: Some(self.start_date),
        };
        let total = entitlement_pence(to_pounds(i128::from(self.cost_pence)), &schedule, window);
        // Percentages share by their percentages, fixed amounts by their amounts.
        let weights: Vec<i128> = self
            .shares
            .iter()
            .map(|s| i128::from(s.percent_hundredths.unwrap_or(s.amount_pence)))
            .collect();
        self.shares
            .iter()
            .zip(largest_remainder(total, &weights))
            .collect()
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadInput(message.into())
}

/// Validates an item and works its shares into pence.
pub fn validate(spec: &ItemSpec, streams: &[String]) -> ApiResult<(Frequency, i64, Vec<Share>)> {
    let description = spec.description.trim();
    if description.is_empty() || description.chars().count() > 500 {
        return Err(bad("description must be 1 to 500 characters"));
    }
    if spec.purpose.trim().is_empty() || spec.purpose.chars().count() > 100 {
        return Err(bad("purpose must be 1 to 100 characters"));
    }
    let frequency = Frequency::parse(&spec.frequency).ok_or_else(|| {
        bad("frequency must be one of weekly, four_weekly, monthly, annual, one_off")
    })?;
    if spec.cost <= Decimal::ZERO {
        return Err(bad("cost must be more than 0.00"));
    }
    let cost = i64::try_from(to_pence(spec.cost)).map_err(|_| bad("cost is too large"))?;
    if spec.end_date.is_some_and(|end| end < spec.start_date) {
        return Err(bad("endDate must not be before startDate"));
    }
    if spec.shares.is_empty() {
        return Err(bad("an item needs at least one funding share"));
    }
    let by_percent = spec.shares.iter().filter(|s| s.percent.is_some()).count();
    let by_amount = spec.shares.iter().filter(|s| s.amount.is_some()).count();
    if spec
        .shares
        .iter()
        .any(|s| s.percent.is_some() == s.amount.is_some())
    {
        return Err(bad("each share gives exactly one of percent and amount"));
    }
    if by_percent > 0 && by_amount > 0 {
        return Err(bad(
            "an item's shares are all percentages or all fixed amounts, never both",
        ));
    }
    for (i, share) in spec.shares.iter().enumerate() {
        if !streams.contains(&share.stream_id) {
            return Err(bad(format!(
                "share {}: unknown stream '{}'",
                i + 1,
                share.stream_id
            )));
        }
        if spec.shares[..i]
            .iter()
            .any(|s| s.stream_id == share.stream_id)
        {
            return Err(bad(format!(
                "stream '{}' is given two shares; give it one",
                share.stream_id
            )));
        }
        if let Some(award) = &share.award_id
            && !award.starts_with(&format!("{}:", share.stream_id))
        {
            return Err(bad(format!(
                "share {}: award '{award}' is not one of stream '{}'",
                i + 1,
                share.stream_id
            )));
        }
    }
    let shares = if by_percent > 0 {
        let percents: Vec<Decimal> = spec.shares.iter().filter_map(|s| s.percent).collect();
        if percents
            .iter()
            .any(|p| *p <= Decimal::ZERO || p.scale() > 2 && p.normalize().scale() > 2)
        {
            return Err(bad(
                "each percent must be more than 0 with at most two decimal places",
            ));
        }
        let sum: Decimal = percents.iter().sum();
        if sum != Decimal::ONE_HUNDRED {
            return Err(bad(format!(
                "the percentages sum to {}, not 100",
                sum.normalize()
            )));
        }
        let hundredths: Vec<i128> = percents.iter().map(|p| to_pence(*p)).collect();
        let pence = largest_remainder(i128::from(cost), &hundredths);
        spec.shares
            .iter()
            .zip(hundredths.iter().zip(pence))
            .map(|(s, (h, p))| Share {
                stream_id: s.stream_id.clone(),
                percent_hundredths: i64::try_from(*h).ok(),
                amount_pence: i64::try_from(p).unwrap_or(0),
                award_id: s.award_id.clone(),
            })
            .collect()
    } else {
        let amounts: Vec<Decimal> = spec.shares.iter().filter_map(|s| s.amount).collect();
        if amounts.iter().any(|a| *a <= Decimal::ZERO) {
            return Err(bad("each amount must be more than 0.00"));
        }
        let sum: Decimal = amounts.iter().sum();
        if sum != spec.cost {
            return Err(bad(format!(
                "the amounts sum to {}, not the cost {}",
                format_pounds(sum),
                format_pounds(spec.cost)
            )));
        }
        spec.shares
            .iter()
            .zip(amounts)
            .map(|(s, a)| Share {
                stream_id: s.stream_id.clone(),
                percent_hundredths: None,
                amount_pence: i64::try_from(to_pence(a)).unwrap_or(0),
                award_id: s.award_id.clone(),
            })
            .collect()
    };
    Ok((frequency, cost, shares))
}

async fn insert_shares(
    db: &impl ConnectionTrait,
    item_id: &str,
    shares: &[Share],
) -> ApiResult<()> {
    let rows: Vec<funding_share::ActiveModel> = shares
        .iter()
        .enumerate()
        .map(|(i, s)| funding_share::ActiveModel {
            id: Set(uuid::Uuid::now_v7().to_string()),
            plan_item_id: Set(item_id.to_owned()),
            position: Set(i32::try_from(i).unwrap_or(i32::MAX)),
            stream_id: Set(s.stream_id.clone()),
            percent_hundredths: Set(s.percent_hundredths),
            amount_pence: Set(s.amount_pence),
            award_id: Set(s.award_id.clone()),
        })
        .collect();
    funding_share::Entity::insert_many(rows).exec(db).await?;
    Ok(())
}

/// Adds an item. With an idempotency key already used for this person, the item it made is
/// returned and nothing is added.
pub async fn add(
    db: &DatabaseConnection,
    actor: &Principal,
    person_id: &str,
    spec: ItemSpec,
    idempotency_key: Option<String>,
    streams: &[String],
) -> ApiResult<Item> {
    let (frequency, cost, shares) = validate(&spec, streams)?;
    if let Some(key) = &idempotency_key
        && (key.is_empty() || key.len() > 128)
    {
        return Err(bad("idempotencyKey must be 1 to 128 characters"));
    }
    let write = audit::begin_write(db).await?;
    let txn = write.txn();
    if let Some(key) = &idempotency_key
        && let Some(existing) = plan_item::Entity::find()
            .filter(plan_item::Column::PersonId.eq(person_id))
            .filter(plan_item::Column::IdempotencyKey.eq(key))
            .one(txn)
            .await?
    {
        write.rollback().await?;
        let item = load_items(db, std::slice::from_ref(&existing.id))
            .await?
            .pop();
        // A replay returns the item only when it is the same request in every part, shares
        // included, so a reused key can never hand back shares the caller was not checked for.
        return match item {
            Some(item)
                if item.description == spec.description.trim()
                    && item.purpose == spec.purpose.trim()
                    && item.cost_pence == cost
                    && item.frequency == frequency
                    && item.start_date == spec.start_date
                    && item.end_date == spec.end_date
                    && item.shares == shares =>
            {
                Ok(item)
            }
            _ => Err(ApiError::Conflict(
                "this idempotencyKey was already used for a different item".into(),
            )),
        };
    }
    let id = uuid::Uuid::now_v7().to_string();
    let now = Utc::now();
    plan_item::ActiveModel {
        id: Set(id.clone()),
        person_id: Set(person_id.to_owned()),
        description: Set(spec.description.trim().to_owned()),
        purpose: Set(spec.purpose.trim().to_owned()),
        cost_pence: Set(cost),
        frequency: Set(frequency.as_str().to_owned()),
        start_date: Set(spec.start_date),
        end_date: Set(spec.end_date),
        version: Set(1),
        idempotency_key: Set(idempotency_key),
        created_by: Set(actor.sub.clone()),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(txn)
    .await?;
    insert_shares(txn, &id, &shares).await?;
    audit::append(
        txn,
        actor,
        NewEvent {
            action: "plan_item.added",
            person_id: Some(person_id),
            detail: json!({ "itemId": id, "version": 1, "streams": shares.iter().map(|s| s.stream_id.as_str()).collect::<Vec<_>>() }),
        },
    )
    .await?;
    write.commit().await?;
    load_items(db, &[id])
        .await?
        .pop()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("added item vanished")))
}

/// The item's owner, for access checks; NOT_FOUND when there is no such item.
pub async fn owner(db: &impl ConnectionTrait, item_id: &str) -> ApiResult<String> {
    plan_item::Entity::find_by_id(item_id.to_owned())
        .one(db)
        .await?
        .map(|i| i.person_id)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no plan item has the id '{}'",
                item_id.chars().take(64).collect::<String>()
            ))
        })
}

/// Replaces an item's fields and shares if it is still at `expected_version`.
pub async fn update(
    db: &DatabaseConnection,
    actor: &Principal,
    item_id: &str,
    expected_version: i32,
    spec: ItemSpec,
    streams: &[String],
) -> ApiResult<Item> {
    let (frequency, cost, shares) = validate(&spec, streams)?;
    let write = audit::begin_write(db).await?;
    let txn = write.txn();
    let person_id = owner(txn, item_id).await?;
    let updated = plan_item::Entity::update_many()
        .col_expr(
            plan_item::Column::Description,
            Expr::value(spec.description.trim()),
        )
        .col_expr(plan_item::Column::Purpose, Expr::value(spec.purpose.trim()))
        .col_expr(plan_item::Column::CostPence, Expr::value(cost))
        .col_expr(
            plan_item::Column::Frequency,
            Expr::value(frequency.as_str()),
        )
        .col_expr(plan_item::Column::StartDate, Expr::value(spec.start_date))
        .col_expr(plan_item::Column::EndDate, Expr::value(spec.end_date))
        .col_expr(
            plan_item::Column::Version,
            Expr::value(expected_version + 1),
        )
        .col_expr(plan_item::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(plan_item::Column::Id.eq(item_id))
        .filter(plan_item::Column::Version.eq(expected_version))
        .exec(txn)
        .await?;
    if updated.rows_affected == 0 {
        return Err(stale_version());
    }
    funding_share::Entity::delete_many()
        .filter(funding_share::Column::PlanItemId.eq(item_id))
        .exec(txn)
        .await?;
    insert_shares(txn, item_id, &shares).await?;
    audit::append(
        txn,
        actor,
        NewEvent {
            action: "plan_item.updated",
            person_id: Some(&person_id),
            detail: json!({ "itemId": item_id, "version": expected_version + 1 }),
        },
    )
    .await?;
    write.commit().await?;
    load_items(db, &[item_id.to_owned()])
        .await?
        .pop()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("updated item vanished")))
}

fn stale_version() -> ApiError {
    ApiError::Conflict(
        "this plan item was changed by someone else since you read it; read it again and reapply your change".into(),
    )
}

/// Removes an item if it is still at `expected_version`.
pub async fn remove(
    db: &DatabaseConnection,
    actor: &Principal,
    item_id: &str,
    expected_version: i32,
) -> ApiResult<()> {
    let write = audit::begin_write(db).await?;
    let txn = write.txn();
    let person_id = owner(txn, item_id).await?;
    let deleted = plan_item::Entity::delete_many()
        .filter(plan_item::Column::Id.eq(item_id))
        .filter(plan_item::Column::Version.eq(expected_version))
        .exec(txn)
        .await?;
    if deleted.rows_affected == 0 {
        return Err(stale_version());
    }
    funding_share::Entity::delete_many()
        .filter(funding_share::Column::PlanItemId.eq(item_id))
        .exec(txn)
        .await?;
    audit::append(
        txn,
        actor,
        NewEvent {
            action: "plan_item.removed",
            person_id: Some(&person_id),
            detail: json!({ "itemId": item_id, "version": expected_version }),
        },
    )
    .await?;
    write.commit().await?;
    Ok(())
}

fn to_item(row: plan_item::Model, shares: Vec<Share>) -> ApiResult<Item> {
    Ok(Item {
        frequency: Frequency::parse(&row.frequency).ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "a stored plan item has an unknown frequency"
            ))
        })?,
        id: row.id,
        person_id: row.person_id,
        description: row.description,
        purpose: row.purpose,
        cost_pence: row.cost_pence,
        start_date: row.start_date,
        end_date: row.end_date,
        version: row.version,
        shares,
    })
}

/// The shares of these items, in position order.
async fn share_rows(
    db: &impl ConnectionTrait,
    rows: &[plan_item::Model],
) -> ApiResult<Vec<funding_share::Model>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    Ok(funding_share::Entity::find()
        .filter(funding_share::Column::PlanItemId.is_in(rows.iter().map(|r| r.id.clone())))
        .order_by_asc(funding_share::Column::Position)
        .all(db)
        .await?)
}

async fn with_shares(
    db: &impl ConnectionTrait,
    rows: Vec<plan_item::Model>,
) -> ApiResult<Vec<Item>> {
    let shares = share_rows(db, &rows).await?;
    join_shares(rows, shares)
}

/// Items from their rows and their shares' rows (shares in position order).
fn join_shares(
    rows: Vec<plan_item::Model>,
    share_rows: Vec<funding_share::Model>,
) -> ApiResult<Vec<Item>> {
    let mut shares: HashMap<String, Vec<Share>> = HashMap::new();
    for s in share_rows {
        shares
            .entry(s.plan_item_id.clone())
            .or_default()
            .push(Share {
                stream_id: s.stream_id,
                percent_hundredths: s.percent_hundredths,
                amount_pence: s.amount_pence,
                award_id: s.award_id,
            });
    }
    rows.into_iter()
        .map(|row| {
            let s = shares.remove(&row.id).unwrap_or_default();
            to_item(row, s)
        })
        .collect()
}

/// Every person's items, from item rows (in id order) and share rows (in position order).
pub fn group_by_person(
    rows: Vec<plan_item::Model>,
    shares: Vec<funding_share::Model>,
) -> ApiResult<HashMap<String, Vec<Item>>> {
    let mut out: HashMap<String, Vec<Item>> = HashMap::new();
    for item in join_shares(rows, shares)? {
        out.entry(item.person_id.clone()).or_default().push(item);
    }
    Ok(out)
}

/// Items by id, with their shares, in two queries.
pub async fn load_items(db: &impl ConnectionTrait, ids: &[String]) -> ApiResult<Vec<Item>> {
    let rows = plan_item::Entity::find()
        .filter(plan_item::Column::Id.is_in(ids.to_vec()))
        .order_by_asc(plan_item::Column::Id)
        .all(db)
        .await?;
    with_shares(db, rows).await
}

/// Every person's items in `person_ids`, with shares, in two queries.
pub async fn for_people(
    db: &impl ConnectionTrait,
    person_ids: &[String],
) -> ApiResult<HashMap<String, Vec<Item>>> {
    let rows = plan_item::Entity::find()
        .filter(plan_item::Column::PersonId.is_in(person_ids.to_vec()))
        .order_by_asc(plan_item::Column::Id)
        .all(db)
        .await?;
    let shares = share_rows(db, &rows).await?;
    group_by_person(rows, shares)
}

/// The items a caller may see: with a scope (an agency's consented streams), only items every
/// share of which draws on a stream in it, so nothing reveals an unshared stream.
pub fn within_scope(items: Vec<Item>, scope: Option<&[String]>) -> Vec<Item> {
    match scope {
        None => items,
        Some(streams) => items
            .into_iter()
            .filter(|item| item.shares.iter().all(|s| streams.contains(&s.stream_id)))
            .collect(),
    }
}
