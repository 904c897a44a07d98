//! The whole-server figures on one store: registration, `tributary sync`, superBudget served
//! from snapshots (closed loop and constant rate), the live fan-out to partners at 50 ms, hub
//! CPU per query and resident memory; and the ILF extract on its own.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sandboxes::Sandboxes;
use sandboxes::world::World;
use sea_orm::ConnectionTrait as _;
use secrecy::SecretString;
use serde_json::{Value, json};
use tributary::auth::{Role, TokenIssuer};
use tributary::config::{AuthSettings, DatabaseSettings};

use crate::hub::{self, Hub, HubConfig};
use crate::instructions::Kind;
use crate::load::{self, Target};
use crate::procstat;
use crate::report::{Goal, Report};
use crate::{Args, Plan};

/// The query a portal sends for a person's combined budget: every money figure, every stream,
/// every award with its source, and the warnings.
pub const SUPER_BUDGET: &str = include_str!("../queries/super_budget.graphql");

/// What one store's half measured, for the side-by-side figures.
#[derive(Debug, Clone)]
pub struct Summary {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Snapshot-served queries a second, closed loop.
    pub served_rps: f64,
    /// `tributary sync` people a second.
    pub sync_people_per_sec: f64,
    /// Live fan-out queries a second, closed loop.
    pub fanout_rps: f64,
    /// On PostgreSQL, snapshot-served queries a second, closed loop, with the audit log's
    /// commits not waiting for their flush (see `without_the_flush`).
    pub unflushed_rps: Option<f64>,
    /// The store's URL (left populated for the peer run).
    pub database_url: String,
    /// Hub ids in world order.
    pub ids: Vec<String>,
}

/// An auditor token and the headers every benchmark request carries.
pub fn auditor_headers(secret: &str) -> anyhow::Result<Vec<String>> {
    let issuer = TokenIssuer::hs256(
        &AuthSettings::default(),
        &SecretString::from(secret.to_owned()),
    );
    let token = issuer.issue("bench-auditor", Role::Auditor, Vec::new(), None, 6 * 3600)?;
    Ok(vec![
        format!("Authorization: Bearer {token}"),
        "Tributary-Purpose: benchmark".to_owned(),
    ])
}

/// Writes one superBudget request body per person, one per line.
pub fn write_bodies(dir: &Path, name: &str, ids: &[String]) -> anyhow::Result<std::path::PathBuf> {
    let mut text = String::with_capacity(ids.len() * (SUPER_BUDGET.len() + 80));
    for id in ids {
        text.push_str(&serde_json::to_string(
            &json!({ "query": SUPER_BUDGET, "variables": { "id": id } }),
        )?);
        text.push('\n');
    }
    hub::write_file(dir, name, &text)
}

/// Sends a few of the bodies and checks the answers are whole budgets with no errors, so the
/// load that follows measures real answers.
pub async fn check_answers(url: &str, headers: &[String], ids: &[String]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for id in ids.iter().step_by((ids.len() / 5).max(1)).take(5) {
        let answer = ask(&client, url, headers, id).await?;
        anyhow::ensure!(
            answer.get("errors").is_none(),
            "the hub answered with errors: {}",
            answer["errors"]
        );
        anyhow::ensure!(
            answer["data"]["person"]["superBudget"]["streams"]
                .as_array()
                .is_some_and(|s| !s.is_empty()),
            "the hub's answer has no streams"
        );
    }
    Ok(())
}

/// Asks the hub at `url` for the superBudget of the person `id`, with `headers`.
pub async fn ask(
    client: &reqwest::Client,
    url: &str,
    headers: &[String],
    id: &str,
) -> anyhow::Result<Value> {
    let mut request = client
        .post(url)
        .json(&json!({ "query": SUPER_BUDGET, "variables": { "id": id } }));
    for h in headers {
        if let Some((name, value)) = h.split_once(": ") {
            request = request.header(name, value);
        }
    }
    Ok(request.send().await?.json().await?)
}

