//! Running commands and supervising the processes the task runner starts.
//!
//! Every child runs in a process group of its own, and the task runner is the one that signals it: a Ctrl-C in the
//! terminal, or a SIGTERM sent to the task runner alone (say, by a CI timeout), is passed on to the command running in
//! the foreground (cargo and every test process below it), while background services stay up until they are
//! stopped in order after it. [`Service`] stops its process on drop as well, so an early error or a panic leaves
//! nothing behind. Every failure names the command and how it ended.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::ui;

/// Set by the signal handler on SIGINT, SIGTERM or SIGHUP.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How long a foreground command may take to exit after it was passed SIGINT before it is sent SIGTERM.
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);

/// How long a process may take to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Makes SIGINT, SIGTERM and SIGHUP set a flag instead of killing the task runner, so it can clean up.
pub fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst)).context("could not install the Ctrl-C handler")
}

/// Whether the task runner has been asked to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails when the task runner has been asked to stop, so that it starts nothing new.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// The command line of `command`, for messages, with credentials left out: what follows `authorization:` in any
/// argument (a load generator's bearer token, as `-H 'Authorization: ...'`, `-HAuthorization: ...` or
/// `--header=...`, and `Proxy-Authorization` alike), and the password of a URL (`postgres://user:secret@host/db`,
/// as `psql --dbname` takes a database URL with one when `DATABASE_URL` has it).
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| redact_url_password(&redact_credentials(&arg.to_string_lossy())))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `arg` cut after the first `authorization:` (any case), with `<redacted>` in place of the rest.
fn redact_credentials(arg: &str) -> String {
    const NAME: &str = "authorization:";
    // ASCII lower-casing keeps every byte where it was, and the match is ASCII, so its end is a character boundary.
    match arg.to_ascii_lowercase().find(NAME).and_then(|at| arg.get(..at + NAME.len())) {
        Some(kept) => format!("{kept} <redacted>"),
        None => arg.to_owned(),
    }
}

/// `arg` with the password of every URL in it replaced by `<redacted>`: from the `:` after the user name to the last
/// `@` before the path. The authority is taken to run to the first `/` after `://`, as libpq reads it, so a password
/// holding `?`, `#` or a space is still covered (at worst more than the password is left out); a URL without a
/// password is left as it is. A password holding an unencoded `/` is not covered: libpq itself would read the URL
/// differently, so such a URL does not connect either.
pub fn redact_url_password(arg: &str) -> String {
    let mut redacted = String::with_capacity(arg.len());
    let mut copied = 0;
    for (scheme, separator) in arg.match_indices("://") {
        let start = scheme + separator.len();
        let authority = arg.get(start..).map_or("", |rest| rest.split('/').next().unwrap_or(rest));
        let Some((colon, at)) =
            authority.rfind('@').and_then(|at| authority[..at].find(':').map(|colon| (start + colon, start + at)))
        else {
            continue;
        };
        // Authorities end at a `/`, which every later `://` holds, so no two of them overlap; checked all the same.
        if colon < copied {
            continue;
        }
        redacted.push_str(&arg[copied..=colon]);
        redacted.push_str("<redacted>");
        copied = at;
    }
    redacted.push_str(&arg[copied..]);
    redacted
}

