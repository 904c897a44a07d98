//! The superBudget answer built in one pass over the query's selection set.
//!
//! A budget is plain data once assembled, yet async-graphql's derived resolvers give each of its
//! fields a boxed future, a task in a `FuturesUnordered` and a nested container for every `Money`:
//! a portal's budget query resolves about two hundred fields that way, and profiles of the
//! snapshot-served query put that machinery above a third of the hub's CPU. [`BudgetAnswer`]
//! walks the selection set instead (fragments, aliases, `__typename`, repeated fields merged as
//! async-graphql merges them) and writes the same `Value` the derived resolvers would. The
//! GraphQL types stay the derived ones in `budget.rs`: the schema registers them, and whatever the
//! walk does not answer (`Award.planItems`, which reads the plan, or a directive other than
//! `@skip`/`@include`, which async-graphql has already applied) falls back to them whole, so both
//! paths always answer the same query. A test compares the two over every field.
//!
//! The walk reads the query through `Context::item` and `QueryEnv::fragments`, which
//! async-graphql marks `doc(hidden)` but keeps public for the code its macros generate.

use std::borrow::Cow;
use std::collections::HashMap;

use async_graphql::indexmap::IndexMap;
use async_graphql::parser::types::{Field, FragmentDefinition, Selection, SelectionSet};
use async_graphql::registry::Registry;
use async_graphql::resolver_utils::enum_value;
use async_graphql::{
    ContextSelectionSet, Name, OutputType, Positioned, ScalarType, ServerResult, Value,
};

use super::budget::{SourceRecord, SuperBudget, rfc3339};
use super::scalars::{Date, Decimal2, GBP};
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
        let walk = Walk {
            fragments: &ctx.query_env.fragments,
        };
        match walk.object(&self.0.0, ctx.item) {
            Some(value) => Ok(value),
            None => OutputType::resolve(&self.0, ctx, field).await,
        }
    }
}

/// The query's named fragments, for spreads met on the way down.
struct Walk<'q> {
    fragments: &'q HashMap<Name, Positioned<FragmentDefinition>>,
}

/// A budget type the walk answers.
trait Answer {
    /// Its GraphQL type name, for `__typename` and fragments' type conditions.
    const TYPE: &'static str;
    /// The value of its field `name`, selecting `set` below it; `None` where the walk does not
    /// answer that field and the derived resolvers must.
    fn field(&self, name: &str, set: &Positioned<SelectionSet>, walk: &Walk<'_>) -> Option<Value>;
}

impl<T: Answer + ?Sized> Answer for &T {
    const TYPE: &'static str = T::TYPE;
    fn field(&self, name: &str, set: &Positioned<SelectionSet>, walk: &Walk<'_>) -> Option<Value> {
        (**self).field(name, set, walk)
    }
}

impl Walk<'_> {
    /// `value`'s fields that `set` selects, in the order the query asks for them; `None` where
    /// any of them is not the walk's to answer.
    fn object<T: Answer + ?Sized>(
        &self,
        value: &T,
        set: &Positioned<SelectionSet>,
    ) -> Option<Value> {
        let mut out = IndexMap::with_capacity(set.node.items.len());
        self.collect(value, set, &mut out)?;
        // As async-graphql: a selection left empty by @skip answers null.
        Some(if out.is_empty() {
            Value::Null
        } else {
            Value::Object(out)
        })
    }

    fn collect<T: Answer + ?Sized>(
        &self,
        value: &T,
        set: &Positioned<SelectionSet>,
        out: &mut IndexMap<Name, Value>,
    ) -> Option<()> {
        for selection in &set.node.items {
            match &selection.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    if !field.directives.is_empty() || !field.arguments.is_empty() {
                        return None;
                    }
                    let name = field.name.node.as_str();
                    let answer = if name == "__typename" {
                        Value::String(T::TYPE.to_owned())
                    } else {
                        value.field(name, &field.selection_set, self)?
                    };
                    merge(out, field.response_key().node.clone(), answer);
                }
                Selection::FragmentSpread(spread) => {
                    if !spread.node.directives.is_empty() {
                        return None;
                    }
                    let fragment = self.fragments.get(&spread.node.fragment_name.node)?;
                    if fragment.node.type_condition.node.on.node.as_str() != T::TYPE {
                        return None;
                    }
                    self.collect(value, &fragment.node.selection_set, out)?;
                }
                Selection::InlineFragment(inline) => {
                    if !inline.node.directives.is_empty() {
                        return None;
                    }
                    let applies = inline
                        .node
                        .type_condition
                        .as_ref()
                        .is_none_or(|c| c.node.on.node.as_str() == T::TYPE);
                    if !applies {
                        return None;
                    }
                    self.collect(value, &inline.node.selection_set, out)?;
                }
            }
        }
        Some(())
    }

    fn list<T: Answer>(
        &self,
        items: impl IntoIterator<Item = T>,
        set: &Positioned<SelectionSet>,
    ) -> Option<Value> {
        items
            .into_iter()
            .map(|item| self.object(&item, set))
            .collect::<Option<Vec<_>>>()
            .map(Value::List)
    }

    fn money(&self, pence: i128, set: &Positioned<SelectionSet>) -> Option<Value> {
        self.object(&Money(to_pounds(pence)), set)
    }
}

