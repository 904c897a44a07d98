//! The instructions the hub executes for one query served from snapshots, counted by
//! valgrind's callgrind: a figure the machine's noise cannot move.
//!
//! On the virtual machine the benchmark was built on, one binary's CPU a query moved by a
//! third between runs, and a change worth 5% could not be seen in it. Instructions executed do
//! not depend on the machine's other tenants: they show such a change (in the hub's own code;
//! the kernel's work for its system calls is not counted, and the kernel-count rows stand for
//! that). The hub runs under callgrind twice over the same store, asked a few queries and then
//! many more, and each run's total is read when it exits: the difference over the difference
//! in queries leaves out starting and stopping, which both runs share. Each run starts from
//! the store settled, as the served runs do.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::hub::{self, Hub, HubConfig};
use crate::report::Report;
use crate::served::ask;

/// What the hub ran for one query, counted.
#[derive(Debug, Clone, Copy)]
pub struct Counted {
    /// Instructions a query.
    pub per_query: f64,
    /// Queries in the shorter run and in the longer.
    pub queries: (usize, usize),
}

/// A hub to count, and what to ask it.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    /// The hub binary.
    pub binary: &'a Path,
    /// Where the runs' files go.
    pub dir: &'a Path,
    /// The secret its tokens are signed with.
    pub secret: &'a str,
    /// The headers each request carries.
    pub headers: &'a [String],
    /// The people asked about, in turn.
    pub ids: &'a [String],
    /// Where the two runs' callgrind files are kept
    /// (`callgrind-<kind>-<store>-few.out` and `-many.out`), for `callgrind_annotate` to show
    /// where the instructions go; a function's count in the longer less the shorter is its
    /// share of the queries, without start-up.
    pub out: &'a Path,
}

/// Counts the instructions of a query: the hub of `setup` on `config` asked for its people in
/// turn, one query at a time, `queries.0` times in one run and `queries.1` in the other; the
/// runs' files are kept as `<keep>-few.out` and `<keep>-many.out`.
pub async fn count(
    setup: Setup<'_>,
    config: &HubConfig,
    queries: (usize, usize),
    keep: &Path,
) -> anyhow::Result<Counted> {
    anyhow::ensure!(
        queries.1 > queries.0,
        "the longer run must ask more queries"
    );
    let few = run(setup, config, queries.0, "few").await?;
    let many = run(setup, config, queries.1, "many").await?;
    if let Some(parent) = keep.parent() {
        std::fs::create_dir_all(parent)?;
    }
    for name in ["few", "many"] {
        let kept = kept(keep, name);
        std::fs::copy(setup.dir.join(format!("callgrind-{name}.out")), &kept)
            .with_context(|| format!("keeping the profile as {}", kept.display()))?;
    }
    anyhow::ensure!(
        many > few,
        "the longer run counted {many} instructions, the shorter {few}"
    );
    Ok(Counted {
        per_query: (many - few) as f64 / (queries.1 - queries.0) as f64,
        queries,
    })
}

/// Which queries are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Served from fresh snapshots: the partners are not called.
    Served,
    /// Nothing cached (`cache_ttl_secs = 0`): every query asks the live partners and keeps
    /// their answers.
    FanOut,
}

impl Kind {
    /// The run the figure is of, as the CPU rows name it.
    fn run(self) -> &'static str {
        match self {
            Kind::Served => "served from snapshots",
            Kind::FanOut => "live fan-out to the partners",
        }
    }

    /// Its part of the kept files' names.
    fn stem(self) -> &'static str {
        match self {
            Kind::Served => "served",
            Kind::FanOut => "fanout",
        }
    }

    /// What the figure's note adds about how its queries ran.
    fn how(self) -> &'static str {
        match self {
            Kind::Served => "",
            Kind::FanOut => {
                " Each query asks the three live partners (with no latency added, so the runs \
                 are short; waiting costs no instructions) and keeps their answers as snapshots."
            }
        }
    }
}

