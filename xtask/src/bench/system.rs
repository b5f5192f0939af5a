//! Figures about processes and the machine, read from `/proc`: a process's resident memory and CPU use, how busy
//! the whole machine is, the CPU's model, and the open-files limit, which the `idle` scenario needs raised; and the
//! load tool found on it.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{process, ui};

/// How many idle keep-alive connections the `idle` scenario opens (fewer when the open-files limit is lower).
pub(super) const IDLE_CONNECTIONS: usize = 10_000;

/// The `oha` executable and its version.
pub(super) struct Oha {
    /// Its path.
    pub(super) path: std::path::PathBuf,
    /// What `oha --version` printed.
    pub(super) version: String,
}

/// KiB as MiB with one decimal.
pub(super) fn format_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The resident set size of process `pid` in KiB, from `/proc/<pid>/status`.
pub(super) fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// Measures a process's CPU use from `/proc/<pid>/stat` between two moments.
pub(super) struct CpuMeter {
    /// The process.
    pid: u32,
    /// Its user plus system time at the start, in clock ticks.
    ticks: u64,
    /// When the measurement started.
    since: Instant,
}

impl CpuMeter {
    /// Starts measuring `pid`.
    pub(super) fn start(pid: u32) -> Result<Self> {
        Ok(Self { pid, ticks: cpu_ticks(pid)?, since: Instant::now() })
    }

    /// The CPU used since the start, in percent of one core.
    pub(super) fn percent(&self) -> Result<f64> {
        let used = cpu_ticks(self.pid)?.saturating_sub(self.ticks) as f64 / clock_ticks_per_second();
        Ok(used / self.since.elapsed().as_secs_f64() * 100.0)
    }
}

/// User plus system CPU time of `pid`, in clock ticks: fields 14 and 15 of `/proc/<pid>/stat`.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    // The command name (field 2) is in parentheses and may contain spaces; count fields after it.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |index: usize| fields.get(index).and_then(|value| value.parse::<u64>().ok());
    field(11).zip(field(12)).map(|(user, system)| user + system).with_context(|| format!("{path} is not as expected"))
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), 100 where it cannot be asked.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        process::output(Command::new("getconf").arg("CLK_TCK"))
            .ok()
            .and_then(|ticks| ticks.trim().parse::<f64>().ok())
            .filter(|ticks| *ticks > 0.0)
            .unwrap_or(100.0)
    })
}

/// How busy the whole machine is over `window`, in percent of all cores, from `/proc/stat`.
pub(super) fn machine_busy_percent(window: Duration) -> Result<f64> {
    let sample = || -> Result<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").context("could not read /proc/stat")?;
        let values: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|value| value.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...; idle and iowait are the idle time.
        let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
        Ok((values.iter().take(8).sum(), idle))
    };
    let (total_before, idle_before) = sample()?;
    std::thread::sleep(window);
    let (total_after, idle_after) = sample()?;
    let total = total_after.saturating_sub(total_before);
    let idle = idle_after.saturating_sub(idle_before);
    if total == 0 {
        return Ok(0.0);
    }
    Ok((total - idle.min(total)) as f64 / total as f64 * 100.0)
}

/// Raises this process's soft limit on open files to its hard limit (the server, started later, inherits it), and
/// returns the limit now in force.
pub(super) fn raise_open_files_limit() -> Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").context("could not read /proc/self/limits")?;
    let (soft, hard) = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| {
            let mut fields = line.split_whitespace().skip(3);
            let parse = |field: Option<&str>| match field {
                Some("unlimited") => Some(u64::MAX),
                Some(value) => value.parse::<u64>().ok(),
                None => None,
            };
            Some((parse(fields.next())?, parse(fields.next())?))
        })
        .context("no `Max open files` line in /proc/self/limits")?;
    let needed = IDLE_CONNECTIONS as u64 + 1024;
    if soft >= needed || soft >= hard {
        return Ok(soft);
    }
    let target = hard.min(1 << 20);
    let mut prlimit = Command::new("prlimit");
    prlimit.arg(format!("--pid={}", std::process::id())).arg(format!("--nofile={target}:{hard}"));
    match process::output(&mut prlimit) {
        Ok(_) => {
            ui::info(&format!("raised the open-files limit from {soft} to {target}"));
            Ok(target)
        }
        Err(error) => {
            ui::warn(&format!("could not raise the open-files limit ({soft}): {error:#}"));
            Ok(soft)
        }
    }
}

/// The CPU's model name from `/proc/cpuinfo`.
pub(super) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_default()
}
