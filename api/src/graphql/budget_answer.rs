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
//! The walk reads the query through `Context::item` and `QueryEnv::fragments`, which
//! async-graphql marks `doc(hidden)` but keeps public for the code its macros generate.

use std::borrow::Cow;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use async_graphql::parser::types::{Field, FragmentDefinition, Selection, SelectionSet};
use async_graphql::registry::Registry;
use async_graphql::resolver_utils::enum_value;
use async_graphql::{
    ContextSelectionSet, Name, OutputType, Positioned, ScalarType, ServerResult, Value,
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
        let walked = {
            let mut walk = Walk::new(&ctx.query_env.fragments);
            walk.object(&self.0.0, &[ctx.item]).map(|()| walk.out)
        };
        if let Some(json) = walked {
            // The JSON goes out as written where no other answer can be merged into it: the
            // query text asks for one budget (see `limits::Parsed::budgets`). Otherwise it is
            // read back as a `Value`, for async-graphql to merge as it merges any answer.
            let sole = ctx
                .data_opt::<Arc<crate::limits::Parsed>>()
                .is_some_and(|p| p.budgets() == 1);
            if sole {
                return Ok(Value::Binary(json.into()));
            }
            if let Ok(value) = serde_json::from_slice(&json) {
                return Ok(value);
            }
        }
        OutputType::resolve(&self.0, ctx, field).await
    }
}

/// A selection set of the query.
type Set<'q> = &'q Positioned<SelectionSet>;

/// The walk over one budget: the query's named fragments (for spreads met on the way down),
/// the plans made so far, and the JSON written so far.
struct Walk<'q> {
    fragments: &'q HashMap<Name, Positioned<FragmentDefinition>>,
    /// Each type's plan for the selection sets it was made for: every award's `amount` (say)
    /// selects the same set, planned once.
    plans: Vec<Planned<'q>>,
    out: Vec<u8>,
}

/// A plan, with the type and the selection sets it is for.
struct Planned<'q> {
    ty: &'static str,
    sets: Vec<Set<'q>>,
    plan: Rc<[Group<'q>]>,
}

/// One key of an object's answer: the field it answers and every selection set below it (a
/// field asked for more than once under one key is answered once, its selections merged).
struct Group<'q> {
    key: &'q str,
    name: &'q str,
    sets: Vec<Set<'q>>,
}

/// A budget type the walk answers.
trait Answer {
    /// Its GraphQL type name, for `__typename` and fragments' type conditions.
    const TYPE: &'static str;
    /// Writes the value of its field `name`, selecting `sets` below it; `None` where the walk
    /// does not answer that field and the derived resolvers must.
    fn field<'q>(&self, name: &str, sets: &[Set<'q>], walk: &mut Walk<'q>) -> Option<()>;
}

impl<T: Answer + ?Sized> Answer for &T {
    const TYPE: &'static str = T::TYPE;
    fn field<'q>(&self, name: &str, sets: &[Set<'q>], walk: &mut Walk<'q>) -> Option<()> {
        (**self).field(name, sets, walk)
    }
}

impl<'q> Walk<'q> {
    fn new(fragments: &'q HashMap<Name, Positioned<FragmentDefinition>>) -> Self {
        Self {
            fragments,
            plans: Vec::new(),
            out: Vec::with_capacity(8 * 1024),
        }
    }

