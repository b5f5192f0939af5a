//! What a run measured and how it is reported: the figures of one load run, the rows of the table, the progress
//! line of each row, the Markdown table printed on standard output, and the JSON report written under
//! `target/bench/`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::options::Options;
use super::system::Oha;
use super::system::{Disturbance, cpu_model, format_kib};

/// The numbers of one measured load run.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Measurement {
    /// Requests answered per second of the measured duration.
    pub(super) requests_per_sec: f64,
    /// Median latency, in milliseconds.
    pub(super) p50_ms: f64,
    /// 99th percentile latency, in milliseconds.
    pub(super) p99_ms: f64,
    /// 99.9th percentile latency, in milliseconds.
    pub(super) p999_ms: f64,
    /// Requests answered with another status than the expected one, plus requests that got no answer.
    pub(super) errors: u64,
    /// All requests counted.
    pub(super) total: u64,
    /// What the errors were: status codes and transport errors with their counts.
    pub(super) error_kinds: Vec<(String, u64)>,
    /// The server's CPU use over the measured window, in percent of one core (as `top` shows it).
    pub(super) server_cpu_percent: Option<f64>,
}

/// One line of the table.
#[derive(Debug, Clone, Default)]
pub(super) struct Row {
    /// The scenario, or a part of one (`storm: login flood`).
    pub(super) scenario: String,
    /// Connections (threads for `argon2`).
    pub(super) connections: Option<u64>,
    /// The figures, unless the scenario failed or measures something else.
    pub(super) measurement: Option<Measurement>,
    /// The server's resident memory right after the scenario, in KiB.
    pub(super) rss_kib: Option<u64>,
    /// Why the scenario has no figures, when it failed or is not available.
    pub(super) failure: Option<String>,
    /// Anything else worth reading beside the figures.
    pub(super) note: String,
    /// For `login`, `login-mfa` and `register`: the rate in percent of the `argon2` rate of the same run, when
    /// both ran.
    pub(super) argon2_percent: Option<f64>,
    /// For `me`: the rate in percent of the `baseline` rate of the same run, when both ran.
    pub(super) baseline_percent: Option<f64>,
    /// For `upload`: the rate in percent of the `pictures` rate of the same run, when both ran.
    pub(super) pictures_percent: Option<f64>,
    /// For the in-process ceilings (`argon2`, `pictures`): the CPU other processes used (or the hypervisor took)
    /// while they ran, in percent of one core.
    pub(super) others_cpu_percent: Option<f64>,
}

impl Row {
    /// A row for `scenario` with nothing filled in yet.
    pub(super) fn new(scenario: &str) -> Self {
        Self { scenario: scenario.to_owned(), ..Self::default() }
    }
}

/// Percentiles and rate of a set of latencies gathered over `elapsed`.
pub(super) fn measure_latencies(mut latencies: Vec<Duration>, elapsed: Duration) -> Measurement {
    latencies.sort_unstable();
    let total = latencies.len() as u64;
    Measurement {
        requests_per_sec: if elapsed.is_zero() { 0.0 } else { total as f64 / elapsed.as_secs_f64() },
        p50_ms: percentile_ms(&latencies, 500),
        p99_ms: percentile_ms(&latencies, 990),
        p999_ms: percentile_ms(&latencies, 999),
        errors: 0,
        total,
        error_kinds: Vec::new(),
        server_cpu_percent: None,
    }
}

/// The percentile `per_mille` / 10 (nearest rank, in whole numbers so 99.9 is exact) of sorted latencies, in
/// milliseconds; NaN for none.
fn percentile_ms(sorted: &[Duration], per_mille: usize) -> f64 {
    let rank = (per_mille * sorted.len()).div_ceil(1000);
    sorted.get(rank.saturating_sub(1)).map_or(f64::NAN, |latency| latency.as_secs_f64() * 1000.0)
}

/// `; errors: 3x HTTP 503` when there were errors, else nothing.
pub(super) fn error_note(measurement: &Measurement) -> String {
    if measurement.errors == 0 { String::new() } else { format!("; errors: {}", describe_errors(measurement)) }
}

