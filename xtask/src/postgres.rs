//! The local Postgres server: reach it, start or install it when needed, and manage databases through `psql`.
//!
//! Debian's PostgreSQL cluster usually runs already at 127.0.0.1:5432 with trust authentication for `postgres`;
//! where it is stopped it is started with `pg_ctlcluster`, and where it is missing it is installed with apt. The
//! server must offer TLS (the tests of `sslmode` need it): Debian's cluster does, with its certificate for
//! `localhost`; one that does not is given a self-signed certificate for `localhost` and `ssl = on`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::http::{accepts_connections, wait_until};
use crate::process;
use crate::ui;

/// Where the local server listens.
pub const LOCAL_ADDRESS: &str = "127.0.0.1:5432";

/// An admin URL for the local server: its `postgres` database, as user `postgres`.
pub const LOCAL_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Makes sure a Postgres server accepts connections at [`LOCAL_ADDRESS`], starting or installing it if needed, and
/// that it offers TLS.
pub fn ensure_local_server() -> Result<()> {
    ensure_running()?;
    ensure_tls()
}

/// Where [`ensure_tls`] puts the certificate and key it makes: owned by `postgres`, outside any data directory.
const TLS_DIR: &str = "/var/lib/postgresql/user-management-tls";

/// Turns TLS on when the server has it off: a self-signed certificate for `localhost` (the name the TLS tests
/// connect to with `sslmode=verify-full`), `ALTER SYSTEM` for the settings, and a reload, which TLS needs no
/// restart for.
fn ensure_tls() -> Result<()> {
    if psql(LOCAL_ADMIN_URL, "SHOW ssl")?.first().map(String::as_str) == Some("on") {
        return Ok(());
    }
    ui::info(&format!("TLS is off; turning it on with a self-signed certificate for localhost in {TLS_DIR}"));
    let dir = Path::new(TLS_DIR);
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {TLS_DIR}"))?;
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let mut openssl = Command::new("openssl");
    openssl
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert);
    process::output(&mut openssl).context("could not make a certificate for Postgres")?;
    // Postgres refuses a key that others can read, and must own it to read it.
    process::run(Command::new("chmod").arg("600").arg(&key))?;
    process::run(Command::new("chown").args(["-R", "postgres:postgres", TLS_DIR]))?;
    // One statement per call: ALTER SYSTEM refuses to run inside the implicit transaction of a multi-statement
    // command.
    for statement in [
        format!("ALTER SYSTEM SET ssl_cert_file = {}", literal(&cert.display().to_string())),
        format!("ALTER SYSTEM SET ssl_key_file = {}", literal(&key.display().to_string())),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        psql(LOCAL_ADMIN_URL, &statement).context("could not turn TLS on")?;
    }
    wait_until("Postgres to offer TLS", Duration::from_secs(10), || {
        Ok(psql(LOCAL_ADMIN_URL, "SHOW ssl")?.first().map(String::as_str) == Some("on"))
    })
    .context("Postgres did not turn TLS on; see /var/log/postgresql/")
}

/// Makes sure a Postgres server accepts connections at [`LOCAL_ADDRESS`], starting or installing it if needed.
fn ensure_running() -> Result<()> {
    ui::step(&format!("Postgres: checking {LOCAL_ADDRESS}"));
    if accepts_connections(LOCAL_ADDRESS) {
        ui::info("running");
        return Ok(());
    }
    let version = match installed_version()? {
        Some(version) => version,
        None => {
            install()?;
            installed_version()?.context("`apt-get install -y postgresql` left no cluster under /etc/postgresql")?
        }
    };
    ui::info(&format!("not reachable; starting cluster {version}/main"));
    let mut start = Command::new("pg_ctlcluster");
    start.args(["--skip-systemctl-redirect", &version, "main", "start"]);
    // `pg_ctlcluster` fails when the cluster is already running but not yet listening; waiting below tells.
    if let Err(error) = process::run(&mut start) {
        ui::warn(&format!("{error:#}"));
    }
    wait_until(&format!("Postgres to accept connections at {LOCAL_ADDRESS}"), Duration::from_secs(60), || {
        Ok(accepts_connections(LOCAL_ADDRESS))
    })
    .context("Postgres did not come up; see /var/log/postgresql/")?;
    ui::info("running");
    Ok(())
}

