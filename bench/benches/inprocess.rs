//! In-process figures, with criterion: the ILF extract parse at 100,000 rows, the entitlement
//! arithmetic, a split, and parsing the portal's superBudget query. `tributary-bench` reads the
//! medians from `target/criterion` into its results table.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use chrono::NaiveDate;
use connectors::{Counting, Frequency};
use criterion::{Criterion, criterion_group, criterion_main};
use rust_decimal::Decimal;
use sandboxes::world::{DEMO_SEED, World};
use tributary::budget::period::{Schedule, Window, entitlement_pence};
use tributary::budget::split::largest_remainder;

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

fn graphql(c: &mut Criterion) {
    let mut group = c.benchmark_group("graphql");
    group.bench_function("parse_super_budget_query", |b| {
        b.iter(|| async_graphql::parser::parse_query(black_box(SUPER_BUDGET)).unwrap());
    });
    group.finish();
}

criterion_group!(benches, ilf_extract, budget, graphql);
criterion_main!(benches);
