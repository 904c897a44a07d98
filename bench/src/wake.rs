//! What waking a sleeping thread costs on this machine: the price of every context switch the
//! kernel-count rows report.
//!
//! A hub thread with nothing to do sleeps, and is woken by a request, a partner's answer or a
//! commit: the kernel-count rows count those switches, about five a live view at the fan-out's
//! load. What each costs is the machine's, not the hub's, and on the virtual machine these
//! figures were first taken on, a wake-up across CPUs cost five to eight times one on the same
//! CPU. Measured in every run, it says how much of a run's CPU figures is that price, and lets
//! runs on different machines be compared.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

use crate::report::Report;

/// Measures a wake-up across CPUs and one on a single CPU, `trips` round trips each, and
/// reports both for information.
pub fn measure(trips: u32, report: &mut Report) {
    let cpus = allowed_cpus();
    let how = |on: &str| {
        format!(
            "mean of {trips} round trips of a byte between two threads over a Unix socket pair, \
             {on}: each trip wakes a sleeping thread twice, as the hub's threads are woken \
             by a request, a partner's answer or a commit (the context-switch rows count them)"
        )
    };
    let mut row = |name: &str, pair: Option<(usize, usize)>, on: &str| {
        let (value, note) = match pair.map(|(a, b)| round_trip(a, b, trips)) {
            Some(Ok(trip)) => (Some(trip.as_secs_f64() * 1e6), how(on)),
            Some(Err(e)) => (None, format!("not measured: {e:#}")),
            None => (
                None,
                "not measured: this process may run on one CPU only".into(),
            ),
        };
        report.info("machine", name, None, value, "µs", note);
    };
    let first = cpus.first().copied();
    row(
        "a sleeping thread woken and answering back, across CPUs (round trip)",
        first.zip(cpus.get(1).copied()),
        "pinned to two different CPUs",
    );
    row(
        "the same, on one CPU (round trip)",
        first.map(|c| (c, c)),
        "both pinned to one CPU",
    );
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    sched_getaffinity(None).map_or_else(
        |_| Vec::new(),
        |set| (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
    )
}

/// Round trips of one byte between two threads over a pair of Unix sockets, each thread
/// blocked in `read` until the other writes, the first pinned to CPU `first` and the second
/// to `second`: each trip wakes a sleeping thread twice. Answers the mean time of a trip, or
/// why it could not be measured (a CPU this process may not run on, say).
pub fn round_trip(first: usize, second: usize, trips: u32) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        trips > 1,
        "at least two round trips are needed, one to start"
    );
    let allowed = allowed_cpus();
    for cpu in [first, second] {
        anyhow::ensure!(
            allowed.contains(&cpu),
            "this process cannot run on CPU {cpu} (it may run on {allowed:?})"
        );
    }
    let (mut near, mut far) = UnixStream::pair()?;
    let echo = std::thread::spawn(move || -> anyhow::Result<()> {
        pin(second)?;
        let mut byte = [0u8; 1];
        for _ in 0..trips {
            far.read_exact(&mut byte)?;
            far.write_all(&byte)?;
        }
        Ok(())
    });
    // Timed on a thread of its own, so no caller's thread is left pinned.
    let timer = std::thread::spawn(move || -> anyhow::Result<Duration> {
        let timed = (|| -> anyhow::Result<Duration> {
            pin(first)?;
            let mut byte = [7u8; 1];
            // One trip first, so the echo thread is pinned and asleep before the clock starts.
            near.write_all(&byte)?;
            near.read_exact(&mut byte)?;
            let started = Instant::now();
            for _ in 1..trips {
                near.write_all(&byte)?;
                near.read_exact(&mut byte)?;
            }
            Ok(started.elapsed() / trips.saturating_sub(1).max(1))
        })();
        // A failed side closes its socket, so the other's read fails and its thread ends.
        drop(near);
        timed
    });
    let stopped = || anyhow::anyhow!("a thread of the wake-up probe stopped");
    let timed = timer.join().map_err(|_| stopped())?;
    let echoed = echo.join().map_err(|_| stopped())?;
    let mean = timed?;
    echoed?;
    Ok(mean)
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set)
        .map_err(|e| anyhow::anyhow!("this process cannot run on CPU {cpu}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_takes_time_and_one_on_a_missing_cpu_fails() {
        let cpu = allowed_cpus()[0];
        let trip = round_trip(cpu, cpu, 200).unwrap();
        assert!(trip > Duration::ZERO, "{trip:?}");
        let missing = round_trip(cpu, CpuSet::MAX_CPU - 1, 10).unwrap_err();
        assert!(
            missing.to_string().contains("cannot run on CPU"),
            "{missing}"
        );
    }
}