/// The newest PostgreSQL version with a cluster configuration under `/etc/postgresql`, if any.
fn installed_version() -> Result<Option<String>> {
    let root = Path::new("/etc/postgresql");
    if !root.is_dir() {
        return Ok(None);
    }
    let mut versions: Vec<String> = std::fs::read_dir(root)
        .with_context(|| format!("could not list {}", root.display()))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("main").is_dir())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    versions.sort_by_key(|version| version.split('.').map(|part| part.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>());
    Ok(versions.pop())
}

/// Installs Debian's PostgreSQL with apt.
fn install() -> Result<()> {
    ui::info("Postgres is not installed; installing it with apt-get (needs root)");
    process::run(Command::new("apt-get").arg("update")).context("could not install Postgres")?;
    process::run(Command::new("apt-get").args(["install", "-y", "postgresql"])).context("could not install Postgres")
}

/// Runs `sql` with `psql` against the database at `url` and returns the rows of its output, one per line.
pub fn psql(url: &str, sql: &str) -> Result<Vec<String>> {
    let mut command = Command::new("psql");
    command
        .args(["--no-psqlrc", "--no-password", "--quiet", "--tuples-only", "--no-align"])
        .args(["--set", "ON_ERROR_STOP=1", "--dbname", url, "--command", sql])
        .env("PGCONNECT_TIMEOUT", "10");
    let output = process::output(&mut command)?;
    Ok(output.lines().filter(|line| !line.is_empty()).map(str::to_owned).collect())
}

/// `name` as a quoted SQL identifier.
pub fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a quoted SQL string literal.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Whether the server of `admin_url` has a database called `name`.
pub fn database_exists(admin_url: &str, name: &str) -> Result<bool> {
    let rows = psql(admin_url, &format!("SELECT 1 FROM pg_database WHERE datname = {}", literal(name)))?;
    Ok(!rows.is_empty())
}

/// Creates the database `name` on the server of `admin_url`.
pub fn create_database(admin_url: &str, name: &str) -> Result<()> {
    psql(admin_url, &format!("CREATE DATABASE {}", identifier(name))).map(drop)
}

/// Drops the database `name` from the server of `admin_url`, if it is there, ending the sessions still using it.
pub fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    psql(admin_url, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", identifier(name))).map(drop)
}

/// Creates the database `name` on the server of `admin_url` unless it exists.
pub fn ensure_database(admin_url: &str, name: &str) -> Result<()> {
    let exists =
        database_exists(admin_url, name).with_context(|| format!("could not look for the database `{name}`"))?;
    if exists {
        ui::info(&format!("database `{name}` exists"));
    } else {
        create_database(admin_url, name).with_context(|| format!("could not create the database `{name}`"))?;
        ui::info(&format!("created database `{name}`"));
    }
    Ok(())
}

/// The URL of `database` on the server of `admin_url` (which names another database), keeping its options.
///
/// # Errors
/// When `admin_url` names no database.
pub fn database_url(admin_url: &str, database: &str) -> Result<String> {
    let (base, _) = admin_url.split_once('?').unwrap_or((admin_url, ""));
    let slash = base.rfind('/').filter(|&at| at > "postgres://".len()).context("the Postgres URL names no database")?;
    let (server, _) = base.split_at(slash);
    let query = admin_url.split_once('?').map(|(_, query)| format!("?{query}")).unwrap_or_default();
    Ok(format!("{server}/{database}{query}"))
}

/// Drops the databases that earlier test runs left behind when they crashed: names starting with `um_test_` or
/// `um_template_`.
///
/// A database still in use (say, by a test run going on in another checkout) cannot be dropped without force; it is
/// reported and kept.
pub fn drop_leftover_test_databases(admin_url: &str) -> Result<()> {
    let rows = psql(
        admin_url,
        r"SELECT datname || '|' || datistemplate FROM pg_database
          WHERE datname LIKE 'um\_test\_%' OR datname LIKE 'um\_template\_%' ORDER BY datname",
    )
    .context("could not list leftover test databases")?;
    if rows.is_empty() {
        ui::info("no leftover test databases");
        return Ok(());
    }
    for row in rows {
        let (name, is_template) = row.rsplit_once('|').unwrap_or((row.as_str(), "f"));
        let drop = || {
            if is_template == "true" || is_template == "t" {
                // A template database cannot be dropped until it stops being one.
                psql(admin_url, &format!("ALTER DATABASE {} IS_TEMPLATE false", identifier(name)))?;
            }
            // `DROP DATABASE` refuses to run in a transaction, so it gets a `psql` call of its own.
            psql(admin_url, &format!("DROP DATABASE IF EXISTS {}", identifier(name)))
        };
        match drop() {
            Ok(_) => ui::info(&format!("dropped leftover database `{name}`")),
            Err(error) => ui::warn(&format!("kept database `{name}`: {error:#}")),
        }
    }
    Ok(())
}

