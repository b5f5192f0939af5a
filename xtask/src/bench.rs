//! `cargo xtask bench`: load-tests the release server on this machine and prints one table of the results.
//!
//! It builds the release binary, makes sure of a seeded database `um_bench_<users>` on the local Postgres, starts the
//! server on a free port with the per-IP limits off, and runs each scenario against it: `oha` for the scenarios that
//! repeat one request, a small built-in HTTP/1.1 loop for those `oha` cannot express (a refresh token is single use,
//! so every request needs the token the previous answer returned; idle connections only have to be held open), and
//! argon2 in-process for the raw hash rate the `login` figure is compared with. `upload` starts its own Garage and a
//! second server storing in it (`STORAGE_BACKEND=s3`), and stops both when it is done. `soak`, run only when named,
//! keeps `GET /me` going for minutes with nobody scraping the metrics and samples the server's memory, to show that
//! nothing accumulates per request. The table goes to standard output and,
//! as JSON, to `target/bench/<timestamp>.json`, so runs can be compared. The server is stopped whatever happens.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::process::{self, Service};
use crate::{garage, http, postgres, ui};

/// The administrator every run creates (or finds) and the `/users` scenarios call as.
const ADMIN_EMAIL: &str = "bench-admin@example.com";

/// The password of the administrator and of every seeded user (they share the administrator's hash).
const PASSWORD: &str = "violet-kettle-orbit-97-lantern";

/// The password the `storm` scenario's flood sends: wrong for every account.
const WRONG_PASSWORD: &str = "not-the-password-at-all-42";

/// The domain of the seeded users' emails: `user{n}@bench.example.com`.
const SEED_DOMAIN: &str = "bench.example.com";

/// How many idle keep-alive connections the `idle` scenario opens (fewer when the open-files limit is lower).
const IDLE_CONNECTIONS: usize = 10_000;

/// Connections of `upload`.
const UPLOAD_CONNECTIONS: u32 = 8;

/// The seeded user who uploads a picture for themself in `upload` (not one the other scenarios log in as).
const UPLOAD_USER: u64 = 3;

/// The boundary of the `upload` scenario's multipart body; the JPEG's bytes are checked not to contain it.
const UPLOAD_BOUNDARY: &str = "um-bench-boundary-7f3c9a2e51d84b06";

/// How long the in-process argon2 measurement runs.
const ARGON2_DURATION: Duration = Duration::from_secs(5);

/// The argon2id parameters the server hashes with (`crates/crypto`): memory in KiB, iterations, lanes.
const ARGON2_PARAMS: (u32, u32, u32) = (19_456, 2, 1);

/// Connections of the read scenarios (`me`, `user-by-id`, `search`, and the measured half of `storm`).
const READ_CONNECTIONS: u32 = 64;

/// Connections of `login`: the server hashes on one slot per core and queues the rest for at most 5 s, so a deeper
/// queue would only add latency (and eventually 503s) without adding throughput.
const LOGIN_CONNECTIONS: u32 = 16;

/// Connections of `refresh`: each holds one session whose token it rotates.
const REFRESH_CONNECTIONS: u32 = 32;

/// Connections of the wrong-password flood in `storm`.
const STORM_FLOOD_CONNECTIONS: u32 = 200;

/// Connections of `soak` (the load under which unscraped metrics once grew the server by 10 MiB a minute).
const SOAK_CONNECTIONS: u32 = 32;

/// How long `soak` runs unless `--soak-minutes` says otherwise.
const SOAK_DEFAULT: Duration = Duration::from_secs(10 * 60);

/// How often `soak` reads the server's resident memory.
const SOAK_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// Above this share of the CPU used by other processes before the run, the run warns that its figures will be low.
const BUSY_WARNING_PERCENT: f64 = 15.0;

/// How long the server may take to answer `/healthz` after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A timeout for the built-in client's single requests, so a hung server fails the scenario instead of the task.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One benchmark scenario, in the order they run: `idle` first so its "at rest" figure is a fresh server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    /// RSS at rest and with 10k idle keep-alive connections.
    Idle,
    /// `GET /me` with a valid token.
    Me,
    /// Admin `GET /users/{id}`.
    UserById,
    /// Admin `GET /users?q=user12&limit=20`.
    Search,
    /// `POST /login` with the right password.
    Login,
    /// The raw argon2id hash rate, in-process.
    Argon2,
    /// `POST /token/refresh`, each request with the token the previous answer returned.
    Refresh,
    /// `GET /me` while 200 connections send wrong passwords.
    Storm,
    /// `POST /users/{id}/profile-picture` of a ~1 MB JPEG, with the server storing in a Garage the run starts.
    Upload,
    /// `GET /me` for `--soak-minutes` with nobody scraping `/metrics`, the server's memory sampled throughout.
    Soak,
}

impl Scenario {
    /// Every scenario, in running order.
    const ALL: [Self; 10] = [
        Self::Idle,
        Self::Me,
        Self::UserById,
        Self::Search,
        Self::Login,
        Self::Argon2,
        Self::Refresh,
        Self::Storm,
        Self::Upload,
        Self::Soak,
    ];

    /// Whether the scenario runs when none is named: all but `soak`, which takes ten minutes.
    fn runs_by_default(self) -> bool {
        self != Self::Soak
    }

    /// The name used on the command line and in the table.
    fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Me => "me",
            Self::UserById => "user-by-id",
            Self::Search => "search",
            Self::Login => "login",
            Self::Argon2 => "argon2",
            Self::Refresh => "refresh",
            Self::Storm => "storm",
            Self::Upload => "upload",
            Self::Soak => "soak",
        }
    }

    /// The scenario called `name`, if any.
    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scenario| scenario.name() == name)
    }

    /// Whether the scenario runs `oha`.
    fn uses_oha(self) -> bool {
        matches!(self, Self::Me | Self::UserById | Self::Search | Self::Login | Self::Storm | Self::Upload | Self::Soak)
    }
}

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    /// The scenarios to run, in running order, without repeats.
    scenarios: Vec<Scenario>,
    /// How many users to seed.
    users: u64,
    /// Warm-up before each measurement, not counted.
    warmup: Duration,
    /// Measured duration of each scenario.
    duration: Duration,
    /// Drop and recreate the database even when it already holds the seeded users.
    fresh: bool,
    /// A server binary built elsewhere (another checkout, another commit) to measure instead of building this one.
    server_bin: Option<PathBuf>,
    /// How long `soak` keeps the load on.
    soak: Duration,
}

impl Options {
    /// Parses `[scenario...] [--users N] [--duration S] [--warmup S] [--fresh] [--server-bin PATH]
    /// [--soak-minutes M]`.
    fn parse(args: &[String]) -> Result<Self> {
        let mut options = Self {
            scenarios: Vec::new(),
            users: 1000,
            warmup: Duration::from_secs(3),
            duration: Duration::from_secs(10),
            fresh: false,
            server_bin: None,
            soak: SOAK_DEFAULT,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
                _ => (arg.as_str(), None),
            };
            let mut value = || -> Result<String> {
                match inline.clone() {
                    Some(value) => Ok(value),
                    None => args.next().cloned().with_context(|| format!("{flag} needs a value")),
                }
            };
            match flag {
                "--users" => {
                    let raw = value()?;
                    options.users = raw
                        .replace('_', "")
                        .parse()
                        .ok()
                        .filter(|users| *users >= 1)
                        .with_context(|| format!("--users {raw}: expected a whole number of at least 1"))?;
                }
                "--duration" => options.duration = parse_seconds("--duration", &value()?)?,
                "--warmup" => options.warmup = parse_seconds("--warmup", &value()?)?,
                "--fresh" => options.fresh = true,
                "--server-bin" => options.server_bin = Some(PathBuf::from(value()?)),
                "--soak-minutes" => {
                    let raw = value()?;
                    let minutes: u64 = raw
                        .parse()
                        .ok()
                        .filter(|minutes| *minutes >= 1)
                        .with_context(|| format!("--soak-minutes {raw}: expected a whole number of at least 1"))?;
                    options.soak = Duration::from_secs(minutes * 60);
                }
                name if !name.starts_with('-') => {
                    let scenario = Scenario::parse(name).with_context(|| {
                        let known = Scenario::ALL.map(Scenario::name).join(", ");
                        format!("unknown scenario `{name}` (known: {known})")
                    })?;
                    options.scenarios.push(scenario);
                }
                other => bail!("unknown option `{other}` (see `cargo xtask help`)"),
            }
        }
        if options.duration.is_zero() {
            bail!("--duration must be at least 1 second");
        }
        if options.scenarios.is_empty() {
            options.scenarios = Scenario::ALL.into_iter().filter(|scenario| scenario.runs_by_default()).collect();
        }
        options.scenarios.sort();
        options.scenarios.dedup();
        Ok(options)
    }
}