/// Creates a fresh database on the PostgreSQL server at `base`; returns its URL.
pub async fn postgres_database(base: &str) -> anyhow::Result<String> {
    let admin = sea_orm::Database::connect(format!("{base}/postgres"))
        .await
        .context("no PostgreSQL server answers")?;
    let name = format!("tributary_bench_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await?;
    // On loopback the hub and the server share a machine, and TLS would protect nothing: a
    // deployment like that connects without it (across a network, use sslmode=verify-full).
    let local = [
        "@127.0.0.1",
        "@localhost",
        "@[::1]",
        "//127.0.0.1",
        "//localhost",
        "//[::1]",
    ];
    let tls = if local.iter().any(|l| base.contains(l)) {
        "?sslmode=disable"
    } else {
        ""
    };
    Ok(format!("{base}/{name}{tls}"))
}

/// Drops a database made by [`postgres_database`].
pub async fn drop_postgres_database(base: &str, url: &str) {
    let Some(name) = url.rsplit('/').next() else {
        return;
    };
    let name = name.split('?').next().unwrap_or(name);
    if let Ok(admin) = sea_orm::Database::connect(format!("{base}/postgres")).await {
        let _ = admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}

fn sandbox_urls(sandboxes: &Sandboxes) -> [String; 4] {
    sandboxes.all().map(|s| s.url())
}

fn total_hits(sandboxes: &Sandboxes) -> u64 {
    sandboxes.all().iter().map(|s| s.faults.hits()).sum()
}

/// The ILF extract through `tributary sync` with only the ILF connector, at two sizes: the
/// time to download, parse and load the larger, and the peak memory of both (flat means the
/// larger file does not need more memory).
pub async fn ilf_extract(
    binary: &Path,
    plan: &Plan,
    dir: &Path,
    secret: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut peaks = Vec::new();
    for rows in plan.ilf_rows {
        let world = Arc::new(World::generate_with_ilf_rows(
            sandboxes::world::DEMO_SEED,
            rows,
        ));
        let sandboxes = Sandboxes::start(world)?;
        let db = dir.join(format!("ilf-{rows}.db"));
        let config = HubConfig {
            database_url: format!("sqlite://{}?mode=rwc", db.display()),
            partners: sandbox_urls(&sandboxes),
            cache_ttl_secs: 0,
            port: 0,
        };
        let file = hub::write_file(dir, &format!("ilf-{rows}.toml"), &config.ilf_only_toml())?;
        // Migrate first, so the timed run is the extract alone.
        hub::run_command(binary, &file, &["migrate"], secret).await?;
        let (wall, peak, stdout) = hub::run_command(binary, &file, &["sync"], secret).await?;
        anyhow::ensure!(
            stdout.contains("Loaded"),
            "the ILF extract did not load: {stdout}"
        );
        let loaded = stdout
            .lines()
            .find(|l| l.starts_with("extract ilf"))
            .unwrap_or("")
            .trim()
            .to_owned();
        peaks.push((rows, peak));
        if rows == plan.ilf_rows[1] {
            report.target(
                "scale",
                &format!("ILF extract of {rows} rows: download, parse and load into the store"),
                Some("sqlite"),
                Some(wall),
                "s",
                Goal::AtMost,
                2.0,
                format!(
                    "a tributary sync process with only the ILF connector, start to exit ({loaded})"
                ),
            );
        }
        for s in sandboxes.all() {
            s.stop().await;
        }
    }
    if let [(small_rows, small), (large_rows, large)] = peaks[..] {
        report.info(
            "memory",
            &format!("peak resident memory loading {small_rows} / {large_rows} ILF rows"),
            Some("sqlite"),
            Some(large),
            "MB",
            format!("{small:.1} MB for {small_rows} rows, {large:.1} MB for {large_rows} rows"),
        );
        report.target(
            "memory",
            &format!("memory growth from {small_rows} to {large_rows} ILF rows"),
            Some("sqlite"),
            Some(large / small),
            "x",
            Goal::AtMost,
            1.2,
            "flat: the file is streamed to disk, parsed as a stream and inserted in batches",
        );
    }
    Ok(())
}

/// Lets the store settle after the world is loaded and synced, before anything is timed: the
/// state a deployment's store is in between its nightly sync and the day's reads.
///
/// On PostgreSQL, the sync has just written the whole caseload (a few hundred MB of rows
/// and log). Left alone, the server's own background work on it runs through the served
/// figures: the checkpoint that load started writes it all out, spread over minutes, so every
/// durable commit of a read's audit event queues behind that writing; autovacuum visits the
/// fresh tables; and each row read for the first time has its hint bits set, dirtying its page
/// again. `VACUUM (ANALYZE)` (as `pgbench` vacuums before its runs) then `CHECKPOINT` do that
/// work now, once. On SQLite the log the sync left is copied back into the file
/// (`wal_checkpoint(TRUNCATE)`), where the hub's background checkpointer would otherwise copy
/// it during the first served run. Returns the seconds it took and what it did.
pub async fn settle(database_url: &str) -> anyhow::Result<(f64, String)> {
    let t = Instant::now();
    let db = tributary::db::connect(&DatabaseSettings {
        url: database_url.to_owned(),
        max_connections: 1,
    })
    .await?;
    let statements: &[&str] = match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => &["VACUUM (ANALYZE)", "CHECKPOINT"],
        _ => &["PRAGMA wal_checkpoint(TRUNCATE)"],
    };
    for statement in statements {
        db.execute_unprepared(statement)
            .await
            .with_context(|| format!("settling the store: {statement}"))?;
    }
    db.close().await?;
    Ok((
        t.elapsed().as_secs_f64(),
        format!(
            "after the sync, before the hub starts: {}, as a store stands between its nightly sync and the day's reads",
            statements.join(", then ")
        ),
    ))
}

/// What a served run needs besides the hub: the command line, the plan, the token's secret,
/// and the served runs' target (its headers and request bodies).
struct Runs<'a> {
    args: &'a Args,
    plan: &'a Plan,
    secret: &'a str,
    served: &'a Target,
}

