//! The results table: every figure with its unit, its target and whether the target was met,
//! written as markdown (for people) and JSON (for tools and for comparing runs).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

/// Which way a target points.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// The figure must be at most the target.
    AtMost,
    /// The figure must be at least the target.
    AtLeast,
}

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    /// The group it belongs to (fan-out, snapshots, scale, ...).
    pub section: String,
    /// What was measured.
    pub name: String,
    /// The store it ran on, where that matters.
    pub backend: Option<String>,
    /// The figure, `None` when it could not be measured (see `note`).
    pub value: Option<f64>,
    /// Its unit.
    pub unit: String,
    /// The target, if the issue sets one.
    pub target: Option<f64>,
    /// Which way the target points.
    pub goal: Option<Goal>,
    /// Whether the target was met; `None` without a target or without a figure.
    pub met: Option<bool>,
    /// How it was measured, or why it is missing.
    pub note: String,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `full` or `quick`.
    pub mode: String,
    /// When the run started (UTC).
    pub started_at: String,
    /// The machine, as the run found it.
    pub machine: String,
    /// Wall seconds the suite took.
    pub wall_secs: f64,
    /// Every figure, in the order measured.
    pub figures: Vec<Figure>,
    /// Free-text observations (the generator's CPU, what the peer could not do, ...).
    pub notes: Vec<String>,
}

impl Report {
    /// An empty report.
    pub fn new(mode: &str) -> Self {
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        Self {
            mode: mode.into(),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            machine: format!("{cores} cores, {model}"),
            wall_secs: 0.0,
            figures: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Records a figure with a target.
    #[allow(clippy::too_many_arguments)]
    pub fn target(
        &mut self,
        section: &str,
        name: &str,
        backend: Option<&str>,
        value: Option<f64>,
        unit: &str,
        goal: Goal,
        target: f64,
        note: impl Into<String>,
    ) {
        let met = value.map(|v| match goal {
            Goal::AtMost => v <= target,
            Goal::AtLeast => v >= target,
        });
        self.figures.push(Figure {
            section: section.into(),
            name: name.into(),
            backend: backend.map(Into::into),
            value,
            unit: unit.into(),
            target: Some(target),
            goal: Some(goal),
            met,
            note: note.into(),
        });
        self.echo();
    }

    /// Records a figure reported for information, without a target.
    pub fn info(
        &mut self,
        section: &str,
        name: &str,
        backend: Option<&str>,
        value: Option<f64>,
        unit: &str,
        note: impl Into<String>,
    ) {
        self.figures.push(Figure {
            section: section.into(),
            name: name.into(),
            backend: backend.map(Into::into),
            value,
            unit: unit.into(),
            target: None,
            goal: None,
            met: None,
            note: note.into(),
        });
        self.echo();
    }

    /// Adds an observation.
    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("  note: {text}");
        self.notes.push(text);
    }

    fn echo(&self) {
        if let Some(f) = self.figures.last() {
            eprintln!(
                "  {} / {}{}: {} {}{}",
                f.section,
                f.name,
                f.backend
                    .as_deref()
                    .map(|b| format!(" [{b}]"))
                    .unwrap_or_default(),
                f.value.map_or("n/a".into(), format_value),
                f.unit,
                match f.met {
                    Some(true) => "  (met)",
                    Some(false) => "  (NOT MET)",
                    None => "",
                }
            );
        }
    }

    /// The markdown table.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let met = self.figures.iter().filter(|f| f.met == Some(true)).count();
        let targets = self.figures.iter().filter(|f| f.target.is_some()).count();
        let _ = writeln!(out, "# Tributary benchmark results ({} run)\n", self.mode);
        let _ = writeln!(
            out,
            "Started {}; {}; the suite took {:.0} s. Targets met: {met} of {targets}.\n",
            self.started_at, self.machine, self.wall_secs
        );
        let _ = writeln!(
            out,
            "| section | figure | store | value | target | met | how |\n|---|---|---|---|---|---|---|"
        );
        for f in &self.figures {
            let target = match (f.goal, f.target) {
                (Some(Goal::AtMost), Some(t)) => format!("<= {} {}", format_value(t), f.unit),
                (Some(Goal::AtLeast), Some(t)) => format!(">= {} {}", format_value(t), f.unit),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                f.section,
                f.name,
                f.backend.as_deref().unwrap_or(""),
                f.value
                    .map_or("n/a".into(), |v| format!("{} {}", format_value(v), f.unit)),
                target,
                match f.met {
                    Some(true) => "met",
                    Some(false) => "**not met**",
                    None => "",
                },
                f.note.replace('|', "/")
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }

    /// Writes `results.md` and `results.json` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        Ok(())
    }
}

/// A figure with as many decimals as its size deserves.
pub fn format_value(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_met_only_on_the_right_side() {
        let mut r = Report::new("quick");
        r.target(
            "s",
            "low is good",
            None,
            Some(5.0),
            "ms",
            Goal::AtMost,
            4.0,
            "",
        );
        r.target(
            "s",
            "high is good",
            None,
            Some(5.0),
            "qps",
            Goal::AtLeast,
            4.0,
            "",
        );
        r.target("s", "missing", None, None, "ms", Goal::AtMost, 4.0, "");
        assert_eq!(r.figures[0].met, Some(false));
        assert_eq!(r.figures[1].met, Some(true));
        assert_eq!(r.figures[2].met, None);
        let md = r.markdown();
        assert!(md.contains("Targets met: 1 of 3"), "{md}");
        assert!(md.contains("**not met**"));
    }
}
