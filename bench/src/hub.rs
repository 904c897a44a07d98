//! The hub as the deployment runs it: the release binary in its own process, configured by a
//! TOML file, so its CPU and memory are its own and not the sandboxes' or the generator's.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::procstat::Sampler;

/// What the hub is configured with for a run.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// The store's URL.
    pub database_url: String,
    /// The sandboxes' base URLs: council, ILF, Access to Work, health board.
    pub partners: [String; 4],
    /// Live partners' snapshot lifetime: 0 asks the partner on every read.
    pub cache_ttl_secs: u64,
    /// The port to listen on.
    pub port: u16,
}

impl HubConfig {
    /// The TOML text of this configuration (the same keys `tributary.example.toml` documents).
    pub fn toml(&self) -> String {
        let [council, ilf, atw, phb] = &self.partners;
        let ttl = self.cache_ttl_secs;
        format!(
            r#"[server]
bind = "127.0.0.1:{port}"

[database]
url = "{db}"
max_connections = 16

[limits]
# One benchmark token sends every request: the per-token rate limit would otherwise stop it.
per_token_per_second = 1000000
per_token_burst = 1000000

[[connector]]
id = "la-social-care"
kind = "la_social_care"
base_url = "{council}"
token_env = "LA_TOKEN"
cache_ttl_secs = {ttl}

[[connector]]
id = "ilf"
kind = "ilf"
base_url = "{ilf}"

[[connector]]
id = "access-to-work"
kind = "access_to_work"
base_url = "{atw}"
api_key_env = "ATW_KEY"
yearly_cap = "69260.00"
cache_ttl_secs = {ttl}

[[connector]]
id = "phb"
kind = "phb"
base_url = "{phb}"
token_env = "PHB_TOKEN"
cache_ttl_secs = {ttl}
"#,
            port = self.port,
            db = self.database_url,
        )
    }

    /// The configuration with only the ILF connector (for timing the extract on its own).
    pub fn ilf_only_toml(&self) -> String {
        format!(
            "[database]\nurl = \"{}\"\n\n[[connector]]\nid = \"ilf\"\nkind = \"ilf\"\nbase_url = \"{}\"\n",
            self.database_url, self.partners[1]
        )
    }
}

/// The environment the hub reads its secrets from.
pub fn hub_env(jwt_secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TRIBUTARY_JWT_SECRET", jwt_secret.to_owned()),
        ("LA_TOKEN", sandboxes::servers::LA_TOKEN.to_owned()),
        ("PHB_TOKEN", sandboxes::servers::PHB_TOKEN.to_owned()),
        ("ATW_KEY", sandboxes::servers::ATW_KEY.to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ]
}

/// A hub process serving GraphQL.
#[derive(Debug)]
pub struct Hub {
    child: tokio::process::Child,
    /// Its process id.
    pub pid: u32,
    /// Its CPU and memory sampler.
    pub sampler: Sampler,
    /// `http://127.0.0.1:PORT/graphql`.
    pub url: String,
}

impl Hub {
    /// Starts `tributary serve` and waits until it answers `/health/ready`.
    pub async fn start(
        binary: &Path,
        config_file: &Path,
        jwt_secret: &str,
        port: u16,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let command = tokio::process::Command::new(binary);
        Self::launch(
            command,
            config_file,
            jwt_secret,
            port,
            log,
            Duration::from_secs(60),
        )
        .await
    }

    /// Starts `command` (the hub binary, or a tool running it, with `--config` and `serve` yet
    /// to come) and waits up to `ready_within` until it answers `/health/ready`.
    pub async fn launch(
        mut command: tokio::process::Command,
        config_file: &Path,
        jwt_secret: &str,
        port: u16,
        log: &Path,
        ready_within: Duration,
    ) -> anyhow::Result<Self> {
        let log_file = std::fs::File::create(log)?;
        let program = command.as_std().get_program().to_owned();
        let child = command
            .arg("--config")
            .arg(config_file)
            .arg("serve")
            .envs(hub_env(jwt_secret))
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start {}", program.display()))?;
        let pid = child.id().context("the hub exited at once")?;
        let sampler = Sampler::start(pid);
        let client = reqwest::Client::new();
        let ready = format!("http://127.0.0.1:{port}/health/ready");
        let deadline = Instant::now() + ready_within;
        loop {
            if let Ok(r) = client.get(&ready).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!("the hub did not become ready; see {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            child,
            pid,
            sampler,
            url: format!("http://127.0.0.1:{port}/graphql"),
        })
    }

    /// Stops it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.sampler.stop();
        self.child.kill().await?;
        Ok(())
    }

    /// Asks it to stop as a deployment would (SIGINT: in-flight requests finish, then it
    /// exits) and waits up to `within` for it to exit; kills it if it has not.
    pub async fn interrupt(mut self, within: Duration) -> anyhow::Result<()> {
        self.sampler.stop();
        tokio::process::Command::new("kill")
            .args(["-INT", &self.pid.to_string()])
            .status()
            .await?;
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => {
                status?;
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                anyhow::bail!("the hub had not exited {} s after SIGINT", within.as_secs())
            }
        }
    }
}

/// Runs a `tributary` subcommand to the end, returning its wall seconds, its peak resident
/// memory (MB, the kernel's high-water mark as last polled) and its stdout.
pub async fn run_command(
    binary: &Path,
    config_file: &Path,
    args: &[&str],
    jwt_secret: &str,
) -> anyhow::Result<(f64, f64, String)> {
    let started = Instant::now();
    let child = tokio::process::Command::new(binary)
        .arg("--config")
        .arg(config_file)
        .args(args)
        .envs(hub_env(jwt_secret))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("could not start {}", binary.display()))?;
    let sampler = child.id().map(Sampler::start);
    let output = child.wait_with_output().await?;
    let wall = started.elapsed().as_secs_f64();
    let peak = sampler.as_ref().map_or(0.0, |s| {
        s.stop();
        s.hwm_mb().max(s.peak_mb())
    });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        anyhow::bail!(
            "tributary {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok((wall, peak, stdout))
}

/// A free port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Writes `text` to `dir/name`, returning the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}
