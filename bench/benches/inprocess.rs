//! In-process figures, with criterion: the ILF extract parse at 100,000 rows, the entitlement
//! arithmetic, a split, parsing the portal's superBudget query, and answering it from an
//! assembled budget (the hub's walk beside async-graphql's derived resolvers). `tributary-bench`
//! reads the medians from `target/criterion` into its results table.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use chrono::NaiveDate;
use connectors::{Award, AwardLine, PersonRecords};
use connectors::{Counting, Frequency};
use criterion::{Criterion, criterion_group, criterion_main};
use rust_decimal::Decimal;
use sandboxes::world::{DEMO_SEED, World};
use tributary::budget::assemble::{
    BudgetView, Commitment, SourceMeta, SourceStatus, StreamInput, assemble,
};
use tributary::budget::period::{Schedule, Window, entitlement_pence};
use tributary::budget::split::largest_remainder;
use tributary::graphql::budget::SuperBudget;
use tributary::graphql::budget_answer::BudgetAnswer;

const SUPER_BUDGET: &str = include_str!("../queries/super_budget.graphql");

fn ilf_extract(c: &mut Criterion) {
    let world = World::generate_with_ilf_rows(DEMO_SEED, 100_000);
    let csv = sandboxes::servers::ilf_csv(&world).unwrap();
    let mut group = c.benchmark_group("ilf_extract");
    group.sample_size(10);
    group.bench_function("parse_100k_rows", |b| {
        b.iter(|| {
            let mut rows = 0u64;
            connectors::ilf::parse_extract(black_box(csv.as_slice()), |_row| {
                rows += 1;
                Ok::<(), ()>(())
            })
            .unwrap()
            .unwrap();
            assert!(rows >= 100_000);
            rows
        });
    });
    group.finish();
}

fn budget(c: &mut Criterion) {
    let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
    let schedule = Schedule {
        frequency: Frequency::FourWeekly,
        counting: Counting::Active,
        start: Some(date(2025, 11, 3)),
        end: Some(date(2027, 1, 20)),
        payment_date: None,
    };
    let window = Window::financial_year(2026).unwrap();
    let amount = Decimal::new(123_456, 2);
    let mut group = c.benchmark_group("budget");
    group.bench_function("entitlement_four_weekly_award_in_a_year", |b| {
        b.iter(|| entitlement_pence(black_box(amount), &schedule, &window));
    });
    group.bench_function("split_a_cost_five_ways", |b| {
        b.iter(|| largest_remainder(black_box(300_001), &[20, 20, 20, 20, 20]));
    });
    group.finish();
}

/// One budget answered two ways: `superBudget` by the hub's walk over the selection set (what
/// the server serves), `derived` by async-graphql's derived resolvers for the same types.
struct Answers(BudgetView);

#[async_graphql::Object]
impl Answers {
    async fn super_budget(&self) -> BudgetAnswer {
        BudgetAnswer(SuperBudget(self.0.clone(), "person".into()))
    }
    async fn derived(&self) -> SuperBudget {
        SuperBudget(self.0.clone(), "person".into())
    }
}

/// A person known to the four partners: awards with and without lines, a contribution, a
/// commitment, as a demo person's budget has.
fn assembled_budget() -> BudgetView {
    let date = |m, d| NaiveDate::from_ymd_opt(2026, m, d);
    let award = |id: &str, frequency, pence, lines: &[i64]| Award {
        upstream_id: id.into(),
        version: Some(format!("{id}-v3")),
        purpose: "personal_care".into(),
        delivery: Some("direct_payment".into()),
        frequency,
        amount: Decimal::new(pence, 2),
        contribution: (pence > 50_000).then(|| Decimal::new(pence / 10, 2)),
        start_date: date(4, 1),
        end_date: None,
        review_date: date(10, 1),
        payment_date: None,
        status: "active".into(),
        counting: Counting::Active,
        lines: lines
            .iter()
            .enumerate()
            .map(|(i, p)| AwardLine {
                upstream_id: format!("{id}-{i}"),
                purpose: "support_worker".into(),
                delivery: None,
                description: None,
                amount: Decimal::new(*p, 2),
            })
            .collect(),
    };
    let stream = |id: &str, awards| StreamInput {
        id: id.into(),
        name: id.into(),
        kind: id.into(),
        status: SourceStatus::Fresh,
        source: Some(SourceMeta {
            connector: id.into(),
            version: None,
            fetched_at: chrono::Utc::now(),
            content_hash: "9f2c".repeat(16),
        }),
        records: Some(PersonRecords {
            subject_key: "NHS_NUMBER:9434765919".into(),
            awards,
            ..PersonRecords::default()
        }),
        rejected: Vec::new(),
        yearly_cap: None,
        problem: None,
    };
    let window = Window::financial_year(2026).unwrap();
    let streams = vec![
        stream(
            "la-social-care",
            vec![award("PB-1", Frequency::Weekly, 41_250, &[30_000, 11_250])],
        ),
        stream(
            "ilf",
            vec![award("ILF-000317", Frequency::FourWeekly, 120_000, &[])],
        ),
        stream(
            "access-to-work",
            vec![award("ATW-88", Frequency::Annual, 640_000, &[])],
        ),
        stream(
            "nhs-phb",
            vec![
                award("PHB-4", Frequency::Monthly, 95_000, &[60_000, 35_000]),
                award("PHB-5", Frequency::OneOff, 30_000, &[]),
            ],
        ),
    ];
    let commitments = [Commitment {
        stream_id: "ilf".into(),
        item_id: "item-1".into(),
        award_id: None,
        pence: 250_000,
    }];
    assemble(window, window.from, streams, &commitments)
}

fn graphql(c: &mut Criterion) {
    let mut group = c.benchmark_group("graphql");
    group.bench_function("parse_super_budget_query", |b| {
        b.iter(|| async_graphql::parser::parse_query(black_box(SUPER_BUDGET)).unwrap());
    });
    // The portal's superBudget selection, answered from an assembled budget.
    let (_, selection) = SUPER_BUDGET
        .split_once("superBudget(financialYear: \"2026-27\") ")
        .unwrap();
    let selection = selection.trim_end().strip_suffix("} }").unwrap();
    let schema = async_graphql::Schema::new(
        Answers(assembled_budget()),
        async_graphql::EmptyMutation,
        async_graphql::EmptySubscription,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (way, field) in [("walked", "superBudget"), ("derived", "derived")] {
        let query = format!("{{ {field} {selection} }}");
        let answer = runtime.block_on(schema.execute(query.as_str()));
        assert!(answer.errors.is_empty(), "{:?}", answer.errors);
        // Parsed once and handed to each request, as the server's document cache does (the
        // walk's plan is kept with it): what is timed is the answer.
        let documents = tributary::limits::DocumentCache::default();
        let parsed = documents.parse(&query).unwrap();
        group.bench_function(format!("answer_super_budget_{way}"), |b| {
            b.iter(|| {
                let mut request = async_graphql::Request::new(query.as_str());
                request.set_parsed_query(parsed.document().clone());
                runtime.block_on(schema.execute(black_box(request.data(parsed.clone()))))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, ilf_extract, budget, graphql);
criterion_main!(benches);
