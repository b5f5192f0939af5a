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

/// The machine's CPU time so far, from the first line of `/proc/stat`, in clock ticks summed over the cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MachineTicks {
    /// Everything counted: user, nice, system, idle, iowait, irq, softirq and steal (time the hypervisor gave
    /// other guests while this machine wanted to run).
    total: u64,
    /// Idle and waiting for I/O.
    idle: u64,
}

impl MachineTicks {
    fn now() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("could not read /proc/stat")?;
        Ok(Self::parse(stat.lines().next().unwrap_or_default()))
    }

    /// `cpu  user nice system idle iowait irq softirq steal ...`.
    fn parse(line: &str) -> Self {
        let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|value| value.parse().ok()).collect();
        let value = |index: usize| values.get(index).copied().unwrap_or(0);
        Self { total: values.iter().take(8).sum(), idle: value(3) + value(4) }
    }

    /// The ticks from `earlier` to `self`.
    fn since(self, earlier: Self) -> Self {
        Self { total: self.total.saturating_sub(earlier.total), idle: self.idle.saturating_sub(earlier.idle) }
    }

    /// The busy ticks: all but idle, steal included.
    fn busy(self) -> u64 {
        self.total - self.idle.min(self.total)
    }
}

/// How busy the whole machine is over `window`, in percent of all cores, from `/proc/stat`.
pub(super) fn machine_busy_percent(window: Duration) -> Result<f64> {
    let before = MachineTicks::now()?;
    std::thread::sleep(window);
    let ticks = MachineTicks::now()?.since(before);
    if ticks.total == 0 {
        return Ok(0.0);
    }
    Ok(ticks.busy() as f64 / ticks.total as f64 * 100.0)
}

/// What else ran on the machine while a ceiling was measured: the ceilings (`argon2`, `pictures`) are meant to have
/// the cores to themselves, so CPU that neither they nor idleness account for lowers them and every share of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Disturbance {
    /// CPU used by other processes (interrupt handling included) or taken by the hypervisor, in percent of one core
    /// (as the CPU column).
    pub(super) others_percent: f64,
}

/// Watches the machine's CPU time while a ceiling runs.
pub(super) struct MachineMeter {
    ticks: MachineTicks,
    since: Instant,
}

impl MachineMeter {
    /// Starts watching.
    pub(super) fn start() -> Result<Self> {
        Ok(Self { ticks: MachineTicks::now()?, since: Instant::now() })
    }

    /// What ran besides the ceiling since the start, given the CPU time the ceiling used (`own_ticks`).
    pub(super) fn disturbance(&self, own_ticks: u64) -> Result<Disturbance> {
        let ticks = MachineTicks::now()?.since(self.ticks);
        Ok(disturbance_of(ticks, own_ticks, self.since.elapsed(), clock_ticks_per_second()))
    }
}

/// [`MachineMeter::disturbance`] from the machine's ticks over `elapsed` and the ceiling's own.
fn disturbance_of(ticks: MachineTicks, own_ticks: u64, elapsed: Duration, ticks_per_second: f64) -> Disturbance {
    let others = ticks.busy().saturating_sub(own_ticks) as f64 / ticks_per_second;
    let seconds = elapsed.as_secs_f64();
    Disturbance { others_percent: if seconds > 0.0 { others / seconds * 100.0 } else { 0.0 } }
}

/// This process's CPU time so far (all its threads), in clock ticks.
pub(super) fn own_cpu_ticks() -> Result<u64> {
    cpu_ticks(std::process::id())
}

/// Runs `command` as [`process::output`] does, and also returns the CPU time it used (all its threads, in clock
/// ticks), read from `/proc/<pid>/stat` once its output has ended and before it is reaped, while its figures are
/// still there; `None` when that could not be read. Its standard error is read on a thread of its own, so neither
/// pipe can fill and stall it.
pub(super) fn output_and_cpu_ticks(command: &mut Command) -> Result<(String, Option<u64>)> {
    use std::io::Read as _;
    process::check_interrupted()?;
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{}`", process::describe(command)))?;
    let mut stderr = child.stderr.take().context("no standard error pipe")?;
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        stderr.read_to_end(&mut text).map(|_| text)
    });
    let mut stdout = Vec::new();
    let read = child.stdout.take().context("no standard output pipe").and_then(|mut pipe| {
        pipe.read_to_end(&mut stdout)
            .with_context(|| format!("could not read the output of `{}`", process::describe(command)))
    });
    if let Err(error) = read {
        // Not left running, nor unreaped.
        let _ = child.kill();
        let _ = child.wait();
        return Err(error);
    }
    // Unreaped, the process keeps its figures until `wait`.
    let ticks = cpu_ticks(child.id()).ok();
    let status = child.wait().with_context(|| format!("could not wait for `{}`", process::describe(command)))?;
    let stderr = errors.join().map_err(|_| anyhow::anyhow!("the standard error reader panicked"))?.unwrap_or_default();
    process::check_success(command, &std::process::Output { status, stdout: Vec::new(), stderr })?;
    let stdout = String::from_utf8(stdout)
        .with_context(|| format!("`{}` printed something that is not UTF-8", process::describe(command)))?;
    Ok((stdout, ticks))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_line_of_proc_stat_is_read_with_the_idle_time_apart() {
        let ticks = MachineTicks::parse("cpu  100 5 50 800 20 3 2 10 0 0");
        assert_eq!(ticks, MachineTicks { total: 990, idle: 820 });
        assert_eq!(ticks.busy(), 170);
        let later = MachineTicks::parse("cpu  300 5 70 900 20 3 2 30 0 0");
        assert_eq!(later.since(ticks), MachineTicks { total: 340, idle: 100 });
    }

    #[test]
    fn what_the_ceiling_did_not_use_of_the_busy_time_is_the_others_share() {
        // Two cores for 5 s at 100 ticks/s: 1,000 ticks, 960 busy, of which the ceiling used 900.
        let ticks = MachineTicks { total: 1000, idle: 40 };
        let disturbance = disturbance_of(ticks, 900, Duration::from_secs(5), 100.0);
        assert!((disturbance.others_percent - 12.0).abs() < 1e-9, "{disturbance:?}");
        // A ceiling whose own count runs ahead of the machine's (rounding) is not a negative disturbance.
        assert!(disturbance_of(ticks, 2000, Duration::from_secs(5), 100.0).others_percent.abs() < 1e-9);
        assert!(disturbance_of(ticks, 0, Duration::ZERO, 100.0).others_percent.abs() < 1e-9);
    }

    #[test]
    fn a_finished_child_s_cpu_time_is_read_before_it_is_reaped() -> Result<()> {
        // A shell loop that keeps a core busy for a few hundred milliseconds, then prints.
        let mut command = Command::new("sh");
        command.args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo done"]);
        let (output, ticks) = output_and_cpu_ticks(&mut command)?;
        assert_eq!(output.trim(), "done");
        assert!(ticks.is_some_and(|ticks| ticks > 0), "the child's CPU time was not read: {ticks:?}");
        let mut failing = Command::new("sh");
        failing.args(["-c", "echo why >&2; exit 3"]);
        let error = output_and_cpu_ticks(&mut failing).err().map(|error| format!("{error:#}")).unwrap_or_default();
        assert!(error.contains("exit code 3") && error.contains("why"), "{error}");
        Ok(())
    }
}
