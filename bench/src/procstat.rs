//! CPU time and resident memory of a process, read from `/proc` (Linux), and a sampler that
//! keeps the peak while a run goes on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Clock ticks per second for `/proc/<pid>/stat` (USER_HZ, 100 on every Linux we run on).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reading {
    /// User plus system CPU seconds used so far.
    pub cpu_secs: f64,
    /// Of those, the system's: the kernel working for the process (its sockets, the store's
    /// files, waking and putting its threads to sleep).
    pub sys_secs: f64,
    /// Resident set now, in kB.
    pub rss_kb: u64,
    /// The kernel's own high-water mark of the resident set, in kB.
    pub hwm_kb: u64,
}

/// Reads a process's CPU and memory; `None` once it has gone.
pub fn read(pid: u32) -> Option<Reading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, user, sys) = stat_times(&stat)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(Reading {
        cpu_secs: (user + sys) / TICKS_PER_SEC,
        sys_secs: sys / TICKS_PER_SEC,
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
    })
}

/// A `/proc/<pid>/stat` line's command name and its user plus system CPU, in clock ticks.
fn name_and_ticks(stat: &str) -> Option<(&str, f64)> {
    let (name, user, system) = stat_times(stat)?;
    Some((name, user + system))
}

/// A `/proc/<pid>/stat` line's command name, user CPU and system CPU, in clock ticks.
fn stat_times(stat: &str) -> Option<(&str, f64, f64)> {
    // The command name is in parentheses and may hold spaces: fields count from after ')'.
    let (head, after) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')': state is field 0, so utime (14th overall) is index 11 and stime index 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((name, utime, stime))
}

/// The CPU seconds (user plus system) used so far by every live process whose command name
/// is `name`: for PostgreSQL, its server and every backend, which on this machine share the
/// cores with the hub. A process that exited took its count with it.
pub fn cpu_of_named(name: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let ticks: f64 = entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| match name_and_ticks(&stat) {
            Some((n, ticks)) if n == name => Some(ticks),
            _ => None,
        })
        .sum();
    ticks / TICKS_PER_SEC
}

/// What a process asked of the kernel so far: counts that depend on the code and the load,
/// not on how fast this machine is, so two runs on a noisy machine compare where their
/// seconds do not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// `read`-family system calls (`syscr` in `/proc/<pid>/io`): the store's page reads,
    /// and the reads of the event-loop wake-ups' counters. Socket receives are not in it.
    pub read_calls: u64,
    /// `write`-family system calls (`syscw`): the store's page and log writes, the
    /// wake-ups' counters and log lines. Socket sends are not in it.
    pub write_calls: u64,
    /// Context switches, voluntary and not, of the threads alive now
    /// (`/proc/<pid>/task/*/status`).
    pub context_switches: u64,
}

impl Activity {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Activity) -> Activity {
        Activity {
            read_calls: self.read_calls.saturating_sub(earlier.read_calls),
            write_calls: self.write_calls.saturating_sub(earlier.write_calls),
            context_switches: self
                .context_switches
                .saturating_sub(earlier.context_switches),
        }
    }
}

/// Reads a process's [`Activity`]; `None` once it has gone, or where `/proc/<pid>/io` cannot
/// be read (another user's process).
pub fn activity(pid: u32) -> Option<Activity> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let (read_calls, write_calls) = io_calls(&io)?;
    let context_switches = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|status| context_switches(&status))
        .sum();
    Some(Activity {
        read_calls,
        write_calls,
        context_switches,
    })
}

/// What a process asked of the kernel since `before` (its [`activity`] then); `None` where
/// either reading is missing.
pub fn activity_since(pid: u32, before: Option<Activity>) -> Option<Activity> {
    activity(pid)
        .zip(before)
        .map(|(after, before)| after.since(&before))
}

/// `syscr` and `syscw` of a `/proc/<pid>/io` text.
fn io_calls(io: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().parse().ok())
    };
    Some((field("syscr:")?, field("syscw:")?))
}

/// Voluntary plus involuntary context switches of a `/proc/<pid>/task/<tid>/status` text.
fn context_switches(status: &str) -> u64 {
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
        })
        .filter_map(|rest| rest.trim().parse::<u64>().ok())
        .sum()
}

/// The calling process's own reading.
pub fn own() -> Reading {
    read(std::process::id()).unwrap_or_default()
}

