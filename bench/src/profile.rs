//! A sampling profile of the hub process with Linux `perf`, summarised as the frames that
//! spent the most time themselves.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context as _;

/// A running `perf record` attached to a process.
#[derive(Debug)]
pub struct Perf {
    child: tokio::process::Child,
    data: PathBuf,
    call_graph: bool,
}

impl Perf {
    /// Starts sampling `pid` into `data`: at 999 Hz, or at 249 Hz with DWARF call graphs.
    pub fn start(pid: u32, data: &Path, call_graph: bool) -> anyhow::Result<Self> {
        if let Some(dir) = data.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut command = tokio::process::Command::new("perf");
        command.arg("record");
        if call_graph {
            command.args(["-F", "249", "--call-graph", "dwarf,16384"]);
        } else {
            command.args(["-F", "999"]);
        }
        let child = command
            .args(["-p", &pid.to_string(), "-o"])
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("perf is not installed (apt-get install linux-perf)")?;
        Ok(Self {
            child,
            data: data.to_owned(),
            call_graph,
        })
    }

    /// Stops sampling and returns the top ten frames by their own share of the samples, and
    /// writes the whole report beside the data file.
    pub async fn finish(mut self) -> anyhow::Result<Vec<String>> {
        if let Some(pid) = self.child.id() {
            // perf writes its file on SIGINT.
            tokio::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .await?;
        }
        self.child.wait().await?;
        let text =
            String::from_utf8_lossy(&report(&self.data, &["--no-children"]).await?).into_owned();
        std::fs::write(self.data.with_extension("txt"), &text)?;
        if self.call_graph {
            let children = report(&self.data, &["--children", "--percent-limit", "0.5"]).await?;
            std::fs::write(self.data.with_extension("children.txt"), children)?;
        }
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('%'))
            .take(10)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect())
    }
}

/// Runs `run` with the hub (`pid`) sampled into `perf-<name>.data` when `--profile` asked for
/// it, and notes the top frames in `report` as taken during `what`.
pub async fn profiled<T>(
    args: &crate::Args,
    pid: u32,
    name: &str,
    what: &str,
    report: &mut crate::report::Report,
    run: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let profiler = if args.profile {
        Some(Perf::start(
            pid,
            &args.out.join(format!("perf-{name}.data")),
            args.call_graph,
        )?)
    } else {
        None
    };
    let out = run.await?;
    if let Some(profiler) = profiler {
        match profiler.finish().await {
            Ok(top) => report.note(format!(
                "perf profile of the hub during {what}, top frames by own time: {}",
                top.join("; ")
            )),
            Err(e) => report.note(format!("the profile of {what} could not be taken: {e:#}")),
        }
    }
    Ok(out)
}

/// `perf report` of `data` by symbol, without call chains, with `extra` options.
async fn report(data: &Path, extra: &[&str]) -> anyhow::Result<Vec<u8>> {
    let output = tokio::process::Command::new("perf")
        .arg("report")
        .args(extra)
        .args(["--sort", "symbol", "--stdio", "-g", "none", "-i"])
        .arg(data)
        .output()
        .await?;
    Ok(output.stdout)
}
