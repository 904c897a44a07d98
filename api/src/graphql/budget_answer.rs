//! The superBudget answer written as JSON in one pass over the query's selection set.
//!
//! A budget is plain data once assembled, yet async-graphql's derived resolvers give each of its
//! fields a boxed future, a task in a `FuturesUnordered` and a nested container for every `Money`:
//! a portal's budget query resolves about two hundred fields that way, and profiles of the
//! snapshot-served query put that machinery above a third of the hub's CPU. [`BudgetAnswer`]
//! walks the selection set instead (fragments, aliases, `__typename`, repeated fields merged as
//! GraphQL merges them) and writes the JSON the derived resolvers' `Value` would serialise to,
//! straight to bytes (see `respond` for how the server places them). The GraphQL types stay the
//! derived ones in `budget.rs`: the schema registers them, and whatever the walk does not answer
//! (`Award.planItems`, which reads the plan, or any directive or argument, which async-graphql
//! applies) falls back to them whole, so both paths always answer the same query. A test
//! compares the two over every field.
//!
//! What a query selects is planned once for its text, not on every request: a [`Plan`] holds
//! the keys of each object the answer writes and the plan of the object below each, and the
//! text's parsed copy (`limits::Parsed`) keeps it in its [`Plans`]. Planning was a sixth of a
//! served query's allocations.
//!
//! The walk reads the query through `Context::item`, `QueryEnv::fragments` and
//! `SchemaEnv::registry`, which async-graphql marks `doc(hidden)` but keeps public for the code
//! its macros generate.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_graphql::parser::types::{Field, FragmentDefinition, Selection, SelectionSet};
use async_graphql::registry::{MetaType, MetaTypeName, Registry};
use async_graphql::resolver_utils::enum_value;
use async_graphql::{
    ContextSelectionSet, Name, OutputType, Pos, Positioned, ScalarType, ServerResult, Value,
};

use super::budget::{SourceRecord, SuperBudget, rfc3339};
use super::respond::{json_name, json_str, write_value};
use super::scalars::{Date, GBP, write_pounds};
use crate::budget::assemble::{AwardView, BudgetView, StreamView, Warning};
use crate::budget::period::to_pounds;

/// A person's superBudget as the schema's `SuperBudget`, answered by the walk where it can.
pub struct BudgetAnswer(pub SuperBudget);

impl OutputType for BudgetAnswer {
    fn type_name() -> Cow<'static, str> {
        <SuperBudget as OutputType>::type_name()
    }

    fn create_type_info(registry: &mut Registry) -> String {
        <SuperBudget as OutputType>::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        let parsed = ctx.data_opt::<Arc<crate::limits::Parsed>>();
        // A text whose every request runs the same selections has its plan kept, and its
        // budget's selection read from the text's own document, with its fragments: a request's
        // lean copy leaves the selection out (see `limits::Parsed::for_request`). Any other
        // text (directives, which each request's variables prune) is planned from the
        // request's own copy, every time.
        let kept = parsed.filter(|p| p.same_in_every_request());
        let whole = || {
            kept.and_then(|p| Some((p.selection_set_at(ctx.item.pos)?, &p.document().fragments)))
                .unwrap_or((ctx.item, &ctx.query_env.fragments))
        };
        let planner = || {
            let (set, fragments) = whole();
            let planner = Planner {
                registry: &ctx.schema_env.registry,
                fragments,
            };
            planner.plan(<BudgetView as Answer>::TYPE, &[set])
        };
        let plan = match kept {
            Some(parsed) => parsed.plans().get(ctx.item, planner),
            None => planner().map(Arc::new),
        };
        let walked = plan.and_then(|plan| {
            let mut walk = Walk::new();
            walk.write(&self.0.0, &plan).map(|()| walk.out)
        });
        if let Some(json) = walked {
            // The JSON goes out as written where no other answer can be merged into it: the
            // query text asks for one budget (see `limits::Parsed::budgets`). Otherwise it is
            // read back as a `Value`, for async-graphql to merge as it merges any answer.
            if parsed.is_some_and(|p| p.budgets() == 1) {
                return Ok(Value::Binary(json.into()));
            }
            if let Ok(value) = serde_json::from_slice(&json) {
                return Ok(value);
            }
        }
        OutputType::resolve(&self.0, &ctx.with_selection_set(whole().0), field).await
    }
}

/// A selection set of the query.
type Set<'q> = &'q Positioned<SelectionSet>;

/// The plans made for one query text's budgets, each under the place its selection set starts in
/// the text (the same in every request of that text). `limits::Parsed` keeps them.
#[derive(Debug, Default)]
pub struct Plans(Mutex<Vec<(Pos, Option<Arc<Plan>>)>>);

impl Plans {
    /// The most plans kept for one text: one for each budget field it has, a few at most.
    const MAX: usize = 16;