/// The snapshot-served runs again on PostgreSQL with the audit log's commits not waiting for
/// their WAL flush: an experiment on the benchmark's own database (`ALTER DATABASE ... SET
/// synchronous_commit = off`, reset afterwards), never the hub's setting, since an answer
/// whose read event a crash could lose breaks the log's promise. It shows how much of
/// PostgreSQL's served figures is this machine's disk: every group of read events waits for
/// its flush before its answers leave (one group at a time, so the requests that arrive
/// meanwhile wait for it too), where SQLite's commits (`synchronous = NORMAL` in WAL mode)
/// do not wait for one: the hub's checkpoint flushes them, a quarter of a second apart
/// (`audit::CHECKPOINT_EVERY`), so they survive the hub's crash and lose at most that much to
/// the machine's, as PostgreSQL's would with this setting. The runs come after the real ones,
/// on a store they warmed.
///
/// Answers the closed loop's queries a second, or `None` when the runs could not be made (a
/// note says why). Fails only when the setting could not be reset: the runs after it would
/// measure an unflushed store.
async fn without_the_flush(
    runs: Runs<'_>,
    config: &HubConfig,
    dir: &Path,
    database_url: &str,
    report: &mut Report,
) -> anyhow::Result<Option<f64>> {
    if let Err(e) = set_synchronous_commit(database_url, Some("off")).await {
        report.note(format!(
            "postgres: the served runs without the audit log's flush were not made: {e:#}"
        ));
        return Ok(None);
    }
    let measured = async {
        let mut config = config.clone();
        config.port = hub::free_port()?;
        let file = hub::write_file(dir, "postgres-unflushed.toml", &config.toml())?;
        let hub = Hub::start(
            &runs.args.hub,
            &file,
            runs.secret,
            config.port,
            &dir.join("postgres-hub-unflushed.log"),
        )
        .await?;
        let target = Target {
            url: hub.url.clone(),
            ..runs.served.clone()
        };
        load::run(&runs.args.oha, &target, 32, None, runs.plan.warmup).await?;
        let closed = load::run(&runs.args.oha, &target, 32, None, runs.plan.run).await?;
        let constant = load::run(&runs.args.oha, &target, 32, Some(3000), runs.plan.run).await?;
        hub.stop().await?;
        for run in [&closed, &constant] {
            anyhow::ensure!(
                run.ok > 0 && run.ok == run.requests && run.errors == 0,
                "not every query was answered 200: {run:?}"
            );
        }
        anyhow::Ok((closed, constant))
    }
    .await;
    // Reset whatever the runs did, before anything else is measured on this store.
    set_synchronous_commit(database_url, None)
        .await
        .context("synchronous_commit could not be reset after the runs without the flush")?;
    let (closed, constant) = match measured {
        Ok(runs) => runs,
        Err(e) => {
            report.note(format!(
                "postgres: the served runs without the audit log's flush were not measured: {e:#}"
            ));
            return Ok(None);
        }
    };
    let how = "an experiment, not a target: the same runs on the same store with the audit \
               log's commits not waiting for their WAL flush (synchronous_commit = off for \
               the benchmark's database only, reset after), which the hub never does";
    report.info(
        "snapshots",
        "superBudget throughput, closed loop, 32 connections, audit commits not waiting for their flush",
        Some("postgres"),
        Some(closed.rps),
        "queries/s",
        format!(
            "{how}; {} answered 200, {} not, p50 {:.2} ms, p99 {:.2} ms",
            closed.ok,
            closed.requests - closed.ok + closed.errors,
            closed.p50_ms,
            closed.p99_ms
        ),
    );
    report.info(
        "snapshots",
        "superBudget p99 at a constant 3,000 queries/s, audit commits not waiting for their flush",
        Some("postgres"),
        Some(constant.p99_ms),
        "ms",
        format!(
            "{how}; achieved {:.0}/s, p50 {:.2} ms, {} not 200",
            constant.rps,
            constant.p50_ms,
            constant.requests - constant.ok + constant.errors
        ),
    );
    Ok(Some(closed.rps))
}