/// Whole seconds, written `10` or `10s`.
fn parse_seconds(flag: &str, raw: &str) -> Result<Duration> {
    raw.strip_suffix('s')
        .unwrap_or(raw)
        .parse::<u64>()
        .map(Duration::from_secs)
        .with_context(|| format!("{flag} {raw}: expected whole seconds such as 10 or 10s"))
}

/// `cargo xtask bench [scenario...] [--users N] [--duration S] [--warmup S] [--fresh] [--server-bin PATH]
/// [--soak-minutes M]`.
pub struct Bench {
    /// The arguments after `bench`.
    args: Vec<String>,
}

/// The numbers of one measured load run.
#[derive(Debug, Clone, Default, PartialEq)]
struct Measurement {
    /// Requests answered per second of the measured duration.
    requests_per_sec: f64,
    /// Median latency, in milliseconds.
    p50_ms: f64,
    /// 99th percentile latency, in milliseconds.
    p99_ms: f64,
    /// 99.9th percentile latency, in milliseconds.
    p999_ms: f64,
    /// Requests answered with another status than the expected one, plus requests that got no answer.
    errors: u64,
    /// All requests counted.
    total: u64,
    /// What the errors were: status codes and transport errors with their counts.
    error_kinds: Vec<(String, u64)>,
    /// The server's CPU use over the measured window, in percent of one core (as `top` shows it).
    server_cpu_percent: Option<f64>,
}

/// One line of the table.
#[derive(Debug, Clone, Default)]
struct Row {
    /// The scenario, or a part of one (`storm: login flood`).
    scenario: String,
    /// Connections (threads for `argon2`).
    connections: Option<u64>,
    /// The figures, unless the scenario failed or measures something else.
    measurement: Option<Measurement>,
    /// The server's resident memory right after the scenario, in KiB.
    rss_kib: Option<u64>,
    /// Why the scenario has no figures, when it failed or is not available.
    failure: Option<String>,
    /// Anything else worth reading beside the figures.
    note: String,
}

impl Row {
    /// A row for `scenario` with nothing filled in yet.
    fn new(scenario: &str) -> Self {
        Self { scenario: scenario.to_owned(), ..Self::default() }
    }
}

/// Starts a server with these environment variables on top of the bench defaults (none for the `fs` server).
type StartServer<'a> = dyn Fn(&[(&str, String)]) -> Result<Server> + 'a;

/// The running server and how to reach it.
struct Server {
    /// The supervised process; stopped on drop.
    service: Service,
    /// The server's process id, for reading its memory.
    pid: u32,
    /// `127.0.0.1:port`.
    addr: SocketAddr,
    /// The database it uses.
    database_url: String,
}

impl Server {
    /// `http://127.0.0.1:port{path}`.
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The server's resident set size in KiB.
    fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid)
    }
}

impl Bench {
    /// A run with the arguments after `bench`.
    pub fn new(args: Vec<String>) -> Self {
        Self { args }
    }

    /// Runs the benchmark and prints the table; fails only when the set-up fails (a scenario that fails becomes a
    /// row saying so).
    ///
    /// # Errors
    /// When the arguments are wrong, or the build, the load generator, Postgres, the database or the server cannot
    /// be set up. The server is stopped before this returns, in every case.
    pub fn execute(self) -> Result<ExitCode> {
        let options = Options::parse(&self.args)?;
        process::install_interrupt_handler()?;
        let bench_dir = crate::target_dir().join("bench");
        std::fs::create_dir_all(&bench_dir).with_context(|| format!("could not create {}", bench_dir.display()))?;

        let oha = if options.scenarios.iter().any(|scenario| scenario.uses_oha()) { Some(ensure_oha()?) } else { None };
        let open_files = raise_open_files_limit()?;

        let binary = match &options.server_bin {
            Some(binary) => {
                ui::step(&format!("Using the server binary {}", binary.display()));
                std::path::absolute(binary).with_context(|| format!("bad --server-bin {}", binary.display()))?
            }
            None => build_release()?,
        };
        if !binary.is_file() {
            bail!("{} does not exist", binary.display());
        }

        postgres::ensure_local_server()?;
        let data_dir = bench_dir.join("data");
        std::fs::create_dir_all(&data_dir).with_context(|| format!("could not create {}", data_dir.display()))?;
        let database_url = prepare_database(&binary, &data_dir, options.users, options.fresh)?;

        let start = |env: &[(&str, String)]| start_server(&binary, &data_dir, &database_url, &bench_dir, env);
        let mut server = start(&[])?;
        // Other processes' load (a build, a test run) lowers every figure; measure it so the report says so.
        let busy_before = machine_busy_percent(Duration::from_secs(2)).ok();
        if let Some(busy) = busy_before.filter(|busy| *busy > BUSY_WARNING_PERCENT) {
            ui::warn(&format!(
                "other processes kept {busy:.0}% of the CPU busy just before the run; the figures will be lower"
            ));
        }
        let rows = run_scenarios(&options, &mut server, &start, oha.as_ref(), open_files);
        ui::step("Stopping the server");
        if let Err(error) = server.service.stop() {
            ui::warn(&format!("{error:#}"));
        }
        let mut rows = rows?;
        compare_login_with_argon2(&mut rows);

        let table = render_table(&rows);
        writeln!(std::io::stdout().lock(), "\n{table}").context("could not write the table to standard output")?;
        let report = report_json(&options, &self.args, oha.as_ref(), busy_before, &rows)?;
        let path = bench_dir.join(format!("{}.json", timestamp(SystemTime::now())));
        std::fs::write(&path, report).with_context(|| format!("could not write {}", path.display()))?;
        ui::step(&format!("Wrote {}", path.display()));
        Ok(ExitCode::SUCCESS)
    }
}