    /// The plan for `set`, kept from an earlier request or made now by `plan`.
    fn get(&self, set: Set<'_>, plan: impl FnOnce() -> Option<Plan>) -> Option<Arc<Plan>> {
        let lock = || self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = |plans: &[(Pos, Option<Arc<Plan>>)]| {
            plans
                .iter()
                .find(|(pos, _)| *pos == set.pos)
                .map(|(_, plan)| plan.clone())
        };
        if let Some(plan) = kept(&lock()) {
            return plan;
        }
        let plan = plan().map(Arc::new);
        let mut plans = lock();
        // Another request of the same text may have kept the same plan meanwhile.
        if plans.len() < Self::MAX && kept(&plans).is_none() {
            plans.push((set.pos, plan.clone()));
        }
        plan
    }

    /// How many plans are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// What a query selects on an object of type `ty`: the keys of its answer, in the order the
/// query first asks for them.
#[derive(Debug)]
pub struct Plan {
    ty: String,
    groups: Box<[Group]>,
}

/// One key of an object's answer: the field it answers, and the plan of the object below it (a
/// field asked for more than once under one key is answered once, its selections merged).
#[derive(Debug)]
struct Group {
    key: Name,
    name: Name,
    /// `None` for a scalar or enum field, or where the selection below is not the walk's to
    /// answer (the walk then gives the whole budget to the derived resolvers).
    below: Option<Plan>,
}

impl Group {
    /// The plan of the object below, if it is one of type `ty`.
    fn below(&self, ty: &str) -> Option<&Plan> {
        self.below.as_ref().filter(|plan| plan.ty == ty)
    }
}

/// Plans a query's selections, with the schema's types (for the type below each field) and the
/// query's named fragments (for spreads met on the way down).
struct Planner<'q> {
    registry: &'q Registry,
    fragments: &'q HashMap<Name, Positioned<FragmentDefinition>>,
}

/// A key while it is planned: the field's name and every selection set asked for under the key.
type Keyed<'q> = (Name, Name, Vec<Set<'q>>);

impl<'q> Planner<'q> {
    /// The plan of `sets` on an object of type `ty`, and of every object below; `None` where
    /// any of its own keys is not the walk's to answer.
    fn plan(&self, ty: &str, sets: &[Set<'q>]) -> Option<Plan> {
        let mut keys = Vec::with_capacity(sets.first().map_or(0, |s| s.node.items.len()));
        for set in sets {
            self.collect(ty, set, &mut keys)?;
        }
        let fields = self.registry.types.get(ty).and_then(MetaType::fields);
        let groups = keys
            .into_iter()
            .map(|(key, name, sets)| {
                let below = fields
                    .and_then(|fields| fields.get(name.as_str()))
                    .map(|field| MetaTypeName::concrete_typename(&field.ty))
                    .filter(|ty| {
                        matches!(self.registry.types.get(*ty), Some(MetaType::Object { .. }))
                    })
                    .and_then(|ty| self.plan(ty, &sets));
                Group { key, name, below }
            })
            .collect();
        Some(Plan {
            ty: ty.to_owned(),
            groups,
        })
    }

    fn collect(&self, ty: &str, set: Set<'q>, keys: &mut Vec<Keyed<'q>>) -> Option<()> {
        for selection in &set.node.items {
            match &selection.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    if !field.directives.is_empty() || !field.arguments.is_empty() {
                        return None;
                    }
                    let key = &field.response_key().node;
                    match keys.iter_mut().find(|(k, ..)| k == key) {
                        Some((.., sets)) => sets.push(&field.selection_set),
                        None => keys.push((
                            key.clone(),
                            field.name.node.clone(),
                            vec![&field.selection_set],
                        )),
                    }
                }
                Selection::FragmentSpread(spread) => {
                    if !spread.node.directives.is_empty() {
                        return None;
                    }
                    let fragment = self.fragments.get(&spread.node.fragment_name.node)?;
                    if fragment.node.type_condition.node.on.node.as_str() != ty {
                        return None;
                    }
                    self.collect(ty, &fragment.node.selection_set, keys)?;
                }
                Selection::InlineFragment(inline) => {
                    if !inline.node.directives.is_empty() {
                        return None;
                    }
                    let applies = inline
                        .node
                        .type_condition
                        .as_ref()
                        .is_none_or(|c| c.node.on.node.as_str() == ty);
                    if !applies {
                        return None;
                    }
                    self.collect(ty, &inline.node.selection_set, keys)?;
                }
            }
        }
        Some(())
    }
}

/// The walk over one budget: the JSON written so far.
struct Walk {
    out: Vec<u8>,
}

