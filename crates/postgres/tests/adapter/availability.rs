//! Postgres being down, hanging or coming back: requests fail fast as unavailable, and the pool recovers.

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection as _, AsyncPgConnection, SimpleAsyncConnection as _};

use users_domain::ports::{InsertUserError, PortError, UserStore as _, UserUpdate};
use users_domain::user::{Bio, UserId};
use users_postgres::{PgConfig, PgRepository, PgSetupError};
use users_testkit::TestDatabase;

use crate::support::{
    SwitchableProxy, account, count, everyone, execute, insert, new_user, now, repository, repository_at,
    repository_with_connections,
};

/// How long a test waits for an outage, or its end, to show before it fails.
const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_server_that_refuses_connections_is_unavailable_at_once() {
    // Nothing listens on port 1, so every connection attempt is refused.
    let repository = repository_at("postgres://postgres@127.0.0.1:1/postgres".to_owned()).await;
    let started = Instant::now();

    let ping = repository.ping().await.unwrap_err();
    assert!(matches!(ping, PortError::Unavailable(_)), "{ping:?}");
    assert!(format!("{:#}", anyhow::Error::new(ping)).contains("refused"), "the cause reaches the log");
    let find = repository.find_user(UserId::generate()).await.unwrap_err();
    assert!(matches!(find, PortError::Unavailable(_)), "{find:?}");
    let insert = repository.insert_user(account(new_user("ada@example.com", "ada"))).await.unwrap_err();
    assert!(matches!(insert, InsertUserError::Port(PortError::Unavailable(_))), "{insert:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_server_that_never_answers_is_unavailable_within_the_acquire_timeout() {
    // The kernel completes the TCP handshake for this listener, but nothing ever reads or answers: a hung server.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("postgres://postgres@{}/postgres", silent.local_addr().unwrap());
    let config =
        PgConfig { url, max_connections: 2, listing_connections: 1, acquire_timeout: Duration::from_millis(500) };
    let repository = PgRepository::connect(&config).await.unwrap();
    let started = Instant::now();

    let error = repository.ping().await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error, PortError::Unavailable(_)), "{error:?}");
    assert!(elapsed >= Duration::from_millis(450), "gave up early, after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}

#[tokio::test]
async fn the_pool_recovers_when_the_database_comes_back() {
    let database = TestDatabase::create().await;
    let target = url::Url::parse(&database.url()).unwrap();
    let host_port = format!("{}:{}", target.host_str().unwrap(), target.port().unwrap_or(5432));
    let proxy = SwitchableProxy::start(host_port).await;
    let mut proxied = target.clone();
    proxied.set_host(Some("127.0.0.1")).unwrap();
    proxied.set_port(Some(proxy.address().port())).unwrap();
    let repository = repository_at(proxied.to_string()).await;
    let user = repository.insert_user(account(new_user("ada@example.com", "ada"))).await.unwrap();

    proxy.set_up(false);
    let deadline = Instant::now() + DEADLINE;
    loop {
        match repository.ping().await {
            Err(PortError::Unavailable(_)) => break,
            other => assert!(Instant::now() < deadline, "the outage never showed: {other:?}"),
        }
    }
    let error = repository.find_user(user.id).await.unwrap_err();
    assert!(matches!(error, PortError::Unavailable(_)), "{error:?}");

    proxy.set_up(true);
    let deadline = Instant::now() + DEADLINE;
    while let Err(error) = repository.ping().await {
        assert!(Instant::now() < deadline, "the pool never recovered: {error:?}");
    }
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap().id, user.id);
}

#[tokio::test]
async fn a_connection_the_server_ended_while_pooled_is_replaced_not_handed_out() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 1).await;
    let user = repository.insert_user(account(new_user("ada@example.com", "ada"))).await.unwrap();
    let others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()";
    assert_eq!(count(&database, &format!("SELECT count(*) AS count {others}")).await, 1, "the pooled connection");

    // What a Postgres restart or an administrator does to every session; the pool's connection is idle meanwhile.
    let end_them = format!("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS count {others}");
    assert_eq!(count(&database, &end_them).await, 1);
    let deadline = Instant::now() + DEADLINE;
    while count(&database, &format!("SELECT count(*) AS count {others}")).await > 0 {
        assert!(Instant::now() < deadline, "the ended session never left pg_stat_activity");
    }

    // The very next request gets a working connection: the dead one is noticed at checkout, not by a failed query.
    assert_eq!(repository.find_user(user.id).await.unwrap().unwrap().id, user.id);
}

