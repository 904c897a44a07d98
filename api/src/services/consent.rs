//! Sharing permissions: which agency may see which of a person's streams, for what purpose,
//! until when. In law these rest on public task for direct care, not on GDPR consent; they are
//! the person's own choices about sharing, and the hub enforces them. Each grant and revocation
//! is an audit event of its own, written in the same transaction.

use chrono::{DateTime, NaiveDate, Utc};
use entities::consent;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, QueryFilter, QueryOrder,
};
use serde_json::json;

use crate::audit::{self, NewEvent};
use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult};

/// A stored sharing permission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consent {
    /// Its id.
    pub id: String,
    /// Whose.
    pub person_id: String,
    /// The agency it is granted to.
    pub agency: String,
    /// The streams it covers.
    pub streams: Vec<String>,
    /// What for.
    pub purpose: String,
    /// Last day it holds (none: until revoked).
    pub until: Option<NaiveDate>,
    /// When it was granted.
    pub granted_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A permission to grant.
#[derive(Clone, Debug)]
pub struct NewConsent {
    /// Whose.
    pub person_id: String,
    /// To which agency.
    pub agency: String,
    /// Which streams.
    pub streams: Vec<String>,
    /// What for.
    pub purpose: String,
    /// Until when.
    pub until: Option<NaiveDate>,
}

/// Only the person, their representative, or a portal passing on their token decides.
pub fn can_decide(principal: &Principal, person_id: &str) -> ApiResult<()> {
    let allowed = match principal.role {
        Role::Person | Role::Portal => principal.sub == person_id,
        Role::Representative => principal.acts_for.iter().any(|p| p == person_id),
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only the person, or someone acting for them, decides who may see their budget".into(),
        ))
    }
}

fn to_consent(row: consent::Model) -> ApiResult<Consent> {
    Ok(Consent {
        streams: serde_json::from_str(&row.streams)
            .map_err(|e| ApiError::internal(e, "a stored consent's streams cannot be read"))?,
        id: row.id,
        person_id: row.person_id,
        agency: row.agency,
        purpose: row.purpose,
        until: row.until,
        granted_at: row.granted_at,
        revoked_at: row.revoked_at,
    })
}

/// Grants a permission.
pub async fn grant(
    db: &DatabaseConnection,
    actor: &Principal,
    input: NewConsent,
    configured_streams: &[String],
) -> ApiResult<Consent> {
    can_decide(actor, &input.person_id)?;
    let agency = input.agency.trim();
    if agency.is_empty() || agency.len() > 100 {
        return Err(ApiError::BadInput(
            "agency must be 1 to 100 characters".into(),
        ));
    }
    if input.purpose.trim().is_empty() || input.purpose.len() > 500 {
        return Err(ApiError::BadInput(
            "purpose must be 1 to 500 characters".into(),
        ));
    }
    if input.streams.is_empty() {
        return Err(ApiError::BadInput(
            "name at least one stream to share".into(),
        ));
    }
    if let Some(unknown) = input
        .streams
        .iter()
        .find(|s| !configured_streams.contains(s))
    {
        return Err(ApiError::BadInput(format!("unknown stream '{unknown}'")));
    }
    if input
        .until
        .is_some_and(|until| until < Utc::now().date_naive())
    {
        return Err(ApiError::BadInput("until must not be in the past".into()));
    }
    let mut streams = input.streams.clone();
    streams.sort();
    streams.dedup();
    let streams_json = serde_json::to_string(&streams)
        .map_err(|e| ApiError::internal(e, "serialising consent streams"))?;
    crate::services::persons::get(db, &input.person_id).await?;
    let write = audit::begin_write(db).await?;
    let txn = write.txn();
    let id = uuid::Uuid::now_v7().to_string();
    let row = consent::ActiveModel {
        id: Set(id.clone()),
        person_id: Set(input.person_id.clone()),
        agency: Set(agency.to_owned()),
        streams: Set(streams_json),
        purpose: Set(input.purpose.trim().to_owned()),
        until: Set(input.until),
        granted_by: Set(actor.sub.clone()),
        granted_at: Set(Utc::now()),
        revoked_at: Set(None),
        revoked_by: Set(None),
    }
    .insert(txn)
    .await?;
    audit::append(
        txn,
        actor,
        NewEvent {
            action: "consent.granted",
            person_id: Some(&input.person_id),
            detail: json!({ "consentId": id, "agency": agency, "streams": streams, "until": input.until }),
        },
    )
    .await?;
    write.commit().await?;
    to_consent(row)
}

/// Revokes a permission; it stops applying on the next request.
pub async fn revoke(db: &DatabaseConnection, actor: &Principal, id: &str) -> ApiResult<Consent> {
    let write = audit::begin_write(db).await?;
    let txn = write.txn();
    let row = consent::Entity::find_by_id(id.to_owned())
        .one(txn)
        .await?
        .ok_or_else(|| ApiError::NotFound("no consent has this id".into()))?;
    can_decide(actor, &row.person_id)?;
    if row.revoked_at.is_some() {
        return Err(ApiError::Conflict("this consent is already revoked".into()));
    }
    let person_id = row.person_id.clone();
    let mut active: consent::ActiveModel = row.into();
    active.revoked_at = Set(Some(Utc::now()));
    active.revoked_by = Set(Some(actor.sub.clone()));
    let row = active.update(txn).await?;
    audit::append(
        txn,
        actor,
        NewEvent {
            action: "consent.revoked",
            person_id: Some(&person_id),
            detail: json!({ "consentId": id }),
        },
    )
    .await?;
    write.commit().await?;
    to_consent(row)
}

/// A person's permissions, newest first.
pub async fn list(db: &impl ConnectionTrait, person_id: &str) -> ApiResult<Vec<Consent>> {
    consent::Entity::find()
        .filter(consent::Column::PersonId.eq(person_id))
        .order_by_desc(consent::Column::GrantedAt)
        .all(db)
        .await?
        .into_iter()
        .map(to_consent)
        .collect()
}