/// A budget type the walk answers.
trait Answer {
    /// Its GraphQL type name, for `__typename` and fragments' type conditions.
    const TYPE: &'static str;
    /// Writes the value of the field `group` answers, with the selection planned below it;
    /// `None` where the walk does not answer that field and the derived resolvers must.
    fn field(&self, group: &Group, walk: &mut Walk) -> Option<()>;
}

impl<T: Answer + ?Sized> Answer for &T {
    const TYPE: &'static str = T::TYPE;
    fn field(&self, group: &Group, walk: &mut Walk) -> Option<()> {
        (**self).field(group, walk)
    }
}

impl Walk {
    fn new() -> Self {
        Self {
            out: Vec::with_capacity(8 * 1024),
        }
    }

    /// Writes `value`'s fields that the selection below `group` selects.
    fn object<T: Answer + ?Sized>(&mut self, value: &T, group: &Group) -> Option<()> {
        let plan = group.below(T::TYPE)?;
        self.write(value, plan)
    }

    /// Writes `value`'s answer to the keys of `plan`.
    fn write<T: Answer + ?Sized>(&mut self, value: &T, plan: &Plan) -> Option<()> {
        // As async-graphql: a selection with nothing left to answer is null.
        if plan.groups.is_empty() {
            self.out.extend_from_slice(b"null");
            return Some(());
        }
        self.out.push(b'{');
        for (i, group) in plan.groups.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            json_name(&mut self.out, &group.key);
            self.out.push(b':');
            if group.name == "__typename" {
                self.text(T::TYPE);
            } else {
                value.field(group, self)?;
            }
        }
        self.out.push(b'}');
        Some(())
    }

    /// Writes each of `items`, with the selection planned below `group`.
    fn list<T: Answer>(&mut self, items: impl IntoIterator<Item = T>, group: &Group) -> Option<()> {
        let plan = group.below(T::TYPE)?;
        self.out.push(b'[');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.write(&item, plan)?;
        }
        self.out.push(b']');
        Some(())
    }

    fn money(&mut self, pence: i128, group: &Group) -> Option<()> {
        self.object(&Money(to_pounds(pence)), group)
    }
    /// Writes a string; answers `Some`, as a field the walk answers.
    fn text(&mut self, s: &str) -> Option<()> {
        json_str(&mut self.out, s);
        Some(())
    }

    fn optional(&mut self, s: Option<&str>) -> Option<()> {
        match s {
            Some(s) => self.text(s),
            None => self.value(&Value::Null),
        }
    }

    fn date(&mut self, d: Option<chrono::NaiveDate>) -> Option<()> {
        self.value(&d.map_or(Value::Null, |d| Date(d).to_value()))
    }

    fn value(&mut self, value: &Value) -> Option<()> {
        write_value(&mut self.out, value).ok()
    }
}

/// The figure named `$name` of the six that a budget and each of its streams carry (gross,
/// contribution, net, committed, spent, remaining), in pence; `None` for any other name.
macro_rules! figure {
    ($view:expr, $name:expr) => {
        match $name {
            "gross" => Some($view.gross),
            "contribution" => Some($view.contribution),
            "net" => Some($view.net),
            "committed" => Some($view.committed),
            "spent" => Some($view.spent),
            "remaining" => Some($view.remaining),
            _ => None,
        }
    };
}

/// `Money`: an amount in pounds.
struct Money(rust_decimal::Decimal);

impl Answer for Money {
    const TYPE: &'static str = "Money";
    fn field(&self, group: &Group, walk: &mut Walk) -> Option<()> {
        match group.name.as_str() {
            "amount" => {
                walk.out.push(b'"');
                write_pounds(&mut walk.out, self.0);
                walk.out.push(b'"');
                Some(())
            }
            "currency" => walk.text(GBP),
            _ => None,
        }
    }
}

impl Answer for BudgetView {
    const TYPE: &'static str = "SuperBudget";
    fn field(&self, group: &Group, walk: &mut Walk) -> Option<()> {
        if let Some(pence) = figure!(self, group.name.as_str()) {
            return walk.money(pence, group);
        }
        match group.name.as_str() {
            "from" => walk.date(Some(self.window.from)),
            "to" => walk.date(Some(self.window.to)),
            "streams" => walk.list(&self.streams, group),
            "purposes" => walk.list(
                self.purposes
                    .iter()
                    .map(|(purpose, pence)| Purpose(purpose, *pence)),
                group,
            ),
            "warnings" => walk.list(&self.warnings, group),
            _ => None,
        }
    }
}

/// `PurposeTotal`: one purpose's gross.
struct Purpose<'v>(&'v str, i128);

impl Answer for Purpose<'_> {
    const TYPE: &'static str = "PurposeTotal";
    fn field(&self, group: &Group, walk: &mut Walk) -> Option<()> {
        match group.name.as_str() {
            "purpose" => walk.text(self.0),
            "gross" => walk.money(self.1, group),
            _ => None,
        }
    }
}

