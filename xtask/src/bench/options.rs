//! The command line of `cargo xtask bench`: the scenarios it knows, in running order, and the options with their
//! defaults.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// How long `soak` runs unless `--soak-minutes` says otherwise.
const SOAK_DEFAULT: Duration = Duration::from_secs(10 * 60);

/// One benchmark scenario, in the order they run: `idle` first so its "at rest" figure is a fresh server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Scenario {
    /// RSS at rest and with 10k idle keep-alive connections.
    Idle,
    /// `GET /me` with a valid token.
    Me,
    /// `GET /me` on `bench-baseline`: the same read with nothing around it, the ceiling of `me`.
    Baseline,
    /// Admin `GET /users/{id}`.
    UserById,
    /// Admin `GET /users?q=user12&limit=20`.
    Search,
    /// `POST /login` with the right password.
    Login,
    /// A full login with a second factor: `POST /login` (answered `mfa_required`), then `POST /login/mfa` with a
    /// TOTP code.
    LoginMfa,
    /// `POST /register` with a new address every time.
    Register,
    /// The raw argon2id hash rate, in-process.
    Argon2,
    /// `POST /token/refresh`, each request with the token the previous answer returned.
    Refresh,
    /// `GET /me` while 200 connections send wrong passwords.
    Storm,
    /// `GET /me` and `POST /login` through nginx in front of two instances on the one database.
    Proxy,
    /// `POST /users/{id}/profile-picture` of a ~1 MB JPEG, with the server storing in a Garage the run starts.
    Upload,
    /// The service's picture pipeline alone on `upload`'s JPEG, in-process: the ceiling of `upload`.
    Pictures,
    /// `GET /me` for `--soak-minutes` with nobody scraping `/metrics`, the server's memory sampled throughout.
    Soak,
}

impl Scenario {
    /// Every scenario, in running order.
    const ALL: [Self; 15] = [
        Self::Idle,
        Self::Me,
        Self::Baseline,
        Self::UserById,
        Self::Search,
        Self::Login,
        Self::LoginMfa,
        Self::Register,
        Self::Argon2,
        Self::Refresh,
        Self::Storm,
        Self::Proxy,
        Self::Upload,
        Self::Pictures,
        Self::Soak,
    ];

    /// Whether the scenario runs when none is named: all but `soak`, which takes ten minutes.
    fn runs_by_default(self) -> bool {
        self != Self::Soak
    }

    /// The name used on the command line and in the table.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Me => "me",
            Self::Baseline => "baseline",
            Self::UserById => "user-by-id",
            Self::Search => "search",
            Self::Login => "login",
            Self::LoginMfa => "login-mfa",
            Self::Register => "register",
            Self::Argon2 => "argon2",
            Self::Refresh => "refresh",
            Self::Storm => "storm",
            Self::Proxy => "proxy",
            Self::Upload => "upload",
            Self::Pictures => "pictures",
            Self::Soak => "soak",
        }
    }

    /// The scenario called `name`, if any.
    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scenario| scenario.name() == name)
    }

    /// Whether the scenario runs `oha`.
    pub(super) fn uses_oha(self) -> bool {
        matches!(
            self,
            Self::Me
                | Self::Baseline
                | Self::UserById
                | Self::Search
                | Self::Login
                | Self::Storm
                | Self::Proxy
                | Self::Upload
                | Self::Soak
        )
    }
}

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Options {
    /// The scenarios to run, in running order, without repeats.
    pub(super) scenarios: Vec<Scenario>,
    /// How many users to seed.
    pub(super) users: u64,
    /// Warm-up before each measurement, not counted.
    pub(super) warmup: Duration,
    /// Measured duration of each scenario.
    pub(super) duration: Duration,
    /// Drop and recreate the database even when it already holds the seeded users.
    pub(super) fresh: bool,
    /// A server binary built elsewhere (another checkout, another commit) to measure instead of building this one.
    pub(super) server_bin: Option<PathBuf>,
    /// A `bench-baseline` binary built elsewhere, to measure `baseline` with instead of building this checkout's.
    pub(super) baseline_bin: Option<PathBuf>,
    /// How long `soak` keeps the load on.
    pub(super) soak: Duration,
}

impl Options {
    /// Parses `[scenario...] [--users N] [--duration S] [--warmup S] [--fresh] [--server-bin PATH]
    /// [--baseline-bin PATH] [--soak-minutes M]`.
    pub(super) fn parse(args: &[String]) -> Result<Self> {
        let mut options = Self {
            scenarios: Vec::new(),
            users: 1000,
            warmup: Duration::from_secs(3),
            duration: Duration::from_secs(10),
            fresh: false,
            server_bin: None,
            baseline_bin: None,
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
                "--baseline-bin" => options.baseline_bin = Some(PathBuf::from(value()?)),
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
        assert_eq!(options.baseline_bin, None);
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
    fn login_mfa_runs_by_default_between_login_and_argon2() -> Result<()> {
        let options = Options::parse(&args(&["argon2", "login-mfa", "login"]))?;
        assert_eq!(options.scenarios, vec![Scenario::Login, Scenario::LoginMfa, Scenario::Argon2]);
        assert!(Options::parse(&[])?.scenarios.contains(&Scenario::LoginMfa));
        assert!(!Scenario::LoginMfa.uses_oha());
        Ok(())
    }

    #[test]
    fn baseline_follows_me_and_register_runs_before_argon2() -> Result<()> {
        let options = Options::parse(&args(&["argon2", "register", "login", "baseline", "me"]))?;
        assert_eq!(
            options.scenarios,
            vec![Scenario::Me, Scenario::Baseline, Scenario::Login, Scenario::Register, Scenario::Argon2]
        );
        let defaults = Options::parse(&[])?.scenarios;
        assert!(defaults.contains(&Scenario::Baseline) && defaults.contains(&Scenario::Register));
        assert!(Scenario::Baseline.uses_oha());
        assert!(!Scenario::Register.uses_oha());
        Ok(())
    }

    #[test]
    fn binaries_built_elsewhere_are_taken_for_the_server_and_the_baseline() -> Result<()> {
        let options =
            Options::parse(&args(&["me", "baseline", "--server-bin", "/a/server", "--baseline-bin=/b/baseline"]))?;
        assert_eq!(options.server_bin, Some(PathBuf::from("/a/server")));
        assert_eq!(options.baseline_bin, Some(PathBuf::from("/b/baseline")));
        assert!(Options::parse(&args(&["--baseline-bin"])).is_err(), "a flag without its value is refused");
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
    fn unknown_scenarios_and_options_are_refused() {
        assert!(Options::parse(&args(&["everything"])).is_err());
        assert!(Options::parse(&args(&["--threads", "4"])).is_err());
        assert!(Options::parse(&args(&["--users", "0"])).is_err());
        assert!(Options::parse(&args(&["--duration"])).is_err());
        assert!(Options::parse(&args(&["--duration", "0"])).is_err());
    }
}