/// Runs the chosen scenarios one after the other. A scenario that fails becomes a row saying why; a server that died
/// ends the run with a row for each scenario left, and an interrupt ends it at once.
///
/// `idle` runs first, on the fresh server, and the server is restarted after it: the buffers of its 10k connections
/// would otherwise stay in the memory figures of every later row.
fn run_scenarios(
    options: &Options,
    server: &mut Server,
    start: &StartServer<'_>,
    oha: Option<&Oha>,
    open_files: u64,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (index, &scenario) in options.scenarios.iter().enumerate() {
        if index > 0 && options.scenarios.get(index - 1) == Some(&Scenario::Idle) {
            ui::step("Restarting the server after `idle`");
            server.service.stop()?;
            *server = start(&[])?;
        }
        let current = &*server;
        process::check_interrupted()?;
        ui::step(&format!("Scenario `{}`", scenario.name()));
        let outcome = match scenario {
            Scenario::Idle => idle(current, open_files).map(|row| vec![row]),
            Scenario::Argon2 => argon2_rate().map(|row| vec![row]),
            Scenario::Refresh => refresh(current, options).map(|row| vec![row]),
            Scenario::Upload => match oha {
                Some(oha) => upload(start, oha, options).map(|row| vec![row]),
                None => Err(anyhow::anyhow!("oha is not available")),
            },
            Scenario::Soak => match oha {
                Some(oha) => soak(current, oha, options).map(|row| vec![row]),
                None => Err(anyhow::anyhow!("oha is not available")),
            },
            Scenario::Me | Scenario::UserById | Scenario::Search | Scenario::Login | Scenario::Storm => match oha {
                Some(oha) => oha_scenario(scenario, current, oha, options),
                None => Err(anyhow::anyhow!("oha is not available")),
            },
        };
        match outcome {
            Ok(new_rows) => {
                for row in &new_rows {
                    ui::info(&summarise(row));
                }
                rows.extend(new_rows);
            }
            Err(error) => {
                process::check_interrupted()?;
                ui::warn(&format!("scenario `{}` failed: {error:#}", scenario.name()));
                let mut row = Row::new(scenario.name());
                row.failure = Some(format!("failed: {error:#}"));
                row.rss_kib = current.rss_kib().ok();
                rows.push(row);
            }
        }
        // A crashed server would make every later row a failure for the same reason; say so once instead.
        if let Err(error) = server.service.ensure_running() {
            ui::warn(&format!("{error:#}"));
            for &left in options.scenarios.iter().skip(index + 1) {
                let mut row = Row::new(left.name());
                row.failure = Some(format!("not run: the server exited during `{}`", scenario.name()));
                rows.push(row);
            }
            break;
        }
    }
    process::check_interrupted()?;
    Ok(rows)
}

/// One line about a finished row, for the progress output.
fn summarise(row: &Row) -> String {
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

// --- The load generator -------------------------------------------------------------------------------------------

/// The `oha` executable and its version.
struct Oha {
    /// Its path.
    path: PathBuf,
    /// What `oha --version` printed.
    version: String,
}

/// Finds `oha` on `PATH` or in cargo's `bin` directory, installing it with `cargo install --locked oha` if missing.
fn ensure_oha() -> Result<Oha> {
    ui::step("Load generator: checking for oha");
    if let Some(oha) = find_oha() {
        ui::info(&format!("found {} ({})", oha.path.display(), oha.version));
        return Ok(oha);
    }
    ui::info("not found; installing it with `cargo install --locked oha` (about 6 minutes on 2 cores, once)");
    let mut install = Command::new(crate::cargo());
    install.args(["install", "--locked", "oha"]);
    process::run(&mut install).context("could not install oha")?;
    find_oha().context("`cargo install oha` finished but no working oha was found")
}

/// The first `oha` on `PATH` or in cargo's `bin` directory that answers `--version`.
fn find_oha() -> Option<Oha> {
    let path_dirs =
        std::env::var_os("PATH").map(|path| std::env::split_paths(&path).collect::<Vec<_>>()).unwrap_or_default();
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|cargo_home| cargo_home.join("bin"));
    path_dirs.into_iter().chain(cargo_bin).map(|dir| dir.join("oha")).filter(|candidate| candidate.is_file()).find_map(
        |path| {
            let version = process::output(Command::new(&path).arg("--version")).ok()?;
            Some(Oha { path, version: version.trim().to_owned() })
        },
    )
}

/// One request, repeated by `oha` on `connections` connections.
struct Load {
    /// The full URL.
    url: String,
    /// `GET` or `POST`.
    method: &'static str,
    /// The body, for `POST`.
    body: Option<Body>,
    /// An access token for `Authorization: Bearer`.
    bearer: Option<String>,
    /// Connections kept busy at once.
    connections: u32,
    /// The status a correct answer has; any other counts as an error.
    expected_status: u16,
}

/// A request body.
enum Body {
    /// JSON text, sent as `application/json`.
    Json(String),
    /// The contents of a file, sent with this `Content-Type`.
    File {
        /// The `Content-Type` header's value.
        content_type: String,
        /// The file.
        path: PathBuf,
    },
}