/// Polls a process every 50 ms, keeping its peak resident set and its last CPU reading, so
/// that a process which exits between polls still leaves figures behind.
#[derive(Debug, Clone)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    peak_rss_kb: Arc<AtomicU64>,
    hwm_kb: Arc<AtomicU64>,
    last_cpu_millis: Arc<AtomicU64>,
}

impl Sampler {
    /// Starts polling `pid` on the current Tokio runtime.
    pub fn start(pid: u32) -> Self {
        let sampler = Self {
            stop: Arc::new(AtomicBool::new(false)),
            peak_rss_kb: Arc::new(AtomicU64::new(0)),
            hwm_kb: Arc::new(AtomicU64::new(0)),
            last_cpu_millis: Arc::new(AtomicU64::new(0)),
        };
        let s = sampler.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !s.stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let Some(r) = read(pid) else { break };
                s.peak_rss_kb.fetch_max(r.rss_kb, Ordering::Relaxed);
                s.hwm_kb.fetch_max(r.hwm_kb, Ordering::Relaxed);
                s.last_cpu_millis
                    .store((r.cpu_secs * 1000.0) as u64, Ordering::Relaxed);
            }
        });
        sampler
    }

    /// Forgets the peak so far (the kernel's high-water mark cannot be reset, so a phase's
    /// peak is the highest resident set polled from now on).
    pub fn reset_peak(&self, pid: u32) {
        let now = read(pid).map(|r| r.rss_kb).unwrap_or(0);
        self.peak_rss_kb.store(now, Ordering::Relaxed);
    }

    /// Peak resident set seen, in MB.
    pub fn peak_mb(&self) -> f64 {
        self.peak_rss_kb.load(Ordering::Relaxed) as f64 / 1024.0
    }

    /// The kernel's high-water mark of the resident set over the process's whole life, as
    /// last read, in MB.
    pub fn hwm_mb(&self) -> f64 {
        self.hwm_kb.load(Ordering::Relaxed) as f64 / 1024.0
    }

    /// The last CPU seconds read.
    pub fn last_cpu_secs(&self) -> f64 {
        self.last_cpu_millis.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Stops polling.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_time_are_read_past_a_name_with_spaces_and_parentheses() {
        let stat =
            "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194304 900 0 0 0 371 58 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_times(stat), Some(("tokio (rt) 1", 371.0, 58.0)));
        assert_eq!(name_and_ticks(stat), Some(("tokio (rt) 1", 429.0)));
        assert_eq!(stat_times("4242 (short) S 1"), None);
    }

    /// The system calls are read from `/proc/<pid>/io`, and a thread's switches are both
    /// kinds added.
    #[test]
    fn activity_reads_the_calls_and_adds_both_kinds_of_switch() {
        let io = "rchar: 10\nwchar: 20\nsyscr: 7\nsyscw: 3\nread_bytes: 0\n";
        assert_eq!(io_calls(io), Some((7, 3)));
        assert_eq!(io_calls("rchar: 10\n"), None);
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t5\n";
        assert_eq!(context_switches(status), 17);
        let later = Activity {
            read_calls: 9,
            write_calls: 3,
            context_switches: 30,
        };
        let earlier = Activity {
            read_calls: 7,
            write_calls: 4,
            context_switches: 17,
        };
        assert_eq!(
            later.since(&earlier),
            Activity {
                read_calls: 2,
                write_calls: 0,
                context_switches: 13,
            }
        );
    }

    /// This process's own activity is readable, and reading a file is counted.
    #[test]
    fn a_process_reads_are_counted() {
        let before = activity(std::process::id()).unwrap();
        for _ in 0..5 {
            std::fs::read_to_string("/proc/self/stat").unwrap();
        }
        let after = activity(std::process::id()).unwrap();
        assert!(after.since(&before).read_calls >= 5);
        assert!(after.context_switches >= before.context_switches);
    }

    /// The CPU of the processes of a name counts this process's own, and a name no process has
    /// counts nothing.
    #[test]
    fn cpu_of_named_counts_the_processes_of_that_name() {
        let name = std::fs::read_to_string("/proc/self/comm").unwrap();
        let name = name.trim_end();
        // Spin until this process has used at least two clock ticks of its own.
        let mut x = 0u64;
        while own().cpu_secs < 0.02 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_of_named(name) >= own().cpu_secs - 1e-9);
        assert_eq!(cpu_of_named("no-process-has-this-name"), 0.0);
    }
}
