//! The audit log over GraphQL: a person's own access log, and the auditors' view of the chain.

use async_graphql::{Context, ID, Object, SimpleObject};
use chrono::SecondsFormat;
use entities::audit_event;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{GqlResult, app, principal};
use crate::audit::{self, ChainStatus};
use crate::auth::Role;
use crate::error::ApiError;

/// One event of the audit log.
#[derive(SimpleObject, Clone, Debug)]
pub struct AuditEvent {
    /// Its place in the chain.
    pub seq: i64,
    /// When (RFC 3339).
    pub at: String,
    /// What happened, e.g. budget.read, consent.granted.
    pub action: String,
    /// The role of whoever did it.
    pub actor_role: String,
    /// Their agency, for agency staff.
    pub agency: Option<String>,
    /// The purpose they stated.
    pub purpose: Option<String>,
    /// The person concerned.
    pub person_id: Option<ID>,
    /// The request it came from.
    pub request_id: String,
}

impl From<audit_event::Model> for AuditEvent {
    fn from(e: audit_event::Model) -> Self {
        Self {
            seq: e.seq,
            at: e.at.to_rfc3339_opts(SecondsFormat::Secs, true),
            action: e.action,
            actor_role: e.actor_role,
            agency: e.agency,
            purpose: e.purpose,
            person_id: e.person_id.map(ID),
            request_id: e.request_id,
        }
    }
}

/// Whether the audit chain holds.
#[derive(SimpleObject, Clone, Debug)]
pub struct AuditChainStatus {
    /// True when every event links to the one before and hashes to what it says.
    pub holds: bool,
    /// How many events were checked (when it holds).
    pub events: Option<i64>,
    /// The first broken event's sequence number (when it does not).
    pub first_broken_seq: Option<i64>,
    /// What is wrong (when it does not).
    pub reason: Option<String>,
}

/// Auditors' queries.
#[derive(Default)]
pub struct AuditQuery;

fn auditor_only(principal: &crate::auth::Principal) -> Result<(), ApiError> {
    if principal.role == Role::Auditor {
        crate::services::access::require_purpose(principal)
    } else {
        Err(ApiError::Forbidden(
            "only auditors read the audit log".into(),
        ))
    }
}

#[Object]
impl AuditQuery {
    /// Checks the whole hash chain (auditors only).
    async fn audit_chain(&self, ctx: &Context<'_>) -> async_graphql::Result<AuditChainStatus> {
        let principal = principal(ctx)?;
        let app = app(ctx)?;
        let result = async {
            auditor_only(principal)?;
            match &app.anchors {
                Some((dir, key)) => audit::verify_with_anchors(&app.db, dir, key).await,
                None => audit::verify(&app.db).await,
            }
        }
        .await;
        if result.is_ok() {
            super::log_audit_read(ctx, "audit_chain.read");
        }
        result
            .map(|status| match status {
                ChainStatus::Holds { events, .. } => AuditChainStatus {
                    holds: true,
                    events: Some(events),
                    first_broken_seq: None,
                    reason: None,
                },
                ChainStatus::Broken { seq, reason } => AuditChainStatus {
                    holds: false,
                    events: None,
                    first_broken_seq: Some(seq),
                    reason: Some(reason),
                },
            })
            .gql(principal)
    }

    /// Audit events after `afterSeq`, oldest first, at most `first` (1 to 500; auditors only).
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        after_seq: Option<i64>,
        first: Option<i32>,
    ) -> async_graphql::Result<Vec<AuditEvent>> {
        let principal = principal(ctx)?;
        let app = app(ctx)?;
        let result = async {
            auditor_only(principal)?;
            let first = u64::try_from(first.unwrap_or(100))
                .ok()
                .filter(|f| (1..=500).contains(f))
                .ok_or_else(|| ApiError::BadInput("first must be between 1 and 500".into()))?;
            Ok::<_, ApiError>(
                audit_event::Entity::find()
                    .filter(audit_event::Column::Seq.gt(after_seq.unwrap_or(0)))
                    .order_by_asc(audit_event::Column::Seq)
                    .limit(first)
                    .all(&app.db)
                    .await?,
            )
        }
        .await;
        if result.is_ok() {
            super::log_audit_read(ctx, "audit_log.read");
        }
        result
            .map(|events| events.into_iter().map(AuditEvent::from).collect())
            .gql(principal)
    }
}

/// Reads of and changes to one person's data, newest first: "who looked at my record".
pub async fn access_log(
    db: &sea_orm::DatabaseConnection,
    person_id: &str,
) -> Result<Vec<AuditEvent>, ApiError> {
    Ok(audit_event::Entity::find()
        .filter(audit_event::Column::PersonId.eq(person_id))
        .order_by_desc(audit_event::Column::Seq)
        .limit(1000)
        .all(db)
        .await?
        .into_iter()
        .map(AuditEvent::from)
        .collect())
}
