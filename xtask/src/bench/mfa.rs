//! The `login-mfa` scenario: full logins of accounts with a second factor, each `POST /login` with the right
//! password (answered 401 `mfa_required` with an `mfa_token`) followed by `POST /login/mfa` with that token and a
//! TOTP code, in a built-in loop since `oha` repeats one fixed request and every code is good for one login only.
//!
//! Before loading, TOTP is turned on directly in the database (as the seeding is done) for a range of seeded users
//! that no other scenario signs in as, all with one fixed secret; each user still has a `last_used_step` of their
//! own, and the server accepts a code only for a step later than that. So the loop hands out users from a shared
//! cursor and keeps each user's last step: a connection logs its user in with the current step if that user has not
//! used it, else with the next step (the server accepts one step of skew either way), else takes the next user. A
//! fresh user thus gives at least two logins, and the range is sized for the longest run at the highest login rate
//! any machine could reach (see [`users_needed`]). Afterwards, and at the start of every run ([`reset`], called by
//! the seeding), the second factor is turned off for every user, so the other scenarios (and `login` above all,
//! which a second factor would answer with `mfa_required`) never meet it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::options::Options;
use super::refresh::REFRESH_CONNECTIONS;
use super::report::{Row, error_note, measure_latencies};
use super::requests::LOGIN_CONNECTIONS;
use super::seed::{PASSWORD, SEED_DOMAIN};
use super::server::{Server, tokens};
use super::system::CpuMeter;
use super::totp;
use crate::http::{HttpConn, Response};
use crate::postgres::psql;
use crate::{process, ui};

/// The first seeded user the scenario turns TOTP on for. The users below are left to the other scenarios, which
/// sign in as `user1` to `user32` (`refresh` has one user per connection) and upload as `user3`; `user-by-id` only
/// reads the middle user, and the second factor is off again for everyone once this scenario ends.
const FIRST_USER: u64 = 101;

// `refresh` signs in as the most users, one per connection from `user1` on.
const _: () = assert!(FIRST_USER > REFRESH_CONNECTIONS as u64);

/// The TOTP secret of every user in the range: 20 bytes, the length of an HMAC-SHA-1 key the server generates.
const SECRET: &[u8; 20] = b"bench-totp-secret-20";

/// An upper bound of the full logins per second one core can serve: each costs one argon2id hash with the server's
/// parameters (m=19456 KiB, t=2), about 12 ms on this machine's cores and, on no core we know of, under 5 ms.
const MAX_LOGINS_PER_CORE_PER_SEC: u64 = 200;

/// The logins a fresh user is sure to give: the current step and the next.
const LOGINS_PER_USER: u64 = 2;

/// Time beyond the warm-up and the measured run that logins may go on for: the probe, and the last login of every
/// connection, which may end up to a second after the run.
const SLACK: Duration = Duration::from_secs(2);

/// The fewest users the scenario runs with: each connection holds one at a time, and needs others to move on to.
const MIN_USERS: u64 = 2 * LOGIN_CONNECTIONS as u64;

/// `login-mfa`: [`LOGIN_CONNECTIONS`] connections, each doing full two-step logins as fast as the server answers;
/// one request per second in the table is one full login.
pub(super) fn login_mfa(server: &Server, options: &Options) -> Result<Row> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) as u64;
    let range = UserRange::choose(options.users, cores, options.warmup + options.duration)?;
    let shortfall = if range.len() < range.needed {
        format!("; the highest rate could use {}, from --users {}", range.needed, FIRST_USER + range.needed - 1)
    } else {
        String::new()
    };
    ui::info(&format!(
        "turning TOTP on for user{}-user{}: {} users, {} logins before one is reused{shortfall}",
        range.first,
        range.last,
        range.len(),
        range.len() * LOGINS_PER_USER,
    ));
    reset(&server.database_url)?;
    let row = enable(&server.database_url, &range).and_then(|()| measure(server, options, &range));
    // Whatever happened, the other scenarios must find no second factor.
    let turned_off = reset(&server.database_url).context("could not turn the second factor off again");
    let row = row?;
    turned_off?;
    Ok(row)
}

/// The seeded users with TOTP on: `user{first}` to `user{last}`.
#[derive(Debug, PartialEq, Eq)]
struct UserRange {
    /// The first user's number.
    first: u64,
    /// The last user's number.
    last: u64,
    /// How many users the run could use at the highest rate: more than the range holds when too few are seeded.
    needed: u64,
}

