//! Who may do what: the one place the hub decides access to personal data.

use chrono::Utc;
use entities::consent;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult};

/// Refuses an agency or auditor read that does not state its purpose.
pub fn require_purpose(principal: &Principal) -> ApiResult<()> {
    if matches!(principal.role, Role::Agency | Role::Auditor) && principal.purpose.is_none() {
        return Err(ApiError::BadInput(
            "state why you are reading this record in the Tributary-Purpose header".into(),
        ));
    }
    Ok(())
}

/// Whether the caller may read this person's registry record (names, date of birth,
/// identifiers).
pub async fn can_read_person(
    db: &impl ConnectionTrait,
    principal: &Principal,
    person_id: &str,
) -> ApiResult<()> {
    require_purpose(principal)?;
    let allowed = match principal.role {
        Role::Person | Role::Portal => principal.sub == person_id,
        Role::Representative => principal.acts_for.iter().any(|p| p == person_id),
        Role::Admin | Role::Auditor => true,
        Role::Agency => has_active_consent(db, principal, person_id).await?,
    };
    if allowed { Ok(()) } else { Err(forbidden()) }
}

/// Whether the caller may register people and link or unlink their identifiers.
pub fn can_manage_registry(principal: &Principal, person_id: Option<&str>) -> ApiResult<()> {
    match (principal.role, person_id) {
        (Role::Admin, _) => Ok(()),
        (Role::Agency, None) => require_purpose(principal),
        // Linking an identifier decides whose partner records join a person's budget: an
        // agency could otherwise pull a stranger's records into a person it has consent for.
        (Role::Agency, Some(_)) => Err(ApiError::Forbidden(
            "only an administrator links or unlinks a person's identifiers".into(),
        )),
        _ => Err(ApiError::Forbidden(format!(
            "a {} token cannot change the person registry",
            principal.role
        ))),
    }
}

/// Whether the caller may list everyone registered.
pub fn can_list_people(principal: &Principal) -> ApiResult<()> {
    require_purpose(principal)?;
    match principal.role {
        Role::Admin | Role::Auditor => Ok(()),
        other => Err(ApiError::Forbidden(format!(
            "a {other} token cannot list every registered person"
        ))),
    }
}

fn forbidden() -> ApiError {
    ApiError::Forbidden("you are not allowed to see this person's record".into())
}

async fn has_active_consent(
    db: &impl ConnectionTrait,
    principal: &Principal,
    person_id: &str,
) -> ApiResult<bool> {
    let Some(agency) = principal.agency.as_deref() else {
        return Ok(false);
    };
    let today = Utc::now().date_naive();
    let consents = consent::Entity::find()
        .filter(consent::Column::PersonId.eq(person_id))
        .filter(consent::Column::Agency.eq(agency))
        .filter(consent::Column::RevokedAt.is_null())
        .all(db)
        .await?;
    Ok(consents
        .iter()
        .any(|c| c.until.is_none_or(|until| until >= today)))
}

/// Which streams of a person's budget the caller may see: `None` for all of them, or the
/// stream ids an agency's active consents cover. Administrators run the hub but do not read
/// budget contents.
pub async fn budget_scope(
    db: &impl ConnectionTrait,
    principal: &Principal,
    person_id: &str,
) -> ApiResult<Option<Vec<String>>> {
    match principal.role {
        Role::Person | Role::Portal | Role::Representative | Role::Auditor => Ok(None),
        Role::Admin => Err(ApiError::Forbidden(
            "administrators manage connectors and people, not budget contents".into(),
        )),
        Role::Agency => {
            let Some(agency) = principal.agency.as_deref() else {
                return Err(forbidden());
            };
            let today = Utc::now().date_naive();
            let mut streams: Vec<String> = Vec::new();
            for consent in consent::Entity::find()
                .filter(consent::Column::PersonId.eq(person_id))
                .filter(consent::Column::Agency.eq(agency))
                .filter(consent::Column::RevokedAt.is_null())
                .all(db)
                .await?
                .into_iter()
                .filter(|c| c.until.is_none_or(|until| until >= today))
            {
                let ids: Vec<String> = serde_json::from_str(&consent.streams).map_err(|e| {
                    ApiError::internal(e, "a stored consent's streams cannot be read")
                })?;
                streams.extend(ids);
            }
            streams.sort();
            streams.dedup();
            Ok(Some(streams))
        }
    }
}

/// Whether the caller may change this person's support plan at all: the person, their
/// representative, a portal passing on their token, or an agency they consented to.
pub fn can_edit_plan_of(principal: &Principal, person_id: &str) -> ApiResult<()> {
    let allowed = match principal.role {
        Role::Person | Role::Portal => principal.sub == person_id,
        Role::Representative => principal.acts_for.iter().any(|p| p == person_id),
        Role::Agency => true,
        Role::Auditor | Role::Admin => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "a {} token cannot change this person's support plan",
            principal.role
        )))
    }
}

/// Whether the caller may change or remove an existing item: an agency only when every stream
/// it draws on now is one the person shares with it.
pub async fn can_touch_item(
    db: &impl ConnectionTrait,
    principal: &Principal,
    item: &crate::services::plan::Item,
) -> ApiResult<()> {
    can_read_person(db, principal, &item.person_id).await?;
    can_edit_plan_of(principal, &item.person_id)?;
    if let Some(scope) = budget_scope(db, principal, &item.person_id).await?
        && item.shares.iter().any(|s| !scope.contains(&s.stream_id))
    {
        return Err(ApiError::Forbidden(
            "this item draws on a stream the person has not agreed to share with your agency"
                .into(),
        ));
    }
    Ok(())
}

/// Whether the caller may add or change this plan item: an agency only with consent for every
/// stream the item draws on.
pub async fn can_edit_plan(
    db: &impl ConnectionTrait,
    principal: &Principal,
    person_id: &str,
    spec: &crate::services::plan::ItemSpec,
) -> ApiResult<()> {
    can_read_person(db, principal, person_id).await?;
    can_edit_plan_of(principal, person_id)?;
    if let Some(scope) = budget_scope(db, principal, person_id).await?
        && let Some(share) = spec.shares.iter().find(|s| !scope.contains(&s.stream_id))
    {
        return Err(ApiError::Forbidden(format!(
            "the person has not agreed to share stream '{}' with your agency",
            share.stream_id
        )));
    }
    Ok(())
}