/// The `oha` command that sends `load` for `duration` and prints its results as JSON.
fn oha_command(oha: &Oha, load: &Load, duration: Duration) -> Command {
    let mut command = Command::new(&oha.path);
    command
        .args(["--no-tui", "--output-format", "json", "--wait-ongoing-requests-after-deadline"])
        .args(["-z", &format!("{}s", duration.as_secs().max(1))])
        .args(["-c", &load.connections.to_string()])
        .args(["-m", load.method]);
    match &load.body {
        Some(Body::Json(body)) => {
            command.args(["-T", "application/json", "-d", body]);
        }
        Some(Body::File { content_type, path }) => {
            command.args(["-T", content_type]).arg("-D").arg(path);
        }
        None => {}
    }
    if let Some(token) = &load.bearer {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    command.arg(&load.url);
    command
}

/// Runs `oha` for the warm-up (results dropped), then for the measured duration.
fn run_oha(oha: &Oha, load: &Load, options: &Options, server: &Server) -> Result<Measurement> {
    if !options.warmup.is_zero() {
        process::output(&mut oha_command(oha, load, options.warmup)).context("the warm-up run of oha failed")?;
    }
    let cpu = CpuMeter::start(server.pid)?;
    let output = process::output(&mut oha_command(oha, load, options.duration))?;
    // oha stops early on Ctrl-C and still reports; a cut-short run is not a measurement.
    process::check_interrupted()?;
    let server_cpu_percent = cpu.percent().ok();
    Ok(Measurement { server_cpu_percent, ..parse_oha(&output, load.expected_status)? })
}

/// Measures a process's CPU use from `/proc/<pid>/stat` between two moments.
struct CpuMeter {
    /// The process.
    pid: u32,
    /// Its user plus system time at the start, in clock ticks.
    ticks: u64,
    /// When the measurement started.
    since: Instant,
}

impl CpuMeter {
    /// Starts measuring `pid`.
    fn start(pid: u32) -> Result<Self> {
        Ok(Self { pid, ticks: cpu_ticks(pid)?, since: Instant::now() })
    }

    /// The CPU used since the start, in percent of one core.
    fn percent(&self) -> Result<f64> {
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
fn machine_busy_percent(window: Duration) -> Result<f64> {
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

/// Reads the figures out of `oha --output-format json`.
fn parse_oha(output: &str, expected_status: u16) -> Result<Measurement> {
    let report: Value = serde_json::from_str(output).context("oha printed something that is not JSON")?;
    let summary = &report["summary"];
    let percentiles = &report["latencyPercentiles"];
    let seconds_to_ms = |value: &Value| value.as_f64().map_or(f64::NAN, |seconds| seconds * 1000.0);
    let mut error_kinds = Vec::new();
    let mut errors = 0;
    let mut total = 0;
    if let Some(statuses) = report["statusCodeDistribution"].as_object() {
        for (status, count) in statuses {
            let count = count.as_u64().unwrap_or(0);
            total += count;
            if status.parse::<u16>().ok() != Some(expected_status) {
                errors += count;
                error_kinds.push((format!("HTTP {status}"), count));
            }
        }
    }
    if let Some(failures) = report["errorDistribution"].as_object() {
        for (message, count) in failures {
            let count = count.as_u64().unwrap_or(0);
            total += count;
            errors += count;
            error_kinds.push((message.clone(), count));
        }
    }
    Ok(Measurement {
        requests_per_sec: summary["requestsPerSec"].as_f64().context("oha's JSON has no summary.requestsPerSec")?,
        p50_ms: seconds_to_ms(&percentiles["p50"]),
        p99_ms: seconds_to_ms(&percentiles["p99"]),
        p999_ms: seconds_to_ms(&percentiles["p99.9"]),
        errors,
        total,
        error_kinds,
        server_cpu_percent: None,
    })
}

/// A short description of what went wrong, for the notes column.
fn describe_errors(measurement: &Measurement) -> String {
    measurement.error_kinds.iter().map(|(kind, count)| format!("{count}x {kind}")).collect::<Vec<_>>().join(", ")
}

/// The scenarios `oha` drives.
fn oha_scenario(scenario: Scenario, server: &Server, oha: &Oha, options: &Options) -> Result<Vec<Row>> {
    let seeded_email = |n: u64| format!("user{n}@{SEED_DOMAIN}");
    let (load, note) = match scenario {
        Scenario::Me | Scenario::Storm => {
            let token = login(server.addr, &seeded_email(1))?.access_token;
            (get(server.url("/me"), Some(token), READ_CONNECTIONS), String::new())
        }
        Scenario::UserById => {
            let admin = login(server.addr, ADMIN_EMAIL)?.access_token;
            let middle = options.users.div_ceil(2);
            let id = user_id(server, &seeded_email(middle))?;
            (get(server.url(&format!("/users/{id}")), Some(admin), READ_CONNECTIONS), format!("target: user{middle}"))
        }
        Scenario::Search => {
            let admin = login(server.addr, ADMIN_EMAIL)?.access_token;
            (get(server.url("/users?q=user12&limit=20"), Some(admin), READ_CONNECTIONS), String::new())
        }
        Scenario::Login => {
            let body = json!({"email": seeded_email(1), "password": PASSWORD}).to_string();
            (post_json(server.url("/login"), body, LOGIN_CONNECTIONS, 200), String::new())
        }
        Scenario::Idle | Scenario::Argon2 | Scenario::Refresh | Scenario::Upload | Scenario::Soak => {
            bail!("`{}` is not an oha scenario", scenario.name())
        }
    };
    // One request first: a route that is missing or refuses the caller fails the scenario with its answer, rather
    // than producing a table line of fast errors.
    let status = probe(server.addr, &load)?;
    if status != load.expected_status {
        bail!("{} {} answered {status}", load.method, load.url.trim_start_matches(&server.url("")));
    }

    let mut rows = Vec::new();
    if scenario == Scenario::Storm {
        let body = json!({"email": seeded_email(2), "password": WRONG_PASSWORD}).to_string();
        let flood = post_json(server.url("/login"), body, STORM_FLOOD_CONNECTIONS, 401);
        // The flood runs through the warm-up and the measured run, and a second beyond.
        let flood_duration = options.warmup + options.duration + Duration::from_secs(1);
        let mut flood_command = oha_command(oha, &flood, flood_duration);
        flood_command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let flood_child = flood_command
            .spawn()
            .with_context(|| format!("could not start `{}`", process::describe(&flood_command)))?;
        let measured = run_oha(oha, &load, options, server);
        let flood_output = flood_child.wait_with_output().context("could not wait for the flood's oha")?;
        let measured = measured?;
        let mut row = Row::new("storm");
        row.connections = Some(u64::from(load.connections));
        row.note = format!("GET /me during the flood below{}", error_note(&measured));
        row.measurement = Some(measured);
        row.rss_kib = server.rss_kib().ok();
        rows.push(row);

        let mut flood_row = Row::new("storm: login flood");
        flood_row.connections = Some(u64::from(flood.connections));
        if flood_output.status.success() {
            let flood_measured = parse_oha(&String::from_utf8_lossy(&flood_output.stdout), 401)?;
            flood_row.note = format!("wrong passwords, 401 expected{}", error_note(&flood_measured));
            flood_row.measurement = Some(flood_measured);
        } else {
            flood_row.failure = Some(format!(
                "oha failed with {}: {}",
                process::describe_status(flood_output.status),
                String::from_utf8_lossy(&flood_output.stderr).trim()
            ));
        }
        rows.push(flood_row);
    } else {
        let measured = run_oha(oha, &load, options, server)?;
        let mut row = Row::new(scenario.name());
        row.connections = Some(u64::from(load.connections));
        row.note = format!("{note}{}", error_note(&measured));
        row.measurement = Some(measured);
        row.rss_kib = server.rss_kib().ok();
        rows.push(row);
    }
    Ok(rows)
}

/// `soak`: `GET /me` on [`SOAK_CONNECTIONS`] connections for `--soak-minutes`, with nobody scraping `/metrics`
/// (the metrics listener is on a port nobody is told), reading the server's RSS every [`SOAK_SAMPLE_INTERVAL`].
/// Anything kept per request (unscraped metric samples, a cache without a bound) shows as a steady growth; the
/// notes give RSS at the start, the end and its maximum, and the growth per minute fitted over every sample.
fn soak(server: &Server, oha: &Oha, options: &Options) -> Result<Row> {
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

/// `; errors: 3x HTTP 503` when there were errors, else nothing.
fn error_note(measurement: &Measurement) -> String {
    if measurement.errors == 0 { String::new() } else { format!("; errors: {}", describe_errors(measurement)) }
}

/// A `GET` expecting 200.
fn get(url: String, bearer: Option<String>, connections: u32) -> Load {
    Load { url, method: "GET", body: None, bearer, connections, expected_status: 200 }
}

/// A JSON `POST` without a token.
fn post_json(url: String, body: String, connections: u32, expected_status: u16) -> Load {
    Load { url, method: "POST", body: Some(Body::Json(body)), bearer: None, connections, expected_status }
}

/// Sends `load`'s request once with the built-in client and returns the status.
fn probe(addr: SocketAddr, load: &Load) -> Result<u16> {
    let path = load.url.splitn(4, '/').nth(3).map_or_else(|| "/".to_owned(), |path| format!("/{path}"));
    let mut conn = HttpConn::connect(addr)?;
    let mut headers = Vec::new();
    let authorization = load.bearer.as_ref().map(|token| format!("Bearer {token}"));
    if let Some(value) = &authorization {
        headers.push(("Authorization", value.as_str()));
    }
    let response = match &load.body {
        None => conn.send(load.method, &path, &headers, None)?,
        Some(Body::Json(body)) => conn.send(load.method, &path, &headers, Some(body))?,
        Some(Body::File { content_type, path: file }) => {
            let bytes = std::fs::read(file).with_context(|| format!("could not read {}", file.display()))?;
            conn.send_bytes(load.method, &path, &headers, Some((content_type, &bytes)))?
        }
    };
    Ok(response.status)
}

// --- The built-in client ------------------------------------------------------------------------------------------

/// An HTTP/1.1 keep-alive connection: just enough client for logging in, the refresh chain and idle connections.
struct HttpConn {
    /// The connection, buffered for reading.
    reader: BufReader<TcpStream>,
    /// `host:port`, for the `Host` header.
    authority: String,
}

/// A response: its status and body.
struct Response {
    /// The status code.
    status: u16,
    /// The body, de-chunked.
    body: Vec<u8>,
}

impl HttpConn {
    /// Connects to `addr`, with [`REQUEST_TIMEOUT`] on every read and write.
    fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
            .with_context(|| format!("could not connect to {addr}"))?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self { reader: BufReader::new(stream), authority: addr.to_string() })
    }

    /// Sends one request (with a JSON body when given) and reads the whole response.
    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        json_body: Option<&str>,
    ) -> Result<Response> {
        self.send_bytes(method, path, headers, json_body.map(|body| ("application/json", body.as_bytes())))
    }

    /// Sends one request with a body of the given `Content-Type` when given, and reads the whole response.
    fn send_bytes(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Result<Response> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.authority);
        for (name, value) in headers {
            let _ = write!(request, "{name}: {value}\r\n");
        }
        let mut bytes = Vec::new();
        if let Some((content_type, body)) = body {
            let _ = write!(request, "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n", body.len());
            bytes.extend_from_slice(request.as_bytes());
            bytes.extend_from_slice(body);
        } else {
            request.push_str("\r\n");
            bytes.extend_from_slice(request.as_bytes());
        }
        self.reader.get_mut().write_all(&bytes).context("could not send the request")?;
        self.read_response()
    }

    /// Reads a response: status line, headers, and a body framed by `Content-Length` or chunked encoding.
    fn read_response(&mut self) -> Result<Response> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).context("could not read the status line")? == 0 {
            bail!("the server closed the connection");
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .with_context(|| format!("not an HTTP status line: {line:?}"))?;
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        loop {
            line.clear();
            if self.reader.read_line(&mut line).context("could not read a header")? == 0 {
                bail!("the server closed the connection in the headers");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = Some(value.parse().with_context(|| format!("bad Content-Length {value:?}"))?);
                } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line).context("could not read a chunk size")?;
                let size_text = line.trim().split(';').next().unwrap_or_default();
                let size = usize::from_str_radix(size_text, 16)
                    .with_context(|| format!("bad chunk size {:?}", line.trim()))?;
                if size == 0 {
                    // Trailers, then the blank line that ends the message.
                    loop {
                        line.clear();
                        if self.reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                self.reader.read_exact(body.get_mut(start..).unwrap_or_default())?;
                line.clear();
                self.reader.read_line(&mut line)?;
            }
        } else if let Some(length) = content_length {
            body.resize(length, 0);
            self.reader.read_exact(&mut body).context("could not read the body")?;
        }
        Ok(Response { status, body })
    }
}