/// How a process ended, for messages: `exit code 1` or `signal 15`.
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// The exit code a shell would report for `status` (128 + n for death by signal n).
pub fn exit_code(status: ExitStatus) -> ExitCode {
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Runs `command` in the foreground with inherited standard streams and fails unless it exits successfully.
pub fn run(command: &mut Command) -> Result<()> {
    check_interrupted()?;
    let mut child = command.spawn().with_context(|| format!("could not start `{}`", describe(command)))?;
    let status = wait_foreground(&mut child, &describe(command))?;
    if !status.success() {
        bail!("`{}` failed with {}", describe(command), describe_status(status));
    }
    Ok(())
}

/// Runs `command`, captures its standard output and fails, quoting its standard error, unless it exits successfully.
pub fn output(command: &mut Command) -> Result<String> {
    let output =
        command.stdin(Stdio::null()).output().with_context(|| format!("could not start `{}`", describe(command)))?;
    check_success(command, &output)?;
    String::from_utf8(output.stdout)
        .with_context(|| format!("`{}` printed something that is not UTF-8", describe(command)))
}

/// Runs `command` with `input` written to its standard input (a password, say), captures its output and fails,
/// quoting its standard error, unless it exits successfully.
pub fn run_with_input(command: &mut Command, input: &str) -> Result<()> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{}`", describe(command)))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("could not write to the standard input of `{}`", describe(command)))?;
    }
    let output = child.wait_with_output().with_context(|| format!("could not wait for `{}`", describe(command)))?;
    check_success(command, &output)
}

/// Fails, quoting the captured standard error, unless `output` of `command` tells of a successful exit.
pub fn check_success(command: &Command, output: &Output) -> Result<()> {
    if !output.status.success() {
        bail!(
            "`{}` failed with {}: {}",
            describe(command),
            describe_status(output.status),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Every file called `name` in the directories on `PATH`, then in cargo's `bin` directory (`$CARGO_HOME/bin`, or
/// `~/.cargo/bin`), in that order: the candidates for a tool that is on `PATH` or was installed with
/// `cargo install`.
pub fn executables_named(name: &str) -> impl Iterator<Item = PathBuf> {
    let path_dirs =
        std::env::var_os("PATH").map(|path| std::env::split_paths(&path).collect::<Vec<_>>()).unwrap_or_default();
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|cargo_home| cargo_home.join("bin"));
    let name = name.to_owned();
    path_dirs.into_iter().chain(cargo_bin).map(move |dir| dir.join(&name)).filter(|candidate| candidate.is_file())
}

/// Sends `signal` (`TERM`, `KILL`, ...) to the process group `pgid` with the system's `kill`.
fn signal_group(pgid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stderr(Stdio::null())
        .status()
        .context("could not run `kill`")?;
    if !status.success() {
        bail!("`kill -{signal} -- -{pgid}` failed with {}", describe_status(status));
    }
    Ok(())
}

/// Starts `command` in a process group of its own, with inherited standard streams, unless the task runner has
/// already been interrupted. Wait for it with [`wait_foreground`], which passes interrupts on.
pub fn spawn_foreground(command: &mut Command) -> Result<Child> {
    check_interrupted()?;
    command.process_group(0);
    command.spawn().with_context(|| format!("could not start `{}`", describe(command)))
}

/// Waits for a child started with [`spawn_foreground`] and returns how it ended.
///
/// When the task runner is interrupted, the child's process group gets SIGINT, as from a terminal; SIGTERM after
/// [`INTERRUPT_GRACE`] and SIGKILL after [`STOP_DEADLINE`] more, if it is still running. Once the child has exited
/// after an interrupt, whatever is left in its group (a test binary whose cargo died first) gets SIGTERM.
pub fn wait_foreground(child: &mut Child, name: &str) -> Result<ExitStatus> {
    // `spawn_foreground` made the child the leader of a new group, so the group id is its pid.
    let pgid = child.id();
    let mut interrupted_at: Option<Instant> = None;
    let mut terminated = false;
    loop {
        if let Some(status) = child.try_wait().with_context(|| format!("could not wait for {name}"))? {
            if interrupted_at.is_some() {
                // Most often nobody is left, and `kill` fails; that is the good outcome.
                let _ = signal_group(pgid, "TERM");
            }
            return Ok(status);
        }
        match interrupted_at {
            None if interrupted() => {
                ui::info(&format!("interrupted: passing SIGINT on to {name}"));
                // It may have exited in between; the next `try_wait` tells.
                let _ = signal_group(pgid, "INT");
                interrupted_at = Some(Instant::now());
            }
            Some(since) if !terminated && since.elapsed() >= INTERRUPT_GRACE => {
                ui::info(&format!("{name} is still running; sending SIGTERM"));
                let _ = signal_group(pgid, "TERM");
                terminated = true;
            }
            Some(since) if since.elapsed() >= INTERRUPT_GRACE + STOP_DEADLINE => {
                ui::info(&format!("{name} ignored SIGTERM; killing it"));
                if signal_group(pgid, "KILL").is_err() {
                    child.kill().with_context(|| format!("could not kill {name}"))?;
                }
                return child.wait().with_context(|| format!("could not wait for {name}"));
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A background process the task runner started and must stop: its output goes to a log file.
pub struct Service {
    /// A short name for messages (`garage`, `maildev`).
    name: &'static str,
    /// The process, until it has been stopped and reaped.
    child: Option<Child>,
    /// Where its standard output and error go.
    log: PathBuf,
}

impl Service {
    /// Starts `command` in a new process group, with standard input closed and its output appended to `log`.
    pub fn start(name: &'static str, mut command: Command, log: &Path) -> Result<Self> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
        }
        let stdout = File::create(log).with_context(|| format!("could not create {}", log.display()))?;
        let stderr = stdout.try_clone().with_context(|| format!("could not reopen {}", log.display()))?;
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr).process_group(0);
        let child = command.spawn().with_context(|| format!("could not start {name}: `{}`", describe(&command)))?;
        ui::info(&format!("{name} started (pid {}), log: {}", child.id(), log.display()));
        Ok(Self { name, child: Some(child), log: log.to_path_buf() })
    }

    /// The process id, while it has not been stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The service's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The file its output goes to.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Fails when the process has already exited: useful while waiting for it to become ready.
    pub fn ensure_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} has been stopped", self.name);
        };
        if let Some(status) = child.try_wait().with_context(|| format!("could not check on {}", self.name))? {
            bail!("{} exited with {}; see {}", self.name, describe_status(status), self.log.display());
        }
        Ok(())
    }

    /// Stops the process: SIGTERM to its process group, then SIGKILL when it is still there after [`STOP_DEADLINE`].
    ///
    /// Stopping a service that already exited (a test may have stopped it) only reaps it.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let name = self.name;
        let pid = child.id();
        if let Some(status) = child.try_wait().with_context(|| format!("could not check on {name}"))? {
            ui::info(&format!("{name} (pid {pid}) had already exited with {}", describe_status(status)));
            return Ok(());
        }
        // The group id is the pid: `start` made the process the leader of a new group.
        if let Err(error) = signal_group(pid, "TERM") {
            ui::warn(&format!("could not send SIGTERM to {name}: {error:#}"));
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().with_context(|| format!("could not wait for {name}"))? {
                ui::info(&format!("{name} (pid {pid}) stopped ({})", describe_status(status)));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        ui::warn(&format!("{name} (pid {pid}) ignored SIGTERM for {}s; killing it", STOP_DEADLINE.as_secs()));
        if signal_group(pid, "KILL").is_err() {
            child.kill().with_context(|| format!("could not kill {name} (pid {pid})"))?;
        }
        child.wait().with_context(|| format!("could not wait for {name} (pid {pid})"))?;
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            ui::warn(&format!("{error:#}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_described_command_leaves_out_the_bearer_token() {
        let mut command = Command::new("oha");
        command.args(["-H", "authorization: Bearer secret-token", "-H", "Accept: application/json", "http://x/me"]);
        let description = describe(&command);
        assert_eq!(description, "oha -H authorization: <redacted> -H Accept: application/json http://x/me");
        assert!(!description.contains("secret-token"));
    }

    #[test]
    fn a_credential_joined_to_its_option_is_left_out_too() {
        let mut command = Command::new("tool");
        command.args(["-HAuthorization: Bearer one", "--header=Proxy-Authorization: Basic two", "plain"]);
        assert_eq!(
            describe(&command),
            "tool -HAuthorization: <redacted> --header=Proxy-Authorization: <redacted> plain"
        );
    }

    #[test]
    fn a_described_command_leaves_out_the_password_of_a_url() {
        let mut command = Command::new("psql");
        command.args([
            "--dbname",
            "postgres://app:s3cr%40t:x@db.example:5432/app?sslmode=require",
            "--dbname=postgresql://me:pw@[::1]/x",
            "https://example.com/a@b:c",
        ]);
        let description = describe(&command);
        assert_eq!(
            description,
            "psql --dbname postgres://app:<redacted>@db.example:5432/app?sslmode=require \
             --dbname=postgresql://me:<redacted>@[::1]/x https://example.com/a@b:c"
        );
        assert!(!description.contains("s3cr") && !description.contains(":pw@"));
    }

    #[test]
    fn a_password_holding_url_delimiters_or_a_second_url_is_left_out_too() {
        for (url, secret) in [
            ("postgres://app:pa?ss@db:5432/app", "pa?ss"),
            ("postgres://app:pa#ss@db/app", "pa#ss"),
            ("postgres://app:pa ss@db/app", "pa ss"),
            ("a=postgres://u:first@h,b=postgres://v:second@k/x", "second"),
            ("a=postgres://u:first@h,b=postgres://v:second@k/x", "first"),
        ] {
            let redacted = redact_url_password(url);
            assert!(!redacted.contains(secret), "{url} -> {redacted}");
            assert!(redacted.contains(":<redacted>@"), "{url} -> {redacted}");
        }
        assert_eq!(
            redact_url_password("a=postgres://u@h,b=postgres://v:q@k"),
            "a=postgres://u@h,b=postgres://v:<redacted>@k"
        );
        assert_eq!(redact_url_password("é postgres://ü:ß@ĥ/x ü"), "é postgres://ü:<redacted>@ĥ/x ü");
    }

    #[test]
    fn a_url_without_a_password_is_described_as_it_is() {
        for url in ["postgres://postgres@127.0.0.1:5432/postgres", "http://127.0.0.1:8080/me", "plain", "a://"] {
            assert_eq!(redact_url_password(url), url);
        }
    }
}