/// Sets (`Some`) or resets (`None`) `synchronous_commit` for new sessions of the database at
/// `database_url`.
async fn set_synchronous_commit(database_url: &str, value: Option<&str>) -> anyhow::Result<()> {
    let db = tributary::db::connect(&DatabaseSettings {
        url: database_url.to_owned(),
        max_connections: 1,
    })
    .await?;
    let change = match value {
        Some(value) => format!("SET synchronous_commit = {value}"),
        None => "RESET synchronous_commit".to_owned(),
    };
    db.execute_unprepared(&format!(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I {change}', current_database()); END $$"
    ))
    .await
    .with_context(|| format!("ALTER DATABASE ... {change}"))?;
    db.close().await?;
    Ok(())
}

/// Every whole-server figure on one store.
#[allow(clippy::too_many_arguments)]
pub async fn backend_suite(
    args: &Args,
    plan: &Plan,
    world: &World,
    sandboxes: &Sandboxes,
    backend: &str,
    database_url: &str,
    dir: &Path,
    secret: &str,
    report: &mut Report,
) -> anyhow::Result<Summary> {
    let b = Some(backend);
    let db = tributary::db::connect(&DatabaseSettings {
        url: database_url.to_owned(),
        max_connections: 4,
    })
    .await?;
    tributary::db::migrate(&db).await?;
    let t = Instant::now();
    let ids = tributary::demo::register_world(&db, world).await?;
    report.info(
        "scale",
        &format!("register {} people (bulk, 500 a transaction)", ids.len()),
        b,
        Some(ids.len() as f64 / t.elapsed().as_secs_f64()),
        "people/s",
        "in process, with an audit event per person",
    );
    db.close().await?;

    // tributary sync over everyone, from the sandboxes.
    let port = hub::free_port()?;
    let mut config = HubConfig {
        database_url: database_url.to_owned(),
        partners: sandbox_urls(sandboxes),
        cache_ttl_secs: 24 * 3600,
        port,
    };
    let file = hub::write_file(dir, &format!("{backend}-served.toml"), &config.toml())?;
    let (wall, peak, stdout) =
        hub::run_command(&args.hub, &file, &["sync", "--concurrency", "64"], secret).await?;
    let people_per_sec = ids.len() as f64 / wall;
    let counts = stdout
        .lines()
        .find(|l| l.starts_with("people"))
        .unwrap_or("")
        .to_owned();
    report.target(
        "scale",
        &format!(
            "tributary sync, {} people across the four partners",
            ids.len()
        ),
        b,
        Some(people_per_sec),
        "people/s",
        Goal::AtLeast,
        2000.0,
        format!("{wall:.1} s start to exit, concurrency 64; {counts}"),
    );
    report.target(
        "memory",
        "peak resident memory during a sync",
        b,
        Some(peak),
        "MB",
        Goal::AtMost,
        128.0,
        format!("tributary sync over {} people", ids.len()),
    );

    let (settle_secs, settled) = settle(database_url).await?;
    report.info(
        "scale",
        "settling the store after the sync (not in any served figure)",
        b,
        Some(settle_secs),
        "s",
        settled,
    );

    // Served from fresh snapshots.
    let headers = auditor_headers(secret)?;
    let bodies = write_bodies(dir, &format!("{backend}-bodies.txt"), &ids)?;
    let hub = Hub::start(
        &args.hub,
        &file,
        secret,
        port,
        &dir.join(format!("{backend}-hub.log")),
    )
    .await?;
    check_answers(&hub.url, &headers, &ids).await?;
    let target = Target {
        url: hub.url.clone(),
        headers: headers.clone(),
        bodies: bodies.clone(),
    };
    load::run(&args.oha, &target, 32, None, plan.warmup).await?;
    let hits_before = total_hits(sandboxes);
    hub.sampler.reset_peak(hub.pid);
    let before = procstat::read(hub.pid).unwrap_or_default();
    let calls_before = procstat::activity(hub.pid);
    let own_before = procstat::own();
    let server_before = procstat::cpu_of_named("postgres");
    let closed = crate::profile::profiled(
        args,
        hub.pid,
        &format!("served-{backend}"),
        &format!("{backend}'s snapshot-served run"),
        report,
        load::run(&args.oha, &target, 32, None, plan.run),
    )
    .await?;
    let after = procstat::read(hub.pid).unwrap_or_default();
    let calls = procstat::activity_since(hub.pid, calls_before);
    let own_after = procstat::own();
    let server_cpu = procstat::cpu_of_named("postgres") - server_before;
    let partner_calls = total_hits(sandboxes) - hits_before;
    anyhow::ensure!(closed.ok > 0, "no query was answered 200: {closed:?}");
    let cpu_per_query_us = (after.cpu_secs - before.cpu_secs) / closed.ok as f64 * 1e6;
    let non_ok = closed.requests - closed.ok + closed.errors;
    report.target(
        "snapshots",
        "superBudget throughput, closed loop, 32 connections",
        b,
        Some(closed.rps),
        "queries/s",
        Goal::AtLeast,
        6000.0,
        format!(
            "{} random people, {} answered 200, {} not; partners called {} times",
            ids.len(),
            closed.ok,
            non_ok,
            partner_calls
        ),
    );
    report.target(
        "snapshots",
        "superBudget p99, closed loop, 32 connections",
        b,
        Some(closed.p99_ms),
        "ms",
        Goal::AtMost,
        15.0,
        format!("p50 {:.2} ms", closed.p50_ms),
    );
    report.target(
        "cpu",
        "hub CPU per query, served from snapshots",
        b,
        Some(cpu_per_query_us),
        "µs",
        Goal::AtMost,
        150.0,
        format!(
            "hub process CPU {:.2} s over {} queries; {}",
            after.cpu_secs - before.cpu_secs,
            closed.ok,
            kernel_share(before, after, closed.ok)
        ),
    );
    report_activity(report, b, "served from snapshots", calls, closed.ok);
    report.info(
        "cpu",
        "load generator CPU per query (oha), served from snapshots",
        b,
        Some(closed.generator_cpu_secs / closed.requests.max(1) as f64 * 1e6),
        "µs",
        format!(
            "oha used {:.2} CPU s in {:.1} s ({:.0}% of one core); the sandboxes' process used {:.2} s",
            closed.generator_cpu_secs,
            closed.wall_secs,
            closed.generator_cpu_secs / closed.wall_secs * 100.0,
            own_after.cpu_secs - own_before.cpu_secs
        ),
    );
    if backend == "postgres" {
        // The store's share: on 2 cores the server's CPU is what the hub's throughput waits on.
        report.info(
            "cpu",
            "PostgreSQL server CPU per query, served from snapshots",
            b,
            Some(server_cpu / closed.ok as f64 * 1e6),
            "µs",
            format!(
                "every process named postgres (the server and its backends) used {server_cpu:.2} CPU s over {} queries; with the hub's, {:.0} µs a query",
                closed.ok,
                (server_cpu + after.cpu_secs - before.cpu_secs) / closed.ok as f64 * 1e6
            ),
        );
    }
    let constant = load::run(&args.oha, &target, 32, Some(3000), plan.run).await?;
    report.target(
        "snapshots",
        "superBudget p99 at a constant 3,000 queries/s",
        b,
        Some(constant.p99_ms),
        "ms",
        Goal::AtMost,
        5.0,
        format!(
            "open loop with latency correction; achieved {:.0}/s, p50 {:.2} ms, {} not 200",
            constant.rps,
            constant.p50_ms,
            constant.requests - constant.ok + constant.errors
        ),
    );
    report.target(
        "memory",
        "hub peak resident memory, steady under load",
        b,
        Some(hub.sampler.peak_mb()),
        "MB",
        Goal::AtMost,
        64.0,
        "polled every 50 ms through the closed-loop and constant-rate runs",
    );
    hub.stop().await?;
    let mut unflushed_rps = None;
    if backend == "postgres" {
        let runs = Runs {
            args,
            plan,
            secret,
            served: &target,
        };
        unflushed_rps = without_the_flush(runs, &config, dir, database_url, report).await?;
    }
    // The hub's instructions a query (full runs, and quick runs with --instructions).
    let counting = args.instructions || !args.quick;
    let callgrind = crate::instructions::Setup {
        binary: &args.hub,
        dir,
        secret,
        headers: &headers,
        ids: &ids,
        out: &args.out,
    };
    if counting {
        crate::instructions::measure(callgrind, &config, Kind::Served, args.quick, b, report).await;
    }

    // The live fan-out: nothing cached, every live partner 50 ms away.
    config.cache_ttl_secs = 0;
    config.port = hub::free_port()?;
    let live_file = hub::write_file(dir, &format!("{backend}-live.toml"), &config.toml())?;
    let hub = Hub::start(
        &args.hub,
        &live_file,
        secret,
        config.port,
        &dir.join(format!("{backend}-hub-live.log")),
    )
    .await?;
    for s in sandboxes.all() {
        s.faults.set_latency_ms(50);
    }
    let rate = 40;
    let ideal = ideal_fan_out(world, sandboxes, rate, plan.run).await?;
    let target = Target {
        url: hub.url.clone(),
        headers: headers.clone(),
        bodies: bodies.clone(),
    };
    // Warmed up first, as the snapshot-served runs are: a hub just started opens its store
    // sessions, prepares its statements and connects to the partners on its first views, a
    // cost paid once a session, not once a view. Nothing is cached (`cache_ttl_secs = 0`), so
    // every measured view still asks every live partner.
    let warming = load::run(&args.oha, &target, 8, Some(rate), plan.warmup).await?;
    let modest = load::run(&args.oha, &target, 8, Some(rate), plan.run).await?;
    report.info(
        "fan-out",
        "the partners alone: the three live partners asked at once, p50 / p99",
        b,
        Some(ideal.0),
        "ms",
        format!(
            "p99 {:.2} ms; this process calls council, Access to Work and health board concurrently for a random person, {rate}/s, as the hub would (ILF is served from the loaded extract)",
            ideal.1
        ),
    );
    report.target(
        "fan-out",
        "hub overhead above the partners, p50",
        b,
        Some(modest.p50_ms - ideal.0),
        "ms",
        Goal::AtMost,
        1.0,
        format!(
            "first superBudget with cache_ttl_secs = 0 at {rate}/s, 8 connections, after the warm-up below: p50 {:.2} ms (the sum of the partners would be 150 ms)",
            modest.p50_ms
        ),
    );
    report.target(
        "fan-out",
        "hub overhead above the partners, p99",
        b,
        Some(modest.p99_ms - ideal.1),
        "ms",
        Goal::AtMost,
        3.0,
        format!("hub p99 {:.2} ms", modest.p99_ms),
    );
    report.info(
        "fan-out",
        "hub overhead above the partners while a just-started hub warms up, p99",
        b,
        Some(warming.p99_ms - ideal.1),
        "ms",
        format!(
            "its first {:.0} s of views at {rate}/s, 8 connections, before the measured run (not in the targets above): p50 {:.2} ms, p99 {:.2} ms, {} views; the first views open the store's sessions, prepare their statements and connect to the partners",
            plan.warmup.as_secs_f64(),
            warming.p50_ms,
            warming.p99_ms,
            warming.requests
        ),
    );
    let before = procstat::read(hub.pid).unwrap_or_default();
    let calls_before = procstat::activity(hub.pid);
    let busy = crate::profile::profiled(
        args,
        hub.pid,
        &format!("fanout-{backend}"),
        &format!("{backend}'s live fan-out closed loop"),
        report,
        load::run(&args.oha, &target, 32, None, plan.run),
    )
    .await?;
    let after = procstat::read(hub.pid).unwrap_or_default();
    let calls = procstat::activity_since(hub.pid, calls_before);
    let fanout_cpu = (after.cpu_secs - before.cpu_secs) / busy.ok.max(1) as f64 * 1e6;
    report.target(
        "cpu",
        "hub CPU per query, live fan-out to the partners",
        b,
        Some(fanout_cpu),
        "µs",
        Goal::AtMost,
        400.0,
        format!(
            "closed loop, 32 connections, partners at 50 ms: {:.0} queries/s, p50 {:.1} ms, {} not 200; {}",
            busy.rps,
            busy.p50_ms,
            busy.requests - busy.ok + busy.errors,
            kernel_share(before, after, busy.ok)
        ),
    );
    report_activity(report, b, "live fan-out to the partners", calls, busy.ok);
    for s in sandboxes.all() {
        s.faults.set_latency_ms(0);
    }
    // The same views with the partners answering at once: the hub is then busy rather than
    // woken for each event of each view, and its group commits, merged reads and event-loop
    // turns each serve more views, so the difference from the figure above is what a mostly
    // idle hub pays for each view's events, not a view's work. Not a target: the target is the
    // figure above, with the partners 50 ms away.
    let before = procstat::read(hub.pid).unwrap_or_default();
    let calls_before = procstat::activity(hub.pid);
    let prompt = load::run(&args.oha, &target, 32, None, plan.run).await?;
    let after = procstat::read(hub.pid).unwrap_or_default();
    let calls = procstat::activity_since(hub.pid, calls_before);
    report.info(
        "cpu",
        "hub CPU per query, live fan-out, partners answering at once (not a target)",
        b,
        Some((after.cpu_secs - before.cpu_secs) / prompt.ok.max(1) as f64 * 1e6),
        "µs",
        format!(
            "the same views as the row above with no latency added: closed loop, 32 connections, {:.0} queries/s, p50 {:.2} ms, {} not 200; {}; {} context switches a query (the row above's are in the kernel rows): at about seven times the rate, each wake-up, group commit, merged read and event-loop turn serves more views, so the gap between the two rows is what a mostly idle hub pays for each view's events, not a view's work",
            prompt.rps,
            prompt.p50_ms,
            prompt.requests - prompt.ok + prompt.errors,
            kernel_share(before, after, prompt.ok),
            calls.map_or_else(
                || "unknown".to_owned(),
                |c| format!("{:.2}", c.context_switches as f64 / prompt.ok.max(1) as f64)
            ),
        ),
    );
    hub.stop().await?;
    if counting {
        crate::instructions::measure(callgrind, &config, Kind::FanOut, args.quick, b, report).await;
    }

    // The chain must hold after all that.
    let (_, _, verdict) = hub::run_command(&args.hub, &file, &["audit", "verify"], secret).await?;
    report.note(format!("{backend}: after the runs, {}", verdict.trim()));

    Ok(Summary {
        backend: backend.to_owned(),
        served_rps: closed.rps,
        sync_people_per_sec: people_per_sec,
        fanout_rps: busy.rps,
        unflushed_rps,
        database_url: database_url.to_owned(),
        ids,
    })
}