/// A short description of what went wrong, for the notes column.
fn describe_errors(measurement: &Measurement) -> String {
    measurement.error_kinds.iter().map(|(kind, count)| format!("{count}x {kind}")).collect::<Vec<_>>().join(", ")
}

/// One line about a finished row, for the progress output.
pub(super) fn summarise(row: &Row) -> String {
    match (&row.failure, &row.measurement) {
        (Some(failure), _) => format!("{}: {failure}", row.scenario),
        (None, Some(m)) => format!(
            "{}: {:.0} req/s, p50 {}, p99 {}, p99.9 {}, {} errors{}",
            row.scenario,
            m.requests_per_sec,
            format_ms(m.p50_ms),
            format_ms(m.p99_ms),
            format_ms(m.p999_ms),
            m.errors,
            if row.note.is_empty() { String::new() } else { format!(" ({})", row.note) }
        ),
        (None, None) => format!("{}: {}", row.scenario, row.note),
    }
}

/// The rows whose rate is compared with the `argon2` rate: each of their requests costs the server one hash.
const HASHING_ROWS: [&str; 3] = ["login", "login-mfa", "register"];

/// The rows whose rate is compared with the `baseline` rate: the same read with the service's work around it.
const BASELINE_ROWS: [&str; 1] = ["me"];

/// The rows whose rate is compared with the `pictures` rate: each of their requests runs the picture pipeline once.
const PICTURE_ROWS: [&str; 1] = ["upload"];

/// Which ceiling a row is compared with.
#[derive(Clone, Copy)]
enum Ceiling {
    /// The in-process argon2id hash rate.
    Argon2,
    /// The rate of `bench-baseline`.
    Baseline,
    /// The in-process rate of the picture pipeline.
    Pictures,
}

impl Ceiling {
    /// The row holding the ceiling's rate.
    const fn scenario(self) -> &'static str {
        match self {
            Self::Argon2 => "argon2",
            Self::Baseline => "baseline",
            Self::Pictures => "pictures",
        }
    }

    /// The rows compared with it.
    const fn rows(self) -> &'static [&'static str] {
        match self {
            Self::Argon2 => &HASHING_ROWS,
            Self::Baseline => &BASELINE_ROWS,
            Self::Pictures => &PICTURE_ROWS,
        }
    }

    /// Where a compared row keeps the ratio.
    fn field(self, row: &mut Row) -> &mut Option<f64> {
        match self {
            Self::Argon2 => &mut row.argon2_percent,
            Self::Baseline => &mut row.baseline_percent,
            Self::Pictures => &mut row.pictures_percent,
        }
    }
}

/// Above this much CPU used by other processes (or taken by the hypervisor) while an in-process ceiling ran, in
/// percent of one core, its row and the shares of it say it was disturbed.
const DISTURBED_PERCENT: f64 = 10.0;

/// Records on the row of an in-process ceiling what else ran meanwhile, and says so in its note when it was enough
/// to lower the ceiling.
pub(super) fn note_disturbance(row: &mut Row, disturbance: Disturbance) {
    row.others_cpu_percent = Some(disturbance.others_percent);
    if is_disturbed(row) {
        let said = format!(
            "disturbed: other processes or the hypervisor used {:.0}% of a core meanwhile",
            disturbance.others_percent
        );
        row.note = if row.note.is_empty() { said } else { format!("{}; {said}", row.note) };
    }
}

/// Whether other processes (or the hypervisor) used more than [`DISTURBED_PERCENT`] while `row`'s ceiling was measured.
fn is_disturbed(row: &Row) -> bool {
    row.others_cpu_percent.is_some_and(|others| others > DISTURBED_PERCENT)
}

