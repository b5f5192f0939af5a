//! The `user-management` binary: `serve` (the default), `migrate`, `create-admin`, `keys` and `purge`. Only wiring
//! lives here.

use std::io::{BufRead as _, Write as _};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use users_api::config::Config;
use users_api::startup::{self, Application};
use users_api::{housekeeping, telemetry};
use users_domain::EmailAddress;
use users_postgres::{PgRepository, PurgeOutcome};

/// A user-management service: registration, login, roles, profiles and pictures.
#[derive(Debug, Parser)]
#[command(name = "user-management", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server (the default). Migrations run first.
    Serve,
    /// Run pending database migrations and exit.
    Migrate,
    /// Create a verified ADMIN, or make an existing user one; the password is read from standard input.
    CreateAdmin {
        /// The admin's email address.
        #[arg(long)]
        email: String,
    },
    /// Run one housekeeping round (delete what RETENTION lets go) and print what was deleted, per kind.
    Purge,
    /// Manage the signing keys of access tokens kept in the database (not with JWT_PRIVATE_KEY_FILE).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Store a new signing key; every instance signs with it within 30 s, without a restart. Earlier keys keep
    /// verifying for ACCESS_TOKEN_TTL after they stop signing.
    Rotate,
    /// Print every stored key: kid, state (pending, current, verifying, retired) and dates.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A missing .env file is normal; a malformed one is reported.
    if let Err(error) = dotenvy::dotenv()
        && !error.not_found()
    {
        eprintln!("error: reading .env: {error}");
        return ExitCode::FAILURE;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    telemetry::init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(config).await,
            Command::Migrate => startup::migrate(&config).await,
            Command::CreateAdmin { email } => create_admin(config, &email).await,
            Command::Purge => purge(config).await,
            Command::Keys { command: KeysCommand::Rotate } => rotate_keys(&config).await,
            Command::Keys { command: KeysCommand::List } => list_keys(&config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let bind_addr = config.bind_addr;
    let app = Application::build(config).await?;
    tracing::info!(%bind_addr, port = app.port(), "listening; interactive docs at /docs");
    match app.metrics_addr() {
        Some(metrics_addr) => tracing::info!(%metrics_addr, "metrics at /metrics on their own listener"),
        None => tracing::info!("metrics listener disabled (METRICS_BIND_ADDR is empty)"),
    }
    app.run_until_stopped().await.context("serving HTTP")
}

async fn purge(config: Config) -> anyhow::Result<()> {
    startup::migrate(&config).await?;
    let db = PgRepository::connect(&config.database).await.context("connecting to DATABASE_URL")?;
    let outcome = housekeeping::run_once(&db, config.purge_settings()).await.context("running housekeeping")?;
    let mut out = std::io::stdout().lock();
    match outcome {
        PurgeOutcome::Done(purged) => {
            for (kind, count) in purged.kinds() {
                writeln!(out, "{kind}: {count}").context("writing to stdout")?;
            }
            writeln!(out, "deleted {} rows older than RETENTION", purged.total()).context("writing to stdout")?;
        }
        PurgeOutcome::Skipped => {
            writeln!(out, "skipped: another instance is running housekeeping (it holds the lock); nothing deleted")
                .context("writing to stdout")?;
        }
    }
    Ok(())
}

async fn create_admin(config: Config, raw_email: &str) -> anyhow::Result<()> {
    let email = EmailAddress::parse(raw_email).map_err(|error| anyhow::anyhow!("--email: {error}"))?;
    let mut password = String::new();
    std::io::stdin().lock().read_line(&mut password).context("reading the password from standard input")?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!(
            "no password on standard input: pipe it in, e.g. `echo '<password>' | user-management create-admin --email {email}`"
        );
    }
    startup::migrate(&config).await?;
    let service = startup::build_service(&config).await?;
    let user = service.create_admin(email, password).await.map_err(anyhow::Error::from)?;
    writeln!(std::io::stdout(), "admin {} is ready (id {})", user.email, user.id).context("writing to stdout")?;
    Ok(())
}

async fn rotate_keys(config: &Config) -> anyhow::Result<()> {
    let keys = startup::stored_keys(config).await.context("keys rotate")?;
    let rotated = keys.rotate().await?;
    let activates_at = rfc3339(rotated.activates_at)?;
    writeln!(
        std::io::stdout(),
        "new signing key {} signs from {activates_at}; earlier keys keep verifying until ACCESS_TOKEN_TTL after that",
        rotated.kid
    )
    .context("writing to stdout")?;
    Ok(())
}

async fn list_keys(config: &Config) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if let Some(kid) = startup::file_key_id(config).context("keys list")? {
        writeln!(out, "{kid:<43}  {:<9}  from JWT_PRIVATE_KEY_FILE (no keys are kept in the database)", "current")
            .context("writing to stdout")?;
        return Ok(());
    }
    let keys = startup::stored_keys(config).await.context("keys list")?;
    writeln!(
        out,
        "{:<43}  {:<9}  {:<20}  {:<20}  {:<20}  RETIRES",
        "KID", "STATE", "CREATED", "ACTIVATES", "STOPPED_SIGNING"
    )
    .context("writing to stdout")?;
    for key in keys.list().await? {
        let status = &key.status;
        let optional = |at: Option<time::OffsetDateTime>| at.map_or_else(|| Ok("-".to_owned()), rfc3339);
        writeln!(
            out,
            "{:<43}  {:<9}  {:<20}  {:<20}  {:<20}  {}",
            status.kid,
            status.state,
            rfc3339(key.created_at)?,
            rfc3339(status.activates_at)?,
            optional(status.stopped_signing_at)?,
            optional(status.retires_at)?,
        )
        .context("writing to stdout")?;
    }
    Ok(())
}

/// A date as RFC 3339 in UTC, to the second.
fn rfc3339(at: time::OffsetDateTime) -> anyhow::Result<String> {
    let at = at.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).context("truncating a date")?;
    at.format(&time::format_description::well_known::Rfc3339).context("formatting a date")
}