/// The parts of a Postgres URL the task runner needs.
#[derive(Debug, PartialEq, Eq)]
pub struct DatabaseUrl {
    /// Host name or address (without IPv6 brackets); empty for a Unix socket.
    pub host: String,
    /// Port, when the URL names one.
    pub port: Option<u16>,
    /// Database name.
    pub database: String,
    /// The same URL, pointing at the `postgres` maintenance database instead.
    pub admin_url: String,
}

impl DatabaseUrl {
    /// Picks `postgres://user:password@host:port/database?options` apart.
    pub fn parse(url: &str) -> Result<Self> {
        // The value is not quoted: whatever it is instead (a key/value string, a typo), it may hold the password.
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .context("DATABASE_URL does not start with postgres:// or postgresql://")?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (database, query) = match path.split_once('?') {
            Some((database, query)) => (database, Some(query)),
            None => (path, None),
        };
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, host_port)| host_port);
        let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').context("DATABASE_URL has an unclosed `[`")?;
            (host, after.strip_prefix(':'))
        } else {
            match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            }
        };
        let port = port
            // Not quoted: a password holding an unencoded `/` would be read as the port.
            .map(|port| port.parse::<u16>().context("DATABASE_URL has an invalid port"))
            .transpose()?;
        let scheme_len = url.len() - rest.len();
        let prefix = url.get(..scheme_len + authority.len()).unwrap_or(url);
        let admin_url = match query {
            Some(query) => format!("{prefix}/postgres?{query}"),
            None => format!("{prefix}/postgres"),
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            database: if database.is_empty() { "postgres".to_owned() } else { database.to_owned() },
            admin_url,
        })
    }

    /// Whether the URL points at the local server this task runner may start: 127.0.0.1/localhost on port 5432.
    pub fn is_local_server(&self) -> bool {
        matches!(self.host.as_str(), "127.0.0.1" | "localhost" | "::1") && self.port.unwrap_or(5432) == 5432
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_url_is_the_local_server() -> Result<()> {
        let url = DatabaseUrl::parse("postgres://postgres@127.0.0.1:5432/user_management")?;
        assert_eq!(url.host, "127.0.0.1");
        assert_eq!(url.port, Some(5432));
        assert_eq!(url.database, "user_management");
        assert_eq!(url.admin_url, "postgres://postgres@127.0.0.1:5432/postgres");
        assert!(url.is_local_server());
        Ok(())
    }

    #[test]
    fn passwords_options_and_ipv6_hosts_are_understood() -> Result<()> {
        let url = DatabaseUrl::parse("postgresql://me:p%40ss@[::1]:6543/app?sslmode=disable")?;
        assert_eq!(url.host, "::1");
        assert_eq!(url.port, Some(6543));
        assert_eq!(url.database, "app");
        assert_eq!(url.admin_url, "postgresql://me:p%40ss@[::1]:6543/postgres?sslmode=disable");
        assert!(!url.is_local_server());
        Ok(())
    }

    #[test]
    fn a_remote_host_is_not_the_local_server() -> Result<()> {
        let url = DatabaseUrl::parse("postgres://db.example.com/app")?;
        assert_eq!(url.port, None);
        assert!(!url.is_local_server());
        Ok(())
    }

    #[test]
    fn other_schemes_are_rejected() {
        assert!(DatabaseUrl::parse("mysql://localhost/app").is_err());
    }

    #[test]
    fn the_database_url_names_the_new_database() -> Result<()> {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "um_test_fuzz_1")?,
            "postgres://postgres@127.0.0.1:5432/um_test_fuzz_1"
        );
        assert_eq!(
            database_url("postgres://u:p@db:5432/postgres?sslmode=require", "x")?,
            "postgres://u:p@db:5432/x?sslmode=require"
        );
        Ok(())
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(identifier(r#"a"b"#), r#""a""b""#);
        assert_eq!(literal("it's"), "'it''s'");
    }
}
