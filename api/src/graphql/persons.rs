//! The person registry over GraphQL.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, ID, InputObject, Object};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::SecondsFormat;

use super::budget::SuperBudget;
use super::budget_answer::BudgetAnswer;
use super::plan::PlanItem;
use super::scalars::Date;
use super::{GqlResult, app, log_read, principal};
use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::services::access;
use crate::services::budget as budget_service;
use crate::services::persons::{self as service, IdentifierRecord, NewPerson, PersonRecord};

/// The schemes a person can be known by.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "IdentifierScheme", remote = "connectors::IdentifierScheme")]
pub enum IdentifierScheme {
    /// NHS number: 10 digits with a Modulus 11 check digit; spaces are dropped.
    NhsNumber,
    /// National Insurance number; case and spaces are folded.
    Nino,
    /// A council's client id in its case-management system.
    CouncilClientId,
    /// The Independent Living Fund's award reference, e.g. ILF-000317.
    IlfReference,
}

/// An identifier to link.
#[derive(InputObject, Clone, Debug)]
pub struct IdentifierInput {
    /// Its scheme.
    pub scheme: IdentifierScheme,
    /// Its value as written; validated and normalised by the hub.
    pub value: String,
}

/// A person to register.
#[derive(InputObject, Clone, Debug)]
pub struct RegisterPersonInput {
    /// Given name.
    pub given_name: String,
    /// Family name.
    pub family_name: String,
    /// Date of birth.
    pub date_of_birth: Date,
    /// Identifiers the funds know the person by (may be empty).
    pub identifiers: Vec<IdentifierInput>,
}

/// A person registered in the hub.
pub struct Person(pub PersonRecord);