/// The tokens of a fresh session.
struct Tokens {
    /// The access token.
    access_token: String,
    /// The refresh token, single use.
    refresh_token: String,
}

/// Reads `access_token` and `refresh_token` out of a token response.
fn tokens(response: &Response) -> Result<Tokens> {
    let json: Value = serde_json::from_slice(&response.body).context("the token response is not JSON")?;
    let field = |name: &str| {
        json[name].as_str().map(str::to_owned).with_context(|| format!("the token response has no `{name}`"))
    };
    Ok(Tokens { access_token: field("access_token")?, refresh_token: field("refresh_token")? })
}

/// Logs `email` in with [`PASSWORD`] on a new connection.
fn login(addr: SocketAddr, email: &str) -> Result<Tokens> {
    login_on(&mut HttpConn::connect(addr)?, email)
}

/// Logs `email` in with [`PASSWORD`] on `conn`.
fn login_on(conn: &mut HttpConn, email: &str) -> Result<Tokens> {
    let body = json!({"email": email, "password": PASSWORD}).to_string();
    let response = conn.send("POST", "/login", &[], Some(&body))?;
    if response.status != 200 {
        bail!("POST /login as {email} answered {}: {}", response.status, String::from_utf8_lossy(&response.body));
    }
    tokens(&response)
}

/// The id of the user with `email`, looked up in the database the server uses.
fn user_id(server: &Server, email: &str) -> Result<String> {
    let rows = psql(&server.database_url, &format!("SELECT id FROM users WHERE email = {}", literal(email)))?;
    rows.into_iter().next().with_context(|| format!("no seeded user {email}"))
}

// --- Scenarios with their own loops -------------------------------------------------------------------------------

/// `refresh`: every connection logs in once, then rotates its session's refresh token as fast as the server
/// answers, each request presenting the token the previous answer returned (a used token would revoke the session).
fn refresh(server: &Server, options: &Options) -> Result<Row> {
    let connections = REFRESH_CONNECTIONS;
    // The connections and this thread, which measures the server's CPU over the measured window.
    let barrier = Barrier::new(usize::try_from(connections).unwrap_or(1) + 1);
    let addr = server.addr;
    let (results, server_cpu_percent) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|index| {
                let barrier = &barrier;
                scope.spawn(move || refresh_chain(addr, u64::from(index) + 1, barrier, options))
            })
            .collect();
        barrier.wait();
        std::thread::sleep(options.warmup);
        let meter = CpuMeter::start(server.pid).ok();
        std::thread::sleep(options.duration);
        let cpu = meter.and_then(|meter| meter.percent().ok());
        let results: Vec<Result<ChainResult>> = handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a refresh thread panicked"))))
            .collect();
        (results, cpu)
    });
    let mut latencies = Vec::new();
    let mut errors: Vec<(String, u64)> = Vec::new();
    let mut elapsed = Duration::ZERO;
    for result in results {
        let chain = result?;
        latencies.extend(chain.latencies);
        elapsed = elapsed.max(chain.measured_for);
        for kind in chain.errors {
            match errors.iter_mut().find(|(known, _)| *known == kind) {
                Some((_, count)) => *count += 1,
                None => errors.push((kind, 1)),
            }
        }
    }
    let mut measurement = measure_latencies(latencies, elapsed);
    measurement.server_cpu_percent = server_cpu_percent;
    measurement.errors = errors.iter().map(|(_, count)| count).sum();
    measurement.total += measurement.errors;
    measurement.error_kinds = errors;
    let mut row = Row::new("refresh");
    row.connections = Some(u64::from(connections));
    row.note = format!("built-in loop, one rotating session per connection{}", error_note(&measurement));
    row.measurement = Some(measurement);
    row.rss_kib = server.rss_kib().ok();
    Ok(row)
}

/// What one refresh connection measured.
struct ChainResult {
    /// The latency of every successful refresh in the measured window.
    latencies: Vec<Duration>,
    /// What went wrong, one entry per failed request in the measured window.
    errors: Vec<String>,
    /// From the start of the measured window to the end of this connection's last request.
    measured_for: Duration,
}

/// One connection of the `refresh` scenario, logged in as `user{n}`.
fn refresh_chain(addr: SocketAddr, n: u64, barrier: &Barrier, options: &Options) -> Result<ChainResult> {
    let email = format!("user{n}@{SEED_DOMAIN}");
    let session = HttpConn::connect(addr).and_then(|mut conn| Ok((login_on(&mut conn, &email)?.refresh_token, conn)));
    // Every connection reaches the barrier, logged in or not, so that none waits there forever.
    barrier.wait();
    let (mut token, mut conn) = session?;
    let start = Instant::now();
    let measure_from = start + options.warmup;
    let end = measure_from + options.duration;
    let mut result = ChainResult { latencies: Vec::new(), errors: Vec::new(), measured_for: Duration::ZERO };
    loop {
        let sent = Instant::now();
        if sent >= end || process::interrupted() {
            break;
        }
        let body = json!({"refresh_token": token}).to_string();
        let outcome = conn.send("POST", "/token/refresh", &[], Some(&body)).and_then(|response| {
            if response.status == 200 { tokens(&response) } else { bail!("HTTP {}", response.status) }
        });
        let took = sent.elapsed();
        let measured = sent >= measure_from;
        match outcome {
            Ok(next) => {
                token = next.refresh_token;
                if measured {
                    result.latencies.push(took);
                }
            }
            Err(error) => {
                if measured {
                    result.errors.push(format!("{error:#}"));
                }
                // The chain is broken (the token may have been used); start a new session on a new connection.
                conn = HttpConn::connect(addr)?;
                token = login_on(&mut conn, &email)?.refresh_token;
            }
        }
    }
    result.measured_for = measure_from.elapsed();
    Ok(result)
}

/// `upload`: starts a Garage (free ports, a fresh directory under `target/bench/garage`, its default bucket) and a
/// second server storing in it, logs in as a seeded user and has `oha` upload a ~1 MB JPEG to that user's own
/// `POST /users/{id}/profile-picture` on [`UPLOAD_CONNECTIONS`] connections. Garage, the second server and the
/// pictures the run recorded are gone afterwards; the `fs` server of the other scenarios idles meanwhile.
fn upload(start: &StartServer<'_>, oha: &Oha, options: &Options) -> Result<Row> {
    let bench_dir = crate::target_dir().join("bench");
    let body_path = bench_dir.join("upload.multipart");
    let jpeg_bytes = write_upload_body(&body_path)?;
    ui::info(&format!("test picture: 2000x1500 JPEG of {jpeg_bytes} bytes in {}", body_path.display()));

    let garage_bin = garage::ensure_installed()?;
    let garage_dir = bench_dir.join("garage");
    if garage_dir.exists() {
        std::fs::remove_dir_all(&garage_dir).with_context(|| format!("could not remove {}", garage_dir.display()))?;
    }
    std::fs::create_dir_all(&garage_dir).with_context(|| format!("could not create {}", garage_dir.display()))?;
    let [s3, rpc, admin] = http::free_ports::<3>()?;
    let mut storage =
        garage::start(&garage_bin, &garage_dir, &garage::Ports { s3, rpc, admin }, &bench_dir.join("garage.log"))?;
    let env = [
        ("STORAGE_BACKEND", "s3".to_owned()),
        ("S3_ENDPOINT", storage.endpoint.clone()),
        ("S3_REGION", garage::REGION.to_owned()),
        ("S3_BUCKET", garage::BUCKET.to_owned()),
        ("S3_ACCESS_KEY", storage.access_key.clone()),
        ("S3_SECRET_KEY", storage.secret_key.clone()),
    ];
    let outcome = start(&env).and_then(|mut server| {
        let outcome = upload_on(&server, oha, options, &body_path, jpeg_bytes);
        ui::step("Stopping the S3 server of `upload`");
        if let Err(error) = server.service.stop() {
            ui::warn(&format!("{error:#}"));
        }
        outcome
    });
    ui::step("Stopping Garage");
    if let Err(error) = storage.service.stop() {
        ui::warn(&format!("{error:#}"));
    }
    if let Err(error) = std::fs::remove_dir_all(&garage_dir) {
        ui::warn(&format!("could not remove {}: {error}", garage_dir.display()));
    }
    outcome
}