    /// The keys `sets` select on an object of type `ty`, in the order the query first asks
    /// for them; `None` where any of them is not the walk's to answer.
    fn plan(&mut self, ty: &'static str, sets: &[Set<'q>]) -> Option<Rc<[Group<'q>]>> {
        // The same sets of the query (compared by address) for the same type.
        let same = |p: &&Planned<'q>| {
            p.sets.len() == sets.len()
                && p.sets.iter().zip(sets).all(|(a, b)| std::ptr::eq(*a, *b))
                && p.ty == ty
        };
        if let Some(planned) = self.plans.iter().find(same) {
            return Some(planned.plan.clone());
        }
        let mut groups = Vec::with_capacity(sets.first().map_or(0, |s| s.node.items.len()));
        for set in sets {
            self.collect(ty, set, &mut groups)?;
        }
        let plan: Rc<[Group<'q>]> = groups.into();
        self.plans.push(Planned {
            ty,
            sets: sets.to_vec(),
            plan: plan.clone(),
        });
        Some(plan)
    }

    fn collect(&self, ty: &str, set: Set<'q>, groups: &mut Vec<Group<'q>>) -> Option<()> {
        for selection in &set.node.items {
            match &selection.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    if !field.directives.is_empty() || !field.arguments.is_empty() {
                        return None;
                    }
                    let key = field.response_key().node.as_str();
                    match groups.iter_mut().find(|g| g.key == key) {
                        Some(group) => group.sets.push(&field.selection_set),
                        None => groups.push(Group {
                            key,
                            name: field.name.node.as_str(),
                            sets: vec![&field.selection_set],
                        }),
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
                    self.collect(ty, &fragment.node.selection_set, groups)?;
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
                    self.collect(ty, &inline.node.selection_set, groups)?;
                }
            }
        }
        Some(())
    }

    /// Writes `value`'s fields that `sets` select.
    fn object<T: Answer + ?Sized>(&mut self, value: &T, sets: &[Set<'q>]) -> Option<()> {
        let plan = self.plan(T::TYPE, sets)?;
        self.write(value, &plan)
    }

    /// Writes `value`'s answer to the keys of `plan`.
    fn write<T: Answer + ?Sized>(&mut self, value: &T, plan: &[Group<'q>]) -> Option<()> {
        // As async-graphql: a selection with nothing left to answer is null.
        if plan.is_empty() {
            self.out.extend_from_slice(b"null");
            return Some(());
        }
        self.out.push(b'{');
        for (i, group) in plan.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            json_name(&mut self.out, group.key);
            self.out.push(b':');
            if group.name == "__typename" {
                self.text(T::TYPE);
            } else {
                value.field(group.name, &group.sets, self)?;
            }
        }
        self.out.push(b'}');
        Some(())
    }

    /// Writes each of `items`, the selection planned once for them all.
    fn list<T: Answer>(
        &mut self,
        items: impl IntoIterator<Item = T>,
        sets: &[Set<'q>],
    ) -> Option<()> {
        let plan = self.plan(T::TYPE, sets)?;
        self.out.push(b'[');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.write(&item, &plan)?;
        }
        self.out.push(b']');
        Some(())
    }

    fn money(&mut self, pence: i128, sets: &[Set<'q>]) -> Option<()> {
        self.object(&Money(to_pounds(pence)), sets)
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
    fn field<'q>(&self, name: &str, _: &[Set<'q>], walk: &mut Walk<'q>) -> Option<()> {
        match name {
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
    fn field<'q>(&self, name: &str, sets: &[Set<'q>], walk: &mut Walk<'q>) -> Option<()> {
        if let Some(pence) = figure!(self, name) {
            return walk.money(pence, sets);
        }
        match name {
            "from" => walk.date(Some(self.window.from)),
            "to" => walk.date(Some(self.window.to)),
            "streams" => walk.list(&self.streams, sets),
            "purposes" => walk.list(
                self.purposes
                    .iter()
                    .map(|(purpose, pence)| Purpose(purpose, *pence)),
                sets,
            ),
            "warnings" => walk.list(&self.warnings, sets),
            _ => None,
        }
    }
}

/// `PurposeTotal`: one purpose's gross.
struct Purpose<'v>(&'v str, i128);

impl Answer for Purpose<'_> {
    const TYPE: &'static str = "PurposeTotal";
    fn field<'q>(&self, name: &str, sets: &[Set<'q>], walk: &mut Walk<'q>) -> Option<()> {
        match name {
            "purpose" => walk.text(self.0),
            "gross" => walk.money(self.1, sets),
            _ => None,
        }
    }
}

impl Answer for Warning {
    const TYPE: &'static str = "BudgetWarning";
    fn field<'q>(&self, name: &str, _: &[Set<'q>], walk: &mut Walk<'q>) -> Option<()> {
        match name {
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
    fn field<'q>(&self, name: &str, _: &[Set<'q>], walk: &mut Walk<'q>) -> Option<()> {
        match name {
            "id" => walk.text(&self.0.id),
            "name" => walk.text(&self.0.name),
            "kind" => walk.text(&self.0.kind),
            _ => None,
        }
    }
}