/// Fills in the ratio of the `login`, `login-mfa` and `register` rates to the `argon2` rate, of the `me` rate to
/// the `baseline` rate and of the `upload` rate to the `pictures` rate, when both rows of a pair ran: in
/// [`Row::argon2_percent`], [`Row::baseline_percent`] or [`Row::pictures_percent`] and at the head of the note, with
/// "(a disturbed ceiling)" when the ceiling says it was. A row that failed gets none (`login-mfa` may have figures
/// yet have run out of TOTP steps, its rate then being no measure of the server), nor does any row when its ceiling
/// failed.
pub(super) fn compare_with_ceilings(rows: &mut [Row]) {
    for ceiling in [Ceiling::Argon2, Ceiling::Baseline, Ceiling::Pictures] {
        compare_with(rows, ceiling);
    }
}

/// [`compare_with_ceilings`] for one ceiling.
fn compare_with(rows: &mut [Row], ceiling: Ceiling) {
    let ceiling_row = rows.iter().find(|row| row.scenario == ceiling.scenario() && row.failure.is_none());
    let rate = ceiling_row.and_then(|row| row.measurement.as_ref()).map(|m| m.requests_per_sec);
    let Some(rate) = rate.filter(|rate| *rate > 0.0) else {
        return;
    };
    let caveat = if ceiling_row.is_some_and(is_disturbed) { " (a disturbed ceiling)" } else { "" };
    for row in rows.iter_mut().filter(|row| ceiling.rows().contains(&row.scenario.as_str()) && row.failure.is_none()) {
        let Some(measured) = &row.measurement else {
            continue;
        };
        let percent = measured.requests_per_sec / rate * 100.0;
        *ceiling.field(row) = Some(percent);
        let ratio = format!("{percent:.0}% of the {} rate{caveat}", ceiling.scenario());
        row.note = if row.note.is_empty() {
            ratio
        } else if row.note.starts_with("; ") {
            format!("{ratio}{}", row.note)
        } else {
            format!("{ratio}; {}", row.note)
        };
    }
}