/// Puts `value` under `key`, merging it into an answer already there for the same key as
/// async-graphql does (objects field by field, lists item by item).
fn merge(target: &mut IndexMap<Name, Value>, key: Name, value: Value) {
    use async_graphql::indexmap::map::Entry;
    match target.entry(key) {
        Entry::Vacant(slot) => {
            slot.insert(value);
        }
        Entry::Occupied(mut slot) => match (slot.get_mut(), value) {
            (Value::Object(before), Value::Object(more)) => {
                for (k, v) in more {
                    merge(before, k, v);
                }
            }
            (Value::List(before), Value::List(more)) => {
                for (item, extra) in before.iter_mut().zip(more) {
                    if let (Value::Object(item), Value::Object(extra)) = (item, extra) {
                        for (k, v) in extra {
                            merge(item, k, v);
                        }
                    }
                }
            }
            _ => {}
        },
    }
}

fn text(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn optional(s: Option<&str>) -> Value {
    s.map_or(Value::Null, text)
}

fn date(d: Option<chrono::NaiveDate>) -> Value {
    d.map_or(Value::Null, |d| Date(d).to_value())
}

/// `Money`: an amount in pounds.
struct Money(rust_decimal::Decimal);

impl Answer for Money {
    const TYPE: &'static str = "Money";
    fn field(&self, name: &str, _: &Positioned<SelectionSet>, _: &Walk<'_>) -> Option<Value> {
        Some(match name {
            "amount" => Decimal2(self.0).to_value(),
            "currency" => text(GBP),
            _ => return None,
        })
    }
}

impl Answer for BudgetView {
    const TYPE: &'static str = "SuperBudget";
    fn field(&self, name: &str, set: &Positioned<SelectionSet>, walk: &Walk<'_>) -> Option<Value> {
        match name {
            "from" => Some(Date(self.window.from).to_value()),
            "to" => Some(Date(self.window.to).to_value()),
            "gross" => walk.money(self.gross, set),
            "contribution" => walk.money(self.contribution, set),
            "net" => walk.money(self.net, set),
            "committed" => walk.money(self.committed, set),
            "spent" => walk.money(self.spent, set),
            "remaining" => walk.money(self.remaining, set),
            "streams" => walk.list(&self.streams, set),
            "purposes" => walk.list(
                self.purposes
                    .iter()
                    .map(|(purpose, pence)| Purpose(purpose, *pence)),
                set,
            ),
            "warnings" => walk.list(&self.warnings, set),
            _ => None,
        }
    }
}

/// `PurposeTotal`: one purpose's gross.
struct Purpose<'v>(&'v str, i128);

impl Answer for Purpose<'_> {
    const TYPE: &'static str = "PurposeTotal";
    fn field(&self, name: &str, set: &Positioned<SelectionSet>, walk: &Walk<'_>) -> Option<Value> {
        match name {
            "purpose" => Some(text(self.0)),
            "gross" => walk.money(self.1, set),
            _ => None,
        }
    }
}

impl Answer for Warning {
    const TYPE: &'static str = "BudgetWarning";
    fn field(&self, name: &str, _: &Positioned<SelectionSet>, _: &Walk<'_>) -> Option<Value> {
        Some(match name {
            "code" => text(self.code),
            "message" => text(&self.message),
            "streamId" => optional(self.stream_id.as_deref()),
            "itemId" => optional(self.item_id.as_deref()),
            _ => return None,
        })
    }
}

/// `FundingStream`: the stream a part of the budget comes from.
struct Stream<'v>(&'v StreamView);

impl Answer for Stream<'_> {
    const TYPE: &'static str = "FundingStream";
    fn field(&self, name: &str, _: &Positioned<SelectionSet>, _: &Walk<'_>) -> Option<Value> {
        Some(match name {
            "id" => text(&self.0.id),
            "name" => text(&self.0.name),
            "kind" => text(&self.0.kind),
            _ => return None,
        })
    }
}