/// How much of the hub's CPU between two readings was the kernel's, a query.
fn kernel_share(before: procstat::Reading, after: procstat::Reading, queries: u64) -> String {
    let per_query = |secs: f64| secs / queries.max(1) as f64 * 1e6;
    format!(
        "of which the kernel's (system time: sockets, the store's files, waking threads) {:.1} µs and the hub's own code's (user time) {:.1} µs a query",
        per_query(after.sys_secs - before.sys_secs),
        per_query((after.cpu_secs - after.sys_secs) - (before.cpu_secs - before.sys_secs))
    )
}

/// What the partners alone cost: for a random person, this process asks the three live
/// partners at once, exactly the requests the hub makes, at `rate` a second for `duration`,
/// timing each join from when it was due. Returns (p50, p99) in ms.
async fn ideal_fan_out(
    world: &World,
    sandboxes: &Sandboxes,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<(f64, f64)> {
    let client = reqwest::Client::new();
    let council = sandboxes.council.url();
    let atw = sandboxes.access_to_work.url();
    let phb = sandboxes.health_board.url();
    let n = world.people.len();
    let count = (f64::from(rate) * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for k in 0..count {
        let due = start + interval * u32::try_from(k)?;
        tokio::time::sleep_until(due).await;
        // A fixed stride through the world: every call a different person.
        let person = &world.people[(k * 7919) % n];
        let council_url = match person.council_client_id() {
            Some(client_id) => format!("{council}/api/v1/clients/{client_id}/personal-budgets"),
            None => format!("{council}/api/v1/clients?nhs_number={}", person.nhs_number),
        };
        let atw_url = format!("{atw}/atw/v2/claimants/{}/awards", person.nino);
        let phb_url = format!("{phb}/phb/v1/patients/{}/budgets", person.nhs_number);
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (a, b, c) = tokio::join!(
                client
                    .get(&council_url)
                    .bearer_auth(sandboxes::servers::LA_TOKEN)
                    .send(),
                client
                    .get(&atw_url)
                    .header("X-Api-Key", sandboxes::servers::ATW_KEY)
                    .send(),
                client
                    .get(&phb_url)
                    .bearer_auth(sandboxes::servers::PHB_TOKEN)
                    .send(),
            );
            for r in [a, b, c] {
                r?.bytes().await?;
            }
            Ok::<f64, reqwest::Error>(due.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut samples = Vec::with_capacity(count);
    for t in tasks {
        samples.push(t.await??);
    }
    Ok((
        load::percentile(&mut samples, 50.0),
        load::percentile(&mut samples, 99.0),
    ))
}

/// Reports what the hub asked of the kernel a query during `run`: counts that do not depend on
/// the machine's speed, so a change's effect shows through a noisy machine's seconds (see
/// `procstat::Activity`).
fn report_activity(
    report: &mut Report,
    backend: Option<&str>,
    run: &str,
    calls: Option<procstat::Activity>,
    queries: u64,
) {
    let Some(calls) = calls else {
        report.note(format!(
            "{}: the hub's system calls and context switches during the run ({run}) could not be read from /proc",
            backend.unwrap_or("hub")
        ));
        return;
    };
    let per = |n: u64| n as f64 / queries.max(1) as f64;
    report.info(
        "kernel",
        &format!("hub read system calls per query, {run}"),
        backend,
        Some(per(calls.read_calls)),
        "calls",
        format!(
            "{} over {queries} queries (syscr): on SQLite the store's page reads (pread); on either store the event loops' wake-up counters; socket receives are not counted",
            calls.read_calls
        ),
    );
    report.info(
        "kernel",
        &format!("hub write system calls per query, {run}"),
        backend,
        Some(per(calls.write_calls)),
        "calls",
        format!(
            "{} over {queries} queries (syscw): on SQLite the store's log frames (two calls a page) and checkpoint copies; on either store the wake-up counters and log lines; socket sends are not counted",
            calls.write_calls
        ),
    );
    report.info(
        "kernel",
        &format!("hub context switches per query, {run}"),
        backend,
        Some(per(calls.context_switches)),
        "switches",
        format!(
            "{} over {queries} queries, voluntary and not, summed over the hub's threads alive at the end",
            calls.context_switches
        ),
    );
}