impl UserRange {
    /// The range for a run of `run` (warm-up and measured) on `cores` cores with `users` seeded users: as many
    /// users as [`users_needed`], or every seeded user from [`FIRST_USER`] when there are fewer.
    fn choose(users: u64, cores: u64, run: Duration) -> Result<Self> {
        let needed = users_needed(cores, run);
        let last = users.min(FIRST_USER + needed - 1);
        if last + 1 < FIRST_USER + MIN_USERS {
            bail!(
                "login-mfa needs at least {} seeded users (it turns TOTP on from user{FIRST_USER} on); use --users",
                FIRST_USER + MIN_USERS - 1
            );
        }
        Ok(Self { first: FIRST_USER, last, needed })
    }

    /// How many users the range holds.
    fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    /// The email of the range's `index`th user (from 0).
    fn email(&self, index: usize) -> String {
        format!("user{}@{SEED_DOMAIN}", self.first + index as u64)
    }

    /// The emails of the range as an SQL set.
    fn emails_sql(&self) -> String {
        format!("(SELECT 'user' || n || '@{SEED_DOMAIN}' FROM generate_series({}, {}) AS n)", self.first, self.last)
    }
}

/// The users a run of `run` on `cores` cores could need: every login at the highest rate, two per user, for the
/// run and [`SLACK`], plus one per connection for the user it is left holding.
///
/// A connection goes on with a user whose steps are used up only once the clock reaches a new step, so users are
/// reused after a full round of the range; at the highest rate the range lasts the whole run before that.
fn users_needed(cores: u64, run: Duration) -> u64 {
    let seconds = (run + SLACK).as_secs();
    (MAX_LOGINS_PER_CORE_PER_SEC * cores.max(1) * seconds).div_ceil(LOGINS_PER_USER) + u64::from(LOGIN_CONNECTIONS)
}

/// Turns TOTP on for the users of `range`: `users.mfa_enabled`, and a confirmed secret with no step used yet, stored
/// without a data key (format byte 0, then the secret) as the server does when `DATA_ENCRYPTION_KEY_FILE` is unset.
fn enable(url: &str, range: &UserRange) -> Result<()> {
    psql(url, &enable_sql(range)).context("could not turn TOTP on for the login-mfa users")?;
    let enabled = psql(
        url,
        &format!(
            "SELECT count(*) FROM users JOIN totp_secrets ON totp_secrets.user_id = users.id \
             WHERE users.mfa_enabled AND totp_secrets.enabled AND totp_secrets.last_used_step IS NULL \
               AND lower(users.email) IN {}",
            range.emails_sql()
        ),
    )?;
    let count: u64 = enabled.first().and_then(|count| count.parse().ok()).unwrap_or(0);
    if count != range.len() {
        bail!("TOTP is on for {count} of user{}-user{}, not all {}", range.first, range.last, range.len());
    }
    Ok(())
}

/// The statements that turn TOTP on for `range`, in one transaction.
fn enable_sql(range: &UserRange) -> String {
    let secret: String = SECRET.iter().map(|byte| format!("{byte:02x}")).collect();
    let emails = range.emails_sql();
    format!(
        "BEGIN; \
         UPDATE users SET mfa_enabled = true WHERE lower(email) IN {emails}; \
         INSERT INTO totp_secrets (user_id, secret, enabled, last_used_step, created_at, enabled_at) \
         SELECT id, decode('00{secret}', 'hex'), true, NULL, now(), now() FROM users WHERE lower(email) IN {emails} \
         ON CONFLICT (user_id) DO UPDATE SET secret = EXCLUDED.secret, enabled = true, last_used_step = NULL, \
             created_at = EXCLUDED.created_at, enabled_at = EXCLUDED.enabled_at; \
         COMMIT;"
    )
}

/// Turns the second factor off for every user of the bench database at `url`: no TOTP secret, no recovery code, no
/// login waiting for its second step, `users.mfa_enabled` false. Nothing happens on a schema without the second
/// factor (a `--server-bin` built before it).
pub(super) fn reset(url: &str) -> Result<()> {
    psql(url, RESET_SQL).context("could not turn the second factor off")?;
    Ok(())
}