impl Answer for StreamView {
    const TYPE: &'static str = "StreamBudget";
    fn field<'q>(&self, name: &str, sets: &[Set<'q>], walk: &mut Walk<'q>) -> Option<()> {
        if let Some(pence) = figure!(self, name) {
            return walk.money(pence, sets);
        }
        match name {
            "stream" => walk.object(&Stream(self), sets),
            "status" => walk.value(&enum_value(super::budget::SourceStatus::from(self.status))),
            "asOf" => walk.optional(self.as_of.map(rfc3339).as_deref()),
            "awards" => walk.list(&self.awards, sets),
            _ => None,
        }
    }
}

impl Answer for AwardView {
    const TYPE: &'static str = "Award";
    fn field<'q>(&self, name: &str, sets: &[Set<'q>], walk: &mut Walk<'q>) -> Option<()> {
        let award = &self.award;
        match name {
            "id" => walk.text(&self.id),
            "upstreamId" => walk.text(&award.upstream_id),
            "purpose" => walk.text(&award.purpose),
            "delivery" => walk.optional(award.delivery.as_deref()),
            "frequency" => walk.text(award.frequency.as_str()),
            "amount" => walk.object(&Money(award.amount), sets),
            "entitlement" => walk.money(self.entitlement, sets),
            "contribution" => walk.money(self.contribution, sets),
            "startDate" => walk.date(award.start_date),
            "endDate" => walk.date(award.end_date),
            "reviewDate" => walk.date(award.review_date),
            "paymentDate" => walk.date(award.payment_date),
            "status" => walk.text(&award.status),
            "lines" => walk.list(
                self.lines.iter().map(|(line, pence)| Line(line, *pence)),
                sets,
            ),
            "source" => walk.object(&Source(self), sets),
            // planItems reads the plan: the derived resolvers answer it.
            _ => None,
        }
    }
}

/// `AwardLine`: one line of an award and its share of the entitlement.
struct Line<'v>(&'v connectors::AwardLine, i128);

impl Answer for Line<'_> {
    const TYPE: &'static str = "AwardLine";
    fn field<'q>(&self, name: &str, sets: &[Set<'q>], walk: &mut Walk<'q>) -> Option<()> {
        let Line(line, pence) = self;
        match name {
            "upstreamId" => walk.text(&line.upstream_id),
            "purpose" => walk.text(&line.purpose),
            "delivery" => walk.optional(line.delivery.as_deref()),
            "description" => walk.optional(line.description.as_deref()),
            "amount" => walk.object(&Money(line.amount), sets),
            "entitlement" => walk.money(*pence, sets),
            _ => None,
        }
    }
}

/// `SourceRecord`: the upstream record behind an award (see [`SourceRecord::for_award`]).
struct Source<'v>(&'v AwardView);

impl Answer for Source<'_> {
    const TYPE: &'static str = "SourceRecord";
    fn field<'q>(&self, name: &str, _: &[Set<'q>], walk: &mut Walk<'q>) -> Option<()> {
        let source = &self.0.source;
        match name {
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
        let mut walk = Walk::new(&doc.fragments);
        walk.object(view, &[&field.node.selection_set])?;
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
        let parsed = crate::limits::DocumentCache::default()
            .parse(query)
            .expect("a query");
        let mut request = Request::new(query);
        request.set_parsed_query(parsed.document().clone());
        let answer = schema(view).execute(request.data(parsed)).await;
        assert!(answer.errors.is_empty(), "{:?}", answer.errors);
        answer
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
        let Value::Object(fields) = &answer.data else {
            panic!("an object");
        };
        let Value::Binary(json) = &fields["superBudget"] else {
            panic!("JSON written by the walk: {:?}", fields["superBudget"]);
        };
        assert_eq!(
            std::str::from_utf8(json).ok(),
            Some(sent(&answer.data, "derived").as_str())
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
