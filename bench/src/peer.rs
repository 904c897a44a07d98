//! The peer side by side: GraphQL Mesh (compose CLI) served by Hive Gateway over the same
//! sandboxes, asked for one person's raw records from the council, Access to Work and the
//! health board (the ILF publishes no per-person interface, only its nightly extract), against
//! Tributary's superBudget for the same people, at the same concurrency, in the same run.
//! The peer's inbound request deduplication is off (bench/peer/gateway.config.ts) and the
//! people vary on both sides.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sandboxes::Sandboxes;
use sandboxes::world::World;
use serde_json::json;

use crate::hub::{self, Hub, HubConfig};
use crate::load::{self, LoadResult, Target};
use crate::procstat::{self, Sampler};
use crate::report::{Goal, Report};
use crate::served::{self, Summary};
use crate::{Args, Plan};

const CONNECTIONS: usize = 32;

/// One side's figures.
struct Side {
    load: LoadResult,
    peak_mb: f64,
    cpu_per_query_us: f64,
}

/// Runs both sides and reports their ratios.
#[allow(clippy::too_many_arguments)]
pub async fn side_by_side(
    args: &Args,
    plan: &Plan,
    world: &World,
    sandboxes: &Sandboxes,
    tributary: &Summary,
    dir: &Path,
    secret: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let peer_dir = &args.peer_dir;
    anyhow::ensure!(
        peer_dir.join("node_modules").exists(),
        "{} has no node_modules: run npm ci there (scripts/bench.sh does)",
        peer_dir.display()
    );
    let node_status = tokio::process::Command::new("node")
        .arg("node_modules/@graphql-mesh/compose-cli/esm/bin.js")
        .current_dir(peer_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .context("node is not installed")?;
    anyhow::ensure!(
        node_status.status.success(),
        "composing the peer's supergraph failed: {}",
        String::from_utf8_lossy(&node_status.stderr)
    );

    // The people both sides are asked about: those the three live partners all know, so
    // neither side answers with errors.
    let mut hub_bodies = Vec::new();
    let mut peer_bodies = String::new();
    let query = std::fs::read_to_string(peer_dir.join("person-raw.graphql"))?;
    for (i, person) in world.people.iter().enumerate() {
        let Some(client_id) = person.council_client_id() else {
            continue;
        };
        if person.atw_awards.is_empty() || person.phb.is_empty() {
            continue;
        }
        hub_bodies.push(tributary.ids[i].clone());
        peer_bodies.push_str(&serde_json::to_string(&json!({
            "query": query,
            "variables": { "clientId": client_id, "nino": person.nino, "nhsNumber": person.nhs_number },
        }))?);
        peer_bodies.push('\n');
    }
    anyhow::ensure!(
        !hub_bodies.is_empty(),
        "no person is known to all three live partners"
    );
    let people = hub_bodies.len();
    let hub_body_file = served::write_bodies(dir, "peer-hub-bodies.txt", &hub_bodies)?;
    let peer_body_file = hub::write_file(dir, "peer-bodies.txt", &peer_bodies)?;
    let headers = served::auditor_headers(secret)?;

    // Tributary, as deployed (snapshots kept for a day) and with nothing cached.
    let mut sides = Vec::with_capacity(2);
    for (name, cache_ttl_secs) in [("peer-hub", 24 * 3600), ("peer-hub-live", 0)] {
        let config = HubConfig {
            database_url: tributary.database_url.clone(),
            partners: sandboxes.all().map(|s| s.url()),
            cache_ttl_secs,
            port: hub::free_port()?,
        };
        let file = hub::write_file(dir, &format!("{name}.toml"), &config.toml())?;
        let log = dir.join(format!("{name}.log"));
        let started = Hub::start(&args.hub, &file, secret, config.port, &log).await?;
        let side = measure(
            args,
            plan,
            &started.url,
            &headers,
            &hub_body_file,
            started.pid,
            &started.sampler,
        )
        .await?;
        started.stop().await?;
        sides.push(side);
    }
    let (Some(live), Some(snap)) = (sides.pop(), sides.pop()) else {
        anyhow::bail!("a Tributary side of the peer run is missing");
    };

    // The peer.
    let port = hub::free_port()?;
    let log = std::fs::File::create(dir.join("peer-gateway.log"))?;
    let mut gateway = tokio::process::Command::new("node")
        .arg("node_modules/@graphql-hive/gateway/dist/bin.js")
        .args([
            "supergraph",
            "supergraph.graphql",
            "--port",
            &port.to_string(),
        ])
        .current_dir(peer_dir)
        .env("COUNCIL_URL", sandboxes.council.url())
        .env("ATW_URL", sandboxes.access_to_work.url())
        .env("PHB_URL", sandboxes.health_board.url())
        .env("LA_TOKEN", sandboxes::servers::LA_TOKEN)
        .env("ATW_KEY", sandboxes::servers::ATW_KEY)
        .env("PHB_TOKEN", sandboxes::servers::PHB_TOKEN)
        .env("LOG_LEVEL", "error")
        .env("NODE_ENV", "production")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("could not start the peer gateway")?;
    let pid = gateway.id().context("the peer gateway exited at once")?;
    let sampler = Sampler::start(pid);
    let ready = format!("http://127.0.0.1:{port}/readiness");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(&ready).send().await
            && r.status().is_success()
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the peer gateway did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = format!("http://127.0.0.1:{port}/graphql");
    let first = peer_bodies.lines().next().unwrap_or_default();
    let answer: serde_json::Value = client
        .post(&url)
        .header("content-type", "application/json")
        .body(first.to_owned())
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(
        answer.get("errors").is_none() && answer["data"]["phbBudgets"].is_object(),
        "the peer's answer is not whole: {answer}"
    );
    let peer = measure(args, plan, &url, &[], &peer_body_file, pid, &sampler).await;
    sampler.stop();
    gateway.kill().await?;
    let peer = peer?;

    let row = |name: &str, side: &Side| {
        format!(
            "{name}: {:.0} queries/s, p50 {:.2} ms, p99 {:.2} ms, peak {:.0} MB, {:.0} µs CPU a query, {} not 200",
            side.load.rps,
            side.load.p50_ms,
            side.load.p99_ms,
            side.peak_mb,
            side.cpu_per_query_us,
            side.load.requests - side.load.ok + side.load.errors
        )
    };
    report.note(format!(
        "peer run, {people} people known to all three live partners, closed loop at {CONNECTIONS} connections each, one side at a time: {}; {}; {}",
        row("Tributary superBudget from snapshots", &snap),
        row("Tributary superBudget, nothing cached (asks the three partners every time)", &live),
        row("GraphQL Mesh on Hive Gateway, the three partners' raw records", &peer)
    ));
    let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    for (label, side) in [("snapshots", &snap), ("nothing cached", &live)] {
        report.target(
            "peer",
            &format!("throughput, Tributary ({label}) / Mesh"),
            Some("sqlite"),
            ratio(side.load.rps, peer.load.rps),
            "x",
            Goal::AtLeast,
            5.0,
            format!("{:.0} vs {:.0} queries/s", side.load.rps, peer.load.rps),
        );
        report.target(
            "peer",
            &format!("p99, Tributary ({label}) / Mesh"),
            Some("sqlite"),
            ratio(side.load.p99_ms, peer.load.p99_ms),
            "x",
            Goal::AtMost,
            0.2,
            format!("{:.2} vs {:.2} ms", side.load.p99_ms, peer.load.p99_ms),
        );
        report.info(
            "peer",
            &format!("p50, Tributary ({label}) / Mesh"),
            Some("sqlite"),
            ratio(side.load.p50_ms, peer.load.p50_ms),
            "x",
            format!("{:.2} vs {:.2} ms", side.load.p50_ms, peer.load.p50_ms),
        );
        report.info(
            "peer",
            &format!("peak memory, Tributary ({label}) / Mesh"),
            Some("sqlite"),
            ratio(side.peak_mb, peer.peak_mb),
            "x",
            format!("{:.0} vs {:.0} MB", side.peak_mb, peer.peak_mb),
        );
    }
    Ok(())
}

/// Warm-up, then one closed-loop run, with the server's CPU per query and peak memory.
async fn measure(
    args: &Args,
    plan: &Plan,
    url: &str,
    headers: &[String],
    bodies: &Path,
    pid: u32,
    sampler: &Sampler,
) -> anyhow::Result<Side> {
    let target = Target {
        url: url.to_owned(),
        headers: headers.to_vec(),
        bodies: bodies.to_owned(),
    };
    load::run(&args.oha, &target, CONNECTIONS, None, plan.warmup).await?;
    sampler.reset_peak(pid);
    let before = procstat::read(pid).unwrap_or_default();
    let result = load::run(&args.oha, &target, CONNECTIONS, None, plan.run).await?;
    let after = procstat::read(pid).unwrap_or_default();
    Ok(Side {
        cpu_per_query_us: (after.cpu_secs - before.cpu_secs) / result.ok.max(1) as f64 * 1e6,
        // The whole life's high-water mark, the same way for both sides.
        peak_mb: sampler.hwm_mb().max(sampler.peak_mb()),
        load: result,
    })
}