/// The measured part of `upload`, against `server` (which stores in Garage).
fn upload_on(server: &Server, oha: &Oha, options: &Options, body_path: &Path, jpeg_bytes: usize) -> Result<Row> {
    let email = format!("user{UPLOAD_USER}@{SEED_DOMAIN}");
    let id = user_id(server, &email)?;
    // The bucket is new, so pictures recorded by earlier runs would point at nothing; start and end without any.
    let clear = format!("DELETE FROM pictures WHERE user_id = {}", literal(&id));
    psql(&server.database_url, &clear)?;
    let token = login(server.addr, &email)?.access_token;
    let load = Load {
        url: server.url(&format!("/users/{id}/profile-picture")),
        method: "POST",
        body: Some(Body::File {
            content_type: format!("multipart/form-data; boundary={UPLOAD_BOUNDARY}"),
            path: body_path.to_path_buf(),
        }),
        bearer: Some(token),
        connections: UPLOAD_CONNECTIONS,
        expected_status: 200,
    };
    let status = probe(server.addr, &load)?;
    if status != 200 {
        bail!("POST /users/{{id}}/profile-picture answered {status}");
    }
    let measured = run_oha(oha, &load, options, server);
    let rss_kib = server.rss_kib().ok();
    if let Err(error) = psql(&server.database_url, &clear) {
        ui::warn(&format!("could not delete the uploaded pictures' rows: {error:#}"));
    }
    let measured = measured?;
    let mut row = Row::new("upload");
    row.connections = Some(u64::from(load.connections));
    row.note = format!(
        "{:.2} MB JPEG 2000x1500 to Garage as user{UPLOAD_USER}{}",
        jpeg_bytes as f64 / 1_000_000.0,
        error_note(&measured)
    );
    row.measurement = Some(measured);
    row.rss_kib = rss_kib;
    Ok(row)
}

/// Writes the `upload` request body to `path`: one multipart part `file` holding [`bench_jpeg`], framed by
/// [`UPLOAD_BOUNDARY`]. Returns the JPEG's size.
fn write_upload_body(path: &Path) -> Result<usize> {
    let jpeg = bench_jpeg()?;
    if jpeg.windows(UPLOAD_BOUNDARY.len()).any(|window| window == UPLOAD_BOUNDARY.as_bytes()) {
        bail!("the test JPEG happens to contain the multipart boundary");
    }
    let body = multipart_body(&jpeg);
    std::fs::write(path, body).with_context(|| format!("could not write {}", path.display()))?;
    Ok(jpeg.len())
}

/// `content` as the only part, `file`, of a `multipart/form-data` body with [`UPLOAD_BOUNDARY`].
fn multipart_body(content: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{UPLOAD_BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bench.jpg\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{UPLOAD_BOUNDARY}--\r\n").as_bytes());
    body
}

/// The picture `upload` sends: a 2000x1500 diagonal colour gradient with per-pixel noise from a fixed-seed
/// xorshift, as JPEG at quality 90. The noise is what makes it about 1 MB (a plain gradient compresses to a tenth).
fn bench_jpeg() -> Result<Vec<u8>> {
    const WIDTH: u32 = 2000;
    const HEIGHT: u32 = 1500;
    let mut state: u32 = 0x9e37_79b9;
    let image = image::RgbImage::from_fn(WIDTH, HEIGHT, |x, y| {
        let mut channel = |base: u32| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = i64::from(state % 23) - 11;
            u8::try_from((i64::from(base) + noise).clamp(0, 255)).unwrap_or(0)
        };
        let red = x * 255 / WIDTH;
        let green = y * 255 / HEIGHT;
        let blue = (x + y) * 255 / (WIDTH + HEIGHT);
        image::Rgb([channel(red), channel(green), channel(blue)])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&image)
        .context("could not encode the test JPEG")?;
    Ok(jpeg)
}

/// Percentiles and rate of a set of latencies gathered over `elapsed`.
fn measure_latencies(mut latencies: Vec<Duration>, elapsed: Duration) -> Measurement {
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

/// `argon2`: argon2id with the server's parameters on one thread per core, in-process, for [`ARGON2_DURATION`].
fn argon2_rate() -> Result<Row> {
    use argon2::{Algorithm, Argon2, Params, Version};
    let (memory, iterations, lanes) = ARGON2_PARAMS;
    let params = Params::new(memory, iterations, lanes, Some(32)).map_err(|error| anyhow::anyhow!("{error}"))?;
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let start = Instant::now();
    let end = start + ARGON2_DURATION;
    let results: Vec<Result<Vec<Duration>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let params = params.clone();
                scope.spawn(move || -> Result<Vec<Duration>> {
                    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
                    let salt = [u8::try_from(thread % 256).unwrap_or(0); 16];
                    let mut output = [0_u8; 32];
                    let mut times = Vec::new();
                    while Instant::now() < end && !process::interrupted() {
                        let began = Instant::now();
                        argon2
                            .hash_password_into(PASSWORD.as_bytes(), &salt, &mut output)
                            .map_err(|error| anyhow::anyhow!("argon2 failed: {error}"))?;
                        times.push(began.elapsed());
                    }
                    Ok(times)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("an argon2 thread panicked"))))
            .collect()
    });
    let elapsed = start.elapsed();
    let mut latencies = Vec::new();
    for result in results {
        latencies.extend(result?);
    }
    let mut row = Row::new("argon2");
    row.connections = Some(threads as u64);
    row.note = format!("in-process hashes/s, m={memory},t={iterations},p={lanes}, {threads} threads");
    row.measurement = Some(measure_latencies(latencies, elapsed));
    Ok(row)
}

/// `idle`: the server's memory at rest, then with [`IDLE_CONNECTIONS`] keep-alive connections that each sent one
/// request and then stay idle.
fn idle(server: &Server, open_files: u64) -> Result<Row> {
    let rest = server.rss_kib()?;
    // The task runner needs a descriptor per connection plus a few of its own.
    let wanted = IDLE_CONNECTIONS.min(usize::try_from(open_files.saturating_sub(256)).unwrap_or(IDLE_CONNECTIONS));
    let threads = 4;
    let started = Instant::now();
    let opened: Vec<Result<Vec<HttpConn>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let count = wanted / threads + usize::from(thread < wanted % threads);
                scope.spawn(move || -> Result<Vec<HttpConn>> {
                    let mut conns = Vec::with_capacity(count);
                    for _ in 0..count {
                        let mut conn = HttpConn::connect(server.addr)?;
                        let response = conn.send("GET", "/healthz", &[], None)?;
                        if response.status != 200 {
                            bail!("GET /healthz answered {}", response.status);
                        }
                        conns.push(conn);
                    }
                    Ok(conns)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a connecting thread panicked"))))
            .collect()
    });
    let mut conns = Vec::with_capacity(wanted);
    for batch in opened {
        conns.extend(batch?);
    }
    let open_took = started.elapsed();
    // Let the server finish handling the last requests before reading its memory.
    std::thread::sleep(Duration::from_millis(200));
    let loaded = server.rss_kib()?;
    let still_open = conns.iter().filter(|conn| is_open(conn)).count();
    let checked_after = started.elapsed();
    drop(conns);

    let per_connection = (loaded.saturating_sub(rest)) as f64 / wanted.max(1) as f64;
    let mut row = Row::new("idle");
    row.connections = Some(wanted as u64);
    row.rss_kib = Some(loaded);
    row.note = format!(
        "at rest {} -> {} with {wanted} idle keep-alive connections: {per_connection:.1} KiB per connection \
         (opened in {:.1} s; {still_open} still open {:.1} s after the first)",
        format_kib(rest),
        format_kib(loaded),
        open_took.as_secs_f64(),
        checked_after.as_secs_f64()
    );
    Ok(row)
}

