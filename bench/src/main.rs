//! `tributary-bench`: the benchmark suite. It starts the four partner sandboxes in this
//! process, runs the release hub binary as its own process on SQLite and on PostgreSQL, drives
//! it with `oha` from a third process, reads criterion's in-process figures, runs the peer
//! gateway side by side, and writes `results.md` and `results.json` with every figure against
//! its target. `scripts/bench.sh` builds what it needs and runs it.

mod hub;
mod instructions;
mod load;
mod peer;
mod procstat;
mod profile;
mod report;
mod served;
mod wake;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use report::{Goal, Report};
use sandboxes::Sandboxes;
use sandboxes::world::{DEMO_SEED, World};

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "tributary-bench", about = "Tributary's benchmark suite")]
struct Args {
    /// The everyday check: a smaller world and short runs, inside two minutes.
    #[arg(long)]
    quick: bool,
    /// Where results.md and results.json go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The hub binary (a release build).
    #[arg(long, default_value = "target/release/tributary")]
    hub: PathBuf,
    /// The load generator.
    #[arg(long, env = "OHA", default_value = "oha")]
    oha: PathBuf,
    /// A PostgreSQL server to run the PostgreSQL half on (a database is created per run).
    #[arg(
        long,
        env = "TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    postgres: String,
    /// Skip the PostgreSQL half.
    #[arg(long)]
    no_postgres: bool,
    /// Skip the SQLite half (and so the peer gateway, which runs against it).
    #[arg(long)]
    no_sqlite: bool,
    /// Skip the peer gateway.
    #[arg(long)]
    no_peer: bool,
    /// The peer gateway's folder (package.json, mesh config, installed node_modules).
    #[arg(long, default_value = "bench/peer")]
    peer_dir: PathBuf,
    /// Record a perf profile of the hub during each snapshot-served run and each live
    /// fan-out closed loop (needs perf).
    #[arg(long)]
    profile: bool,
    /// With --profile: record call graphs too (DWARF unwinding, fewer samples), and write each
    /// frame's inclusive share (`perf-served-*.children.txt`, `perf-fanout-*.children.txt`).
    #[arg(long)]
    call_graph: bool,
    /// Count the hub's instructions a query (served, and with a live fan-out) under valgrind's
    /// callgrind in a quick run too (a full run always does, where valgrind is installed).
    #[arg(long)]
    instructions: bool,
    /// Override the larger ILF extract size (the smaller is a quarter of it).
    #[arg(long)]
    ilf_rows: Option<usize>,
    /// Override the number of people in the world.
    #[arg(long)]
    people: Option<usize>,
    /// Override the length of each measured load run, in seconds (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    run_secs: Option<u64>,
    /// Keep the PostgreSQL half's database when the run ends, for inspection (its name is
    /// printed); by default it is dropped.
    #[arg(long)]
    keep_database: bool,
    /// Where criterion wrote its estimates.
    #[arg(long, default_value = "target/criterion")]
    criterion: PathBuf,
}

/// Sizes and durations of one run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// People in the world, registered and synced.
    pub people: usize,
    /// ILF extract sizes for the memory-flatness check; the larger is the timed one.
    pub ilf_rows: [usize; 2],
    /// Each measured load run.
    pub run: Duration,
    /// Warm-up before a measured run.
    pub warmup: Duration,
}

impl Plan {
    fn full() -> Self {
        Self {
            people: 100_000,
            ilf_rows: [25_000, 100_000],
            run: Duration::from_secs(10),
            warmup: Duration::from_secs(3),
        }
    }

