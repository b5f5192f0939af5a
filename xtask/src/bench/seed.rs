//! The bench database: `um_bench_<users>` on the local Postgres, migrated, with one administrator and `users`
//! seeded users who share the administrator's password, reused from run to run when it already holds them.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::postgres::{self, literal, psql};
use crate::{process, ui};

/// The administrator every run creates (or finds) and the `/users` scenarios call as.
pub(super) const ADMIN_EMAIL: &str = "bench-admin@example.com";

/// The password of the administrator and of every seeded user (they share the administrator's hash).
pub(super) const PASSWORD: &str = "violet-kettle-orbit-97-lantern";

/// The domain of the seeded users' emails: `user{n}@bench.example.com`.
pub(super) const SEED_DOMAIN: &str = "bench.example.com";

/// Makes sure `um_bench_<users>` holds exactly the administrator and `users` seeded users, migrated, and returns its
/// URL.
///
/// A database that already holds the seeded users is reused (seeding a million users and building their indexes
/// takes a while), with the state earlier runs left (sessions, refresh tokens, login failures, second factors)
/// cleared, so every run starts from the same rows. Anything else, or `--fresh`, is dropped and created anew.
pub(super) fn prepare_database(binary: &Path, data_dir: &Path, users: u64, fresh: bool) -> Result<String> {
    let name = format!("um_bench_{users}");
    let admin_url = postgres::LOCAL_ADMIN_URL;
    let url = postgres::database_url(admin_url, &name)?;
    ui::step(&format!("Postgres: preparing the database `{name}`"));

    let exists = postgres::database_exists(admin_url, &name)?;
    let reusable = exists && !fresh && seeded_users(&url)? == Some(users);
    if exists && !reusable {
        ui::info(if fresh { "dropping it (--fresh)" } else { "dropping it: it does not hold the seeded users" });
        postgres::drop_database(admin_url, &name)?;
    }
    if !reusable {
        postgres::create_database(admin_url, &name)?;
        ui::info(&format!("created database `{name}`"));
    }

    ui::info("migrating (user-management migrate)");
    let mut migrate = Command::new(binary);
    migrate.arg("migrate").env("DATABASE_URL", &url).env("DATA_DIR", data_dir).env("RUST_LOG", "warn");
    process::output(&mut migrate).context("could not migrate the bench database")?;

    if reusable {
        ui::info(&format!(
            "reusing its {users} seeded users; clearing sessions, login failures and second factors of earlier runs"
        ));
        psql(&url, "TRUNCATE sessions, login_attempts CASCADE")?;
        // `register` deletes its accounts when it ends; a run that ended before it could must not leave them.
        super::register::delete_registered(&url)?;
        // `login-mfa` turns TOTP off again when it ends; a run that ended before it could must not leave it on.
        super::mfa::reset(&url)?;
        psql(&url, "VACUUM ANALYZE")?;
        return Ok(url);
    }

    ui::info(&format!("creating {ADMIN_EMAIL} (user-management create-admin)"));
    create_admin(binary, data_dir, &url)?;
    ui::info(&format!("seeding {users} users with one INSERT ... SELECT"));
    let started = Instant::now();
    psql(&url, &seed_sql(users))?;
    // As a reused database is: vacuumed (hint bits set, the visibility map written, so autovacuum has nothing to
    // do on the fresh rows during the first run) and analysed. Without it, `search` on a million freshly seeded
    // users gave 804 req/s, and 844 in the next run, on the vacuumed database.
    psql(&url, "VACUUM ANALYZE")?;
    ui::info(&format!("seeded, vacuumed and analysed in {:.1} s", started.elapsed().as_secs_f64()));
    Ok(url)
}

/// Vacuums the bench database between two scenarios, so that the dead rows one scenario leaves behind (rotated
/// refresh tokens, updated sessions and users, deleted sign-ups) are not a cost of the next one.
///
/// It keeps the scenarios apart, more eagerly than autovacuum would (by default it waits until a fifth of a table's
/// rows are dead), and it matters most where autovacuum does not run at all, as on these machines' Postgres: there
/// a whole run measured its later scenarios on the garbage of the earlier ones, and `storm`'s `GET /me` served
/// 6,489-6,876 req/s (p99 21-22 ms) after every scenario before it, against 14,391 (p99 12.6 ms) when the database
/// was vacuumed as it began. A plain `VACUUM` skips the pages nothing has changed: 0.1 s after a scenario at 1,000
/// users, 0.3 s at a million.
pub(super) fn vacuum(url: &str) -> Result<()> {
    let started = Instant::now();
    psql(url, "VACUUM").context("could not vacuum the bench database between scenarios")?;
    ui::info(&format!("vacuumed the database in {:.1} s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// How many seeded users the database at `url` holds, or `None` when it is not a complete bench database (no
/// tables yet, or no administrator). Accounts a cut-short `register` left are not counted: reusing the database
/// deletes them.
fn seeded_users(url: &str) -> Result<Option<u64>> {
    let counts = psql(
        url,
        &format!(
            "SELECT (SELECT count(*) FROM users WHERE email LIKE {pattern}) || '|' || \
                    (SELECT count(*) FROM users WHERE email = {admin}) || '|' || \
                    (SELECT count(*) FROM users WHERE email NOT LIKE {registered}) \
             WHERE to_regclass('public.users') IS NOT NULL",
            pattern = literal(&format!("user%@{SEED_DOMAIN}")),
            admin = literal(ADMIN_EMAIL),
            registered = literal(&format!("%@{}", super::register::REGISTER_DOMAIN)),
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
        .env("RUST_LOG", "warn");
    process::run_with_input(&mut command, &format!("{PASSWORD}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_statement_copies_the_admin_hash_into_every_row() {
        let sql = seed_sql(1_000_000);
        assert!(sql.contains("generate_series(1, 1000000)"));
        assert!(sql.contains("'bench-admin@example.com'"));
        assert!(sql.contains("gen_random_uuid()"));
    }
}
