//! The `pictures` scenario: the ceiling `upload` is measured against. `bench-pictures` (the `xtask/pictures` crate)
//! runs the service's picture pipeline on the `upload` scenario's JPEG, in-process, with one picture in flight per
//! core and nothing around it (no HTTP, no storage, no database), as `argon2` is the hash alone for `login`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::options::Options;
use super::report::{Row, measure_latencies, note_disturbance};
use super::system::{MachineMeter, output_and_cpu_ticks};
use super::upload::bench_jpeg;

/// Builds `bench-pictures` in release mode, as the server is built, and returns its path.
pub(super) fn build() -> Result<PathBuf> {
    super::build_release("bench-pictures", "the picture pipeline's ceiling")
}

/// `pictures`: `bench-pictures` processes the `upload` scenario's 2000x1500 JPEG (written to
/// `target/bench/upload.jpg`) for the measured duration, one picture in flight per core.
pub(super) fn pictures(binary: &Path, bench_dir: &Path, options: &Options) -> Result<Row> {
    let picture = bench_dir.join("upload.jpg");
    std::fs::write(&picture, bench_jpeg()?).with_context(|| format!("could not write {}", picture.display()))?;
    let mut command = Command::new(binary);
    command.arg(&picture).arg(options.duration.as_secs().max(1).to_string());
    // What else ran meanwhile is a note on the figures, not a reason to lose them: unreadable, it is left out.
    let machine = MachineMeter::start().ok();
    let (output, ticks) = output_and_cpu_ticks(&mut command)?;
    let disturbance = machine.zip(ticks).and_then(|(machine, ticks)| machine.disturbance(ticks).ok());
    let (elapsed, times) = parse_output(&output)?;
    let in_flight = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut row = Row::new("pictures");
    row.connections = Some(in_flight as u64);
    row.note = format!(
        "in-process pictures/s of the 2000x1500 JPEG through the service's pipeline, {in_flight} in flight, no \
         HTTP or storage"
    );
    row.measurement = Some(measure_latencies(times, elapsed));
    if let Some(disturbance) = disturbance {
        note_disturbance(&mut row, disturbance);
    }
    Ok(row)
}

/// `bench-pictures`' output: the run's wall time, then each picture's time, in microseconds, one per line.
fn parse_output(output: &str) -> Result<(Duration, Vec<Duration>)> {
    let mut numbers = output.lines().map(|line| {
        line.trim()
            .parse::<u64>()
            .map(Duration::from_micros)
            .with_context(|| format!("bench-pictures printed `{line}`, not a number of microseconds"))
    });
    let elapsed = numbers.next().context("bench-pictures printed nothing")??;
    let times = numbers.collect::<Result<Vec<_>>>()?;
    if times.is_empty() {
        bail!("bench-pictures processed no picture");
    }
    Ok((elapsed, times))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_gives_the_wall_time_then_each_picture() -> Result<()> {
        let (elapsed, times) = parse_output("10000000\n30000\n31500\n")?;
        assert_eq!(elapsed, Duration::from_secs(10));
        assert_eq!(times, vec![Duration::from_micros(30_000), Duration::from_micros(31_500)]);
        Ok(())
    }

    #[test]
    fn an_output_without_pictures_or_with_other_text_is_refused() {
        assert!(parse_output("").is_err());
        assert!(parse_output("10000000\n").is_err());
        assert!(parse_output("10000000\nsoon\n").is_err());
    }
}