impl Answer for StreamView {
    const TYPE: &'static str = "StreamBudget";
    fn field(&self, name: &str, set: &Positioned<SelectionSet>, walk: &Walk<'_>) -> Option<Value> {
        match name {
            "stream" => walk.object(&Stream(self), set),
            "status" => Some(enum_value(super::budget::SourceStatus::from(self.status))),
            "asOf" => Some(
                self.as_of
                    .map_or(Value::Null, |at| Value::String(rfc3339(at))),
            ),
            "gross" => walk.money(self.gross, set),
            "contribution" => walk.money(self.contribution, set),
            "net" => walk.money(self.net, set),
            "committed" => walk.money(self.committed, set),
            "spent" => walk.money(self.spent, set),
            "remaining" => walk.money(self.remaining, set),
            "awards" => walk.list(&self.awards, set),
            _ => None,
        }
    }
}

impl Answer for AwardView {
    const TYPE: &'static str = "Award";
    fn field(&self, name: &str, set: &Positioned<SelectionSet>, walk: &Walk<'_>) -> Option<Value> {
        let award = &self.award;
        match name {
            "id" => Some(text(&self.id)),
            "upstreamId" => Some(text(&award.upstream_id)),
            "purpose" => Some(text(&award.purpose)),
            "delivery" => Some(optional(award.delivery.as_deref())),
            "frequency" => Some(text(award.frequency.as_str())),
            "amount" => walk.object(&Money(award.amount), set),
            "entitlement" => walk.money(self.entitlement, set),
            "contribution" => walk.money(self.contribution, set),
            "startDate" => Some(date(award.start_date)),
            "endDate" => Some(date(award.end_date)),
            "reviewDate" => Some(date(award.review_date)),
            "paymentDate" => Some(date(award.payment_date)),
            "status" => Some(text(&award.status)),
            "lines" => walk.list(
                self.lines.iter().map(|(line, pence)| Line(line, *pence)),
                set,
            ),
            "source" => walk.object(&Source(self), set),
            // planItems reads the plan: the derived resolvers answer it.
            _ => None,
        }
    }
}

/// `AwardLine`: one line of an award and its share of the entitlement.
struct Line<'v>(&'v connectors::AwardLine, i128);

impl Answer for Line<'_> {
    const TYPE: &'static str = "AwardLine";
    fn field(&self, name: &str, set: &Positioned<SelectionSet>, walk: &Walk<'_>) -> Option<Value> {
        let Line(line, pence) = self;
        match name {
            "upstreamId" => Some(text(&line.upstream_id)),
            "purpose" => Some(text(&line.purpose)),
            "delivery" => Some(optional(line.delivery.as_deref())),
            "description" => Some(optional(line.description.as_deref())),
            "amount" => walk.object(&Money(line.amount), set),
            "entitlement" => walk.money(*pence, set),
            _ => None,
        }
    }
}

/// `SourceRecord`: the upstream record behind an award (see [`SourceRecord::for_award`]).
struct Source<'v>(&'v AwardView);

impl Answer for Source<'_> {
    const TYPE: &'static str = "SourceRecord";
    fn field(&self, name: &str, _: &Positioned<SelectionSet>, _: &Walk<'_>) -> Option<Value> {
        let source = &self.0.source;
        Some(match name {
            "connector" => text(&source.connector),
            "upstreamId" => text(&self.0.award.upstream_id),
            "version" => optional(SourceRecord::award_version(self.0)),
            "fetchedAt" => Value::String(rfc3339(source.fetched_at)),
            "contentHash" => text(&source.content_hash),
            _ => return None,
        })
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

    /// What the walk alone makes of `query`'s first field's selection set.
    fn walk_alone(view: &BudgetView, query: &str) -> Option<Value> {
        let doc = async_graphql::parser::parse_query(query).expect("a query");
        let (_, operation) = doc.operations.iter().next().expect("an operation");
        let Selection::Field(field) = &operation.node.selection_set.node.items[0].node else {
            panic!("the first selection is a field");
        };
        Walk {
            fragments: &doc.fragments,
        }
        .object(view, &field.node.selection_set)
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
        assert_eq!(
            serde_json::to_string(&alone).ok(),
            Some(sent(&data, "derived"))
        );

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
        assert_eq!(
            serde_json::to_string(&alone).ok(),
            Some(sent(&data, "derived"))
        );
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