/// Milliseconds for the table: two decimals below 10 ms, one below 100 ms, none above.
pub(super) fn format_ms(ms: f64) -> String {
    if ms.is_nan() {
        "-".to_owned()
    } else if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// The table as Markdown, so it can be pasted into the README as it is.
pub(super) fn render_table(rows: &[Row]) -> String {
    let header = ["scenario", "conns", "req/s", "p50", "p99", "p99.9", "errors", "server RSS", "server CPU", "notes"];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|row| {
            let dash = || "-".to_owned();
            let (rate, p50, p99, p999, errors) = match &row.measurement {
                Some(m) => (
                    format!("{:.0}", m.requests_per_sec),
                    format_ms(m.p50_ms),
                    format_ms(m.p99_ms),
                    format_ms(m.p999_ms),
                    m.errors.to_string(),
                ),
                None => (dash(), dash(), dash(), dash(), dash()),
            };
            let note = match &row.failure {
                Some(failure) if row.note.is_empty() => failure.clone(),
                Some(failure) => format!("{failure}; {}", row.note),
                None => row.note.clone(),
            };
            [
                row.scenario.clone(),
                row.connections.map_or_else(dash, |c| c.to_string()),
                rate,
                p50,
                p99,
                p999,
                errors,
                row.rss_kib.map_or_else(dash, format_kib),
                row.measurement
                    .as_ref()
                    .and_then(|m| m.server_cpu_percent)
                    .map_or_else(dash, |percent| format!("{percent:.0}%")),
                note.replace('|', "/"),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            cells
                .iter()
                .map(|row| row.get(column).map_or(0, |cell| cell.chars().count()))
                .chain(header.get(column).map(|cell| cell.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| {
        let padded: Vec<String> = values.iter().zip(&widths).map(|(value, width)| format!("{value:<width$}")).collect();
        format!("| {} |", padded.join(" | ")).trim_end().to_owned()
    };
    let mut table = line(header.to_vec());
    table.push('\n');
    table.push_str(&line(widths.iter().map(|_| "").collect()).replace(' ', "-"));
    for row in &cells {
        table.push('\n');
        table.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    table
}

/// The report written under `target/bench/`: the run's settings, the machine, and every row.
pub(super) fn report_json(
    options: &Options,
    args: &[String],
    oha: Option<&Oha>,
    busy_before: Option<f64>,
    rows: &[Row],
) -> Result<String> {
    let finite = |value: f64| if value.is_finite() { json!(value) } else { Value::Null };
    let rows: Vec<Value> = rows
        .iter()
        .map(|row| {
            let m = row.measurement.as_ref();
            json!({
                "scenario": row.scenario,
                "connections": row.connections,
                "requests_per_sec": m.map(|m| finite(m.requests_per_sec)),
                "p50_ms": m.map(|m| finite(m.p50_ms)),
                "p99_ms": m.map(|m| finite(m.p99_ms)),
                "p999_ms": m.map(|m| finite(m.p999_ms)),
                "errors": m.map(|m| m.errors),
                "requests": m.map(|m| m.total),
                "server_cpu_percent": m.and_then(|m| m.server_cpu_percent).map(finite),
                "server_rss_kib": row.rss_kib,
                "failure": row.failure,
                "note": row.note,
                "argon2_percent": row.argon2_percent.map(finite),
                "baseline_percent": row.baseline_percent.map(finite),
                "pictures_percent": row.pictures_percent.map(finite),
                "others_cpu_percent": row.others_cpu_percent.map(finite),
            })
        })
        .collect();
    let report = json!({
        "timestamp": timestamp(SystemTime::now()),
        "command": format!("cargo xtask bench {}", args.join(" ")).trim_end(),
        "users": options.users,
        "warmup_s": options.warmup.as_secs(),
        "duration_s": options.duration.as_secs(),
        "machine": {
            "cores": std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            "cpu": cpu_model(),
        },
        "load_generator": oha.map(|oha| oha.version.clone()),
        "machine_busy_before_percent": busy_before.map(finite),
        "rows": rows,
    });
    serde_json::to_string_pretty(&report).context("could not render the report")
}

/// `time` in UTC as `20261125T143000Z`, for file names that sort by time.
pub(super) fn timestamp(time: SystemTime) -> String {
    let seconds = time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let of_day = seconds % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", of_day / 3600, of_day % 3600 / 60, of_day % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let latencies: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        let measured = measure_latencies(latencies, Duration::from_secs(2));
        assert!((measured.requests_per_sec - 500.0).abs() < 1e-9);
        assert!((measured.p50_ms - 500.0).abs() < 1e-9);
        assert!((measured.p99_ms - 990.0).abs() < 1e-9);
        assert!((measured.p999_ms - 999.0).abs() < 1e-9);
        assert!(percentile_ms(&[], 500).is_nan());
    }

    fn rated(scenario: &str, requests_per_sec: f64, note: &str) -> Row {
        let mut row = Row::new(scenario);
        row.measurement = Some(Measurement { requests_per_sec, ..Measurement::default() });
        row.note = note.to_owned();
        row
    }

    #[test]
    fn me_is_compared_with_baseline_and_register_with_argon2() {
        let mut rows = vec![
            rated("me", 6000.0, ""),
            rated("baseline", 8000.0, "bench-baseline"),
            rated("register", 80.0, "built-in loop"),
            rated("argon2", 160.0, "in-process"),
        ];
        compare_with_ceilings(&mut rows);
        let notes: Vec<&str> = rows.iter().map(|row| row.note.as_str()).collect();
        assert_eq!(
            notes,
            vec!["75% of the baseline rate", "bench-baseline", "50% of the argon2 rate; built-in loop", "in-process"]
        );
        assert_eq!(rows.first().and_then(|row| row.baseline_percent), Some(75.0));
        assert_eq!(rows.first().and_then(|row| row.argon2_percent), None);
        assert_eq!(rows.get(2).and_then(|row| row.argon2_percent), Some(50.0));

        let mut failed_ceiling = rated("baseline", 8000.0, "");
        failed_ceiling.failure = Some("failed: bench-baseline exited".to_owned());
        let mut rows = vec![rated("me", 6000.0, ""), failed_ceiling];
        compare_with_ceilings(&mut rows);
        assert_eq!(rows.first().and_then(|row| row.baseline_percent), None);
        assert_eq!(rows.first().map(|row| row.note.as_str()), Some(""));
    }

    #[test]
    fn a_ceiling_measured_beside_other_work_says_so_and_so_do_its_shares() {
        let mut quiet = rated("argon2", 120.0, "in-process");
        note_disturbance(&mut quiet, Disturbance { others_percent: 4.0 });
        assert_eq!(quiet.note, "in-process");
        assert_eq!(quiet.others_cpu_percent, Some(4.0));

        let mut busy = rated("argon2", 90.0, "in-process");
        note_disturbance(&mut busy, Disturbance { others_percent: 37.4 });
        assert_eq!(busy.note, "in-process; disturbed: other processes or the hypervisor used 37% of a core meanwhile");
        let mut bare = rated("pictures", 50.0, "");
        note_disturbance(&mut bare, Disturbance { others_percent: 12.0 });
        assert_eq!(bare.note, "disturbed: other processes or the hypervisor used 12% of a core meanwhile");
        let mut rows = vec![rated("login", 45.0, ""), busy];
        compare_with_ceilings(&mut rows);
        assert_eq!(rows.first().map(|row| row.note.as_str()), Some("50% of the argon2 rate (a disturbed ceiling)"));
        assert_eq!(rows.first().and_then(|row| row.argon2_percent), Some(50.0));
    }

    #[test]
    fn upload_alone_is_compared_with_the_pictures_rate() {
        let mut rows = vec![
            rated("upload", 30.0, "1.12 MB JPEG"),
            rated("upload: GET /me", 1000.0, "beside the uploads"),
            rated("pictures", 60.0, "in-process"),
        ];
        compare_with_ceilings(&mut rows);
        let notes: Vec<&str> = rows.iter().map(|row| row.note.as_str()).collect();
        assert_eq!(notes, vec!["50% of the pictures rate; 1.12 MB JPEG", "beside the uploads", "in-process"]);
        assert_eq!(rows.iter().map(|row| row.pictures_percent).collect::<Vec<_>>(), vec![Some(50.0), None, None]);
        assert!(rows.iter().all(|row| row.argon2_percent.is_none() && row.baseline_percent.is_none()));
    }

    #[test]
    fn both_login_rows_are_compared_with_the_argon2_rate() {
        let mut short = rated("login-mfa", 40.0, "built-in loop");
        short.failure = Some("ran out of TOTP steps".to_owned());
        let mut rows = vec![
            rated("me", 1000.0, ""),
            rated("login", 120.0, "; errors: 1x HTTP 503"),
            rated("login-mfa", 104.0, "built-in loop"),
            rated("argon2", 160.0, "in-process"),
        ];
        compare_with_ceilings(&mut rows);
        let notes: Vec<&str> = rows.iter().map(|row| row.note.as_str()).collect();
        assert_eq!(
            notes,
            vec![
                "",
                "75% of the argon2 rate; errors: 1x HTTP 503",
                "65% of the argon2 rate; built-in loop",
                "in-process"
            ]
        );
        assert_eq!(
            rows.iter().map(|row| row.argon2_percent).collect::<Vec<_>>(),
            vec![None, Some(75.0), Some(65.0), None]
        );

        let mut failed = vec![short, rated("argon2", 160.0, "")];
        compare_with_ceilings(&mut failed);
        assert_eq!(failed.first().and_then(|row| row.argon2_percent), None);
        let mut alone = vec![rated("login", 120.0, "")];
        compare_with_ceilings(&mut alone);
        assert_eq!(alone.first().map(|row| row.note.as_str()), Some(""));
    }

    #[test]
    fn timestamps_are_utc_and_sortable() {
        assert_eq!(timestamp(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(timestamp(UNIX_EPOCH + Duration::from_secs(1_795_617_000)), "20261125T143000Z");
    }
}
