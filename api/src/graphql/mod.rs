//! The GraphQL schema: one module per domain, merged, with resolvers that only translate
//! between GraphQL types and the services.

pub mod budget;
pub mod persons;
pub mod plan;
pub mod scalars;
pub mod streams;

use async_graphql::{Context, EmptySubscription, MergedObject, Schema, SchemaBuilder};
use connectors::ConnectorSettings;
use sea_orm::DatabaseConnection;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};

/// Everything resolvers share, held once per server.
#[derive(Clone, Debug)]
pub struct AppContext {
    /// The hub's store.
    pub db: DatabaseConnection,
    /// The configured funding streams.
    pub connectors: Vec<ConnectorSettings>,
    /// The connectors built from them.
    pub registry: std::sync::Arc<connectors::Registry>,
}

/// The root query.
#[derive(MergedObject, Default)]
pub struct Query(persons::PersonsQuery, streams::StreamsQuery);

/// The root mutation.
#[derive(MergedObject, Default)]
pub struct Mutation(persons::PersonsMutation, plan::PlanMutation);

/// The served schema's type.
pub type TributarySchema = Schema<Query, Mutation, EmptySubscription>;

/// The schema with its limits, before per-server data is attached.
pub fn schema_builder() -> SchemaBuilder<Query, Mutation, EmptySubscription> {
    Schema::build(Query::default(), Mutation::default(), EmptySubscription)
        .limit_depth(12)
        .limit_complexity(5_000)
        .limit_recursive_depth(32)
}

/// The schema a server serves.
pub fn build_schema(app: AppContext, dev: bool) -> TributarySchema {
    let mut builder = schema_builder().data(app);
    if !dev {
        builder = builder.disable_introspection().disable_suggestions();
    }
    builder.finish()
}

/// The published SDL: what `schema.graphql` must hold.
pub fn sdl() -> String {
    schema_builder().finish().sdl()
}

/// The caller, set by the HTTP layer on every request.
pub(crate) fn principal<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a Principal> {
    ctx.data::<Principal>()
        .map_err(|_| ApiError::Unauthenticated.into_graphql("-"))
}

pub(crate) fn app<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a AppContext> {
    ctx.data::<AppContext>().map_err(|_| {
        ApiError::Internal(anyhow::anyhow!("schema built without AppContext")).into_graphql("-")
    })
}

/// Converts a service result, tagging internal errors with the request id.
pub(crate) trait GqlResult<T> {
    fn gql(self, principal: &Principal) -> async_graphql::Result<T>;
}

impl<T> GqlResult<T> for ApiResult<T> {
    fn gql(self, principal: &Principal) -> async_graphql::Result<T> {
        self.map_err(|e| e.into_graphql(&principal.request_id))
    }
}