impl Answer for Warning {
    const TYPE: &'static str = "BudgetWarning";
    fn field(&self, group: &Group, walk: &mut Walk) -> Option<()> {
        match group.name.as_str() {
            "code" => walk.text(self.code),
            "message" => walk.text(&self.message),
            "streamId" => walk.optional(self.stream_id.as_deref()),
            "itemId" => walk.optional(self.item_id.as_deref()),
            _ => None,
        }
    }
}

/// `FundingStream`: the stream a part of the budget comes from.
struct Stream<'v>(&'v StreamView);

impl Answer for Stream<'_> {
    const TYPE: &'static str = "FundingStream";
    fn field(&self, group: &Group, walk: &mut Walk) -> Option<()> {
        match group.name.as_str() {
            "id" => walk.text(&self.0.id),
            "name" => walk.text(&self.0.name),
            "kind" => walk.text(&self.0.kind),
            _ => None,
        }
    }
}

impl Answer for StreamView {
    const TYPE: &'static str = "StreamBudget";
    fn field(&self, group: &Group, walk: &mut Walk) -> Option<()> {
        if let Some(pence) = figure!(self, group.name.as_str()) {
            return walk.money(pence, group);
        }
        match group.name.as_str() {
            "stream" => walk.object(&Stream(self), group),
            "status" => walk.value(&enum_value(super::budget::SourceStatus::from(self.status))),
            "asOf" => walk.optional(self.as_of.map(rfc3339).as_deref()),
            "awards" => walk.list(&self.awards, group),
            _ => None,
        }
    }
}

impl Answer for AwardView {
    const TYPE: &'static str = "Award";
    fn field(&self, group: &Group, walk: &mut Walk) -> Option<()> {
        let award = &self.award;
        match group.name.as_str() {
            "id" => walk.text(&self.id),
            "upstreamId" => walk.text(&award.upstream_id),
            "purpose" => walk.text(&award.purpose),
            "delivery" => walk.optional(award.delivery.as_deref()),
            "frequency" => walk.text(award.frequency.as_str()),
            "amount" => walk.object(&Money(award.amount), group),
            "entitlement" => walk.money(self.entitlement, group),
            "contribution" => walk.money(self.contribution, group),
            "startDate" => walk.date(award.start_date),
            "endDate" => walk.date(award.end_date),
            "reviewDate" => walk.date(award.review_date),
            "paymentDate" => walk.date(award.payment_date),
            "status" => walk.text(&award.status),
            "lines" => walk.list(
                self.lines.iter().map(|(line, pence)| Line(line, *pence)),
                group,
            ),
            "source" => walk.object(&Source(self), group),
            // planItems reads the plan: the derived resolvers answer it.
            _ => None,
        }
    }
}

/// `AwardLine`: one line of an award and its share of the entitlement.
struct Line<'v>(&'v connectors::AwardLine, i128);

impl Answer for Line<'_> {
    const TYPE: &'static str = "AwardLine";
    fn field(&self, group: &Group, walk: &mut Walk) -> Option<()> {
        let Line(line, pence) = self;
        match group.name.as_str() {
            "upstreamId" => walk.text(&line.upstream_id),
            "purpose" => walk.text(&line.purpose),
            "delivery" => walk.optional(line.delivery.as_deref()),
            "description" => walk.optional(line.description.as_deref()),
            "amount" => walk.object(&Money(line.amount), group),
            "entitlement" => walk.money(*pence, group),
            _ => None,
        }
    }
}

/// `SourceRecord`: the upstream record behind an award (see [`SourceRecord::for_award`]).
struct Source<'v>(&'v AwardView);