/// Whether the server has not closed `conn` (nothing to read yet, and no end of stream).
fn is_open(conn: &HttpConn) -> bool {
    let stream = conn.reader.get_ref();
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0_u8; 1];
    let open = matches!(stream.peek(&mut byte), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock);
    let _ = stream.set_nonblocking(false);
    open
}

/// Fills in the `login` row's ratio to the `argon2` rate, when both ran.
fn compare_login_with_argon2(rows: &mut [Row]) {
    let argon2 = rows
        .iter()
        .find(|row| row.scenario == "argon2")
        .and_then(|row| row.measurement.as_ref())
        .map(|m| m.requests_per_sec);
    let Some(argon2) = argon2.filter(|rate| *rate > 0.0) else {
        return;
    };
    if let Some(row) = rows.iter_mut().find(|row| row.scenario == "login")
        && let Some(login) = &row.measurement
    {
        let ratio = format!("{:.0}% of the argon2 rate", login.requests_per_sec / argon2 * 100.0);
        row.note = if row.note.is_empty() { ratio } else { format!("{ratio}{}", row.note) };
    }
}

// --- Set-up: limits, database, server -----------------------------------------------------------------------------

/// Builds the release server and returns the path of the binary.
fn build_release() -> Result<PathBuf> {
    ui::step("Building the release server (cargo build --release -p users-api --bin user-management)");
    let mut build = Command::new(crate::cargo());
    build.current_dir(crate::project_root()).args([
        "build",
        "--release",
        "-p",
        "users-api",
        "--bin",
        "user-management",
    ]);
    process::run(&mut build).context("could not build the release server")?;
    Ok(crate::target_dir().join("release").join("user-management"))
}