/// Counts the instructions of a query of `kind` on `config` ([`count`]: 50 and 550 queries, or
/// 20 and 220 in a `quick` run) and reports them for `backend`, or why they could not be
/// counted.
pub async fn measure(
    setup: Setup<'_>,
    config: &HubConfig,
    kind: Kind,
    quick: bool,
    backend: Option<&str>,
    report: &mut Report,
) {
    let queries = if quick { (20, 220) } else { (50, 550) };
    let how = kind.how();
    let keep = setup.out.join(format!(
        "callgrind-{}-{}",
        kind.stem(),
        backend.unwrap_or("hub")
    ));
    let (value, note) = match count(setup, config, queries, &keep).await {
        Ok(c) => (
            Some(c.per_query),
            format!(
                "valgrind's callgrind: the hub's instructions over two runs on this store \
                 ({} and {} queries, one at a time), their difference over {} queries; the \
                 hub's own code only, not the kernel's work for it (see the kernel rows). \
                 One at a time, each query is an audit group and a store view of its own, \
                 which under load are shared: more than a query under load costs, and the \
                 same from run to run, so a change to the hub shows here; the runs' profiles \
                 are {} and {} (callgrind_annotate shows where the instructions go).{how}",
                c.queries.0,
                c.queries.1,
                c.queries.1 - c.queries.0,
                kept(&keep, "few").file_name().unwrap_or_default().display(),
                kept(&keep, "many")
                    .file_name()
                    .unwrap_or_default()
                    .display(),
            ),
        ),
        Err(e) => (None, format!("not measured: {e:#}")),
    };
    report.info(
        "cpu",
        &format!("hub instructions per query, {}", kind.run()),
        backend,
        value,
        "instructions",
        note,
    );
}

/// Where the `name` run's callgrind file is kept.
fn kept(keep: &Path, name: &str) -> std::path::PathBuf {
    let mut file = keep.as_os_str().to_owned();
    file.push(format!("-{name}.out"));
    file.into()
}

/// One run under callgrind: the hub's whole life, `queries` answered; answers its total.
async fn run(
    setup: Setup<'_>,
    config: &HubConfig,
    queries: usize,
    name: &str,
) -> anyhow::Result<u64> {
    let Setup {
        binary,
        dir,
        secret,
        headers,
        ids,
        out: _,
    } = setup;
    // Each run starts from a store with its log copied back (and on PostgreSQL vacuumed):
    // otherwise the first would copy back what the runs before left, millions of
    // instructions that the second would not repeat.
    crate::served::settle(&config.database_url).await?;
    let mut config = config.clone();
    config.port = hub::free_port()?;
    let file = hub::write_file(dir, &format!("callgrind-{name}.toml"), &config.toml())?;
    let out = dir.join(format!("callgrind-{name}.out"));
    let mut command = tokio::process::Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(binary);
    let log = dir.join(format!("callgrind-{name}.log"));
    let hub = Hub::launch(
        command,
        &file,
        secret,
        config.port,
        &log,
        Duration::from_secs(180),
    )
    .await
    .context("the hub did not start under valgrind (apt-get install valgrind)")?;
    let client = reqwest::Client::new();
    for id in ids.iter().cycle().take(queries) {
        let answer = ask(&client, &hub.url, headers, id).await?;
        anyhow::ensure!(
            answer.get("errors").is_none(),
            "the hub answered with errors: {}",
            answer["errors"]
        );
    }
    drop(client);
    hub.interrupt(Duration::from_secs(60)).await?;
    let text = std::fs::read_to_string(&out)
        .with_context(|| format!("callgrind wrote no {}", out.display()))?;
    total(&text).with_context(|| format!("no total in {}", out.display()))
}

/// The total of a callgrind output file (its `totals:` line, or `summary:` in older ones).
fn total(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_read_from_either_line() {
        assert_eq!(
            total("events: Ir\nfl=x\n0 5\ntotals: 123456\n"),
            Some(123_456)
        );
        assert_eq!(total("events: Ir\nsummary: 42\n"), Some(42));
        assert_eq!(total("events: Ir\nfl=x\n0 5\n"), None);
    }
}