/// The statement of [`reset`]: a block, so the tables it names are only looked up when they exist.
const RESET_SQL: &str = "DO $$ BEGIN \
    IF to_regclass('public.totp_secrets') IS NOT NULL THEN \
        TRUNCATE totp_secrets, recovery_codes, mfa_challenges; \
        UPDATE users SET mfa_enabled = false WHERE mfa_enabled; \
    END IF; \
END $$";

/// Which step a user whose last used step is `last` logs in with at step `current`: the current step if it is later
/// than the last, else the next if that is, else none (the user has to wait for a new step).
fn step_for(last: Option<u64>, current: u64) -> Option<u64> {
    let step = last.map_or(current, |last| current.max(last + 1));
    (step <= current + 1).then_some(step)
}

/// The users of the range and the last step each used, handed out to the connections by a shared cursor.
struct Pool<'a> {
    /// The range.
    range: &'a UserRange,
    /// The last step each user logged in with; locked by the connection using the user, so a user's steps are
    /// used in order.
    last_steps: Vec<Mutex<Option<u64>>>,
    /// The next user to hand out; wraps around the range.
    cursor: AtomicUsize,
}

/// A user a connection holds: its index in the range and its last step.
type Held<'a> = (usize, MutexGuard<'a, Option<u64>>);

impl<'a> Pool<'a> {
    /// Every user of `range`, none with a step used yet.
    fn new(range: &'a UserRange) -> Self {
        let users = usize::try_from(range.len()).unwrap_or(usize::MAX);
        Self { range, last_steps: (0..users).map(|_| Mutex::new(None)).collect(), cursor: AtomicUsize::new(0) }
    }

    /// The next user, from the cursor on, that no other connection holds and that has a step left at step
    /// `current`; none when a whole round of the range found none.
    fn take(&self, current: u64) -> Option<Held<'_>> {
        let users = self.last_steps.len();
        for _ in 0..users {
            let index = self.cursor.fetch_add(1, Ordering::Relaxed) % users;
            let Some(Ok(last)) = self.last_steps.get(index).map(Mutex::try_lock) else {
                continue;
            };
            if step_for(*last, current).is_some() {
                return Some((index, last));
            }
        }
        None
    }
}

