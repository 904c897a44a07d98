//! Sharing permissions over GraphQL.

use async_graphql::{Context, ID, InputObject, Object};
use chrono::SecondsFormat;

use super::scalars::Date;
use super::{GqlResult, app, principal};
use crate::services::consent::{self as service, Consent as Stored, NewConsent};

/// A sharing permission to grant. These are the person's own choices about who sees what; in
/// law, sharing for direct care rests on public task rather than GDPR consent.
#[derive(InputObject, Clone, Debug)]
pub struct ConsentInput {
    /// Whose budget.
    pub person_id: ID,
    /// The agency allowed to see it (the `agency` claim of its tokens).
    pub agency: String,
    /// The streams it may see.
    pub streams: Vec<ID>,
    /// What for, in words the person understands.
    pub purpose: String,
    /// Last day it holds; none means until revoked.
    pub until: Option<Date>,
}

/// A person's permission for an agency to see some of their streams. Revoking it takes effect
/// on the agency's next request.
pub struct Consent(pub Stored);

#[Object]
impl Consent {
    /// Its id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The agency.
    async fn agency(&self) -> &str {
        &self.0.agency
    }
    /// The streams it covers.
    async fn streams(&self) -> Vec<ID> {
        self.0.streams.iter().cloned().map(ID).collect()
    }
    /// What for.
    async fn purpose(&self) -> &str {
        &self.0.purpose
    }
    /// Last day it holds.
    async fn until(&self) -> Option<Date> {
        self.0.until.map(Date)
    }
    /// When it was granted (RFC 3339).
    async fn granted_at(&self) -> String {
        self.0.granted_at.to_rfc3339_opts(SecondsFormat::Secs, true)
    }
    /// When it was revoked (RFC 3339), if it was.
    async fn revoked_at(&self) -> Option<String> {
        self.0
            .revoked_at
            .map(|at| at.to_rfc3339_opts(SecondsFormat::Secs, true))
    }
}

/// Consent mutations.
#[derive(Default)]
pub struct ConsentMutation;

#[Object]
impl ConsentMutation {
    /// The person (or their representative) lets an agency see some of their streams, for a
    /// purpose, until a date. Recorded as an audit event of its own.
    async fn grant_consent(
        &self,
        ctx: &Context<'_>,
        input: ConsentInput,
    ) -> async_graphql::Result<Consent> {
        let principal = principal(ctx)?;
        let app = app(ctx)?;
        let streams: Vec<String> = app.connectors.iter().map(|c| c.id.0.clone()).collect();
        service::grant(
            &app.db,
            principal,
            NewConsent {
                person_id: input.person_id.0,
                agency: input.agency,
                streams: input.streams.into_iter().map(|s| s.0).collect(),
                purpose: input.purpose,
                until: input.until.map(|d| d.0),
            },
            &streams,
        )
        .await
        .map(Consent)
        .gql(principal)
    }

    /// Withdraws a permission; the agency loses sight on its next request. Recorded as an
    /// audit event of its own.
    async fn revoke_consent(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Consent> {
        let principal = principal(ctx)?;
        let app = app(ctx)?;
        service::revoke(&app.db, principal, &id)
            .await
            .map(Consent)
            .gql(principal)
    }
}
