//! How busy the load generator's own CPUs were during the measured window.
//!
//! A load generator that saturates its cores measures its own queueing: an ack that sits in a
//! socket while the load core is busy adds to the publish latency as surely as a slow broker
//! does. So every run reports, for the measured window, how busy each CPU the load ran on was
//! (from `/proc/stat`: everything that ran there, including the kernel's interrupt, softirq and
//! kworker time on the load generator's behalf or not; iowait counts as idle) and how many
//! cores' worth of CPU the load generator process itself used (`getrusage`). The summary warns
//! when a load CPU was busier than [`crate::limits::Limits::load_cpu_busy_warn_fraction`].
//!
//! Runs on the reporting thread (not a load core); two samples per run, at the window's start
//! and end. Linux only: where `/proc/stat` can not be read the figures are absent, not zero.

use std::time::Instant;

/// Cumulative counters at one instant.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    /// Per CPU id: (busy ticks, total ticks) since boot.
    per_cpu: Vec<(usize, u64, u64)>,
    /// CPU time of this process (user + system), µs.
    process_us: u64,
}

/// Busy fractions over an interval.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuUsage {
    /// Seconds between the two samples.
    pub seconds: f64,
    /// (CPU id, busy fraction 0..1) for each CPU the load ran on.
    pub load_cpus: Vec<(usize, f64)>,
    /// CPU time of the load generator process over the interval, in cores (1.0 = one core).
    pub process_cores: f64,
}

impl CpuUsage {
    /// The busiest load CPU's fraction.
    pub fn max_busy(&self) -> f64 {
        self.load_cpus.iter().map(|c| c.1).fold(0.0, f64::max)
    }
}

/// Parses the `cpuN` lines of `/proc/stat`: per CPU, busy ticks (user, nice, system, irq,
/// softirq, steal) and total ticks (those plus idle and iowait). Guest time is already counted
/// in user. Lines that do not parse are skipped.
pub fn parse_proc_stat(text: &str) -> Vec<(usize, u64, u64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(name) = fields.next() else { continue };
        let Some(id) = name
            .strip_prefix("cpu")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let v: Vec<u64> = fields.take(8).filter_map(|f| f.parse().ok()).collect();
        if v.len() < 8 {
            continue;
        }
        let (user, nice, system, idle, iowait, irq, softirq, steal) =
            (v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
        let busy = user + nice + system + irq + softirq + steal;
        out.push((id, busy, busy + idle + iowait));
    }
    out
}

fn process_cpu_us() -> u64 {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a zeroed rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// Samples the counters now; `None` when `/proc/stat` can not be read.
pub fn sample() -> Option<CpuSample> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    Some(CpuSample {
        at: Instant::now(),
        per_cpu: parse_proc_stat(&text),
        process_us: process_cpu_us(),
    })
}

/// Usage between two samples for the CPUs in `load_cpus`. CPUs missing from either sample, or
/// with no ticks in between, are left out.
pub fn usage(a: &CpuSample, b: &CpuSample, load_cpus: &[usize]) -> CpuUsage {
    let seconds = b.at.saturating_duration_since(a.at).as_secs_f64();
    let mut cpus = Vec::new();
    for &cpu in load_cpus {
        let find = |s: &CpuSample| s.per_cpu.iter().find(|c| c.0 == cpu).map(|c| (c.1, c.2));
        if let (Some((busy0, total0)), Some((busy1, total1))) = (find(a), find(b)) {
            let total = total1.saturating_sub(total0);
            if total > 0 {
                cpus.push((cpu, busy1.saturating_sub(busy0) as f64 / total as f64));
            }
        }
    }
    let process_cores = if seconds > 0.0 {
        b.process_us.saturating_sub(a.process_us) as f64 / 1e6 / seconds
    } else {
        0.0
    };
    CpuUsage {
        seconds,
        load_cpus: cpus,
        process_cores,
    }
}

/// The CPU the calling thread runs on (a pinned load core's own CPU).
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu has no arguments and no side effects.
    let c = unsafe { libc::sched_getcpu() };
    (c >= 0).then_some(c as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_A: &str = "cpu  10 0 10 100 5 0 0 0 0 0\n\
        cpu0 100 0 50 800 50 0 0 0 0 0\n\
        cpu1 300 10 100 500 100 5 5 0 0 0\n\
        intr 12345\nctxt 999\n";
    const STAT_B: &str = "cpu  10 0 10 100 5 0 0 0 0 0\n\
        cpu0 150 0 100 850 100 0 0 0 0 0\n\
        cpu1 380 10 170 510 120 5 25 0 0 0\n";

    #[test]
    fn parses_busy_and_total_ticks_per_cpu() {
        let p = parse_proc_stat(STAT_A);
        assert_eq!(p, vec![(0, 150, 1000), (1, 420, 1020)]);
    }

    #[test]
    fn iowait_counts_as_idle_and_kernel_work_as_busy() {
        let t = Instant::now();
        let a = CpuSample {
            at: t,
            per_cpu: parse_proc_stat(STAT_A),
            process_us: 1_000_000,
        };
        let b = CpuSample {
            at: t + std::time::Duration::from_secs(2),
            per_cpu: parse_proc_stat(STAT_B),
            process_us: 2_500_000,
        };
        let u = usage(&a, &b, &[1, 7]);
        // cpu1: busy +170 (user 80, system 70, softirq 20) of +200 ticks (idle 10, iowait 20).
        assert_eq!(u.load_cpus, vec![(1, 0.85)]);
        assert!((u.process_cores - 0.75).abs() < 1e-9);
        assert_eq!(u.max_busy(), 0.85);
        let u0 = usage(&a, &b, &[0]);
        assert_eq!(u0.load_cpus, vec![(0, 0.5)]);
    }

    #[test]
    fn this_machine_has_readable_counters() {
        let s = sample().expect("/proc/stat");
        assert!(!s.per_cpu.is_empty());
        assert!(current_cpu().is_some());
    }
}
