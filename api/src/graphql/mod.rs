//! The GraphQL schema: one module per domain, merged, with resolvers that only translate
//! between GraphQL types and the services.

pub mod audit;
pub mod budget;
pub mod budget_answer;
pub mod consent;
pub mod loaders;
pub mod persons;
pub mod plan;
pub mod respond;
pub mod scalars;
pub mod streams;

use async_graphql::{Context, EmptySubscription, MergedObject, Schema, SchemaBuilder};
use connectors::ConnectorSettings;
use sea_orm::DatabaseConnection;

use crate::auth::Principal;
use crate::config::LimitSettings;
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
    /// Where the served path reads the store.
    pub reader: crate::reader::Reader,
    /// Where the audit chain's anchors are and the key that signs them, when configured.
    pub anchors: Option<(std::path::PathBuf, secrecy::SecretString)>,
}

/// The root query.
#[derive(MergedObject, Default)]
pub struct Query(
    persons::PersonsQuery,
    streams::StreamsQuery,
    audit::AuditQuery,
);

/// The root mutation.
#[derive(MergedObject, Default)]
pub struct Mutation(
    persons::PersonsMutation,
    plan::PlanMutation,
    consent::ConsentMutation,
);

/// The served schema's type.
pub type TributarySchema = Schema<Query, Mutation, EmptySubscription>;

/// The schema with its limits, before per-server data is attached.
pub fn schema_builder(limits: &LimitSettings) -> SchemaBuilder<Query, Mutation, EmptySubscription> {
    Schema::build(Query::default(), Mutation::default(), EmptySubscription)
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .limit_directives(limits.max_directives)
        .limit_recursive_depth(32)
}

/// The schema a server serves: a query text it has validated before is not validated again
/// (see `limits::Parsed`).
pub fn build_schema(app: AppContext, dev: bool, limits: &LimitSettings) -> TributarySchema {
    let mut builder = schema_builder(limits)
        .data(app)
        .extension(crate::limits::ValidatedBefore::default());
    if !dev {
        builder = builder.disable_introspection().disable_suggestions();
    }
    builder.finish()
}

/// The published SDL: what `schema.graphql` must hold.
pub fn sdl() -> String {
    schema_builder(&LimitSettings::default()).finish().sdl()
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

/// This request's batching loaders, set by the HTTP layer.
pub(crate) fn loaders<'a>(ctx: &Context<'a>) -> ApiResult<&'a loaders::Loaders> {
    ctx.data::<loaders::Loaders>()
        .map_err(|_| ApiError::Internal(anyhow::anyhow!("request without loaders")))
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

/// The reads of personal data one request made, written to the audit log before its answer
/// leaves the server.
#[derive(Debug, Default)]
pub struct ReadLog {
    reads: std::sync::Mutex<Vec<(Option<String>, &'static str)>>,
    /// The audit writer and the caller, for reads recorded before the whole answer is ready
    /// (see [`ReadLog::record_now`]); none outside the HTTP handler.
    recorder: Option<(crate::audit::ReadRecorder, Principal)>,
}

impl ReadLog {
    /// A log whose reads [`ReadLog::record_now`] can record through `recorder` as `actor`.
    pub fn recording(recorder: crate::audit::ReadRecorder, actor: Principal) -> Self {
        Self {
            reads: Default::default(),
            recorder: Some((recorder, actor)),
        }
    }

    /// Takes what was noted and not yet recorded.
    pub fn take(&self) -> Vec<(Option<String>, &'static str)> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Option<String>, &'static str)>> {
        self.reads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records now that this request read `what` of `person_id`'s data, together with every
    /// read it noted before (so the log keeps their order); returns once they are committed.
    /// A view whose partners were asked records this way while it asks them or keeps their
    /// answers, rather than one commit after the other (see `sources::gather`). Without a recorder
    /// the read is only noted, for the handler to record.
    ///
    /// When recording fails, the earlier reads are noted again, so the handler still records
    /// them before anything they read leaves (or withholds the whole answer); `what` is not,
    /// as the caller then serves none of it.
    pub async fn record_now(&self, person_id: &str, what: &'static str) -> ApiResult<()> {
        let read = (Some(person_id.to_owned()), what);
        let Some((recorder, actor)) = &self.recorder else {
            self.lock().push(read);
            return Ok(());
        };
        let earlier = self.take();
        let mut reads = earlier.clone();
        reads.push(read);
        let recorded = recorder.record(actor, reads).await;
        if recorded.is_err() {
            let mut log = self.lock();
            let later = std::mem::replace(&mut *log, earlier);
            log.extend(later);
        }
        recorded
    }
}

/// Notes that this request read `what` of `person_id`'s data.
pub(crate) fn log_read(ctx: &Context<'_>, person_id: &str, what: &'static str) {
    if let Ok(log) = ctx.data::<std::sync::Arc<ReadLog>>() {
        log.lock().push((Some(person_id.to_owned()), what));
    }
}

/// Notes that this request read the audit log itself (it names people and purposes).
pub(crate) fn log_audit_read(ctx: &Context<'_>, what: &'static str) {
    if let Ok(log) = ctx.data::<std::sync::Arc<ReadLog>>() {
        log.lock().push((None, what));
    }
}