/// Raises this process's soft limit on open files to its hard limit (the server, started later, inherits it), and
/// returns the limit now in force.
fn raise_open_files_limit() -> Result<u64> {
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

/// Makes sure `um_bench_<users>` holds exactly the administrator and `users` seeded users, migrated, and returns its
/// URL.
///
/// A database that already holds the seeded users is reused (seeding a million users and building their indexes
/// takes a while), with the state earlier runs left (sessions, refresh tokens, login failures) truncated, so every
/// run starts from the same rows. Anything else, or `--fresh`, is dropped and created anew.
fn prepare_database(binary: &Path, data_dir: &Path, users: u64, fresh: bool) -> Result<String> {
    let name = format!("um_bench_{users}");
    let admin_url = postgres::LOCAL_ADMIN_URL;
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    ui::step(&format!("Postgres: preparing the database `{name}`"));

    let exists = !psql(admin_url, &format!("SELECT 1 FROM pg_database WHERE datname = {}", literal(&name)))?.is_empty();
    let reusable = exists && !fresh && seeded_users(&url)? == Some(users);
    if exists && !reusable {
        ui::info(if fresh { "dropping it (--fresh)" } else { "dropping it: it does not hold the seeded users" });
        psql(admin_url, &format!("DROP DATABASE {} WITH (FORCE)", identifier(&name)))?;
    }
    if !reusable {
        psql(admin_url, &format!("CREATE DATABASE {}", identifier(&name)))?;
        ui::info(&format!("created database `{name}`"));
    }

    ui::info("migrating (user-management migrate)");
    let mut migrate = Command::new(binary);
    migrate.arg("migrate").env("DATABASE_URL", &url).env("DATA_DIR", data_dir).env("RUST_LOG", "warn");
    process::output(&mut migrate).context("could not migrate the bench database")?;

    if reusable {
        ui::info(&format!("reusing its {users} seeded users; clearing sessions and login failures of earlier runs"));
        psql(&url, "TRUNCATE sessions, login_attempts CASCADE")?;
        psql(&url, "VACUUM ANALYZE")?;
        return Ok(url);
    }

    ui::info(&format!("creating {ADMIN_EMAIL} (user-management create-admin)"));
    create_admin(binary, data_dir, &url)?;
    ui::info(&format!("seeding {users} users with one INSERT ... SELECT"));
    let started = Instant::now();
    psql(&url, &seed_sql(users))?;
    psql(&url, "ANALYZE users")?;
    ui::info(&format!("seeded and analysed in {:.1} s", started.elapsed().as_secs_f64()));
    Ok(url)
}

/// How many seeded users the database at `url` holds, or `None` when it is not a complete bench database (no
/// tables yet, or no administrator).
fn seeded_users(url: &str) -> Result<Option<u64>> {
    let counts = psql(
        url,
        &format!(
            "SELECT (SELECT count(*) FROM users WHERE email LIKE {pattern}) || '|' || \
                    (SELECT count(*) FROM users WHERE email = {admin}) || '|' || (SELECT count(*) FROM users) \
             WHERE to_regclass('public.users') IS NOT NULL",
            pattern = literal(&format!("user%@{SEED_DOMAIN}")),
            admin = literal(ADMIN_EMAIL),
        ),
    );
    // Before migrations the query fails on the missing table despite the guard (it is planned first).
    let Ok(counts) = counts else {
        return Ok(None);
    };
    let Some(line) = counts.first() else {
        return Ok(None);
    };
    let parts: Vec<u64> = line.split('|').filter_map(|part| part.parse().ok()).collect();
    match parts.as_slice() {
        [seeded, 1, all] if *all == seeded + 1 => Ok(Some(*seeded)),
        _ => Ok(None),
    }
}

/// The one statement that seeds `users` users sharing the administrator's password hash, created over the past
/// year in order.
fn seed_sql(users: u64) -> String {
    format!(
        "INSERT INTO users (id, email, nickname, role, email_verified, password_hash, created_at, updated_at) \
         SELECT gen_random_uuid(), 'user' || n || '@{SEED_DOMAIN}', 'user_' || n, 'AUTHENTICATED', true, hash.value, \
                stamp.at, stamp.at \
         FROM generate_series(1, {users}) AS n \
         CROSS JOIN (SELECT password_hash AS value FROM users WHERE email = {admin}) AS hash \
         CROSS JOIN LATERAL (SELECT now() - make_interval(secs => ({users} - n) * 31536000.0 / {users}) AS at) AS stamp",
        admin = literal(ADMIN_EMAIL),
    )
}

/// Runs `user-management create-admin` with [`PASSWORD`] on standard input.
fn create_admin(binary: &Path, data_dir: &Path, url: &str) -> Result<()> {
    let mut command = Command::new(binary);
    command
        .args(["create-admin", "--email", ADMIN_EMAIL])
        .env("DATABASE_URL", url)
        .env("DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().with_context(|| format!("could not start `{}`", process::describe(&command)))?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{PASSWORD}").context("could not pass the password to create-admin")?;
    }
    let output = child.wait_with_output().context("could not wait for create-admin")?;
    if !output.status.success() {
        bail!(
            "`{}` failed with {}: {}",
            process::describe(&command),
            process::describe_status(output.status),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Starts the release server on a free port with the bench settings and waits for `/healthz`.
fn start_server(
    binary: &Path,
    data_dir: &Path,
    database_url: &str,
    bench_dir: &Path,
    env: &[(&str, String)],
) -> Result<Server> {
    let [port] = http::free_ports::<1>()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let pid_file = bench_dir.join("server.pid");
    let _ = std::fs::remove_file(&pid_file);
    // `sh` records its pid and then becomes the server (`exec` keeps the pid), so the memory read later is the
    // server's own.
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"echo $$ > "$0" && exec "$@""#])
        .arg(&pid_file)
        .arg(binary)
        .arg("serve")
        .current_dir(data_dir)
        .env("BIND_ADDR", addr.to_string())
        .env("PUBLIC_BASE_URL", format!("http://{addr}"))
        .env("DATABASE_URL", database_url)
        .env("DATA_DIR", data_dir)
        .env("STORAGE_BACKEND", "fs")
        .env("MAIL_BACKEND", "file")
        .env("RATE_LIMITS", "off")
        .env("LOGIN_BACKOFF_AFTER", "1000000")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        // A port of its own that nobody scrapes: `soak` measures the unscraped case, and a developer's server may
        // hold the default 9464.
        .env("METRICS_BIND_ADDR", "127.0.0.1:0");
    // The scenario's own settings (`upload`'s S3 storage) override the defaults above.
    command.envs(env.iter().map(|(name, value)| (name, value)));
    let storage = env.iter().find(|(name, _)| *name == "STORAGE_BACKEND").map_or("fs", |(_, value)| value.as_str());
    ui::step(&format!(
        "Starting the server on {addr} (RATE_LIMITS=off, LOGIN_BACKOFF_AFTER=1000000, STORAGE_BACKEND={storage})"
    ));
    let mut service = Service::start("user-management", command, &bench_dir.join("server.log"))?;
    http::wait_until("the server to answer /healthz", STARTUP_TIMEOUT, || {
        service.ensure_running()?;
        Ok(http::is_ok(&addr.to_string(), "/healthz"))
    })?;
    let pid = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("could not read {}", pid_file.display()))?
        .trim()
        .parse::<u32>()
        .with_context(|| format!("{} does not hold a pid", pid_file.display()))?;
    let _ = std::fs::remove_file(&pid_file);
    let server = Server { service, pid, addr, database_url: database_url.to_owned() };
    ui::info(&format!("up (pid {pid}), {} resident", format_kib(server.rss_kib()?)));
    Ok(server)
}

/// The resident set size of process `pid` in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("could not read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// Runs `sql` with `psql` against `url` and returns the output rows, one per line.
fn psql(url: &str, sql: &str) -> Result<Vec<String>> {
    let mut command = Command::new("psql");
    command
        .args(["--no-psqlrc", "--no-password", "--quiet", "--tuples-only", "--no-align"])
        .args(["--set", "ON_ERROR_STOP=1", "--dbname", url, "--command", sql])
        .env("PGCONNECT_TIMEOUT", "10");
    let output = process::output(&mut command)?;
    Ok(output.lines().filter(|line| !line.is_empty()).map(str::to_owned).collect())
}

/// `name` as a quoted SQL identifier.
fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a quoted SQL string literal.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

// --- Output -------------------------------------------------------------------------------------------------------

/// Milliseconds for the table: two decimals below 10 ms, one below 100 ms, none above.
fn format_ms(ms: f64) -> String {
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

/// KiB as MiB with one decimal.
fn format_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The table as Markdown, so it can be pasted into the README as it is.
fn render_table(rows: &[Row]) -> String {
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
fn report_json(
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

/// The CPU's model name from `/proc/cpuinfo`.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_default()
}

/// `time` in UTC as `20261125T143000Z`, for file names that sort by time.
fn timestamp(time: SystemTime) -> String {
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

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| (*arg).to_owned()).collect()
    }

    #[test]
    fn no_arguments_run_every_scenario_with_the_defaults() -> Result<()> {
        let options = Options::parse(&[])?;
        let all_but_soak: Vec<Scenario> = Scenario::ALL.into_iter().filter(|s| *s != Scenario::Soak).collect();
        assert_eq!(options.scenarios, all_but_soak);
        assert_eq!(options.soak, Duration::from_secs(600));
        assert_eq!(options.users, 1000);
        assert_eq!(options.warmup, Duration::from_secs(3));
        assert_eq!(options.duration, Duration::from_secs(10));
        assert!(!options.fresh);
        assert_eq!(options.server_bin, None);
        Ok(())
    }

    #[test]
    fn named_scenarios_run_in_the_fixed_order_once() -> Result<()> {
        let options = Options::parse(&args(&["search", "me", "--users=1_000_000", "me", "--duration", "5s"]))?;
        assert_eq!(options.scenarios, vec![Scenario::Me, Scenario::Search]);
        assert_eq!(options.users, 1_000_000);
        assert_eq!(options.duration, Duration::from_secs(5));
        Ok(())
    }

    #[test]
    fn soak_runs_only_when_named_for_the_minutes_given() -> Result<()> {
        let options = Options::parse(&args(&["soak", "--soak-minutes", "3"]))?;
        assert_eq!(options.scenarios, vec![Scenario::Soak]);
        assert_eq!(options.soak, Duration::from_secs(180));
        assert!(Options::parse(&args(&["soak", "--soak-minutes", "0"])).is_err());
        assert!(Options::parse(&args(&["soak", "--soak-minutes", "1.5"])).is_err());
        Ok(())
    }

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

    #[test]
    fn unknown_scenarios_and_options_are_refused() {
        assert!(Options::parse(&args(&["everything"])).is_err());
        assert!(Options::parse(&args(&["--threads", "4"])).is_err());
        assert!(Options::parse(&args(&["--users", "0"])).is_err());
        assert!(Options::parse(&args(&["--duration"])).is_err());
        assert!(Options::parse(&args(&["--duration", "0"])).is_err());
    }

    #[test]
    fn oha_json_is_read_with_unexpected_statuses_as_errors() -> Result<()> {
        let output = r#"{
            "summary": {"successRate": 1.0, "requestsPerSec": 15000.5},
            "latencyPercentiles": {"p50": 0.002, "p99": 0.009, "p99.9": 0.015},
            "statusCodeDistribution": {"200": 1000, "503": 3},
            "errorDistribution": {"connection closed": 2}
        }"#;
        let measured = parse_oha(output, 200)?;
        assert!((measured.requests_per_sec - 15000.5).abs() < 1e-9);
        assert!((measured.p50_ms - 2.0).abs() < 1e-9);
        assert!((measured.p999_ms - 15.0).abs() < 1e-9);
        assert_eq!(measured.errors, 5);
        assert_eq!(measured.total, 1005);
        Ok(())
    }

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

    #[test]
    fn timestamps_are_utc_and_sortable() {
        assert_eq!(timestamp(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(timestamp(UNIX_EPOCH + Duration::from_secs(1_795_617_000)), "20261125T143000Z");
    }

    #[test]
    fn the_upload_body_is_one_multipart_part_holding_a_jpeg_of_about_1_mb() -> Result<()> {
        let jpeg = bench_jpeg()?;
        assert!((900_000..=1_200_000).contains(&jpeg.len()), "the test JPEG is {} bytes", jpeg.len());
        assert_eq!(jpeg.get(..3), Some(&[0xff, 0xd8, 0xff][..]));
        let body = multipart_body(b"xyz");
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(&format!("--{UPLOAD_BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"")));
        assert!(text.ends_with(&format!("\r\n\r\nxyz\r\n--{UPLOAD_BOUNDARY}--\r\n")));
        Ok(())
    }

    #[test]
    fn the_seed_statement_copies_the_admin_hash_into_every_row() {
        let sql = seed_sql(1_000_000);
        assert!(sql.contains("generate_series(1, 1000000)"));
        assert!(sql.contains("'bench-admin@example.com'"));
        assert!(sql.contains("gen_random_uuid()"));
    }
}