#[tokio::test]
async fn connect_refuses_an_unparsable_url_at_once() {
    let config = PgConfig { url: "postgres://postgres@127.0.0.1:notaport/db".to_owned(), ..PgConfig::default() };
    let error = PgRepository::connect(&config).await.unwrap_err();
    assert!(matches!(error, PgSetupError::InvalidUrl(_)), "{error:?}");
    assert_eq!(error.to_string(), "the database URL is not a valid Postgres connection string");
}

#[tokio::test]
async fn connect_refuses_a_pool_without_connections_or_without_a_timeout() {
    let no_connections = PgConfig { max_connections: 0, ..PgConfig::default() };
    assert!(matches!(PgRepository::connect(&no_connections).await, Err(PgSetupError::InvalidConfig(_))));
    let no_listing_connections = PgConfig { listing_connections: 0, ..PgConfig::default() };
    assert!(matches!(PgRepository::connect(&no_listing_connections).await, Err(PgSetupError::InvalidConfig(_))));
    let no_timeout = PgConfig { acquire_timeout: Duration::ZERO, ..PgConfig::default() };
    assert!(matches!(PgRepository::connect(&no_timeout).await, Err(PgSetupError::InvalidConfig(_))));
}

#[tokio::test]
async fn a_repository_on_a_live_database_is_not_affected_by_another_one_being_down() {
    let database = TestDatabase::create().await;
    let live = repository(&database).await;
    let dead = repository_at("postgres://postgres@127.0.0.1:1/postgres".to_owned()).await;
    assert!(dead.ping().await.is_err());
    live.ping().await.unwrap();
}

/// A migration that changes the type of a column leaves every statement a connection keeps prepared that reads it
/// failing on that connection for good ("cached plan must not change result type"). Such a failure costs one
/// request per connection, answered as unavailable, not every later one: the connection forgets its prepared
/// statements and prepares them afresh.
#[tokio::test]
async fn a_prepared_statement_whose_result_type_changed_costs_one_request() {
    let database = TestDatabase::create().await;
    // One connection in each pool, so every request below runs on the same two.
    let repository = repository_with_connections(database.url(), 1).await;
    let ada = insert(&repository, "ada@example.com", "ada").await;
    let everyone = everyone(10);
    let update = || {
        let mut update = UserUpdate::new(ada.id, now());
        update.fields.profile.bio = Some(Bio::parse("Counts things.").unwrap());
        update
    };
    // Prepared on the main pool's connection (a read by id; an update's transaction) and on the listing's.
    assert_eq!(repository.find_user(ada.id).await.unwrap().map(|user| user.id), Some(ada.id));
    repository.update_user(update()).await.unwrap();
    assert_eq!(repository.list_users(everyone.clone()).await.unwrap().len(), 1);

    execute(&database, "ALTER TABLE users ALTER COLUMN bio TYPE varchar(500)").await;

    let error = repository.find_user(ada.id).await.unwrap_err();
    assert!(matches!(error, PortError::Unavailable(_)), "{error:?}");
    let error = repository.list_users(everyone.clone()).await.unwrap_err();
    assert!(matches!(error, PortError::Unavailable(_)), "{error:?}");
    for _ in 0..3 {
        assert_eq!(repository.find_user(ada.id).await.unwrap().map(|user| user.id), Some(ada.id));
        repository.update_user(update()).await.unwrap();
        assert_eq!(repository.list_users(everyone.clone()).await.unwrap().len(), 1);
    }
}

/// Listings run on connections of their own: one stuck in Postgres does not hold a connection every other request
/// needs. With one connection in each pool, a listing waits on a lock while a statement on the main pool runs.
#[tokio::test]
async fn a_stuck_listing_holds_none_of_the_main_pools_connections() {
    let database = TestDatabase::create().await;
    let repository = repository_with_connections(database.url(), 1).await;
    insert(&repository, "ada@example.com", "ada").await;
    let mut holder = AsyncPgConnection::establish(&database.url()).await.unwrap();
    holder.batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE").await.unwrap();

    let listing = tokio::spawn({
        let repository = repository.clone();
        async move { repository.list_users(everyone(10)).await }
    });
    let deadline = Instant::now() + DEADLINE;
    let waiting = "SELECT count(*) AS count FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
    while count(&database, waiting).await == 0 {
        assert!(Instant::now() < deadline, "the listing never reached the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    repository.ping().await.unwrap();
    assert!(!listing.is_finished(), "the listing was to wait for the lock");
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(listing.await.unwrap().unwrap().len(), 1);
}