impl Answer for Source<'_> {
    const TYPE: &'static str = "SourceRecord";
    fn field(&self, group: &Group, walk: &mut Walk) -> Option<()> {
        let source = &self.0.source;
        match group.name.as_str() {
            "connector" => walk.text(&source.connector),
            "upstreamId" => walk.text(&self.0.award.upstream_id),
            "version" => walk.optional(SourceRecord::award_version(self.0)),
            "fetchedAt" => walk.text(&rfc3339(source.fetched_at)),
            "contentHash" => walk.text(&source.content_hash),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use async_graphql::{EmptyMutation, EmptySubscription, Object, Request, Schema, Variables};
    use chrono::{NaiveDate, TimeZone, Utc};
    use connectors::{Award, AwardLine, Counting, Frequency, PersonRecords, Rejected};
    use rust_decimal::Decimal;
    use serde_json::{Value as Json, json};

    use super::*;
    use crate::budget::assemble::{Commitment, SourceMeta, SourceStatus, StreamInput, assemble};
    use crate::budget::period::Window;

    /// The same budget answered by the walk and by the derived resolvers.
    struct Both(BudgetView);

    #[Object]
    impl Both {
        async fn walked(&self) -> BudgetAnswer {
            BudgetAnswer(SuperBudget(self.0.clone(), "person".into()))
        }
        async fn derived(&self) -> SuperBudget {
            SuperBudget(self.0.clone(), "person".into())
        }
        /// As the server's field is named, for `Parsed::budgets` to count.
        async fn super_budget(&self) -> BudgetAnswer {
            BudgetAnswer(SuperBudget(self.0.clone(), "person".into()))
        }
    }

    fn day(m: u32, d: u32) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(2026, m, d)
    }

    fn award(id: &str, frequency: Frequency, pence: i64, lines: &[i64]) -> Award {
        Award {
            upstream_id: id.into(),
            version: id.len().is_multiple_of(2).then(|| format!("v-{id}")),
            purpose: format!("purpose_{}", id.len() % 3),
            delivery: (pence % 2 == 0).then(|| "direct_payment".into()),
            frequency,
            amount: Decimal::new(pence, 2),
            contribution: (pence > 10_000).then(|| Decimal::new(pence / 9, 2)),
            start_date: day(4, 1),
            end_date: (pence % 3 == 0).then(|| day(12, 31)).flatten(),
            review_date: day(9, 30),
            payment_date: None,
            status: "active".into(),
            counting: Counting::Active,
            lines: lines
                .iter()
                .enumerate()
                .map(|(i, p)| AwardLine {
                    upstream_id: format!("{id}-L{i}"),
                    purpose: format!("line_{i}"),
                    delivery: None,
                    description: (i == 0).then(|| "support worker hours".into()),
                    amount: Decimal::new(*p, 2),
                })
                .collect(),
        }
    }

    fn stream(id: &str, status: SourceStatus, awards: Vec<Award>) -> StreamInput {
        let stored = status != SourceStatus::Unavailable;
        StreamInput {
            id: id.into(),
            name: format!("{id} fund"),
            kind: id.replace('-', "_"),
            status,
            source: stored.then(|| SourceMeta {
                connector: id.into(),
                version: Some("etag-7".into()),
                fetched_at: Utc.with_ymd_and_hms(2026, 11, 30, 9, 15, 0).unwrap(),
                content_hash: format!("hash-{id}"),
            }),
            records: stored.then(|| PersonRecords {
                subject_key: "K".into(),
                awards,
                rejected: vec![Rejected {
                    upstream_id: Some("bad".into()),
                    subject_key: None,
                    line: None,
                    reason: "amount is not money".into(),
                    raw: "{}".into(),
                }],
                ..PersonRecords::default()
            }),
            rejected: Vec::new(),
            yearly_cap: Some(Decimal::new(100, 0)),
            problem: (status != SourceStatus::Fresh).then(|| "timed out".into()),
        }
    }

    /// A budget with something in every field: lines, contributions, a stale and an
    /// unavailable stream, commitments and warnings of several kinds.
    fn budget() -> BudgetView {
        let window = Window::parse_financial_year("2026-27").expect("a financial year");
        let streams = vec![
            stream(
                "la-social-care",
                SourceStatus::Fresh,
                vec![
                    award("PB-1", Frequency::Weekly, 41_250, &[30_000, 11_250]),
                    award("PB-22", Frequency::Monthly, 9_999, &[]),
                ],
            ),
            stream(
                "ilf",
                SourceStatus::Stale,
                vec![award("ILF-000317", Frequency::FourWeekly, 120_000, &[])],
            ),
            stream("nhs-phb", SourceStatus::Unavailable, Vec::new()),
        ];
        let commitments = [Commitment {
            stream_id: "la-social-care".into(),
            item_id: "item-1".into(),
            award_id: Some("la-social-care:PB-1".into()),
            pence: 5_000_000,
        }];
        assemble(window, window.from, streams, &commitments)
    }

    fn schema(view: BudgetView) -> Schema<Both, EmptyMutation, EmptySubscription> {
        Schema::new(Both(view), EmptyMutation, EmptySubscription)
    }

    async fn run(view: BudgetView, query: &str, variables: Json) -> Value {
        let request = Request::new(query).variables(Variables::from_json(variables));
        let answer = schema(view).execute(request).await;
        assert!(answer.errors.is_empty(), "{:?}", answer.errors);
        answer.data
    }

    /// The answer under `key` as the server would send it: keys in the order written, so
    /// that two answers compare equal only when their fields come in the same order too.
    fn sent(data: &Value, key: &str) -> String {
        let Value::Object(fields) = data else {
            panic!("an object");
        };
        serde_json::to_string(&fields[key]).expect("serialisable")
    }

    fn json_of(data: Value) -> Json {
        data.into_json().expect("JSON data")
    }

    /// What the walk alone writes for `query`'s first field's selection set.
    fn walk_alone(view: &BudgetView, query: &str) -> Option<String> {
        let doc = async_graphql::parser::parse_query(query).expect("a query");
        let (_, operation) = doc.operations.iter().next().expect("an operation");
        let Selection::Field(field) = &operation.node.selection_set.node.items[0].node else {
            panic!("the first selection is a field");
        };
        let mut registry = Registry::default();
        <SuperBudget as OutputType>::create_type_info(&mut registry);
        let planner = Planner {
            registry: &registry,
            fragments: &doc.fragments,
        };
        let plan = planner.plan(BudgetView::TYPE, &[&field.node.selection_set])?;
        let mut walk = Walk::new();
        walk.write(view, &plan)?;
        Some(String::from_utf8(walk.out).expect("UTF-8"))
    }

    /// Every field of every type below SuperBudget, but planItems, read from the schema itself
    /// so that a field added later is covered without editing this test.
    async fn every_field(view: &BudgetView) -> String {
        let types = json_of(
            run(
                view.clone(),
                "{ __schema { types { name kind fields { name type { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } }",
                json!({}),
            )
            .await,
        );
        let mut objects: BTreeMap<String, Vec<(String, Option<String>)>> = BTreeMap::new();
        for t in types["__schema"]["types"].as_array().into_iter().flatten() {
            let Some(fields) = t["fields"].as_array() else {
                continue;
            };
            let name = t["name"].as_str().unwrap_or_default().to_owned();
            let fields = fields
                .iter()
                .map(|f| {
                    let mut ty = &f["type"];
                    while ty["name"].is_null() {
                        ty = &ty["ofType"];
                    }
                    let object = (ty["kind"] == "OBJECT")
                        .then(|| ty["name"].as_str().unwrap_or_default().to_owned());
                    (f["name"].as_str().unwrap_or_default().to_owned(), object)
                })
                .collect();
            objects.insert(name, fields);
        }
        fn select(objects: &BTreeMap<String, Vec<(String, Option<String>)>>, ty: &str) -> String {
            let mut out = String::from("{ __typename");
            for (field, object) in &objects[ty] {
                if field == "planItems" {
                    continue;
                }
                out.push(' ');
                out.push_str(field);
                if let Some(object) = object {
                    out.push(' ');
                    out.push_str(&select(objects, object));
                }
            }
            out.push_str(" }");
            out
        }
        select(&objects, "SuperBudget")
    }

    #[tokio::test]
    async fn the_walk_answers_every_field_as_the_derived_resolvers_do() {
        let view = budget();
        let selection = every_field(&view).await;
        for wanted in [
            "amount",
            "currency",
            "contentHash",
            "description",
            "itemId",
            "kind",
        ] {
            assert!(
                selection.contains(wanted),
                "{wanted} missing from {selection}"
            );
        }
        let query = format!("{{ walked {selection} derived {selection} }}");
        let data = run(view.clone(), &query, json!({})).await;
        assert_eq!(sent(&data, "walked"), sent(&data, "derived"));
        let alone = walk_alone(&view, &query).expect("the walk answers every field but planItems");
        assert_eq!(Some(alone), Some(sent(&data, "derived")));

        let data = json_of(data);
        assert_eq!(data["walked"]["streams"][1]["status"], "STALE");
        assert_eq!(data["walked"]["streams"][2]["asOf"], Json::Null);
        let lines = &data["walked"]["streams"][0]["awards"][0]["lines"];
        assert_eq!(lines[0]["description"], "support worker hours");
        assert!(
            data["walked"]["warnings"]
                .as_array()
                .is_some_and(|w| w.len() >= 3),
            "{}",
            data["walked"]["warnings"]
        );
    }

    #[tokio::test]
    async fn fragments_aliases_repeats_and_directives_answer_alike() {
        let fragment = r"
            fragment B on SuperBudget {
              total: gross { amount }
              gross { currency }
              gross { amount }
              streams { stream { id } awards { id } }
              streams { ... on StreamBudget { status awards { amount { amount } source { __typename contentHash } } } }
              ... { net { amount @skip(if: $yes) currency } }
              warnings @include(if: $yes) { code streamId }
              purposes @skip(if: $yes) { purpose }
              __typename
            }";
        let query =
            format!("query($yes: Boolean!) {{ walked {{ ...B }} derived {{ ...B }} }} {fragment}");
        for yes in [true, false] {
            let data = run(budget(), &query, json!({ "yes": yes })).await;
            assert_eq!(sent(&data, "walked"), sent(&data, "derived"), "yes = {yes}");
            let data = json_of(data);
            let walked = &data["walked"];
            assert_eq!(walked["total"]["amount"], walked["gross"]["amount"]);
            assert_eq!(walked["gross"]["currency"], "GBP");
            assert_eq!(walked["net"].get("amount").is_none(), yes);
            assert_eq!(walked["warnings"].is_array(), yes);
            assert_eq!(
                walked["streams"][0]["awards"][0]["source"]["__typename"],
                "SourceRecord"
            );
        }
        // Without directives the walk answers all of it itself.
        let plain = query
            .replace(" @skip(if: $yes)", "")
            .replace(" @include(if: $yes)", "")
            .replace("query($yes: Boolean!) ", "");
        let alone = walk_alone(&budget(), &plain).expect("the walk answers fragments");
        let data = run(budget(), &plain, json!({})).await;
        assert_eq!(Some(alone), Some(sent(&data, "derived")));
    }

    /// `query` run as the server runs it: with its parsed text as request data.
    async fn served(view: BudgetView, query: &str) -> async_graphql::Response {
        served_from(&crate::limits::DocumentCache::default(), view, query).await
    }

    /// The same, the text parsed (and its plans kept) in `documents`.
    async fn served_from(
        documents: &crate::limits::DocumentCache,
        view: BudgetView,
        query: &str,
    ) -> async_graphql::Response {
        let answer = served_as_is(documents, view, query).await;
        assert!(answer.errors.is_empty(), "{:?}", answer.errors);
        answer
    }

    /// The same, errors and all: the schema validates a text once (`ValidatedBefore`), and
    /// a request of a text validated before runs its lean copy, as on the server.
    async fn served_as_is(
        documents: &crate::limits::DocumentCache,
        view: BudgetView,
        query: &str,
    ) -> async_graphql::Response {
        served_with(documents, view, query, json!({})).await
    }

    /// The same, with `variables`.
    async fn served_with(
        documents: &crate::limits::DocumentCache,
        view: BudgetView,
        query: &str,
        variables: Json,
    ) -> async_graphql::Response {
        let parsed = documents.parse(query).expect("a query");
        let mut request = Request::new(query).variables(Variables::from_json(variables));
        request.set_parsed_query(parsed.for_request());
        Schema::build(Both(view), EmptyMutation, EmptySubscription)
            .extension(crate::limits::ValidatedBefore::default())
            .finish()
            .execute(request.data(parsed))
            .await
    }

    /// The superBudget field's selection in the copy of `query`'s document a request runs now.
    fn selected_now(documents: &crate::limits::DocumentCache, query: &str) -> usize {
        let doc = documents.parse(query).expect("kept").for_request();
        let (_, operation) = doc.operations.iter().next().expect("an operation");
        crate::limits::field_named(&operation.node.selection_set.node, "superBudget")
            .expect("a superBudget field")
            .node
            .selection_set
            .node
            .items
            .len()
    }

    /// The JSON the walk wrote for the field `key` of `data`, as the server sends it.
    fn written_by_walk<'d>(data: &'d Value, key: &str) -> &'d str {
        let Value::Object(fields) = data else {
            panic!("an object");
        };
        let Value::Binary(json) = &fields[key] else {
            panic!("JSON written by the walk: {:?}", fields[key]);
        };
        std::str::from_utf8(json).expect("UTF-8")
    }

    #[tokio::test]
    async fn a_sole_budget_goes_out_as_the_json_the_walk_wrote() {
        let view = budget();
        let selection = every_field(&view).await;
        let answer = served(
            view.clone(),
            &format!("{{ superBudget {selection} derived {selection} }}"),
        )
        .await;
        assert_eq!(
            written_by_walk(&answer.data, "superBudget"),
            sent(&answer.data, "derived")
        );
        let mut out = Vec::new();
        crate::graphql::respond::write_response(&mut out, &answer).unwrap();
        let sent: Json = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(sent["data"]["superBudget"], sent["data"]["derived"]);
        assert_eq!(sent["data"]["superBudget"]["streams"][1]["status"], "STALE");
    }

    #[tokio::test]
    async fn a_budget_asked_for_twice_is_merged_as_any_answer_is() {
        let answer = served(
            budget(),
            "{ superBudget { gross { amount } } superBudget { net { amount } gross { currency } } derived { gross { amount currency } net { amount } } }",
        )
        .await;
        let Value::Object(fields) = &answer.data else {
            panic!("an object");
        };
        assert!(
            matches!(fields["superBudget"], Value::Object(_)),
            "{:?}",
            fields["superBudget"]
        );
        let data = json_of(answer.data);
        assert_eq!(data["superBudget"]["gross"], data["derived"]["gross"]);
        assert_eq!(data["superBudget"]["net"], data["derived"]["net"]);
    }

    #[tokio::test]
    async fn a_text_is_planned_once_and_its_plan_serves_every_budget() {
        let documents = crate::limits::DocumentCache::default();
        let full = budget();
        let selection = every_field(&full).await;
        let query = format!("{{ superBudget {selection} derived {selection} }}");
        // First a budget whose streams have no awards: no award is walked, yet the plan made
        // for the text must hold the awards' selection for the budgets after it.
        let mut bare = full.clone();
        for stream in &mut bare.streams {
            stream.awards.clear();
        }
        assert!(selected_now(&documents, &query) > 0);
        for (i, view) in [bare, full.clone(), full].into_iter().enumerate() {
            // The first request is validated and runs the whole document; the ones after it
            // run the lean copy, the budget's selection left out.
            assert_eq!(selected_now(&documents, &query) == 0, i > 0, "request {i}");
            let answer = served_from(&documents, view, &query).await;
            assert_eq!(
                written_by_walk(&answer.data, "superBudget"),
                sent(&answer.data, "derived")
            );
        }
        let parsed = documents.parse(&query).expect("kept");
        assert_eq!(
            parsed.plans().len(),
            1,
            "one plan for the text's one budget"
        );
        // Asked again, the text's kept plan is the one used, not planned anew.
        let kept = parsed.plans().get(
            {
                let (_, operation) = parsed.document().operations.iter().next().expect("op");
                let Selection::Field(field) = &operation.node.selection_set.node.items[0].node
                else {
                    panic!("a field");
                };
                &field.node.selection_set
            },
            || panic!("planned again"),
        );
        assert!(kept.is_some_and(|plan| plan.ty == "SuperBudget"));
    }

    #[tokio::test]
    async fn what_the_walk_leaves_to_the_derived_resolvers_they_answer_from_the_whole_text() {
        let documents = crate::limits::DocumentCache::default();
        // planItems is not the walk's: the whole budget falls back to the derived resolvers,
        // which here (no store, no caller) answer an error for each award's planItems.
        let query =
            "{ superBudget { gross { amount } streams { awards { id planItems { id } } } } }";
        let whole = served_as_is(&documents, budget(), query).await;
        assert_eq!(selected_now(&documents, query), 0, "lean from now on");
        let lean = served_as_is(&documents, budget(), query).await;
        assert!(!whole.errors.is_empty());
        assert_eq!(
            serde_json::to_value(&lean).expect("JSON"),
            serde_json::to_value(&whole).expect("JSON")
        );
        let data = json_of(lean.data);
        assert!(data["superBudget"]["gross"]["amount"].is_string(), "{data}");
    }

    #[tokio::test]
    async fn directives_in_a_served_budget_follow_each_requests_variables() {
        let documents = crate::limits::DocumentCache::default();
        let selection = "{ gross { amount } warnings @include(if: $yes) { code } \
                         purposes @skip(if: $yes) { purpose } streams { awards @include(if: $yes) { id } } }";
        let query =
            format!("query($yes: Boolean!) {{ superBudget {selection} derived {selection} }}");
        for yes in [false, true, false, true] {
            let answer = served_with(&documents, budget(), &query, json!({ "yes": yes })).await;
            assert!(answer.errors.is_empty(), "{:?}", answer.errors);
            let walked = written_by_walk(&answer.data, "superBudget");
            assert_eq!(walked, sent(&answer.data, "derived"), "yes = {yes}");
            let budget: Json = serde_json::from_str(walked).expect("JSON");
            assert_eq!(
                budget.get("warnings").is_some(),
                yes,
                "yes = {yes}: {budget}"
            );
            assert_eq!(
                budget.get("purposes").is_some(),
                !yes,
                "yes = {yes}: {budget}"
            );
            assert_eq!(budget["streams"][0].get("awards").is_some(), yes);
        }
    }

    #[tokio::test]
    async fn two_budgets_at_one_line_and_column_are_each_planned_for_themselves() {
        let documents = crate::limits::DocumentCache::default();
        // A lone carriage return ends a line without the parser counting a new one: both
        // selections start at line 1, column 18.
        let query = "{ a: superBudget { gross { amount } }\r  b: superBudget { net { amount } } }";
        for _ in 0..2 {
            let answer = served_as_is(&documents, budget(), query).await;
            assert!(answer.errors.is_empty(), "{:?}", answer.errors);
            let mut out = Vec::new();
            crate::graphql::respond::write_response(&mut out, &answer).expect("written");
            let sent: Json = serde_json::from_slice(&out).expect("JSON");
            let data = &sent["data"];
            assert!(
                data["a"].get("gross").is_some() && data["a"].get("net").is_none(),
                "{data}"
            );
            assert!(
                data["b"].get("net").is_some() && data["b"].get("gross").is_none(),
                "{data}"
            );
        }
    }

    #[test]
    fn plan_items_are_left_to_the_derived_resolvers() {
        let view = budget();
        assert!(walk_alone(&view, "{ walked { gross { amount } } }").is_some());
        assert!(
            walk_alone(
                &view,
                "{ walked { streams { awards { id planItems { id } } } } }"
            )
            .is_none()
        );
        assert!(walk_alone(&view, "{ walked { gross @deprecated { amount } } }").is_none());
    }
}
