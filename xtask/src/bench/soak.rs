//! The `soak` scenario: `GET /me` for minutes with nobody scraping the metrics, the server's memory sampled
//! throughout, and the growth per minute fitted over the samples.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::load::{get, oha_command, parse_oha, probe};
use super::options::{Options, Scenario};
use super::report::{Measurement, Row, error_note};
use super::seed::SEED_DOMAIN;
use super::server::{Server, login};
use super::system::CpuMeter;
use super::system::Oha;
use super::system::format_kib;
use crate::{process, ui};

/// Connections of `soak` (the load under which unscraped metrics once grew the server by 10 MiB a minute).
const SOAK_CONNECTIONS: u32 = 32;

/// How often `soak` reads the server's resident memory.
const SOAK_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// `soak`: `GET /me` on [`SOAK_CONNECTIONS`] connections for `--soak-minutes`, with nobody scraping `/metrics`
/// (the metrics listener is on a port nobody is told), reading the server's RSS every [`SOAK_SAMPLE_INTERVAL`].
/// Anything kept per request (unscraped metric samples, a cache without a bound) shows as a steady growth; the
/// notes give RSS at the start, the end and its maximum, and the growth per minute fitted over every sample.
pub(super) fn soak(server: &Server, oha: &Oha, options: &Options) -> Result<Row> {
    let token = login(server.addr, &format!("user1@{SEED_DOMAIN}"))?.access_token;
    let load = get(server.url("/me"), Some(token), SOAK_CONNECTIONS);
    let status = probe(server.addr, &load)?;
    if status != load.expected_status {
        bail!("GET /me answered {status}");
    }
    if !options.warmup.is_zero() {
        process::output(&mut oha_command(oha, &load, options.warmup)).context("the warm-up run of oha failed")?;
    }
    let cpu = CpuMeter::start(server.pid)?;
    let mut command = oha_command(oha, &load, options.soak);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn().with_context(|| format!("could not start `{}`", process::describe(&command)))?;
    let mut samples = vec![(0.0, server.rss_kib()?)];
    let mut next_sample = SOAK_SAMPLE_INTERVAL;
    ui::info(&format!(
        "{} minutes of GET /me on {SOAK_CONNECTIONS} connections; RSS every {} s",
        options.soak.as_secs() / 60,
        SOAK_SAMPLE_INTERVAL.as_secs()
    ));
    while child.try_wait().context("could not wait for oha")?.is_none() {
        if let Err(interrupted) = process::check_interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(interrupted);
        }
        if started.elapsed() >= next_sample {
            let rss = server.rss_kib()?;
            samples.push((started.elapsed().as_secs_f64(), rss));
            if next_sample.as_secs().is_multiple_of(60) {
                ui::info(&format!("{:.0} min: {} resident", started.elapsed().as_secs_f64() / 60.0, format_kib(rss)));
            }
            next_sample += SOAK_SAMPLE_INTERVAL;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    samples.push((started.elapsed().as_secs_f64(), server.rss_kib()?));
    let output = child.wait_with_output().context("could not read oha's report")?;
    if !output.status.success() {
        bail!(
            "oha failed with {}: {}",
            process::describe_status(output.status),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let measured = Measurement {
        server_cpu_percent: cpu.percent().ok(),
        ..parse_oha(&String::from_utf8_lossy(&output.stdout), load.expected_status)?
    };
    let mut row = Row::new(Scenario::Soak.name());
    row.connections = Some(u64::from(SOAK_CONNECTIONS));
    row.note = format!("{}{}", soak_note(&samples), error_note(&measured));
    row.measurement = Some(measured);
    row.rss_kib = samples.last().map(|(_, rss)| *rss);
    Ok(row)
}

/// The notes of `soak`: RSS at the start, the end and its maximum, and the growth per minute, from samples of
/// (seconds since the start, RSS in KiB).
fn soak_note(samples: &[(f64, u64)]) -> String {
    let (Some((_, first)), Some((last_at, last))) = (samples.first(), samples.last()) else {
        return "no memory samples".to_owned();
    };
    let max = samples.iter().map(|(_, rss)| *rss).max().unwrap_or(*last);
    format!(
        "GET /me for {:.1} min, nobody scraping /metrics: RSS start {}, end {}, max {}; growth {:+.2} MiB/min \
         (least squares over {} samples)",
        last_at / 60.0,
        format_kib(*first),
        format_kib(*last),
        format_kib(max),
        growth_mib_per_minute(samples),
        samples.len()
    )
}

/// The least-squares slope of RSS over time, in MiB per minute: a steady leak shows however noisy one sample is.
fn growth_mib_per_minute(samples: &[(f64, u64)]) -> f64 {
    let points: Vec<(f64, f64)> = samples.iter().map(|(at, rss)| (*at, *rss as f64)).collect();
    let count = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_t = points.iter().map(|(t, _)| t).sum::<f64>() / count;
    let mean_r = points.iter().map(|(_, r)| r).sum::<f64>() / count;
    let covariance: f64 = points.iter().map(|(t, r)| (t - mean_t) * (r - mean_r)).sum();
    let variance: f64 = points.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    if variance == 0.0 {
        return 0.0;
    }
    // KiB per second to MiB per minute.
    covariance / variance * 60.0 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_growth_is_the_fitted_slope_in_mib_per_minute() {
        // 10 MiB a minute, sampled every 10 s, with noise that a first/last difference would take at face value.
        let samples: Vec<(f64, u64)> = (0..=18_u64)
            .map(|i| (i as f64 * 10.0, 50 * 1024 + i * 10 * 1024 / 6 + if i % 2 == 0 { 300 } else { 0 }))
            .collect();
        assert!((growth_mib_per_minute(&samples) - 10.0).abs() < 0.1, "{}", growth_mib_per_minute(&samples));
        let flat: Vec<(f64, u64)> = (0..10_u64).map(|i| (i as f64 * 10.0, 48 * 1024)).collect();
        assert!(growth_mib_per_minute(&flat).abs() < 1e-9);
        assert!(growth_mib_per_minute(&flat[..1]).abs() < 1e-9);
        let note = soak_note(&[(0.0, 48 * 1024), (60.0, 50 * 1024), (120.0, 49 * 1024)]);
        assert!(note.contains("start 48.0 MiB, end 49.0 MiB, max 50.0 MiB"), "{note}");
    }
}