    fn quick() -> Self {
        Self {
            people: 2_000,
            ilf_rows: [10_000, 40_000],
            run: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if let Some(people) = args.people {
        plan.people = people;
    }
    if let Some(rows) = args.ilf_rows {
        plan.ilf_rows = [rows / 4, rows];
    }
    if let Some(secs) = args.run_secs {
        plan.run = Duration::from_secs(secs);
    }
    let mut report = Report::new(if args.quick { "quick" } else { "full" });
    anyhow::ensure!(
        args.hub.exists(),
        "{} is missing: build it with cargo build --release",
        args.hub.display()
    );
    let scratch = tempfile::tempdir()?;
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );

    eprintln!("in-process figures (criterion)");
    criterion_figures(&args, &mut report);

    eprintln!("wake-up cost");
    wake::measure(if args.quick { 5_000 } else { 20_000 }, &mut report);

    eprintln!("ILF extract");
    served::ilf_extract(&args.hub, &plan, scratch.path(), &secret, &mut report).await?;

    eprintln!("world of {} people", plan.people);
    let t = Instant::now();
    let world = Arc::new(World::generate(DEMO_SEED, plan.people));
    let sandboxes = Sandboxes::start(world.clone()).context("the sandboxes did not start")?;
    report.note(format!(
        "world of {} people generated and served by the sandboxes in {:.1} s",
        plan.people,
        t.elapsed().as_secs_f64()
    ));

    let mut backends = Vec::new();
    if args.no_sqlite {
        report.note("SQLite half skipped (--no-sqlite)");
    } else {
        backends.push((
            "sqlite".to_owned(),
            format!(
                "sqlite://{}?mode=rwc",
                scratch.path().join("bench.db").display()
            ),
        ));
    }
    if args.no_postgres {
        report.note("PostgreSQL half skipped (--no-postgres)");
    } else {
        match served::postgres_database(&args.postgres).await {
            Ok(url) => {
                if url.contains("sslmode=disable") {
                    report.note(
                        "PostgreSQL is on loopback, so the hub connects without TLS (sslmode=disable)",
                    );
                }
                backends.push(("postgres".to_owned(), url));
            }
            Err(e) => report.note(format!("PostgreSQL half skipped: {e:#}")),
        }
    }

    let mut summaries = Vec::new();
    for (backend, url) in &backends {
        eprintln!("{backend}");
        let summary = served::backend_suite(
            &args,
            &plan,
            &world,
            &sandboxes,
            backend,
            url,
            scratch.path(),
            &secret,
            &mut report,
        )
        .await
        .with_context(|| format!("the {backend} half failed"))?;
        summaries.push(summary);
    }
    compare_backends(&summaries, &mut report);

    if args.no_peer {
        report.note("peer gateway skipped (--no-peer)");
    } else if let Some(sqlite) = summaries.iter().find(|s| s.backend == "sqlite") {
        eprintln!("peer gateway");
        if let Err(e) = peer::side_by_side(
            &args,
            &plan,
            &world,
            &sandboxes,
            sqlite,
            scratch.path(),
            &secret,
            &mut report,
        )
        .await
        {
            report.note(format!("the peer comparison could not run: {e:#}"));
        }
    } else {
        report.note("peer gateway skipped: it runs against the SQLite half");
    }

    for (backend, url) in &backends {
        if backend != "postgres" {
            continue;
        }
        if args.keep_database {
            eprintln!("kept the PostgreSQL database: {url}");
        } else {
            served::drop_postgres_database(&args.postgres, url).await;
        }
    }
    report.wall_secs = started.elapsed().as_secs_f64();
    report.write(&args.out)?;
    println!("{}", report.markdown());
    eprintln!(
        "results written to {} and {}",
        args.out.join("results.md").display(),
        args.out.join("results.json").display()
    );
    Ok(())
}

/// The served ratio's note: the two throughputs, and PostgreSQL's without its audit flush
/// where that was measured (SQLite's commits do not wait for theirs, see
/// `served::without_the_flush`).
fn served_note(sqlite: &served::Summary, pg: &served::Summary) -> String {
    let mut note = format!("{:.0} vs {:.0} queries/s", sqlite.served_rps, pg.served_rps);
    if let Some(unflushed) = pg.unflushed_rps.filter(|r| *r > 0.0) {
        note.push_str(&format!(
            "; SQLite's commits do not wait for a flush (synchronous = NORMAL in WAL mode; \
             the hub's checkpoint flushes them a quarter of a second apart), PostgreSQL's \
             audit commits each wait for theirs: with that wait left out (an experiment, see \
             its row) PostgreSQL served {unflushed:.0}/s, {:.2}x",
            sqlite.served_rps / unflushed
        ));
    }
    note
}

/// The PostgreSQL-to-SQLite ratios: PostgreSQL must stay within 1.5x of SQLite.
fn compare_backends(summaries: &[served::Summary], report: &mut Report) {
    let (Some(sqlite), Some(pg)) = (
        summaries.iter().find(|s| s.backend == "sqlite"),
        summaries.iter().find(|s| s.backend == "postgres"),
    ) else {
        return;
    };
    let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    report.target(
        "postgres vs sqlite",
        "snapshot-served throughput, SQLite / PostgreSQL",
        None,
        ratio(sqlite.served_rps, pg.served_rps),
        "x",
        Goal::AtMost,
        1.5,
        served_note(sqlite, pg),
    );
    report.target(
        "postgres vs sqlite",
        "sync throughput, SQLite / PostgreSQL",
        None,
        ratio(sqlite.sync_people_per_sec, pg.sync_people_per_sec),
        "x",
        Goal::AtMost,
        1.5,
        format!(
            "{:.0} vs {:.0} people/s",
            sqlite.sync_people_per_sec, pg.sync_people_per_sec
        ),
    );
    report.target(
        "postgres vs sqlite",
        "fan-out throughput, SQLite / PostgreSQL",
        None,
        ratio(sqlite.fanout_rps, pg.fanout_rps),
        "x",
        Goal::AtMost,
        1.5,
        format!("{:.0} vs {:.0} queries/s", sqlite.fanout_rps, pg.fanout_rps),
    );
}

/// Criterion's medians from `target/criterion`, written there by `cargo bench`.
fn criterion_figures(args: &Args, report: &mut Report) {
    let read = |id: &str| -> Option<f64> {
        let path = args.criterion.join(id).join("new").join("estimates.json");
        let text = std::fs::read_to_string(path).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        json["median"]["point_estimate"].as_f64()
    };
    let missing = "criterion has not written this figure: run cargo bench -p tributary-bench first";
    let parse = read("ilf_extract/parse_100k_rows");
    report.target(
        "scale",
        "ILF extract of 100,000 rows: parse alone (criterion median)",
        None,
        parse.map(|ns| ns / 1e6),
        "ms",
        Goal::AtMost,
        100.0,
        if parse.is_some() {
            "in process, from a file in memory; every row checked and normalised"
        } else {
            missing
        },
    );
    for (id, name) in [
        (
            "budget/entitlement_four_weekly_award_in_a_year",
            "one award's entitlement in a window (criterion median)",
        ),
        (
            "budget/split_a_cost_five_ways",
            "a split by largest remainder, five shares (criterion median)",
        ),
        (
            "graphql/parse_super_budget_query",
            "parse the superBudget query (criterion median)",
        ),
        (
            "graphql/answer_super_budget_walked",
            "answer the superBudget query from an assembled budget, the hub's walk (criterion median)",
        ),
        (
            "graphql/answer_super_budget_derived",
            "the same answered by async-graphql's derived resolvers, which the walk replaced (criterion median)",
        ),
    ] {
        let v = read(id);
        report.info(
            "in-process",
            name,
            None,
            v.map(|ns| ns / 1e3),
            "µs",
            if v.is_some() { "" } else { missing },
        );
    }
}
