//! Load from a separate process: `oha` (crates.io), closed loop at a fixed number of
//! connections or open loop at a fixed rate with latency correction (so a stall is charged to
//! every request that should have been sent during it), its JSON summary parsed here.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use crate::procstat::Sampler;

/// What a load run is aimed at.
#[derive(Clone, Debug)]
pub struct Target {
    /// The GraphQL endpoint.
    pub url: String,
    /// Headers, as `Name: value`.
    pub headers: Vec<String>,
    /// A file of request bodies, one per line; each request takes one at random.
    pub bodies: PathBuf,
}

/// What a load run measured.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    /// Requests answered (any status).
    pub requests: u64,
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed at the HTTP level or were not answered.
    pub errors: u64,
    /// Answers a second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// The generator's own CPU seconds.
    pub generator_cpu_secs: f64,
    /// The generator's wall seconds.
    pub wall_secs: f64,
}

/// Runs `oha` once: `connections` held open, closed loop, or open loop at `rate` a second.
pub async fn run(
    oha: &Path,
    target: &Target,
    connections: usize,
    rate: Option<u32>,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let mut cmd = tokio::process::Command::new(oha);
    cmd.arg("--no-tui")
        .args(["--output-format", "json"])
        .args(["-z", &format!("{}ms", duration.as_millis())])
        .args(["-c", &connections.to_string()])
        .args(["-m", "POST", "-T", "application/json"])
        .arg("-Z")
        .arg(&target.bodies)
        .arg("--wait-ongoing-requests-after-deadline");
    for h in &target.headers {
        cmd.args(["-H", h]);
    }
    if let Some(rate) = rate {
        cmd.args(["-q", &rate.to_string(), "--latency-correction"]);
    }
    cmd.arg(&target.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = std::time::Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("could not start {} (is oha installed?)", oha.display()))?;
    let sampler = child.id().map(Sampler::start);
    let output = child.wait_with_output().await?;
    let wall_secs = started.elapsed().as_secs_f64();
    let generator_cpu_secs = sampler.as_ref().map_or(0.0, |s| {
        s.stop();
        s.last_cpu_secs()
    });
    if !output.status.success() {
        anyhow::bail!(
            "oha failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let json: Value =
        serde_json::from_slice(&output.stdout).context("oha's JSON summary could not be read")?;
    let mut result = parse(&json)?;
    result.generator_cpu_secs = generator_cpu_secs;
    result.wall_secs = wall_secs;
    Ok(result)
}

/// Reads oha's JSON summary.
pub fn parse(json: &Value) -> anyhow::Result<LoadResult> {
    let statuses = json["statusCodeDistribution"]
        .as_object()
        .context("oha's summary has no statusCodeDistribution")?;
    let answered: u64 = statuses.values().filter_map(Value::as_u64).sum();
    let ok = statuses.get("200").and_then(Value::as_u64).unwrap_or(0);
    let errors: u64 = json["errorDistribution"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let pct = |key: &str| json["latencyPercentiles"][key].as_f64().map(|s| s * 1000.0);
    Ok(LoadResult {
        requests: answered,
        ok,
        errors,
        rps: json["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50_ms: pct("p50").context("oha's summary has no p50")?,
        p99_ms: pct("p99").context("oha's summary has no p99")?,
        generator_cpu_secs: 0.0,
        wall_secs: 0.0,
    })
}

/// Percentile `p` (0..=100) of `samples`, which it sorts; nearest rank.
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oha_summary_is_read_in_milliseconds() {
        let json: Value = serde_json::json!({
            "summary": { "requestsPerSec": 6123.5 },
            "latencyPercentiles": { "p50": 0.0042, "p99": 0.0121 },
            "statusCodeDistribution": { "200": 1000, "429": 3 },
            "errorDistribution": { "connection closed": 2 }
        });
        let r = parse(&json).unwrap();
        assert_eq!((r.requests, r.ok, r.errors), (1003, 1000, 2));
        assert!((r.p50_ms - 4.2).abs() < 1e-9);
        assert!((r.p99_ms - 12.1).abs() < 1e-9);
        assert!((r.rps - 6123.5).abs() < 1e-9);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut s: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut s, 50.0), 50.0);
        assert_eq!(percentile(&mut s, 99.0), 99.0);
        assert_eq!(percentile(&mut s, 100.0), 100.0);
        assert!(percentile(&mut [], 50.0).is_nan());
    }
}