/// Runs the connections over the warm-up and the measured time, and makes the row of what they measured.
fn measure(server: &Server, options: &Options, range: &UserRange) -> Result<Row> {
    let pool = Pool::new(range);
    // One login first: a server without the second factor, or that refuses the code, fails the scenario with its
    // answer rather than producing a row of fast errors.
    let mut probe_conn = HttpConn::connect(server.addr)?;
    let mut probe_user = pool.take(totp::step_at(SystemTime::now())).context("no login-mfa user to probe with")?;
    full_login(&mut probe_conn, &range.email(probe_user.0), &mut probe_user.1)
        .map_err(|failure| anyhow::anyhow!("the first login as {} failed: {}", range.email(probe_user.0), failure.0))?;
    drop(probe_user);

    let connections = LOGIN_CONNECTIONS;
    // The connections and this thread, which measures the server's CPU over the measured window.
    let barrier = Barrier::new(usize::try_from(connections).unwrap_or(1) + 1);
    let addr = server.addr;
    let (results, server_cpu_percent) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|_| {
                let (barrier, pool) = (&barrier, &pool);
                scope.spawn(move || login_loop(addr, pool, barrier, options))
            })
            .collect();
        barrier.wait();
        std::thread::sleep(options.warmup);
        let meter = CpuMeter::start(server.pid).ok();
        std::thread::sleep(options.duration);
        let cpu = meter.and_then(|meter| meter.percent().ok());
        let results: Vec<Result<LoopResult>> = handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a login-mfa thread panicked"))))
            .collect();
        (results, cpu)
    });

    let mut latencies = Vec::new();
    let mut errors: Vec<(String, u64)> = Vec::new();
    let mut elapsed = Duration::ZERO;
    let mut waited = Duration::ZERO;
    for result in results {
        let result = result?;
        latencies.extend(result.latencies);
        elapsed = elapsed.max(result.measured_for);
        waited += result.waited;
        for kind in result.errors {
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
    let mut row = Row::new("login-mfa");
    row.connections = Some(u64::from(connections));
    row.note = format!(
        "built-in loop, full logins/s (POST /login + POST /login/mfa), TOTP on user{}-user{}{}",
        range.first,
        range.last,
        error_note(&measurement)
    );
    if !waited.is_zero() {
        // The rate then says how many steps the users had, not how fast the server logs in.
        row.failure = Some(format!(
            "ran out of TOTP steps: the connections waited {:.1} s in all ({:.1} s each on average) for a new step; \
             user{}-user{} are too few for this rate, seed more with --users {}",
            waited.as_secs_f64(),
            waited.as_secs_f64() / f64::from(connections),
            range.first,
            range.last,
            FIRST_USER + range.needed - 1,
        ));
    }
    row.measurement = Some(measurement);
    row.rss_kib = server.rss_kib().ok();
    Ok(row)
}

/// What one connection measured.
struct LoopResult {
    /// The latency of every successful full login (both requests) started in the measured window.
    latencies: Vec<Duration>,
    /// What went wrong, one entry per failed login started in the measured window.
    errors: Vec<String>,
    /// From the start of the measured window to the end of this connection's last login.
    measured_for: Duration,
    /// How long the connection waited in the measured window for a new step, every user's being used up.
    waited: Duration,
}

/// One connection of the scenario: full logins, each with a user that has a step left, until the run ends.
fn login_loop(addr: SocketAddr, pool: &Pool<'_>, barrier: &Barrier, options: &Options) -> Result<LoopResult> {
    let conn = HttpConn::connect(addr);
    // Every connection reaches the barrier, connected or not, so that none waits there forever.
    barrier.wait();
    let mut conn = conn?;
    let start = Instant::now();
    let measure_from = start + options.warmup;
    let end = measure_from + options.duration;
    let mut result =
        LoopResult { latencies: Vec::new(), errors: Vec::new(), measured_for: Duration::ZERO, waited: Duration::ZERO };
    let mut held: Option<Held<'_>> = None;
    loop {
        if Instant::now() >= end || process::interrupted() {
            break;
        }
        let current = totp::step_at(SystemTime::now());
        if held.as_ref().is_none_or(|(_, last)| step_for(**last, current).is_none()) {
            // Let go of the used-up user first: the connections lock a user only while they log in as it.
            drop(held.take());
            held = pool.take(current);
        }
        let Some((index, last)) = held.as_mut() else {
            // Every user has used this step and the next: wait for the clock.
            let began = Instant::now();
            while totp::step_at(SystemTime::now()) == current && Instant::now() < end && !process::interrupted() {
                std::thread::sleep(Duration::from_millis(20));
            }
            if began >= measure_from {
                result.waited += began.elapsed();
            } else if Instant::now() > measure_from {
                result.waited += measure_from.elapsed();
            }
            continue;
        };
        let sent = Instant::now();
        let outcome = full_login(&mut conn, &pool.range.email(*index), last);
        let took = sent.elapsed();
        let measured = sent >= measure_from;
        match outcome {
            Ok(()) => {
                if measured {
                    result.latencies.push(took);
                }
            }
            Err(LoginFailure(kind)) => {
                if measured {
                    result.errors.push(kind);
                }
                // The connection may be in any state after an error; start again on a new one.
                conn = HttpConn::connect(addr)?;
            }
        }
    }
    result.measured_for = measure_from.elapsed();
    Ok(result)
}

/// Why a full login failed, as the kind of error shown in the table.
struct LoginFailure(String);

/// One full login of `email` on `conn`: the password, then the TOTP code of the step [`step_for`] picks from `last`,
/// which it updates (before sending: a code that reached the server may have used the step even if no answer came).
fn full_login(conn: &mut HttpConn, email: &str, last: &mut Option<u64>) -> Result<(), LoginFailure> {
    let failure = |what: &str, error: anyhow::Error| LoginFailure(format!("{what}: {error:#}"));
    let body = json!({"email": email, "password": PASSWORD}).to_string();
    let response = conn.send("POST", "/login", &[], Some(&body)).map_err(|error| failure("POST /login", error))?;
    let problem: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let mfa_token = match (response.status, problem["code"].as_str(), problem["mfa_token"].as_str()) {
        (401, Some("mfa_required"), Some(token)) => token.to_owned(),
        _ => return Err(LoginFailure(format!("POST /login: {}", describe(&response, &problem)))),
    };
    let step = step_for(*last, totp::step_at(SystemTime::now()))
        .ok_or_else(|| LoginFailure("no TOTP step left for the user".to_owned()))?;
    *last = Some(step);
    let code = totp::code(SECRET, step, totp::DIGITS).map_err(|error| failure("TOTP", error))?;
    let body = json!({"mfa_token": mfa_token, "code": code}).to_string();
    let response =
        conn.send("POST", "/login/mfa", &[], Some(&body)).map_err(|error| failure("POST /login/mfa", error))?;
    if response.status != 200 {
        let problem: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        return Err(LoginFailure(format!("POST /login/mfa: {}", describe(&response, &problem))));
    }
    tokens(&response).map_err(|error| failure("POST /login/mfa", error))?;
    Ok(())
}

/// `HTTP 401 invalid_mfa_code`: the status and the problem's code, when it has one.
fn describe(response: &Response, problem: &Value) -> String {
    match problem["code"].as_str() {
        Some(code) => format!("HTTP {} {code}", response.status),
        None => format!("HTTP {}", response.status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;

    /// A stand-in for the server's two login steps, with its rules for codes: the code of the current step or one
    /// either side, and only for a step later than the last one the user logged in with.
    #[derive(Default)]
    struct FakeServer {
        /// The user of every `mfa_token` handed out and not used yet.
        tokens: Mutex<HashMap<String, String>>,
        /// Every accepted login: the user and the step of its code, in order.
        accepted: Mutex<Vec<(String, u64)>>,
        /// The `mfa_token`s handed out so far.
        issued: AtomicUsize,
    }

    impl FakeServer {
        /// Starts it on a free port, one thread per connection.
        fn start() -> Result<(SocketAddr, Arc<Self>)> {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let server = Arc::new(Self::default());
            let shared = Arc::clone(&server);
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let server = Arc::clone(&shared);
                    std::thread::spawn(move || server.serve(stream));
                }
            });
            Ok((addr, server))
        }

        /// Answers the requests of one keep-alive connection until it closes.
        fn serve(&self, stream: TcpStream) -> Option<()> {
            let mut reader = BufReader::new(stream.try_clone().ok()?);
            let mut writer = stream;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).ok()? == 0 {
                    return Some(());
                }
                let path = line.split_whitespace().nth(1)?.to_owned();
                let mut length = 0;
                loop {
                    line.clear();
                    reader.read_line(&mut line).ok()?;
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().ok()?;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).ok()?;
                let request: Value = serde_json::from_slice(&body).ok()?;
                let (status, answer) = self.answer(&path, &request);
                let answer = answer.to_string();
                write!(writer, "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{answer}", answer.len()).ok()?;
            }
        }

        /// The status and body answering `request` at `path`.
        fn answer(&self, path: &str, request: &Value) -> (u16, Value) {
            let mut tokens = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match path {
                "/login" if request["password"] == PASSWORD => {
                    let token = format!("token-{}", self.issued.fetch_add(1, Ordering::Relaxed));
                    tokens.insert(token.clone(), request["email"].as_str().unwrap_or_default().to_owned());
                    (401, json!({"code": "mfa_required", "mfa_token": token, "expires_in": 300}))
                }
                "/login/mfa" => {
                    let Some(email) = request["mfa_token"].as_str().and_then(|token| tokens.remove(token)) else {
                        return (401, json!({"code": "invalid_token"}));
                    };
                    drop(tokens);
                    let current = totp::step_at(SystemTime::now());
                    let code = request["code"].as_str().unwrap_or_default();
                    let mut accepted = self.accepted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let last = accepted.iter().rev().find(|(user, _)| *user == email).map(|(_, step)| *step);
                    let matched = [current - 1, current, current + 1]
                        .into_iter()
                        .find(|step| totp::code(SECRET, *step, totp::DIGITS).ok().as_deref() == Some(code));
                    match matched {
                        Some(step) if last.is_none_or(|last| step > last) => {
                            accepted.push((email, step));
                            (
                                200,
                                json!({"access_token": "a", "token_type": "Bearer", "expires_in": 900, "refresh_token": "r"}),
                            )
                        }
                        _ => (401, json!({"code": "invalid_mfa_code"})),
                    }
                }
                _ => (401, json!({"code": "invalid_credentials"})),
            }
        }

        /// How many logins were accepted so far.
        fn accepted_count(&self) -> usize {
            self.accepted.lock().map_or(0, |accepted| accepted.len())
        }
    }

    #[test]
    fn sixteen_connections_never_present_a_step_twice_and_wait_when_every_step_is_used() -> Result<()> {
        let (addr, server) = FakeServer::start()?;
        let range = UserRange { first: FIRST_USER, last: FIRST_USER + MIN_USERS + 7, needed: MIN_USERS + 8 };
        let pool = Pool::new(&range);
        let options = Options::parse(&["login-mfa", "--warmup", "0", "--duration", "1"].map(str::to_owned))?;
        let connections = usize::try_from(LOGIN_CONNECTIONS)?;
        let barrier = Barrier::new(connections + 1);
        let results: Vec<Result<LoopResult>> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                (0..connections).map(|_| scope.spawn(|| login_loop(addr, &pool, &barrier, &options))).collect();
            barrier.wait();
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("panicked"))))
                .collect()
        });
        let mut logins = 0;
        let mut waited = Duration::ZERO;
        for result in results {
            let result = result?;
            assert_eq!(result.errors, Vec::<String>::new());
            logins += result.latencies.len();
            waited += result.waited;
        }
        // The fake answers in microseconds: every user gives its two steps at once, then the connections wait.
        assert_eq!(logins, server.accepted_count());
        assert!(logins >= 2 * range.len() as usize, "{logins} logins");
        assert!(waited > Duration::ZERO);
        Ok(())
    }

    #[test]
    fn a_user_logs_in_with_the_current_step_then_the_next_then_waits() {
        assert_eq!(step_for(None, 100), Some(100));
        assert_eq!(step_for(Some(42), 100), Some(100));
        assert_eq!(step_for(Some(99), 100), Some(100));
        assert_eq!(step_for(Some(100), 100), Some(101));
        assert_eq!(step_for(Some(101), 100), None);
        // Once the clock reaches the step used ahead, the one after it is next.
        assert_eq!(step_for(Some(101), 101), Some(102));
    }

    #[test]
    fn the_pool_hands_out_each_user_once_until_its_steps_are_used() {
        let range = UserRange { first: 101, last: 103, needed: 3 };
        let pool = Pool::new(&range);
        let mut held: Vec<Held<'_>> = (0..3).filter_map(|_| pool.take(7)).collect();
        assert_eq!(held.iter().map(|(index, _)| *index).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(pool.take(7).is_none(), "every user is held");
        for (_, last) in &mut held {
            **last = Some(8);
        }
        drop(held);
        assert!(pool.take(7).is_none(), "every user used the current step and the next");
        assert!(pool.take(8).is_some(), "a new step frees them");
        assert_eq!(range.email(2), "user103@bench.example.com");
    }

    #[test]
    fn the_range_holds_every_login_at_the_highest_rate_when_enough_users_are_seeded() -> Result<()> {
        let run = Duration::from_secs(13);
        // 200 logins/s per core over 15 s on 2 cores, two per user, and one per connection.
        assert_eq!(users_needed(2, run), 3000 + 16);
        let range = UserRange::choose(1_000_000, 2, run)?;
        assert_eq!((range.first, range.last, range.needed), (101, 3116, 3016));
        assert_eq!(range.len(), 3016);
        // With fewer seeded users the range takes them all, and knows it is short.
        let short = UserRange::choose(1000, 2, run)?;
        assert_eq!((short.first, short.last), (101, 1000));
        assert!(short.len() < short.needed);
        assert!(UserRange::choose(100, 2, run).is_err());
        assert!(UserRange::choose(FIRST_USER + MIN_USERS - 2, 2, run).is_err());
        assert!(UserRange::choose(FIRST_USER + MIN_USERS - 1, 2, run).is_ok());
        Ok(())
    }

    #[test]
    fn the_range_leaves_the_other_scenarios_users_alone() {
        let sql = enable_sql(&UserRange { first: FIRST_USER, last: 3116, needed: 3016 });
        assert!(sql.contains("generate_series(101, 3116)"));
        assert!(sql.contains("decode('0062656e63682d746f74702d7365637265742d3230', 'hex')"), "{sql}");
    }
}