#[Object]
impl Person {
    /// The hub person id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Given name.
    async fn given_name(&self) -> &str {
        &self.0.given_name
    }
    /// Family name.
    async fn family_name(&self) -> &str {
        &self.0.family_name
    }
    /// Date of birth.
    async fn date_of_birth(&self) -> Date {
        Date(self.0.date_of_birth)
    }
    /// The identifiers each fund knows this person by, with who linked each and when. An agency
    /// sees only the identifiers of the streams the person shares with it, so it cannot learn
    /// which other funds know the person.
    async fn identifiers(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Identifier>> {
        let principal = principal(ctx)?;
        let app = app(ctx)?;
        let visible = if principal.role == Role::Agency {
            let scope = access::budget_scope(&app.db, principal, &self.0.id)
                .await
                .gql(principal)?
                .unwrap_or_default();
            let schemes: Vec<connectors::IdentifierScheme> = app
                .registry
                .all()
                .filter(|c| scope.contains(&c.settings().id.0))
                .flat_map(|c| c.schemes())
                .collect();
            Some(schemes)
        } else {
            None
        };
        Ok(self
            .0
            .identifiers
            .iter()
            .filter(|i| {
                visible
                    .as_ref()
                    .is_none_or(|schemes| schemes.contains(&i.scheme))
            })
            .cloned()
            .map(Identifier)
            .collect())
    }
    /// Bumped by every change to the record or its identifiers.
    async fn version(&self) -> i32 {
        self.0.version
    }
    /// The combined budget across every stream the caller may see, in one window: a financial
    /// year ("2026-27"), or from and to; by default the current financial year.
    async fn super_budget(
        &self,
        ctx: &Context<'_>,
        financial_year: Option<String>,
        from: Option<Date>,
        to: Option<Date>,
    ) -> async_graphql::Result<BudgetAnswer> {
        let principal = principal(ctx)?;
        let app = app(ctx)?;
        let log = ctx.data::<std::sync::Arc<super::ReadLog>>().ok();
        let result = async {
            let window = window(financial_year.as_deref(), from, to)?;
            let loaders = super::loaders(ctx)?;
            let record = log.map(|log| {
                use futures::FutureExt as _;
                log.record_now(&self.0.id, "budget.read").boxed()
            });
            budget_service::super_budget(
                &app.db,
                loaders,
                &app.registry,
                principal,
                &self.0,
                window,
                record,
            )
            .await
        }
        .await;
        let (view, recorded) = result.gql(principal)?;
        if !recorded {
            log_read(ctx, &self.0.id, "budget.read");
        }
        Ok(BudgetAnswer(SuperBudget(view, self.0.id.clone())))
    }

    /// The person's sharing permissions, newest first (the person, their representative and
    /// auditors only).
    async fn consents(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<super::consent::Consent>> {
        let principal = principal(ctx)?;
        let app = app(ctx)?;
        let result = async {
            if principal.role != Role::Auditor {
                crate::services::consent::can_decide(principal, &self.0.id)?;
            }
            crate::services::consent::list(&app.db, &self.0.id).await
        }
        .await;
        let list = result.gql(principal)?;
        log_read(ctx, &self.0.id, "consents.read");
        Ok(list.into_iter().map(super::consent::Consent).collect())
    }

    /// Who looked at or changed this person's data, when, and for what stated purpose, newest
    /// first: the person's own "who looked at my record" (the person and their representative
    /// only).
    async fn access_log(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<super::audit::AuditEvent>> {
        let principal = principal(ctx)?;
        let app = app(ctx)?;
        let result = async {
            crate::services::consent::can_decide(principal, &self.0.id)?;
            super::audit::access_log(&app.db, &self.0.id).await
        }
        .await;
        let events = result.gql(principal)?;
        log_read(ctx, &self.0.id, "access_log.read");
        Ok(events)
    }

    /// The person's support plan: what they plan to buy and which streams fund it.
    async fn support_plan(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<PlanItem>> {
        use crate::services::sources::StoreReader;
        let principal = principal(ctx)?;
        let result = async {
            let loaders = super::loaders(ctx)?;
            let scope = access::budget_scope(
                &app(ctx).map_err(|_| ApiError::Unauthenticated)?.db,
                principal,
                &self.0.id,
            )
            .await?;
            let items = loaders.plan_items(&self.0.id).await?;
            Ok::<_, ApiError>(crate::services::plan::within_scope(items, scope.as_deref()))
        }
        .await;
        let items = result.gql(principal)?;
        log_read(ctx, &self.0.id, "plan.read");
        Ok(items.into_iter().map(PlanItem).collect())
    }

    /// The trace for auditors as CSV: every award in the window with the upstream record,
    /// version, fetch time and hash it came from, and every plan share with the award it draws
    /// on.
    async fn trace_csv(
        &self,
        ctx: &Context<'_>,
        financial_year: Option<String>,
        from: Option<Date>,
        to: Option<Date>,
    ) -> async_graphql::Result<String> {
        let principal = principal(ctx)?;
        let app = app(ctx)?;
        let result = async {
            let window = window(financial_year.as_deref(), from, to)?;
            budget_service::trace_csv(&app.db, &app.registry, principal, &self.0, window).await
        }
        .await;
        let csv = result.gql(principal)?;
        log_read(ctx, &self.0.id, "trace.read");
        Ok(csv)
    }
}

/// One identifier linked to a person.
pub struct Identifier(IdentifierRecord);

#[Object]
impl Identifier {
    /// Its scheme.
    async fn scheme(&self) -> IdentifierScheme {
        self.0.scheme.into()
    }
    /// Its normalised value.
    async fn value(&self) -> &str {
        &self.0.value
    }
    /// Who linked it (the token subject).
    async fn linked_by(&self) -> &str {
        &self.0.linked_by
    }
    /// When it was linked (RFC 3339).
    async fn linked_at(&self) -> String {
        self.0.linked_at.to_rfc3339_opts(SecondsFormat::Secs, true)
    }
}

/// The window a budget field's arguments ask for, as of today.
fn window(
    financial_year: Option<&str>,
    from: Option<Date>,
    to: Option<Date>,
) -> ApiResult<crate::budget::period::Window> {
    budget_service::resolve_window(
        financial_year,
        from.map(|d| d.0),
        to.map(|d| d.0),
        chrono::Utc::now().date_naive(),
    )
}

/// Registry queries.
#[derive(Default)]
pub struct PersonsQuery;

/// Callers whose view is scoped to certain people learn nothing from a miss: not found and not
/// allowed read the same to them.
fn hide_existence(principal: &Principal, error: ApiError) -> ApiError {
    match (principal.role, error) {
        (Role::Admin | Role::Auditor, e) => e,
        (_, ApiError::NotFound(_)) => ApiError::Forbidden(
            "you are not allowed to see this person's record, or there is none".into(),
        ),
        (_, e) => e,
    }
}

/// The request's loaders when the query asks for the person's budget (for [`read_person`]).
fn budget_loaders<'a>(ctx: &Context<'a>) -> ApiResult<Option<&'a super::loaders::Loaders>> {
    if ctx.look_ahead().field("superBudget").exists() {
        super::loaders(ctx).map(Some)
    } else {
        Ok(None)
    }
}

/// The person, once the caller may read them. With `budget` (the request's loaders, for a
/// query that also asks for the person's budget), on PostgreSQL the budget's store reads come
/// with the person's (see `persons::get_served_with_views`), and the loaders keep them.
async fn read_person(
    app: &super::AppContext,
    principal: &Principal,
    id: &str,
    budget: Option<&super::loaders::Loaders>,
) -> ApiResult<PersonRecord> {
    access::can_read_person(&app.db, principal, id)
        .await
        .map_err(|e| hide_existence(principal, e))?;
    let Some(loaders) = budget else {
        return service::get_served(&app.reader, id).await;
    };
    let (person, bundle) = service::get_served_with_views(&app.reader, &app.registry, id).await?;
    if let Some(bundle) = bundle {
        loaders.adopt(bundle);
    }
    Ok(person)
}

#[Object]
impl PersonsQuery {
    /// A person by hub id.
    async fn person(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Person>> {
        let principal = principal(ctx)?;
        let app = app(ctx)?;
        let result = async { read_person(app, principal, &id, budget_loaders(ctx)?).await }.await;
        let person = result.gql(principal)?;
        log_read(ctx, &person.id, "person.read");
        Ok(Some(Person(person)))
    }

    /// A person by one of the identifiers a fund knows them by.
    async fn person_by_identifier(
        &self,
        ctx: &Context<'_>,
        scheme: IdentifierScheme,
        value: String,
    ) -> async_graphql::Result<Option<Person>> {
        let principal = principal(ctx)?;
        let app = app(ctx)?;
        let result = async {
            let budget = budget_loaders(ctx)?;
            let id = service::find_by_identifier(&app.reader, scheme.into(), &value)
                .await
                .map_err(|e| hide_existence(principal, e))?;
            read_person(app, principal, &id, budget).await
        }
        .await;
        let person = result.gql(principal)?;
        log_read(ctx, &person.id, "person.read");
        Ok(Some(Person(person)))
    }

    /// Everyone registered, in registration order, a page at a time (administrators and
    /// auditors only). `first` is 1 to 100 (default 20); `after` is a cursor from a previous page.
    async fn people(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Person>> {
        let principal = principal(ctx)?;
        let db = &app(ctx)?.db;
        let result = async {
            access::can_list_people(principal)?;
            let first = u64::try_from(first.unwrap_or(20)).map_err(|_| {
                ApiError::BadInput(format!("first must be between 1 and {}", service::MAX_PAGE))
            })?;
            let after = after.as_deref().map(decode_cursor).transpose()?;
            let page = service::list(db, first, after.as_deref()).await?;
            for person in &page.people {
                log_read(ctx, &person.id, "person.read");
            }
            let mut connection = Connection::new(after.is_some(), page.has_next);
            connection.edges.extend(
                page.people
                    .into_iter()
                    .map(|p| Edge::new(encode_cursor(&p.id), Person(p))),
            );
            Ok(connection)
        }
        .await;
        result.gql(principal)
    }
}

fn encode_cursor(person_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("person:{person_id}"))
}

fn decode_cursor(cursor: &str) -> ApiResult<String> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix("person:").map(str::to_owned))
        .filter(|id| uuid::Uuid::parse_str(id).is_ok())
        .ok_or_else(|| {
            ApiError::BadInput(
                "after is not a cursor this API gave out; use an endCursor from a previous page"
                    .into(),
            )
        })
}

/// Registry mutations.
#[derive(Default)]
pub struct PersonsMutation;

#[Object]
impl PersonsMutation {
    /// Registers a person with the identifiers the funds know them by. An identifier already
    /// linked to someone else is refused with CONFLICT and nothing is written.
    async fn register_person(
        &self,
        ctx: &Context<'_>,
        input: RegisterPersonInput,
    ) -> async_graphql::Result<Person> {
        let principal = principal(ctx)?;
        let db = &app(ctx)?.db;
        let result = async {
            access::can_manage_registry(principal, None)?;
            service::register(
                db,
                principal,
                NewPerson {
                    given_name: input.given_name,
                    family_name: input.family_name,
                    date_of_birth: input.date_of_birth.0,
                    identifiers: input
                        .identifiers
                        .into_iter()
                        .map(|i| (i.scheme.into(), i.value))
                        .collect(),
                },
            )
            .await
        }
        .await;
        result.map(Person).gql(principal)
    }

    /// Links another identifier to a person. Linking one they already hold changes nothing.
    async fn link_identifier(
        &self,
        ctx: &Context<'_>,
        person_id: ID,
        identifier: IdentifierInput,
    ) -> async_graphql::Result<Person> {
        let principal = principal(ctx)?;
        let db = &app(ctx)?.db;
        let result = async {
            access::can_manage_registry(principal, Some(&person_id))?;
            service::link_identifier(
                db,
                principal,
                &person_id,
                identifier.scheme.into(),
                &identifier.value,
            )
            .await
        }
        .await;
        result.map(Person).gql(principal)
    }

    /// Unlinks an identifier from a person.
    async fn unlink_identifier(
        &self,
        ctx: &Context<'_>,
        person_id: ID,
        identifier: IdentifierInput,
    ) -> async_graphql::Result<Person> {
        let principal = principal(ctx)?;
        let db = &app(ctx)?.db;
        let result = async {
            access::can_manage_registry(principal, Some(&person_id))?;
            service::unlink_identifier(
                db,
                principal,
                &person_id,
                identifier.scheme.into(),
                &identifier.value,
            )
            .await
        }
        .await;
        result.map(Person).gql(principal)
    }
}
